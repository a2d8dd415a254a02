"""Score TextVQA (val, v0.5.1) answers: VQA soft accuracy after EvalAI normalisation.

`python -m llava.eval.eval_textvqa --annotation-file textvqa/TextVQA_0.5.1_val.json --result-file answers.jsonl`

The answer file's `question_id` is the TextVQA *image* id (several questions share it), so each answer is matched to
its annotation on (image id, question lower-cased), the question being recovered from the first line of the answer
record's `prompt` (the later lines are the OCR tokens and the answer-format suffix). Each answer gets the m4c soft
accuracy against the 10 human answers (see `m4c_evaluator`); answers recorded as failed (an "error" field) score 0.
Papers report the mean accuracy x100 (LLaVA-1.5-7B: 58.2, 13B: 61.3).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from llava.eval.answer_files import MalformedFileError, is_failed, read_json, read_jsonl, require_file
from llava.eval.m4c_evaluator import TextVQAAccuracyEvaluator

SECTION = "TextVQA"
OCR_LINE = "Reference OCR token:"


def question_from_prompt(prompt: str) -> str:
    """The question inside a TextVQA prompt: its first line (or the line after the OCR tokens if those come first)."""
    lines = prompt.strip().split("\n")
    if lines[0].startswith(OCR_LINE) and len(lines) > 1:
        return lines[1].strip()
    return lines[0].strip()


def index_annotations(annotations: list[dict]) -> dict[tuple, list[str]]:
    """(image_id, question lower-cased) -> the human answers, from the `data` list of TextVQA_0.5.1_val.json."""
    index = {}
    for number, annotation in enumerate(annotations):
        try:
            index[(annotation["image_id"], annotation["question"].lower())] = annotation["answers"]
        except (KeyError, TypeError, AttributeError):
            raise MalformedFileError(f"annotation {number} lacks image_id / question / answers") from None
    return index


def score_textvqa(annotations: list[dict], results: list[dict]) -> dict:
    """Soft accuracy of answer records `{question_id, prompt, text[, error]}` against TextVQA annotations.

    Returns samples, failed (records with an "error", scored 0), unanswered (annotated questions with no answer),
    accuracy in [0, 1] and reported (accuracy x100)."""
    index = index_annotations(annotations)
    evaluator = TextVQAAccuracyEvaluator()
    scores = []
    failed = 0
    answered = set()
    for number, result in enumerate(results, 1):
        if "prompt" not in result or "question_id" not in result:
            raise MalformedFileError(f"answer record {number} lacks question_id or prompt")
        key = (result["question_id"], question_from_prompt(result["prompt"]).lower())
        if key not in index:
            raise ValueError(
                f"answer record {number} (question_id {result['question_id']!r}, question {key[1]!r}) matches no "
                "annotation; is the annotation file TextVQA_0.5.1_val.json and the question file "
                "llava_textvqa_val_v051_ocr.jsonl?"
            )
        answered.add(key)
        if is_failed(result):
            failed += 1
            scores.append(0.0)
        else:
            scores.append(evaluator.score(result.get("text", ""), index[key]))
    if not scores:
        raise ValueError("the answer file holds no answers")
    accuracy = sum(scores) / len(scores)
    return {
        "samples": len(scores),
        "failed": failed,
        "unanswered": len(index) - len(answered),
        "accuracy": accuracy,
        "reported": 100.0 * accuracy,
    }


def load_annotations(path: str | os.PathLike) -> list[dict]:
    data = read_json(require_file(path, "TextVQA annotation file", SECTION))
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise MalformedFileError(f"{path}: expected a JSON object with a 'data' list (TextVQA_0.5.1_val.json)")
    return data["data"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--annotation-file", type=str, required=True, help="TextVQA_0.5.1_val.json")
    parser.add_argument("--result-file", type=str, required=True, help="answers jsonl from model_vqa_loader")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        annotations = load_annotations(args.annotation_file)
        results = read_jsonl(require_file(args.result_file, "TextVQA answer file", SECTION))
        metrics = score_textvqa(annotations, results)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"TextVQA: {Path(args.result_file).name}")
    print(f"  {'samples':<12}{metrics['samples']:>8}")
    print(f"  {'failed':<12}{metrics['failed']:>8}")
    print(f"  {'unanswered':<12}{metrics['unanswered']:>8}")
    print(f"  {'accuracy':<12}{metrics['reported']:>8.2f}")
    if metrics["unanswered"]:
        print(
            f"warning: {metrics['unanswered']} annotated questions have no answer; the accuracy covers the rest",
            file=sys.stderr,
        )
    print(f"Reported TextVQA accuracy: {metrics['reported']:.2f}")
    return metrics


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
