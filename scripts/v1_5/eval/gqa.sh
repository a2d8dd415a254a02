#!/usr/bin/env bash
# GQA testdev-balanced: local exact-match accuracy (the number LLaVA reports).
source "$(dirname "$0")/common.sh"
SPLIT=llava_gqa_testdev_balanced
D=$EVAL_DIR/gqa
need "$D/$SPLIT.jsonl" GQA; need "$D/data/images" GQA; need "$D/data/testdev_balanced_questions.json" GQA
ANSWERS=$(answers_for gqa "$SPLIT")
generate model_vqa_loader "$ANSWERS" --question-file "$D/$SPLIT.jsonl" --image-folder "$D/data/images"
$PYTHON -m llava.eval.eval_gqa --question-file "$D/data/testdev_balanced_questions.json" --result-file "$ANSWERS" \
    --predictions-file "${ANSWERS%.jsonl}.predictions.json"
