#!/usr/bin/env bash
# MMBench-CN dev: local circular accuracy, plus the xlsx for the OpenCompass server.
source "$(dirname "$0")/common.sh"
SPLIT=${SPLIT:-mmbench_dev_cn_20231003}
D=$EVAL_DIR/mmbench_cn
need "$D/$SPLIT.tsv" MMBench-CN
ANSWERS=$(answers_for mmbench_cn "$SPLIT")
generate model_vqa_mmbench "$ANSWERS" --question-file "$D/$SPLIT.tsv" --single-pred-prompt --lang cn
$PYTHON -m llava.eval.eval_mmbench --annotation-file "$D/$SPLIT.tsv" --result-file "$ANSWERS" \
    --upload-dir "$D/answers_upload/$SPLIT/$CKPT_NAME" --experiment "$TAG"
