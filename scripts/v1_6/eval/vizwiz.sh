#!/usr/bin/env bash
# LLaVA-NeXT: scripts/v1_5/eval/vizwiz.sh with the NeXT defaults and the budget argument of next.sh.
# VizWiz test: answers for the EvalAI server (challenge 2185).
source "$(dirname "$0")/next.sh"
exec bash "$(dirname "$0")/../../v1_5/eval/vizwiz.sh"
