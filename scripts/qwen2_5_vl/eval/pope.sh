#!/usr/bin/env bash
# Qwen2.5-VL: scripts/v1_5/eval/pope.sh with the defaults of qwen.sh.
# POPE (COCO, 3 splits): papers report the mean F1.
source "$(dirname "$0")/qwen.sh"
exec bash "$(dirname "$0")/../../v1_5/eval/pope.sh"
