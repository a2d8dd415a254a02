#!/usr/bin/env bash
# Q-Bench (LLVisionQA) dev: local accuracy (test needs submission). llava_v1 template, centre crop, as LLaVA.
CONV_MODE=${CONV_MODE:-llava_v1}
source "$(dirname "$0")/common.sh"
SPLIT=${SPLIT:-dev}
D=$EVAL_DIR/qbench
need "$D/llvisionqa_$SPLIT.json" Q-Bench; need "$D/images_llvisionqa" Q-Bench
ANSWERS=$(answers_for qbench "$SPLIT")
generate model_vqa_qbench "$ANSWERS" --question-file "$D/llvisionqa_$SPLIT.json" --image-folder "$D/images_llvisionqa"
if [ "$SPLIT" = dev ]; then
    $PYTHON -m llava.eval.eval_qbench --question-file "$D/llvisionqa_$SPLIT.json" --answers-file "$ANSWERS"
fi
