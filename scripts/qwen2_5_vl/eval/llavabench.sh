#!/usr/bin/env bash
# Qwen2.5-VL: scripts/v1_5/eval/llavabench.sh with the defaults of qwen.sh.
# LLaVA-Bench-in-the-Wild: answers; the GPT-4 judge is external (EVAL.md, section LLaVA-Bench).
# Greedy (temperature 0, as every v1_5 script), with the checkpoint's repetition penalty.
source "$(dirname "$0")/qwen.sh"
exec bash "$(dirname "$0")/../../v1_5/eval/llavabench.sh"
