#!/usr/bin/env bash
# LLaVA-NeXT: scripts/v1_5/eval/textvqa.sh with the NeXT defaults and the budget argument of next.sh.
# TextVQA val with LLaVA's OCR-token prompts: m4c soft accuracy.
source "$(dirname "$0")/next.sh"
exec bash "$(dirname "$0")/../../v1_5/eval/textvqa.sh"
