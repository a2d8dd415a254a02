#!/usr/bin/env bash
# ScienceQA test: papers report the IMG accuracy.
source "$(dirname "$0")/common.sh"
D=$EVAL_DIR/scienceqa
need "$D/llava_test_CQM-A.json" ScienceQA; need "$D/images/test" ScienceQA
need "$D/pid_splits.json" ScienceQA; need "$D/problems.json" ScienceQA
ANSWERS=$(answers_for scienceqa)
generate model_vqa_science "$ANSWERS" --question-file "$D/llava_test_CQM-A.json" --image-folder "$D/images/test" \
    --single-pred-prompt
$PYTHON -m llava.eval.eval_science_qa --base-dir "$D" --result-file "$ANSWERS" \
    --output-file "${ANSWERS%.jsonl}_output.jsonl" --output-result "${ANSWERS%.jsonl}_result.json"
