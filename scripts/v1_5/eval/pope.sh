#!/usr/bin/env bash
# POPE (COCO, 3 splits): papers report the mean F1.
source "$(dirname "$0")/common.sh"
D=$EVAL_DIR/pope
need "$D/llava_pope_test.jsonl" POPE; need "$D/val2014" POPE; need "$D/coco" POPE
ANSWERS=$(answers_for pope)
generate model_vqa_loader "$ANSWERS" --question-file "$D/llava_pope_test.jsonl" --image-folder "$D/val2014"
$PYTHON -m llava.eval.eval_pope --annotation-dir "$D/coco" --question-file "$D/llava_pope_test.jsonl" --result-file "$ANSWERS"
