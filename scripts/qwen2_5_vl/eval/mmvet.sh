#!/usr/bin/env bash
# Qwen2.5-VL: scripts/v1_5/eval/mmvet.sh with the defaults of qwen.sh.
# MM-Vet: answers converted for the official GPT-4 grader (external; EVAL.md, section MM-Vet).
# Greedy (temperature 0, as every v1_5 script), with the checkpoint's repetition penalty.
source "$(dirname "$0")/qwen.sh"
exec bash "$(dirname "$0")/../../v1_5/eval/mmvet.sh"
