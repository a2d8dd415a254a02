"""Q-Bench (LLVisionQA): local accuracy on the dev split.

Items of `llvisionqa_dev.json` carry `question`, `candidates`, `correct_ans` and, when present, `type` and `concern`.
The responses come either from the items themselves: `response`, as LLaVA's model_vqa_qbench writes them back (a
JSON list, jsonl, or objects dumped back to back with no separator, all read here), or `text`, so that our
model_vqa_qbench answers file, whose records keep the items' fields, scores on its own; or from a separate answers
jsonl (`text`), matched by `question_id`: the items' `id` (or `question_id`) field when they carry one, else the
item's 0-based position in the file (as our model_vqa_qbench numbers them); an `img_path` naming exactly one item is
accepted too.

A response is right when (the option letters A, B, ... follow the candidates' order):
- it starts with an explicit option letter ("B", "B.", "(B)", "B)", "B:") and that is the correct candidate's
  letter; a leading letter of another candidate makes it wrong;
- otherwise, when it contains the correct candidate's text (case-insensitive, as a whole word where the text
  begins / ends with a Latin letter or digit, so "No" is not found in "Not").
Failed questions (records with an "error" field) and unanswered items count as wrong.

"reported" = accuracy x100 over the dev split, overall; accuracy per `type` and per `concern` value is reported as
found in the file (the Q-Bench paper's columns). The test split has no `correct_ans`: it is scored only by
submission to the Q-Bench authors.

    python -m llava.eval.eval_qbench --question-file playground/data/eval/qbench/llvisionqa_dev.json \\
        --answers-file playground/data/eval/qbench/answers/llava-v1.5-7b.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import re
import string
import sys
from collections import defaultdict
from collections.abc import Sequence

from llava.eval.answer_files import EVAL_DOC, MalformedFileError, is_failed, malformed_in, read_jsonl, require_file

SECTION = "Q-Bench"
GROUP_FIELDS = ("type", "concern")

_EXPLICIT_LETTER = re.compile(r"\(?([A-Z])(?:[.):]|\s*$)")


def read_items(path: str | os.PathLike) -> list[dict]:
    """Q-Bench items from a JSON list, jsonl, or JSON objects written back to back (LLaVA's model_vqa_qbench)."""
    path = require_file(path, "Q-Bench question file", SECTION)
    text = path.read_text(encoding="utf-8-sig")
    decoder = json.JSONDecoder()
    items: list[dict] = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            break
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            raise MalformedFileError(f"{path}, line {err.lineno}: not valid JSON ({err.msg})") from None
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, dict):
                raise MalformedFileError(f"{path}: expected Q-Bench items (JSON objects), got {type(item).__name__}")
            items.append(item)
    return items


def _contains(text: str, phrase: str) -> bool:
    if not phrase:
        return False
    pattern = re.escape(phrase)
    if phrase[0].isascii() and phrase[0].isalnum():
        pattern = r"(?<![A-Za-z0-9])" + pattern
    if phrase[-1].isascii() and phrase[-1].isalnum():
        pattern += r"(?![A-Za-z0-9])"
    return re.search(pattern, text, re.IGNORECASE) is not None


def is_correct(response: str, candidates: Sequence[str], correct_ans: str) -> bool:
    """Whether a response picks the correct candidate: by a leading option letter, else by naming its text."""
    response = response.strip()
    correct = str(correct_ans).strip()
    candidates = [str(c).strip() for c in candidates]
    letters = string.ascii_uppercase[: len(candidates)]
    lead = _EXPLICIT_LETTER.match(response)
    if lead and lead.group(1) in letters:
        return correct in candidates and letters[candidates.index(correct)] == lead.group(1)
    return _contains(response, correct)


def _item_lookup(items: Sequence[dict]) -> dict[str, int]:
    """question_id (as a string) -> item position: the items' id field if they all have one, else the position;
    plus img_path where it names one item."""
    id_field = next((f for f in ("id", "question_id") if items and all(f in item for item in items)), None)
    lookup = {str(item[id_field] if id_field else position): position for position, item in enumerate(items)}
    paths: dict[str, list[int]] = defaultdict(list)
    for position, item in enumerate(items):
        if "img_path" in item:
            paths[str(item["img_path"])].append(position)
    for img_path, positions in paths.items():
        if len(positions) == 1:
            lookup.setdefault(img_path, positions[0])
    return lookup


