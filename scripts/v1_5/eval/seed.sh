#!/usr/bin/env bash
# SEED-Bench (image + video middle frames): local accuracy, plus the leaderboard file.
source "$(dirname "$0")/common.sh"
D=$EVAL_DIR/seed_bench
need "$D/llava-seed-bench.jsonl" SEED-Bench; need "$D/SEED-Bench.json" SEED-Bench
ANSWERS=$(answers_for seed_bench)
generate model_vqa_loader "$ANSWERS" --question-file "$D/llava-seed-bench.jsonl" --image-folder "$D"
$PYTHON -m llava.eval.eval_seed --annotation-file "$D/SEED-Bench.json" --result-file "$ANSWERS" \
    --result-upload-file "$D/answers_upload/$CKPT_NAME/$TAG.jsonl"
