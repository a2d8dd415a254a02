#!/usr/bin/env bash
# MSRVTT-QA (Video-ChatGPT zero-shot protocol): answers; judge them with eval_qa_msrvtt.sh.
# Settings (SUBSET, NUM_FRAMES, METHOD, RETAIN_TOKN, ...): common_video_qa.sh.
source "$(dirname "$0")/common_video_qa.sh" MSRVTT_Zero_Shot_QA videos
run_video_qa
