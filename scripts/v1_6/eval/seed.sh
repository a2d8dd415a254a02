#!/usr/bin/env bash
# LLaVA-NeXT: scripts/v1_5/eval/seed.sh with the NeXT defaults and the budget argument of next.sh.
# SEED-Bench (image + video middle frames): local accuracy, plus the leaderboard file.
source "$(dirname "$0")/next.sh"
exec bash "$(dirname "$0")/../../v1_5/eval/seed.sh"
