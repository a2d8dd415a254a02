#!/usr/bin/env bash
# Qwen2.5-VL: scripts/v1_5/eval/mmbench.sh with the defaults of qwen.sh.
# MMBench dev: local circular accuracy, plus the xlsx for the OpenCompass server.
source "$(dirname "$0")/qwen.sh"
exec bash "$(dirname "$0")/../../v1_5/eval/mmbench.sh"
