"""MMBench / MMBench-CN answers from the TSV (base64 images): as LLaVA's model_vqa_mmbench, with the hint before the
question, options A-D up to the first empty one, and the letter instruction with `--single-pred-prompt` (Chinese
with `--lang cn`). One round (LLaVA's `--all-rounds` is not used by its scripts)."""

from __future__ import annotations

import argparse
import base64
import io
import math

from PIL import Image

from llava.eval.answer_files import MalformedFileError, require
from llava.eval.answering import Question, add_generation_args, generate_answers

OPTIONS = ("A", "B", "C", "D")
LETTER_PROMPT = {"en": "Answer with the option's letter from the given choices directly.", "cn": "请直接回答选项字母。"}


def is_none(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in ("nan", "none")


def base64_opener(data: str):
    def open_image() -> Image.Image:
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()
        return image

    return open_image


def build_questions(args: argparse.Namespace) -> list[Question]:
    import pandas as pd

    question_file = require(args.question_file, "MMBench TSV")
    table = pd.read_csv(question_file, sep="\t")
    missing = [c for c in ("index", "question", "image") if c not in table.columns]
    if missing:
        raise MalformedFileError(f"{question_file}: missing column(s) {', '.join(missing)}")
    questions = []
    for _, row in table.iterrows():
        options = []
        for letter in OPTIONS:
            if letter not in row or is_none(row[letter]):
                break
            options.append(str(row[letter]))
        text = str(row["question"])
        if "hint" in row and not is_none(row["hint"]):
            text = str(row["hint"]) + "\n" + text
        for letter, option in zip(OPTIONS, options, strict=False):
            text += "\n" + letter + ". " + option
        prompt = text
        if args.single_pred_prompt:
            text += "\n" + LETTER_PROMPT[args.lang]
        record = {
            "question_id": int(row["index"]),
            "round_id": 0,
            "prompt": prompt,
            "options": options,
            "option_char": list(OPTIONS[: len(options)]),
        }
        questions.append(Question(text=text, image=base64_opener(str(row["image"])), record=record))
    return questions


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_generation_args(parser, max_new_tokens=1024)
    parser.add_argument("--single-pred-prompt", action="store_true")
    parser.add_argument("--lang", choices=sorted(LETTER_PROMPT), default="en")
    args = parser.parse_args(argv)
    generate_answers(build_questions(args), args)


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
