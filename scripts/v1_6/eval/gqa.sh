#!/usr/bin/env bash
# LLaVA-NeXT: scripts/v1_5/eval/gqa.sh with the NeXT defaults and the budget argument of next.sh.
# GQA testdev-balanced: local exact-match accuracy (the number LLaVA reports).
source "$(dirname "$0")/next.sh"
exec bash "$(dirname "$0")/../../v1_5/eval/gqa.sh"
