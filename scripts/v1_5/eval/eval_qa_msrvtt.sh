#!/usr/bin/env bash
# MSRVTT-QA: GPT judge (JUDGE_MODEL required, e.g. gpt-3.5-turbo-0125; key in OPENAI_API_KEY) over the answers of
# run_qa_msrvtt.sh with the same settings, then Accuracy and Score. Settings: common_video_qa.sh.
NPROC=${NPROC:-1}  # judging needs no GPU; skips common.sh's device count
source "$(dirname "$0")/common_video_qa.sh" MSRVTT_Zero_Shot_QA videos
judge_video_qa
