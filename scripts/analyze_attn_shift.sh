#!/usr/bin/env bash
# FasterVLM's attention-shift analysis (re-implemented: llava/analysis/attention.py), LLaVA-1.5-7B without pruning on
# the first 1K questions of LLaVA-665K (playground/data/analysis/llava_v1_5_mix1k.jsonl, images under
# playground/data). Override with CKPT / QUESTIONS / IMAGES / NUM / OUT; extra flags (e.g. --layers 0,1,15,31,
# --method fastervlm --visual-token-num 64, --device cpu) are passed through.
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT=${CKPT:-liuhaotian/llava-v1.5-7b}
QUESTIONS=${QUESTIONS:-./playground/data/analysis/llava_v1_5_mix1k.jsonl}
IMAGES=${IMAGES:-./playground/data}
NUM=${NUM:-1000}
OUT=${OUT:-./playground/data/analysis/attn_shift/$(basename "$CKPT")}
python -m llava.analysis.analyze_attn_shift \
    --model-path "$CKPT" \
    --question-file "$QUESTIONS" \
    --image-folder "$IMAGES" \
    --num-samples "$NUM" \
    --conv-mode vicuna_v1 \
    --out "$OUT" \
    "$@"
