#!/usr/bin/env bash
# Qwen2.5-VL: scripts/v1_5/eval/vizwiz.sh with the defaults of qwen.sh.
# VizWiz test: answers for the EvalAI server (challenge 2185).
source "$(dirname "$0")/qwen.sh"
exec bash "$(dirname "$0")/../../v1_5/eval/vizwiz.sh"
