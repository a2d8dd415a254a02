#!/usr/bin/env bash
# Qwen2.5-VL: scripts/v1_5/eval/seed.sh with the defaults of qwen.sh.
# SEED-Bench (image + video middle frames): local accuracy, plus the leaderboard file.
source "$(dirname "$0")/qwen.sh"
exec bash "$(dirname "$0")/../../v1_5/eval/seed.sh"
