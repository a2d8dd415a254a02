#!/usr/bin/env bash
# Qwen2.5-VL: scripts/v1_5/eval/mme.sh with the defaults of qwen.sh.
# MME: the scorer prints Perception, Cognition and their total; Qwen2.5-VL papers (HiPrune) report the total.
source "$(dirname "$0")/qwen.sh"
exec bash "$(dirname "$0")/../../v1_5/eval/mme.sh"