def score_qbench(items: Sequence[dict], answers: Sequence[dict] | None = None) -> dict:
    """Accuracy overall and per type / concern; responses from `answers` (jsonl records) or the items."""
    if not items:
        raise ValueError("no Q-Bench items")
    without = sum(1 for item in items if "correct_ans" not in item)
    if without:
        raise ValueError(
            f"{without} item(s) have no correct_ans: the test split is scored only by submission to the Q-Bench "
            f"authors (see {EVAL_DOC}, section {SECTION})"
        )
    extra = 0
    if answers is None:
        responses = [item.get("response", item.get("text")) for item in items]
        errored = [is_failed(item) for item in items]
        failed = sum(errored)
    else:
        lookup = _item_lookup(items)
        responses = [None] * len(items)
        errored = [False] * len(items)
        seen: set[int] = set()
        for record in answers:
            position = lookup.get(str(record["question_id"]))
            if position is None:
                extra += 1
                continue
            if position in seen:
                raise MalformedFileError(f"question_id {record['question_id']} is answered more than once")
            seen.add(position)
            responses[position] = str(record.get("text") or "")
            errored[position] = is_failed(record)
        failed = sum(1 for record in answers if is_failed(record))
    results = []
    for item, response, error in zip(items, responses, errored, strict=True):
        ok = (
            response is not None
            and not error
            and is_correct(str(response), item.get("candidates") or [], item["correct_ans"])
        )
        results.append(ok)
    metrics = _group(results)
    metrics.update(
        reported=100 * metrics["accuracy"],
        failed=failed,
        missing=sum(response is None for response in responses),
        extra=extra,
    )
    for field in GROUP_FIELDS:
        if any(field in item for item in items):
            groups: dict[str, list[bool]] = defaultdict(list)
            for item, ok in zip(items, results, strict=True):
                groups[str(item.get(field, "unknown"))].append(ok)
            metrics[f"per_{field}"] = {name: _group(group) for name, group in sorted(groups.items())}
    return metrics


def _group(results: Sequence[bool]) -> dict:
    return {"accuracy": sum(results) / len(results), "n": len(results), "correct": sum(results)}


def evaluate(question_file: str | os.PathLike, answers_file: str | os.PathLike | None = None) -> dict:
    """score_qbench on files: the dev JSON, and optionally an answers jsonl."""
    items = read_items(question_file)
    if answers_file is None:
        return score_qbench(items)
    answers = read_jsonl(require_file(answers_file, "Q-Bench answers file", SECTION), required=("question_id",))
    with malformed_in(answers_file):
        return score_qbench(items, answers)


def format_table(metrics: dict, title: str = "Q-Bench") -> str:
    header = f"{'group':<24} {'n':>5} {'accuracy':>8}"
    lines = [title, header, "-" * len(header)]
    for field in GROUP_FIELDS:
        for name, m in metrics.get(f"per_{field}", {}).items():
            lines.append(f"{field + ' ' + name:<24} {m['n']:>5} {100 * m['accuracy']:>8.2f}")
    lines.append(f"{'overall':<24} {metrics['n']:>5} {100 * metrics['accuracy']:>8.2f}")
    lines.append(f"failed {metrics['failed']}, unanswered {metrics['missing']}, unknown ids {metrics['extra']}")
    lines.append(f"reported (accuracy x100): {metrics['reported']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Q-Bench (LLVisionQA) dev accuracy.")
    parser.add_argument(
        "--question-file",
        required=True,
        help="llvisionqa_dev.json; or, scored on its own, LLaVA's output of it (a response per item) or our answers "
        "jsonl (a text per item)",
    )
    parser.add_argument(
        "--answers-file", help="answers jsonl (text per question_id); default: the items' response / text"
    )
    args = parser.parse_args(argv)
    metrics = evaluate(args.question_file, args.answers_file)
    print(format_table(metrics, f"Q-Bench: {args.answers_file or args.question_file}"))
    if metrics["missing"]:
        print(f"warning: {metrics['missing']} questions have no response (counted wrong)", file=sys.stderr)
    return metrics


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
