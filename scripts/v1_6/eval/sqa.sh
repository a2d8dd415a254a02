#!/usr/bin/env bash
# LLaVA-NeXT: scripts/v1_5/eval/sqa.sh with the NeXT defaults and the budget argument of next.sh.
# ScienceQA test: papers report the IMG accuracy.
source "$(dirname "$0")/next.sh"
exec bash "$(dirname "$0")/../../v1_5/eval/sqa.sh"
