#!/usr/bin/env bash
# VizWiz test: answers for the EvalAI server (challenge 2185).
source "$(dirname "$0")/common.sh"
D=$EVAL_DIR/vizwiz
need "$D/llava_test.jsonl" VizWiz; need "$D/test" VizWiz
ANSWERS=$(answers_for vizwiz)
generate model_vqa_loader "$ANSWERS" --question-file "$D/llava_test.jsonl" --image-folder "$D/test"
$PYTHON -m llava.eval.convert_vizwiz_for_submission --annotation-file "$D/llava_test.jsonl" --result-file "$ANSWERS" \
    --result-upload-file "$D/answers_upload/$CKPT_NAME/$TAG.json"
