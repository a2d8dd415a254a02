#!/usr/bin/env bash
# Qwen2.5-VL: scripts/v1_5/eval/gqa.sh with the defaults of qwen.sh.
# GQA testdev-balanced: local exact-match accuracy (the number LLaVA reports).
source "$(dirname "$0")/qwen.sh"
exec bash "$(dirname "$0")/../../v1_5/eval/gqa.sh"
