#!/usr/bin/env bash
# LLaVA-NeXT: scripts/v1_5/eval/mmbench.sh with the NeXT defaults and the budget argument of next.sh.
# MMBench dev: local circular accuracy, plus the xlsx for the OpenCompass server.
source "$(dirname "$0")/next.sh"
exec bash "$(dirname "$0")/../../v1_5/eval/mmbench.sh"
