#!/usr/bin/env bash
# MSVD-QA (Video-ChatGPT zero-shot protocol): answers; judge them with eval_qa_msvd.sh.
# Settings (SUBSET, NUM_FRAMES, METHOD, RETAIN_TOKN, ...): common_video_qa.sh.
source "$(dirname "$0")/common_video_qa.sh" MSVD_Zero_Shot_QA videos
run_video_qa
