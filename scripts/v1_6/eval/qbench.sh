#!/usr/bin/env bash
# LLaVA-NeXT: scripts/v1_5/eval/qbench.sh with the NeXT defaults and the budget argument of next.sh.
# Q-Bench (LLVisionQA) dev: local accuracy. vicuna_v1 here; anyres views, as every NeXT run.
source "$(dirname "$0")/next.sh"
exec bash "$(dirname "$0")/../../v1_5/eval/qbench.sh"
