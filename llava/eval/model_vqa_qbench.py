"""Q-Bench (LLVisionQA) answers: as LLaVA's model_vqa_qbench (removed from LLaVA at 1.6): the question, then
"Choose between one of the options as follows:" and "A. candidate" lines; llava_v1 template; centre crop, no pad.
Differences, on purpose: one jsonl record per line (the original wrote JSON objects back to back, with the answer
in "response"; here it is in "text", the item's own fields kept beside it), and no 8-bit loading (the original's
`load_pretrained_model(..., True)` turned it on by position)."""

from __future__ import annotations

import argparse

from llava.eval.answer_files import MalformedFileError, read_json, require
from llava.eval.answering import Question, add_generation_args, generate_answers, image_opener

CHOOSE = {"en": "\nChoose between one of the options as follows:\n", "zh": "\\在下列选项中选择一个:\n"}  # sic


def build_questions(args: argparse.Namespace) -> list[Question]:
    question_file = require(args.question_file, "Q-Bench question file")
    folder = require(args.image_folder, "image folder", "Q-Bench")
    items = read_json(question_file)
    if not isinstance(items, list):
        raise MalformedFileError(f"{question_file}: expected a JSON list of Q-Bench items")
    questions = []
    for number, item in enumerate(items):
        try:
            text = item["question"] + CHOOSE[args.lang]
            for letter, candidate in zip(("A.", "B.", "C.", "D."), item["candidates"], strict=False):
                text += f"{letter} {candidate}\n"
            image = item["img_path"]
        except (KeyError, TypeError):
            raise MalformedFileError(
                f"{question_file}, item {number}: expected question, candidates, img_path"
            ) from None
        record = {**item, "question_id": item.get("id", number), "prompt": text}
        questions.append(Question(text=text, image=image_opener(folder / image), record=record))
    return questions


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_generation_args(parser, max_new_tokens=1024)
    # Q-Bench's LLaVA-1.5 protocol crops; LLaVA-NeXT checkpoints keep their anyres views (answering.image_mode)
    parser.set_defaults(legacy_image_mode="crop", temperature=0.0)
    parser.add_argument("--questions-file", dest="question_file", help="alias of --question-file (LLaVA's name)")
    parser.add_argument("--lang", choices=sorted(CHOOSE), default="en")
    args = parser.parse_args(argv)
    generate_answers(build_questions(args), args)


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
