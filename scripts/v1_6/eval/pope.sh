#!/usr/bin/env bash
# LLaVA-NeXT: scripts/v1_5/eval/pope.sh with the NeXT defaults and the budget argument of next.sh.
# POPE (COCO, 3 splits): papers report the mean F1.
source "$(dirname "$0")/next.sh"
exec bash "$(dirname "$0")/../../v1_5/eval/pope.sh"
