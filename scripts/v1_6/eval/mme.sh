#!/usr/bin/env bash
# LLaVA-NeXT: scripts/v1_5/eval/mme.sh with the NeXT defaults and the budget argument of next.sh.
# MME: papers report Perception (cognition is printed too).
source "$(dirname "$0")/next.sh"
exec bash "$(dirname "$0")/../../v1_5/eval/mme.sh"
