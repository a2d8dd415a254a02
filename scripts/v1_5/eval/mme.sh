#!/usr/bin/env bash
# MME: papers report Perception (cognition is printed too).
source "$(dirname "$0")/common.sh"
D=$EVAL_DIR/MME
need "$D/llava_mme.jsonl" MME; need "$D/MME_Benchmark_release_version" MME
ANSWERS=$(answers_for MME)
generate model_vqa_loader "$ANSWERS" --question-file "$D/llava_mme.jsonl" --image-folder "$D/MME_Benchmark_release_version"
$PYTHON -m llava.eval.eval_mme --data-dir "$D" --result-file "$ANSWERS" --experiment "$CKPT_NAME-$TAG"
