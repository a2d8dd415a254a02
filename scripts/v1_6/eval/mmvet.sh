#!/usr/bin/env bash
# LLaVA-NeXT: scripts/v1_5/eval/mmvet.sh with the NeXT defaults and the budget argument of next.sh.
# MM-Vet: answers converted for the official GPT-4 grader (external; EVAL.md, section MM-Vet).
source "$(dirname "$0")/next.sh"
exec bash "$(dirname "$0")/../../v1_5/eval/mmvet.sh"
