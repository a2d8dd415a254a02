"""GQA scorer: accuracy on testdev-balanced, as the official `eval.py` computes it in LLaVA's setup.

A prediction is the answer text with trailing periods removed and lower-cased (LLaVA's `convert_gqa_for_eval.py`),
compared by exact match with `answer` of `testdev_balanced_questions.json[questionId]`; the answers' question_id
is the GQA questionId. Only "Accuracy" is meaningful in LLaVA's patched eval.py (no scene graphs or choices), so
validity, plausibility and consistency are not computed. The module can also write the
`testdev_balanced_predictions.json` list that the official `eval.py --tier testdev_balanced` reads.

Papers report: accuracy in percent ("reported"); LLaVA-1.5 7B 62.0, 13B 63.3.

    python -m llava.eval.eval_gqa --question-file playground/data/eval/gqa/data/testdev_balanced_questions.json \\
        --result-file playground/data/eval/gqa/answers/llava_gqa_testdev_balanced/llava-v1.5-7b/merge.jsonl \\
        [--predictions-file playground/data/eval/gqa/data/testdev_balanced_predictions.json]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable

from llava.eval.answer_files import (
    EVAL_DOC,
    MalformedFileError,
    is_failed,
    read_json,
    read_jsonl,
    require,
    write_json_atomic,
)

SECTION = "GQA"


def gqa_prediction(text: str) -> str:
    """LLaVA's normalisation of an answer for GQA: trailing periods off, lower case (nothing else)."""
    return text.rstrip(".").lower()


def predictions_from_answers(answers: Iterable[dict]) -> list[dict]:
    """`[{"questionId", "prediction"}]` in answer order, the official eval.py's predictions format.

    A failed answer (one with an "error") predicts the empty string."""
    return [
        {"questionId": str(r["question_id"]), "prediction": "" if is_failed(r) else gqa_prediction(str(r["text"]))}
        for r in answers
    ]


def score_gqa(questions: dict[str, dict], answers: list[dict], allow_missing: bool = False) -> dict:
    """Exact-match accuracy over the balanced questions of `questions` (questionId -> question record).

    Like the official eval.py, a balanced question without an answer is an error; with `allow_missing` it counts as
    wrong instead (and is reported as "missing"). Answers whose id is not a question are counted as "unmatched"."""
    predictions = {p["questionId"]: p["prediction"] for p in predictions_from_answers(answers)}
    scored = {qid: q for qid, q in questions.items() if q.get("isBalanced", True)}
    missing = [qid for qid in scored if qid not in predictions]
    if not scored:
        raise ValueError("GQA: the questions file has no (balanced) questions")
    if len(missing) == len(scored):
        raise ValueError(f"GQA: none of the {len(scored)} questions has an answer; is it the right answers file?")
    if missing and not allow_missing:
        raise ValueError(
            f"GQA: {len(missing)} of {len(scored)} questions have no answer (first: {', '.join(missing[:5])}); the "
            "official eval.py refuses this. Finish the run, or pass allow_missing / --allow-missing to count them wrong"
        )
    correct = 0
    by_type: dict[str, dict[str, list[int]]] = {"structural": {}, "semantic": {}}
    for qid, question in scored.items():
        right = int(predictions.get(qid) == question["answer"])
        correct += right
        for kind, table in by_type.items():
            name = (question.get("types") or {}).get(kind)
            if name:
                table.setdefault(name, [0, 0])
                table[name][0] += right
                table[name][1] += 1
    accuracy = 100 * correct / len(scored)
    return {
        "reported": accuracy,
        "reported_label": "GQA accuracy (testdev-balanced)",
        "accuracy": accuracy,
        "correct": correct,
        "total": len(scored),
        "failed": sum(is_failed(r) for r in answers),
        "missing": len(missing),
        "unmatched": sum(qid not in questions for qid in predictions),
        "by_type": {
            kind: {name: 100 * c / n for name, (c, n) in sorted(table.items())} for kind, table in by_type.items()
        },
    }


def evaluate(
    question_file: str | os.PathLike,
    result_file: str | os.PathLike,
    predictions_file: str | os.PathLike | None = None,
    allow_missing: bool = False,
) -> dict:
    """Read both files, optionally write the official predictions file, and score."""
    questions = read_json(require(question_file, "GQA questions file (testdev_balanced_questions.json)", SECTION))
    if not isinstance(questions, dict):
        raise MalformedFileError(f"{question_file}: expected a JSON object of questionId -> question")
    answers = read_jsonl(
        require(result_file, "GQA answers file (run the generator first)", SECTION), required=("question_id", "text")
    )
    if predictions_file is not None:
        write_json_atomic(predictions_file, predictions_from_answers(answers))
    return score_gqa(questions, answers, allow_missing=allow_missing)


def format_report(metrics: dict) -> str:
    lines = []
    for kind, table in metrics["by_type"].items():
        if table:
            lines.append(f"-- {kind} types")
            lines.extend(f"{name:<16}{acc:>8.2f}" for name, acc in table.items())
    lines.append(f"{'Accuracy':<16}{metrics['accuracy']:>8.2f}   ({metrics['correct']} / {metrics['total']})")
    lines.append(
        f"failed answers: {metrics['failed']}, missing: {metrics['missing']}, unmatched: {metrics['unmatched']}"
    )
    if metrics["missing"]:
        lines.append("WARNING: questions without an answer were counted wrong")
    lines.append(f"Reported (GQA accuracy): {metrics['reported']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m llava.eval.eval_gqa", description="Score GQA testdev-balanced.")
    parser.add_argument(
        "--question-file",
        default="playground/data/eval/gqa/data/testdev_balanced_questions.json",
        help=f"GQA's testdev_balanced_questions.json (see {EVAL_DOC}, {SECTION})",
    )
    parser.add_argument("--result-file", required=True, help="answers jsonl (merged chunks)")
    parser.add_argument("--predictions-file", default=None, help="also write the official eval.py predictions here")
    parser.add_argument("--allow-missing", action="store_true", help="count unanswered questions wrong, not an error")
    args = parser.parse_args(argv)
    try:
        metrics = evaluate(args.question_file, args.result_file, args.predictions_file, args.allow_missing)
    except (FileNotFoundError, MalformedFileError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.predictions_file:
        print(f"Predictions for the official eval.py written to {args.predictions_file}")
    print(format_report(metrics))
    return metrics


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
