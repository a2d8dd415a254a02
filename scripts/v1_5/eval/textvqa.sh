#!/usr/bin/env bash
# TextVQA val with LLaVA's OCR-token prompts: m4c soft accuracy.
source "$(dirname "$0")/common.sh"
D=$EVAL_DIR/textvqa
need "$D/llava_textvqa_val_v051_ocr.jsonl" TextVQA; need "$D/train_images" TextVQA; need "$D/TextVQA_0.5.1_val.json" TextVQA
ANSWERS=$(answers_for textvqa)
generate model_vqa_loader "$ANSWERS" --question-file "$D/llava_textvqa_val_v051_ocr.jsonl" --image-folder "$D/train_images"
$PYTHON -m llava.eval.eval_textvqa --annotation-file "$D/TextVQA_0.5.1_val.json" --result-file "$ANSWERS"
