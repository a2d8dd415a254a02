#!/usr/bin/env bash
# TGIF-QA (Video-ChatGPT zero-shot protocol; videos/ holds GIFs or transcoded copies): answers; judge them with
# eval_qa_tgif.sh.
# Settings (SUBSET, NUM_FRAMES, METHOD, RETAIN_TOKN, ...): common_video_qa.sh.
source "$(dirname "$0")/common_video_qa.sh" TGIF_Zero_Shot_QA videos
run_video_qa
