#!/usr/bin/env bash
# MM-Vet: answers converted for the official GPT-4 grader (external; EVAL.md, section MM-Vet).
source "$(dirname "$0")/common.sh"
D=$EVAL_DIR/mm-vet
need "$D/llava-mm-vet.jsonl" MM-Vet; need "$D/images" MM-Vet
ANSWERS=$(answers_for mm-vet)
generate model_vqa "$ANSWERS" --question-file "$D/llava-mm-vet.jsonl" --image-folder "$D/images"
$PYTHON -m llava.eval.convert_mmvet_for_eval --src "$ANSWERS" --dst "$D/results/$CKPT_NAME-$TAG.json"
