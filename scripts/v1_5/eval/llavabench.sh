#!/usr/bin/env bash
# LLaVA-Bench-in-the-Wild: answers; the GPT-4 judge is external (EVAL.md, section LLaVA-Bench).
source "$(dirname "$0")/common.sh"
D=$EVAL_DIR/llava-bench-in-the-wild
need "$D/questions.jsonl" LLaVA-Bench; need "$D/images" LLaVA-Bench
ANSWERS=$(answers_for llava-bench-in-the-wild)
generate model_vqa "$ANSWERS" --question-file "$D/questions.jsonl" --image-folder "$D/images"
echo "Answers: $ANSWERS. Judge them with GPT-4 (EVAL.md, section LLaVA-Bench), then:" >&2
echo "  python -m llava.eval.summarize_gpt_review -d $D/reviews/$CKPT_NAME/$TAG" >&2
