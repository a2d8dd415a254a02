#!/usr/bin/env bash
# Qwen2.5-VL: scripts/v1_5/eval/qbench.sh with the defaults of qwen.sh.
# Q-Bench (LLVisionQA) dev: local accuracy (test needs submission). Here with the qwen2_vl template and Qwen's
# own resizing, not LLaVA's llava_v1 template and centre crop.
source "$(dirname "$0")/qwen.sh"
exec bash "$(dirname "$0")/../../v1_5/eval/qbench.sh"
