#!/usr/bin/env bash
# VQAv2 test-dev: answers for the EvalAI server (challenge 830). Several GPUs: one process each (NPROC).
source "$(dirname "$0")/common.sh"
SPLIT=llava_vqav2_mscoco_test-dev2015
D=$EVAL_DIR/vqav2
need "$D/$SPLIT.jsonl" VQAv2; need "$D/test2015" VQAv2; need "$D/llava_vqav2_mscoco_test2015.jsonl" VQAv2
ANSWERS=$(answers_for vqav2 "$SPLIT")
generate model_vqa_loader "$ANSWERS" --question-file "$D/$SPLIT.jsonl" --image-folder "$D/test2015"
$PYTHON -m llava.eval.convert_vqav2_for_submission --dir "$D" --split "$SPLIT" \
    --result-file "$ANSWERS" --result-upload-file "$D/answers_upload/$SPLIT/$CKPT_NAME/$TAG.json"
