"""Answers for the short-answer benchmarks (VQAv2, GQA, VizWiz, TextVQA, POPE, MME, SEED): a jsonl question file
of {question_id, image, text}, images under --image-folder; as LLaVA's model_vqa_loader (max_new_tokens 128)."""

from __future__ import annotations

import argparse

from llava.eval.answer_files import require
from llava.eval.answering import Question, add_generation_args, generate_answers, image_opener, read_questions


def build_questions(args: argparse.Namespace) -> list[Question]:
    question_file = require(args.question_file, "question file")
    folder = require(args.image_folder, "image folder", None)
    return [
        Question(
            text=row["text"],
            image=image_opener(folder / row["image"]),
            record={"question_id": row["question_id"], "prompt": row["text"]},
        )
        for row in read_questions(question_file, ("question_id", "image", "text"))
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_generation_args(parser, max_new_tokens=128)
    args = parser.parse_args(argv)
    generate_answers(build_questions(args), args)


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
