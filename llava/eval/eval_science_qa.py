"""ScienceQA scorer: accuracy on the test split and IMG-accuracy on its multimodal problems (LLaVA's
`eval_science_qa.py` rules).

Each answer is parsed to an option letter: the exact letter, else an "X. " prefix, else the single match of
`The answer is ([A-Z]).`, else FAILED (wrong). A letter counts only if it is one of the problem's choices. Every
problem of `pid_splits.json[split]` is scored (one without an answer counts wrong); a problem is multimodal when
"<image>" is in its answer record's prompt.

Papers report: **IMG-accuracy** ("SQA-IMG", "reported" here; LLaVA-1.5 7B 66.8, 13B 71.6), not the total accuracy
over all test problems (13B: 74.4).

    python -m llava.eval.eval_science_qa --base-dir playground/data/eval/scienceqa \\
        --result-file playground/data/eval/scienceqa/answers/llava-v1.5-7b.jsonl \\
        [--output-file ..._output.jsonl --output-result ..._result.json]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.eval.answer_files import MalformedFileError, is_failed, read_json, read_jsonl, require, write_json_atomic

SECTION = "ScienceQA"

OPTIONS = ("A", "B", "C", "D", "E")
FAILED = "FAILED"
# as in the original: the "." is unescaped, so any character may follow the letter
ANSWER_PATTERN = re.compile(r"The answer is ([A-Z]).")


def parse_answer(text: str) -> str:
    """The option letter an answer gives, or "FAILED"; the letter is not yet checked against the choices."""
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    found = ANSWER_PATTERN.findall(text)
    return found[0] if len(found) == 1 else FAILED


def choice_index(letter: str, num_choices: int) -> int:
    """Index of `letter` among the problem's choices, or -1 when it is not one of them."""
    valid = OPTIONS[:num_choices]
    return valid.index(letter) if letter in valid else -1


def score_science_qa(problems: dict[str, dict], split_ids: list[str], answers: list[dict]) -> dict:
    """Accuracy over `split_ids` and IMG-accuracy over its multimodal problems.

    Returns the metrics plus "per_problem" (one analysis dict per problem, for the output files). A problem with no
    answer counts wrong; it is multimodal when its problem record has an image (its prompt is unknown)."""
    by_id = {str(r["question_id"]): r for r in answers}
    per_problem = []
    correct = img_correct = img_total = unparsed = 0
    for pid in split_ids:
        pid = str(pid)
        if pid not in problems:
            raise ValueError(f"ScienceQA: problem {pid} of the split is not in problems.json")
        problem = problems[pid]
        record = by_id.get(pid)
        if record is None:
            text, prompt, multimodal = FAILED, "Unknown", bool(problem.get("image"))
        else:
            text = "" if is_failed(record) else str(record["text"])
            prompt = str(record.get("prompt", ""))
            multimodal = DEFAULT_IMAGE_TOKEN in prompt if "prompt" in record else bool(problem.get("image"))
        letter = parse_answer(text)
        unparsed += letter == FAILED
        pred_idx = choice_index(letter, len(problem["choices"]))
        right = pred_idx == problem["answer"]
        correct += right
        img_total += multimodal
        img_correct += right and multimodal
        per_problem.append(
            {
                "question_id": pid,
                "parsed_ans": letter,
                "ground_truth": OPTIONS[problem["answer"]],
                "question": prompt,
                "pred": text,
                "pred_idx": pred_idx,
                "is_multimodal": multimodal,
                "correct": right,
            }
        )
    total = len(per_problem)
    if not total:
        raise ValueError("ScienceQA: the split has no problems")
    accuracy = 100 * correct / total
    img_accuracy = 100 * img_correct / img_total if img_total else float("nan")
    return {
        "reported": img_accuracy,
        "reported_label": "ScienceQA IMG-accuracy",
        "accuracy": accuracy,
        "img_accuracy": img_accuracy,
        "correct": correct,
        "total": total,
        "img_correct": img_correct,
        "img_total": img_total,
        "unparsed": unparsed,
        "failed": sum(is_failed(r) for r in answers),
        "missing": sum(str(pid) not in by_id for pid in split_ids),
        "per_problem": per_problem,
    }


def output_files(metrics: dict) -> tuple[dict, dict]:
    """The original scorer's two outputs: the analysis split into correct / incorrect, and the result summary
    (acc, correct, count, and per problem the predicted choice index and raw output)."""
    keys = ("question_id", "parsed_ans", "ground_truth", "question", "pred", "is_multimodal")
    analysis: dict[str, list[dict]] = {"correct": [], "incorrect": []}
    for p in metrics["per_problem"]:
        analysis["correct" if p["correct"] else "incorrect"].append({k: p[k] for k in keys})
    result = {
        "acc": metrics["accuracy"],
        "img_acc": None if math.isnan(metrics["img_accuracy"]) else metrics["img_accuracy"],
        "correct": metrics["correct"],
        "count": metrics["total"],
        "results": {p["question_id"]: p["pred_idx"] for p in metrics["per_problem"]},
        "outputs": {p["question_id"]: p["pred"] for p in metrics["per_problem"]},
    }
    return analysis, result


def evaluate(
    base_dir: str | os.PathLike,
    result_file: str | os.PathLike,
    split: str = "test",
    output_file: str | os.PathLike | None = None,
    output_result: str | os.PathLike | None = None,
) -> dict:
    base_dir = require(base_dir, "ScienceQA folder", SECTION)
    splits = read_json(require(base_dir / "pid_splits.json", "ScienceQA pid_splits.json", SECTION))
    if split not in splits:
        raise ValueError(f"ScienceQA: split {split!r} not in {base_dir / 'pid_splits.json'} (has {', '.join(splits)})")
    problems = read_json(require(base_dir / "problems.json", "ScienceQA problems.json", SECTION))
    answers = read_jsonl(
        require(result_file, "ScienceQA answers file (run the generator first)", SECTION),
        required=("question_id", "text"),
    )
    metrics = score_science_qa(problems, splits[split], answers)
    analysis, result = output_files(metrics)
    if output_file:
        write_json_atomic(output_file, analysis)
    if output_result:
        write_json_atomic(output_result, result)
    return metrics


def format_report(metrics: dict) -> str:
    lines = [
        f"{'Accuracy':<14}{metrics['accuracy']:>8.2f}   ({metrics['correct']} / {metrics['total']})",
        f"{'IMG-Accuracy':<14}{metrics['img_accuracy']:>8.2f}   ({metrics['img_correct']} / {metrics['img_total']})",
        f"unparsed (FAILED): {metrics['unparsed']}, failed answers: {metrics['failed']}, missing: {metrics['missing']}",
    ]
    if metrics["missing"]:
        lines.append("WARNING: problems without an answer were counted wrong")
    lines.append(f"Reported (ScienceQA IMG-accuracy): {metrics['reported']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m llava.eval.eval_science_qa", description="Score ScienceQA.")
    parser.add_argument(
        "--base-dir", default="playground/data/eval/scienceqa", help="holds pid_splits.json, problems.json"
    )
    parser.add_argument("--result-file", required=True, help="answers jsonl")
    parser.add_argument("--output-file", default=None, help="write the per-problem analysis (correct / incorrect)")
    parser.add_argument("--output-result", default=None, help="write the result summary")
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    try:
        metrics = evaluate(args.base_dir, args.result_file, args.split, args.output_file, args.output_result)
    except (FileNotFoundError, MalformedFileError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(format_report(metrics))
    return metrics


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
