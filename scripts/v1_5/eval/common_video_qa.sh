#!/usr/bin/env bash
# Sourced by run_qa_<set>.sh (answers) and eval_qa_<set>.sh (GPT judge) with the benchmark folder and its video
# subfolder: the zero-shot video-QA benchmarks of the Video-ChatGPT protocol (MSVD, MSRVTT, TGIF, ActivityNet;
# EVAL.md, section Video-QA).
#
#   bash scripts/v1_5/eval/run_qa_msvd.sh                                  unpruned Video-LLaVA-7B, full set
#   SUBSET=1k METHOD=fastv RETAIN_TOKN=1024 bash scripts/v1_5/eval/run_qa_msvd.sh
#   JUDGE_MODEL=gpt-3.5-turbo-0125 bash scripts/v1_5/eval/eval_qa_msvd.sh   judge those answers (same settings)
#
# Settings as in common.sh (METHOD, RETAIN_TOKN, RETAIN_RATIO, USE_VERSION, EXTRA_ARGS, TAG, TAG_VARIANT,
# BATCH_SIZE, NPROC, EVAL_DIR, CKPT, CONV_MODE), with these defaults and additions:
#   CKPT        LanguageBind/Video-LLaVA-7B;  CONV_MODE llava_v1 (Video-LLaVA's template)
#   SUBSET      full (default) or 1k: test_q_1k.json / test_a_1k.json where present, else the first 1000 questions
#               (recorded in each answer as "1k-first1000"); 1K numbers are not comparable with full-set numbers
#   NUM_FRAMES  frames per video (default 8, the count Video-LLaVA's video tower is built for); another count
#               goes into the tag (-f<N>)
#   REPEAT_SHORT_VIDEOS  1 (default): a video shorter than NUM_FRAMES repeats frames, as Video-LLaVA's sampling
#               does; 0: its question is recorded as failed (tag -norepeat)
#   JUDGE_MODEL (eval_qa_*.sh, required) a pinned judge such as gpt-3.5-turbo-0125: no default, because the
#               reference's alias gpt-3.5-turbo changed under the published numbers
#   JUDGE_WORKERS judge calls in flight (default 4);  JUDGE_API_KEY_ENV variable holding the key (OPENAI_API_KEY)
#
# Under $EVAL_DIR/GPT_Zero_Shot_QA/<Set>_Zero_Shot_QA/: answers/<subset>/<model>/<tag>.jsonl (each answer with
# its question's ground truth), reviews/<subset>/<model>/<tag>/<judge>.jsonl (cached judgments with raw replies),
# results/<subset>/<model>/<tag>/<judge>.json (Accuracy, Score; read by llava.eval.summarize_results).
set -euo pipefail

VIDEO_QA_SET=$1      # MSVD_Zero_Shot_QA, ...
VIDEO_QA_VIDEOS=$2   # videos, or all_test for ActivityNet
VIDEO_QA_NAME=$(basename "$0" .sh)
VIDEO_QA_NAME=${VIDEO_QA_NAME#*_qa_}  # msvd, ...
CKPT=${CKPT:-LanguageBind/Video-LLaVA-7B}
CONV_MODE=${CONV_MODE:-llava_v1}
SUBSET=${SUBSET:-full}
NUM_FRAMES=${NUM_FRAMES:-8}
REPEAT_SHORT_VIDEOS=${REPEAT_SHORT_VIDEOS:-1}

video_qa_usage() {
    echo "usage: [SUBSET=full|1k] [NUM_FRAMES=8] [METHOD=... RETAIN_TOKN=N] [JUDGE_MODEL=...] bash $0. $1" >&2
    exit 2
}

case "$SUBSET" in full | 1k) ;; *) video_qa_usage "SUBSET must be full or 1k, not '$SUBSET'." ;; esac
if ! [[ "$NUM_FRAMES" =~ ^[1-9][0-9]*$ ]]; then video_qa_usage "NUM_FRAMES must be a positive whole number."; fi
case "$REPEAT_SHORT_VIDEOS" in 0 | 1) ;; *) video_qa_usage "REPEAT_SHORT_VIDEOS must be 0 or 1." ;; esac

# settings that change results go into the answer tag, so such runs never share a file
VIDEO_QA_VARIANT=""
if [ "$NUM_FRAMES" != 8 ]; then VIDEO_QA_VARIANT="-f$NUM_FRAMES"; fi
if [ "$REPEAT_SHORT_VIDEOS" = 0 ]; then VIDEO_QA_VARIANT="$VIDEO_QA_VARIANT-norepeat"; fi
TAG_VARIANT="${TAG_VARIANT:-}$VIDEO_QA_VARIANT"

source "$(dirname "$0")/common.sh"

D=$EVAL_DIR/GPT_Zero_Shot_QA/$VIDEO_QA_SET
ANSWERS=$(answers_for "GPT_Zero_Shot_QA/$VIDEO_QA_SET" "$SUBSET")

# run_video_qa: answer the subset's questions into $ANSWERS (resumes; NPROC processes are merged in order)
run_video_qa() {
    local questions=$D/test_q.json answers=$D/test_a.json
    if [ "$SUBSET" = 1k ] && [ -e "$D/test_q_1k.json" ]; then
        questions=$D/test_q_1k.json
        if [ -e "$D/test_a_1k.json" ]; then answers=$D/test_a_1k.json; fi
    fi
    need "$questions" Video-QA; need "$answers" Video-QA; need "$D/$VIDEO_QA_VIDEOS" Video-QA
    local repeat=()
    if [ "$REPEAT_SHORT_VIDEOS" = 1 ]; then repeat=(--repeat-short-videos); fi
    generate model_video_qa "$ANSWERS" --video-folder "$D/$VIDEO_QA_VIDEOS" --question-file "$questions" \
        --answer-file "$answers" --subset "$SUBSET" --num-frames "$NUM_FRAMES" ${repeat[@]+"${repeat[@]}"}
    echo "Answers: $ANSWERS. Judge them with the same settings:" >&2
    echo "  JUDGE_MODEL=gpt-3.5-turbo-0125 bash $(dirname "$0")/eval_qa_$VIDEO_QA_NAME.sh" >&2
}

# judge_video_qa: the GPT judge over $ANSWERS (cached per judgment), then Accuracy and Score
judge_video_qa() {
    if [ -z "${JUDGE_MODEL:-}" ]; then
        video_qa_usage "Set JUDGE_MODEL to a pinned judge model, e.g. gpt-3.5-turbo-0125 (there is no default)."
    fi
    if [ ! -f "$ANSWERS" ]; then
        echo "No answers at $ANSWERS -- run $(dirname "$0")/run_qa_$VIDEO_QA_NAME.sh with the same settings." >&2
        exit 1
    fi
    local run=$SUBSET/$CKPT_NAME/$TAG judge=${JUDGE_MODEL//\//_}
    $PYTHON -m llava.eval.eval_video_qa --answers-file "$ANSWERS" --judge-model "$JUDGE_MODEL" \
        --cache "$D/reviews/$run/$judge.jsonl" --output "$D/results/$run/$judge.json" \
        --api-key-env "${JUDGE_API_KEY_ENV:-OPENAI_API_KEY}" --workers "${JUDGE_WORKERS:-4}"
}
