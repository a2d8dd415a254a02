#!/usr/bin/env bash
# Qwen2.5-VL: scripts/v1_5/eval/vqav2.sh with the defaults of qwen.sh.
# VQAv2 test-dev: answers for the EvalAI server (challenge 830). Several GPUs: one process each (NPROC).
source "$(dirname "$0")/qwen.sh"
exec bash "$(dirname "$0")/../../v1_5/eval/vqav2.sh"
