#!/usr/bin/env bash
# Offline demo: write a tiny random LLaVA-1.5 checkpoint (real on-disk format) and ask it about assets/example.png.
# Random weights answer gibberish; the point is that the whole real path (loading, preprocessing, prompt,
# generation) runs on any machine. Point --model-path at a real checkpoint for real answers.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m llava.testing playground/tiny
python -m llava.eval.run_llava \
    --model-path playground/tiny/llava-v1.5-tiny \
    --image-file assets/example.png \
    --query "What is in the image?" \
    --temperature 0 --max_new_tokens 16
