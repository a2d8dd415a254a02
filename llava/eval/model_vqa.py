"""Open-ended answers (LLaVA-Bench-in-the-Wild, MM-Vet): jsonl {question_id, image, text}, no suffix; as LLaVA's
model_vqa (max_new_tokens 1024). Since LLaVA 1.6 the image is padded (`--image-mode crop` for the 1.5 paper)."""

from __future__ import annotations

import argparse

from llava.eval.answering import add_generation_args, generate_answers
from llava.eval.model_vqa_loader import build_questions


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_generation_args(parser, max_new_tokens=1024)
    args = parser.parse_args(argv)
    generate_answers(build_questions(args), args)


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
