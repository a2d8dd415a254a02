#!/usr/bin/env bash
# MMBench dev: local circular accuracy, plus the xlsx for the OpenCompass server.
source "$(dirname "$0")/common.sh"
SPLIT=${SPLIT:-mmbench_dev_20230712}
D=$EVAL_DIR/mmbench
need "$D/$SPLIT.tsv" MMBench
ANSWERS=$(answers_for mmbench "$SPLIT")
generate model_vqa_mmbench "$ANSWERS" --question-file "$D/$SPLIT.tsv" --single-pred-prompt
$PYTHON -m llava.eval.eval_mmbench --annotation-file "$D/$SPLIT.tsv" --result-file "$ANSWERS" \
    --upload-dir "$D/answers_upload/$SPLIT/$CKPT_NAME" --experiment "$TAG"
