#!/usr/bin/env bash
# Sourced by every benchmark script: the model, the pruning method and its tag, the device count, and `generate`.
#
#   CKPT        model folder or Hub id                 (default liuhaotian/llava-v1.5-7b)
#   METHOD      none|sparsevlm|fastv|fastervlm|random|uniform (default: sparsevlm if RETAIN_TOKN, RETAIN_RATIO or
#               USE_VERSION is set, else none)
#   RETAIN_TOKN token budget (default 192); USE_VERSION SparseVLM version 1_0 (default) or 2_0
#   RETAIN_RATIO budget as a fraction of each image's visual tokens instead (tag "<method>-ratio<R>")
#   EXTRA_ARGS  more generator flags, e.g. "--fastv-k 3 --vision-tower /ckpt/clip-vit-large-patch14-336"
#   TAG         name of the answer file (default <method>[-<version>]<TAG_VARIANT>-<budget>, from METHOD /
#               USE_VERSION / RETAIN_TOKN, e.g. sparsevlm-1_0-192, fastv-144), so runs never collide
#   TAG_VARIANT set by wrappers for settings that change results (scripts/v1_6/eval: "-fixed672", "-prunenl", ...)
#   BATCH_SIZE  questions per forward pass (default 1, the reference protocol)
#   NPROC       processes = GPUs (default: visible CUDA devices, or 1); >1 runs through torchrun, then merges
#   EVAL_DIR    benchmark data root (default ./playground/data/eval, the layout of LLaVA's Evaluation.md)
set -euo pipefail

EVAL_DIR=${EVAL_DIR:-./playground/data/eval}
CKPT=${CKPT:-liuhaotian/llava-v1.5-7b}
CKPT_NAME=${CKPT_NAME:-$(basename "$CKPT")}
CONV_MODE=${CONV_MODE:-vicuna_v1}
BATCH_SIZE=${BATCH_SIZE:-1}
EXTRA_ARGS=${EXTRA_ARGS:-}
PYTHON=${PYTHON:-python}

if [ -z "${METHOD:-}" ]; then
    if [ -n "${RETAIN_TOKN:-}${RETAIN_RATIO:-}${USE_VERSION:-}" ]; then METHOD=sparsevlm; else METHOD=none; fi
fi
export METHOD
BUDGET_LABEL=${RETAIN_TOKN:-192}
if [ -n "${RETAIN_RATIO:-}" ]; then BUDGET_LABEL="ratio$RETAIN_RATIO"; fi
case "$METHOD" in
    none) DEFAULT_TAG="none${TAG_VARIANT:-}" ;;
    sparsevlm) DEFAULT_TAG="sparsevlm-${USE_VERSION:-1_0}${TAG_VARIANT:-}-$BUDGET_LABEL" ;;
    *) DEFAULT_TAG="${METHOD}${TAG_VARIANT:-}-$BUDGET_LABEL" ;;
esac
TAG=${TAG:-$DEFAULT_TAG}

if [ -z "${NPROC:-}" ]; then
    NPROC=$($PYTHON -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi

# generate MODULE ANSWERS_FILE [generator flags...]: one process, or NPROC under torchrun merged in question order
generate() {
    local module=$1 answers=$2
    shift 2
    mkdir -p "$(dirname "$answers")"
    # shellcheck disable=SC2086
    local common=(--model-path "$CKPT" --answers-file "$answers" --conv-mode "$CONV_MODE" --temperature 0
                  --batch-size "$BATCH_SIZE" $EXTRA_ARGS)
    echo "[eval] $module  model=$CKPT  method=$METHOD  tag=$TAG  processes=$NPROC  -> $answers" >&2
    if [ "$NPROC" -gt 1 ]; then
        torchrun --standalone --nproc_per_node "$NPROC" -m "llava.eval.$module" "${common[@]}" "$@"
        $PYTHON -m llava.eval.merge_chunks --answers-file "$answers" --num-chunks "$NPROC" > /dev/null
    else
        $PYTHON -m "llava.eval.$module" "${common[@]}" "$@"
    fi
}

# need PATH SECTION: stop before any model is loaded when a benchmark file is missing
need() {
    if [ ! -e "$1" ]; then
        echo "Missing $1 -- see EVAL.md, section $2, for where to get it." >&2
        exit 1
    fi
}

# answers_for BENCH [SPLIT]: the answer file of this model and method
answers_for() {
    echo "$EVAL_DIR/$1/answers/${2:+$2/}$CKPT_NAME/$TAG.jsonl"
}
