"""SEED-Bench scorer: exact-match accuracy of the answer letter (LLaVA's `convert_seed_for_submission.py` rules).

Each answer's text is compared exactly with the annotation's `answer` ("A".."D"); every question of
`SEED-Bench.json` is scored (one without an answer counts wrong). Accuracy is given per question type, in total,
and for image-only and video-only questions (`data_type`; video questions are answered from their middle frame).
The module also writes the `{question_id, prediction}` jsonl of the SEED-Bench leaderboard.

Papers report: LLaVA-1.5's model zoo "SEED" (7B 58.6, 13B 61.6) is the **total** accuracy over image and video
questions ("reported" here); the LLaVA-1.6 tables use SEED-IMG ("image" here).

    python -m llava.eval.eval_seed --annotation-file playground/data/eval/seed_bench/SEED-Bench.json \\
        --result-file playground/data/eval/seed_bench/answers/llava-v1.5-7b/merge.jsonl \\
        --result-upload-file playground/data/eval/seed_bench/answers_upload/llava-v1.5-7b.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from llava.eval.answer_files import (
    EVAL_DOC,
    MalformedFileError,
    is_failed,
    read_json,
    read_jsonl,
    require,
    write_text_atomic,
)

SECTION = "SEED-Bench"


def _sort_key(type_id) -> tuple:
    try:
        return (0, int(type_id), "")
    except (TypeError, ValueError):
        return (1, 0, str(type_id))


def _percent(correct: int, total: int) -> float | None:
    return 100 * correct / total if total else None


def score_seed(annotation: dict, answers: list[dict]) -> dict:
    """Accuracy per question type, total, image-only and video-only over all annotated questions.

    Type names come from the annotation's `question_type` (name -> id) when it has one, else the id is the name.
    Answers are matched by question id (compared as strings); a failed answer (one with an "error") is wrong."""
    questions = annotation.get("questions")
    if not isinstance(questions, list) or not questions:
        raise ValueError("SEED-Bench annotation has no 'questions' list")
    names = {str(i): name for name, i in (annotation.get("question_type") or {}).items()}
    by_id = {str(r["question_id"]): r for r in answers}
    types: dict[str, list[int]] = {}  # type id -> [correct, total]
    data_types: dict[str, list[int]] = {}
    missing = 0
    for q in questions:
        record = by_id.get(str(q["question_id"]))
        missing += record is None
        right = int(record is not None and not is_failed(record) and record["text"] == q["answer"])
        for table, key in ((types, str(q["question_type_id"])), (data_types, str(q.get("data_type", "image")))):
            counts = table.setdefault(key, [0, 0])
            counts[0] += right
            counts[1] += 1
    correct = sum(c for c, _ in types.values())
    total = len(questions)
    per_type = {
        names.get(type_id, type_id): {"accuracy": 100 * c / n, "correct": c, "total": n}
        for type_id, (c, n) in sorted(types.items(), key=lambda kv: _sort_key(kv[0]))
    }
    image, video = data_types.get("image", [0, 0]), data_types.get("video", [0, 0])
    return {
        "reported": 100 * correct / total,
        "reported_label": "SEED-Bench total accuracy",
        "accuracy": 100 * correct / total,
        "correct": correct,
        "total": total,
        "image": _percent(*image),
        "image_total": image[1],
        "video": _percent(*video),
        "video_total": video[1],
        "types": per_type,
        "failed": sum(is_failed(r) for r in answers),
        "missing": missing,
    }


def upload_rows(annotation: dict, answers: list[dict]) -> list[dict]:
    """`{question_id, prediction}` per annotated question, in annotation order, for the leaderboard; every question
    needs an answer (a failed answer predicts "")."""
    by_id = {str(r["question_id"]): r for r in answers}
    absent = [str(q["question_id"]) for q in annotation["questions"] if str(q["question_id"]) not in by_id]
    if absent:
        raise ValueError(
            f"SEED-Bench: cannot write the leaderboard file, {len(absent)} questions have no answer "
            f"(first: {', '.join(absent[:5])})"
        )
    rows = []
    for q in annotation["questions"]:
        record = by_id[str(q["question_id"])]
        rows.append({"question_id": q["question_id"], "prediction": "" if is_failed(record) else record["text"]})
    return rows


def write_upload_file(path: str | os.PathLike, rows: list[dict]) -> None:
    """jsonl through a temporary file and a rename, so a reader never sees half a file."""
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def load(annotation_file: str | os.PathLike, result_file: str | os.PathLike) -> tuple[dict, list[dict]]:
    """The annotation (SEED-Bench.json) and the answer records."""
    annotation = read_json(require(annotation_file, "SEED-Bench annotation file (SEED-Bench.json)", SECTION))
    if not isinstance(annotation, dict):
        raise MalformedFileError(f"{annotation_file}: expected a JSON object with a 'questions' list")
    answers = read_jsonl(
        require(result_file, "SEED-Bench answers file (run the generator first)", SECTION),
        required=("question_id", "text"),
    )
    return annotation, answers


def evaluate(
    annotation_file: str | os.PathLike, result_file: str | os.PathLike, upload_file: str | os.PathLike | None = None
) -> dict:
    annotation, answers = load(annotation_file, result_file)
    metrics = score_seed(annotation, answers)
    if upload_file is not None:
        write_upload_file(upload_file, upload_rows(annotation, answers))
    return metrics


def format_report(metrics: dict) -> str:
    lines = [f"{'question type':<32}{'acc':>8}{'n':>8}"]
    lines.extend(f"{name:<32}{t['accuracy']:>8.2f}{t['total']:>8d}" for name, t in metrics["types"].items())
    for label, key in (("Image", "image"), ("Video", "video")):
        value = metrics[key]
        shown = f"{value:>8.2f}" if value is not None else f"{'-':>8}"
        lines.append(f"{label:<32}{shown}{metrics[key + '_total']:>8d}")
    lines.append(f"{'Total':<32}{metrics['accuracy']:>8.2f}{metrics['total']:>8d}")
    lines.append(f"failed answers: {metrics['failed']}, missing: {metrics['missing']}")
    if metrics["missing"]:
        lines.append("WARNING: questions without an answer were counted wrong")
    lines.append(f"Reported (SEED-Bench total accuracy): {metrics['reported']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m llava.eval.eval_seed", description="Score SEED-Bench.")
    parser.add_argument(
        "--annotation-file",
        default="playground/data/eval/seed_bench/SEED-Bench.json",
        help=f"SEED-Bench.json (see {EVAL_DOC}, {SECTION})",
    )
    parser.add_argument("--result-file", required=True, help="answers jsonl (merged chunks)")
    parser.add_argument("--result-upload-file", default=None, help="also write the leaderboard jsonl here")
    args = parser.parse_args(argv)
    try:
        annotation, answers = load(args.annotation_file, args.result_file)
        metrics = score_seed(annotation, answers)
        print(format_report(metrics))
        if args.result_upload_file:
            write_upload_file(args.result_upload_file, upload_rows(annotation, answers))
            print(f"Leaderboard file written to {args.result_upload_file}")
    except (FileNotFoundError, MalformedFileError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return metrics


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
