#!/usr/bin/env bash
# Sourced by every scripts/qwen2_5_vl/eval/<benchmark>.sh, which then runs scripts/v1_5/eval/<benchmark>.sh: the
# Qwen2.5-VL defaults. Same settings as scripts/v1_5/eval/common.sh; no positional arguments.
#
#                                                                                                  answer tag
#   bash scripts/qwen2_5_vl/eval/mme.sh                                       unpruned             none
#   METHOD=fastv RETAIN_TOKN=128 bash scripts/qwen2_5_vl/eval/gqa.sh          128 tokens an image  fastv-128
#   METHOD=random RETAIN_RATIO=0.25 bash scripts/qwen2_5_vl/eval/pope.sh      25% of each image    random-ratio0.25
#   MIN_PIXELS=200704 MAX_PIXELS=1605632 bash scripts/qwen2_5_vl/eval/mme.sh  lmms-eval's bounds   none-px200704-1605632
#
# A Qwen image has its own token count (one per 28x28 pixels after resizing), so RETAIN_TOKN is an absolute count
# per image and RETAIN_RATIO a fraction of that image's tokens; no nominal count is scaled as on LLaVA-NeXT.
#
# Defaults: CKPT Qwen/Qwen2.5-VL-7B-Instruct (Qwen2-VL and Qwen2.5-VL-3B checkpoints work the same way); CONV_MODE
# qwen2_vl, the checkpoint's own chat template (the v1_5 scripts would otherwise pass vicuna_v1, or Q-Bench's
# llava_v1). MIN_PIXELS / MAX_PIXELS: the image area bounds of Qwen's resizing, passed as --min-pixels /
# --max-pixels; they change every image's token count, hence results, so they go into the tag (-px<min>-<max>, an
# unset side reads "ckpt"); unset, the checkpoint's preprocessor_config.json bounds apply (3136..12845056 on the Hub).
# No --image-mode is passed: the generators use Qwen's own preprocessing (Q-Bench's LLaVA centre crop does not
# apply to Qwen checkpoints); LLaVA's pad / crop modes are refused in EXTRA_ARGS. Everything else (METHOD,
# RETAIN_TOKN, RETAIN_RATIO, USE_VERSION, EXTRA_ARGS, TAG, BATCH_SIZE, NPROC, EVAL_DIR, ...) as in
# scripts/v1_5/eval/common.sh.
set -euo pipefail

qwen_usage() {
    echo "usage: [METHOD=... RETAIN_TOKN=N | RETAIN_RATIO=R] [MIN_PIXELS=A] [MAX_PIXELS=B] bash $0. $1" >&2
    exit 2
}

if [ $# -gt 0 ]; then qwen_usage "No arguments: give the budget as RETAIN_TOKN or RETAIN_RATIO."; fi

export CKPT=${CKPT:-Qwen/Qwen2.5-VL-7B-Instruct}
export CONV_MODE=${CONV_MODE:-qwen2_vl}

EXTRA_ARGS=${EXTRA_ARGS:-}
TAG_VARIANT=${TAG_VARIANT:-}
case " $EXTRA_ARGS " in
    *" --image-mode"*) qwen_usage "--image-mode is LLaVA's pad / crop preprocessing; Qwen resizes images itself." ;;
esac
case " $EXTRA_ARGS " in
    *" --min-pixels"* | *" --max-pixels"*) qwen_usage "Set MIN_PIXELS / MAX_PIXELS instead: they name the run." ;;
esac
for bound in MIN_PIXELS MAX_PIXELS; do
    if [ -n "${!bound:-}" ] && ! [[ ${!bound} =~ ^[1-9][0-9]*$ ]]; then
        qwen_usage "$bound must be a positive whole number of pixels, not '${!bound}'."
    fi
done
if [ -n "${MIN_PIXELS:-}" ] && [ -n "${MAX_PIXELS:-}" ] && [ "$MIN_PIXELS" -gt "$MAX_PIXELS" ]; then
    qwen_usage "MIN_PIXELS ($MIN_PIXELS) is above MAX_PIXELS ($MAX_PIXELS)."
fi
if [ -n "${MIN_PIXELS:-}${MAX_PIXELS:-}" ]; then
    EXTRA_ARGS="${MIN_PIXELS:+--min-pixels $MIN_PIXELS }${MAX_PIXELS:+--max-pixels $MAX_PIXELS }$EXTRA_ARGS"
    TAG_VARIANT+="-px${MIN_PIXELS:-ckpt}-${MAX_PIXELS:-ckpt}"
fi
export EXTRA_ARGS TAG_VARIANT
