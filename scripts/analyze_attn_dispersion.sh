#!/usr/bin/env bash
# FasterVLM's attention-dispersion analysis (re-implemented: llava/analysis/attention.py): [CLS] attention vs the last
# prompt token's attention at LLM layer index 1 (FastV's), LLaVA-1.5-7B without pruning, first 1K questions of
# LLaVA-665K. Override with CKPT / QUESTIONS / IMAGES / NUM / OUT / LAYER; extra flags are passed through.
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT=${CKPT:-liuhaotian/llava-v1.5-7b}
QUESTIONS=${QUESTIONS:-./playground/data/analysis/llava_v1_5_mix1k.jsonl}
IMAGES=${IMAGES:-./playground/data}
NUM=${NUM:-1000}
LAYER=${LAYER:-1}
OUT=${OUT:-./playground/data/analysis/attn_dispersion/$(basename "$CKPT")}
python -m llava.analysis.analyze_attn_dispersion \
    --model-path "$CKPT" \
    --question-file "$QUESTIONS" \
    --image-folder "$IMAGES" \
    --num-samples "$NUM" \
    --layer "$LAYER" \
    --conv-mode vicuna_v1 \
    --out "$OUT" \
    "$@"
