#!/usr/bin/env bash
# Qwen2.5-VL: scripts/v1_5/eval/textvqa.sh with the defaults of qwen.sh.
# TextVQA val with LLaVA's OCR-token prompts: m4c soft accuracy (lmms-eval's Qwen runs have no OCR tokens).
source "$(dirname "$0")/qwen.sh"
exec bash "$(dirname "$0")/../../v1_5/eval/textvqa.sh"
