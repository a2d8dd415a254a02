#!/usr/bin/env bash
# ActivityNet-QA (Video-ChatGPT zero-shot protocol; videos all_test/v_<video_name>.mp4): answers; judge them with
# eval_qa_activitynet.sh.
# Settings (SUBSET, NUM_FRAMES, METHOD, RETAIN_TOKN, ...): common_video_qa.sh.
source "$(dirname "$0")/common_video_qa.sh" Activitynet_Zero_Shot_QA all_test
run_video_qa
