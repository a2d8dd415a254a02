"""ScienceQA answers: LLaVA conversation-format JSON ({id, image?, conversations}); as LLaVA's model_vqa_science:
"<image>" is stripped and re-prefixed for image questions, `--single-pred-prompt` appends the letter instruction,
text-only questions run without an image. Images are not converted to RGB before padding (LLaVA's quirk; the
processor converts later)."""

from __future__ import annotations

import argparse

from llava.eval.answer_files import MalformedFileError, read_json, require
from llava.eval.answering import Question, add_generation_args, generate_answers, image_opener

LETTER_PROMPT = "Answer with the option's letter from the given choices directly."


def build_questions(args: argparse.Namespace) -> list[Question]:
    question_file = require(args.question_file, "question file")
    items = read_json(question_file)
    if not isinstance(items, list):
        raise MalformedFileError(f"{question_file}: expected a JSON list of ScienceQA items")
    folder = None
    questions = []
    for number, item in enumerate(items):
        try:
            text = item["conversations"][0]["value"].replace("<image>", "").strip()
            question_id = item["id"]
        except (KeyError, IndexError, TypeError, AttributeError):
            raise MalformedFileError(
                f"{question_file}, item {number}: expected id and conversations[0].value"
            ) from None
        prompt = text
        opener = None
        if "image" in item:
            folder = folder or require(args.image_folder, "image folder", "ScienceQA")
            opener = image_opener(folder / item["image"], convert_rgb=False)
            prompt = "<image>\n" + prompt
        if args.single_pred_prompt:
            text, prompt = text + "\n" + LETTER_PROMPT, prompt + "\n" + LETTER_PROMPT
        questions.append(Question(text=text, image=opener, record={"question_id": question_id, "prompt": prompt}))
    return questions


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_generation_args(parser, max_new_tokens=1024)
    parser.add_argument("--single-pred-prompt", action="store_true")
    args = parser.parse_args(argv)
    generate_answers(build_questions(args), args)


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
