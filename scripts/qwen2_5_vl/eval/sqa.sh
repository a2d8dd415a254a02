#!/usr/bin/env bash
# Qwen2.5-VL: scripts/v1_5/eval/sqa.sh with the defaults of qwen.sh.
# ScienceQA test: papers report the IMG accuracy.
source "$(dirname "$0")/qwen.sh"
exec bash "$(dirname "$0")/../../v1_5/eval/sqa.sh"
