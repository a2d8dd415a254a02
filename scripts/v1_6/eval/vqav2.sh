#!/usr/bin/env bash
# LLaVA-NeXT: scripts/v1_5/eval/vqav2.sh with the NeXT defaults and the budget argument of next.sh.
# VQAv2 test-dev: answers for the EvalAI server (challenge 830). Several GPUs: one process each (NPROC).
source "$(dirname "$0")/next.sh"
exec bash "$(dirname "$0")/../../v1_5/eval/vqav2.sh"
