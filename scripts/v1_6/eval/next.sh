#!/usr/bin/env bash
# Sourced by every scripts/v1_6/eval/<benchmark>.sh, which then runs scripts/v1_5/eval/<benchmark>.sh: the
# LLaVA-NeXT (1.6) defaults, and the budget as the first positional argument, as FasterVLM's v1_6 scripts take it.
#
#   bash scripts/v1_6/eval/mme.sh                    unpruned LLaVA-1.6-Vicuna-7B                    tag none
#   bash scripts/v1_6/eval/mme.sh 32                 FasterVLM, 32 tokens per view (--visual-token-num 32; the
#                                                    base view and every crop: 160 at 672x672)     tag fastervlm-view-32
#   METHOD=fastv bash scripts/v1_6/eval/gqa.sh 640   other methods: the number is RETAIN_TOKN      tag fastv-640
#   RETAIN_TOKN=640 bash scripts/v1_6/eval/mme.sh    SparseVLM, as in scripts/v1_5/eval            tag sparsevlm-1_0-640
#
# A RETAIN_TOKN on NeXT is a total against the papers' nominal 2,880 tokens (5 views of 576), scaled to each image's
# own token count; RETAIN_RATIO gives the fraction instead. Without METHOD, the number means FasterVLM per view
# (SparseVLM when USE_VERSION is set); give the budget once, as the number or through RETAIN_TOKN / RETAIN_RATIO.
#
# Defaults: CKPT liuhaotian/llava-v1.6-vicuna-7b; CONV_MODE vicuna_v1 (as FasterVLM's v1_6 scripts), or
# mistral_instruct / chatml_direct when the checkpoint's name says mistral / 34b. No --image-mode is passed, so the
# generators use the checkpoint's anyres preprocessing. EXTRA_ARGS that change a NeXT run's results go into the
# tag: `--fastervlm-mode global` (-global), `--prune-newlines` (-prunenl), `--image-grid-pinpoints [[672,672]]`
# (-fixed672, every image at 672x672 as FasterVLM's authors ran it; other pinpoints: -pinpoints), `--anyres-rule hf`
# (-hfrule). Everything else (METHOD, USE_VERSION, EXTRA_ARGS, TAG, BATCH_SIZE, NPROC, EVAL_DIR, ...) as in
# scripts/v1_5/eval/common.sh.
set -euo pipefail

next_usage() {
    echo "usage: [METHOD=...] bash $0 [TOKENS]   (FasterVLM: tokens per view; other methods: RETAIN_TOKN). $1" >&2
    exit 2
}

export CKPT=${CKPT:-liuhaotian/llava-v1.6-vicuna-7b}
if [ -z "${CONV_MODE:-}" ]; then
    case "$(basename "$CKPT" | tr '[:upper:]' '[:lower:]')" in
        *mistral*) CONV_MODE=mistral_instruct ;;
        *34b*) CONV_MODE=chatml_direct ;;
        *) CONV_MODE=vicuna_v1 ;;
    esac
fi
export CONV_MODE

EXTRA_ARGS=${EXTRA_ARGS:-}
TAG_VARIANT=${TAG_VARIANT:-}
case " $EXTRA_ARGS " in *" --fastervlm-mode global "* | *" --fastervlm-mode=global "*) TAG_VARIANT+=-global ;; esac
case " $EXTRA_ARGS " in *" --prune-newlines "*) TAG_VARIANT+=-prunenl ;; esac
case " $EXTRA_ARGS " in
    *" --image-grid-pinpoints [[672,672]] "* | *" --image-grid-pinpoints=[[672,672]] "*) TAG_VARIANT+=-fixed672 ;;
    *" --image-grid-pinpoints"*) TAG_VARIANT+=-pinpoints ;;
esac
case " $EXTRA_ARGS " in *" --anyres-rule hf "* | *" --anyres-rule=hf "*) TAG_VARIANT+=-hfrule ;; esac
case " $EXTRA_ARGS " in
    *" --image-mode"*) echo "[next] EXTRA_ARGS sets --image-mode: one LLaVA-1.5 view instead of NeXT's anyres" >&2 ;;
esac
export TAG_VARIANT

if [ $# -gt 1 ]; then next_usage "Got $# arguments."; fi
if [ $# -eq 1 ]; then
    [[ $1 =~ ^[1-9][0-9]*$ ]] || next_usage "The budget must be a positive whole number, not '$1'."
    if [ -n "${RETAIN_TOKN:-}${RETAIN_RATIO:-}" ]; then
        next_usage "Give the budget once: as the number or as RETAIN_TOKN / RETAIN_RATIO."
    fi
    if [ -z "${METHOD:-}" ]; then
        if [ -n "${USE_VERSION:-}" ]; then METHOD=sparsevlm; else METHOD=fastervlm; fi
    fi
    case "$METHOD" in
        none) next_usage "METHOD=none keeps every token and takes no budget." ;;
        fastervlm)  # FasterVLM's own flag: k tokens in every view (base view and each crop)
            EXTRA_ARGS="--visual-token-num $1 $EXTRA_ARGS"
            export TAG=${TAG:-fastervlm$TAG_VARIANT-view-$1} ;;
        *) export RETAIN_TOKN=$1 ;;
    esac
    export METHOD
fi
export EXTRA_ARGS
