#!/usr/bin/env bash
# LLaVA-NeXT: scripts/v1_5/eval/llavabench.sh with the NeXT defaults and the budget argument of next.sh.
# LLaVA-Bench-in-the-Wild: answers; the GPT-4 judge is external (EVAL.md, section LLaVA-Bench).
source "$(dirname "$0")/next.sh"
exec bash "$(dirname "$0")/../../v1_5/eval/llavabench.sh"
