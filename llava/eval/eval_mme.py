"""MME scorer: LLaVA's two-step MME pipeline in one module.

Step 1 (LLaVA's `convert_answer_to_mme.py`): each answer's prompt is turned back into the original MME question (the
short-answer suffix comes off, " Please answer yes or no." goes back on, with a double-space fallback for the GT
files that have one), its ground truth is looked up in `MME_Benchmark_release_version`, and per-category
`<category>.txt` files of `file<TAB>prompt<TAB>gt<TAB>pred` are written for the official tool.

Step 2 (the official `eval_tool/calculation.py`): per task, score = 100*acc + 100*acc+, where acc+ counts the images
whose two (adjacent) questions are both right. Perception sums the 10 perception tasks (max 2000), Cognition the 4
cognition tasks (max 800).

Papers report: LLaVA-1.5 reports **Perception** only (7B 1510.7, 13B 1531.3), which is "reported" here; some
pruning papers report Perception + Cognition ("total" here), so always say which one a number is.

    python -m llava.eval.eval_mme --data-dir playground/data/eval/MME --experiment llava-v1.5-7b
    python -m llava.eval.eval_mme --results-dir playground/data/eval/MME/eval_tool/answers/llava-v1.5-7b
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from llava.eval.answer_files import (
    EVAL_DOC,
    MalformedFileError,
    is_failed,
    read_jsonl,
    require,
    require_dir,
    write_text_atomic,
)

SECTION = "MME"
SEE_SECTION = f"see {EVAL_DOC}, section {SECTION}"

SHORT_ANSWER_SENTENCE = "Answer the question using a single word or phrase."
YES_NO_SENTENCE = "Please answer yes or no."

PERCEPTION_TASKS = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
)  # fmt: skip
COGNITION_TASKS = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
ALL_TASKS = PERCEPTION_TASKS + COGNITION_TASKS

GroundTruth = dict[tuple[str, str, str], str]  # (category, "<image stem>.txt", question) -> "Yes" / "No"


class MMERow(NamedTuple):
    """One line of a per-category result file, as the official calculation tool reads it."""

    file: str
    prompt: str
    gt: str
    pred: str


# ----------------------------------------------------------------------------------------------- step 1: convert


def load_ground_truth(benchmark_dir: str | os.PathLike) -> GroundTruth:
    """All `question<TAB>answer` lines of `MME_Benchmark_release_version`.

    A category folder either holds images and their `.txt` files side by side, or `images/` plus
    `questions_answers_YN/` (artwork, celebrity, landmark, posters, scene)."""
    root = require(benchmark_dir, "MME benchmark folder (MME_Benchmark_release_version)", SECTION)
    gt: GroundTruth = {}
    for category_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))):
        qa_dir = category_dir / "questions_answers_YN" if (category_dir / "images").is_dir() else category_dir
        require_dir(qa_dir, "MME ground-truth folder", SECTION)
        for txt in sorted(qa_dir.glob("*.txt")):
            with txt.open(encoding="utf-8-sig") as f:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    fields = line.strip().split("\t")
                    if len(fields) != 2:
                        raise MalformedFileError(f"{txt}, line {number}: expected 'question<TAB>answer'")
                    gt[(category_dir.name, txt.name, fields[0])] = fields[1].strip()
    if not gt:
        raise FileNotFoundError(f"No MME ground-truth .txt files under {root} ({SEE_SECTION})")
    return gt


def prompt_candidates(prompt: str) -> list[str]:
    """The original MME question(s) a LLaVA prompt may have come from, in lookup order.

    The short-answer sentence is removed and " Please answer yes or no." appended; some MME ground-truth lines have
    two spaces before that sentence, so the double-space variant is the fallback."""
    text = prompt.replace(SHORT_ANSWER_SENTENCE, "").strip()
    if YES_NO_SENTENCE in text:
        return [text]
    return [f"{text} {YES_NO_SENTENCE}", f"{text}  {YES_NO_SENTENCE}"]


def locate(question_id: str) -> tuple[str, str]:
    """(category, ground-truth file name) of an MME question id `"<category>/[images/]<image>"`."""
    parts = str(question_id).split("/")
    if len(parts) < 2:
        raise ValueError(f"MME question_id {question_id!r} is not '<category>/[images/]<file>'")
    stem = parts[-1].rsplit(".", 1)[0]
    return parts[0], stem + ".txt"


def _clean_field(text: str) -> str:
    # the result files are tab separated, one row per line; a stray tab or newline in an answer would break them
    return " ".join(text.replace("\t", " ").splitlines())


def convert_answers(answers: Iterable[dict], ground_truth: GroundTruth) -> dict[str, list[MMERow]]:
    """Rows of the per-category result files, in answer order (the calculation pairs questions by position).

    A failed answer (one with an "error") gets an empty prediction, which the calculation counts as wrong."""
    rows: dict[str, list[MMERow]] = {}
    for record in answers:
        category, file = locate(record["question_id"])
        candidates = prompt_candidates(record["prompt"])
        for prompt in candidates:
            if (category, file, prompt) in ground_truth:
                break
        else:
            raise ValueError(
                f"MME: no ground truth for {record['question_id']!r} in {category}/{file}; tried "
                + " and ".join(repr(c) for c in candidates)
                + f" ({SEE_SECTION}: the answers must come from llava_mme.jsonl)"
            )
        pred = "" if is_failed(record) else _clean_field(str(record["text"]))
        rows.setdefault(category, []).append(MMERow(file, prompt, ground_truth[(category, file, prompt)], pred))
    return rows


def write_results(rows: dict[str, list[MMERow]], results_dir: str | os.PathLike) -> list[Path]:
    """One `<category>.txt` per category, each written through a temporary file and a rename."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for category, category_rows in rows.items():
        path = results_dir / f"{category}.txt"
        write_text_atomic(path, "".join("\t".join(row) + "\n" for row in category_rows))
        written.append(path)
    return written


def read_results(results_dir: str | os.PathLike) -> dict[str, list[MMERow]]:
    """The per-category result files of a results folder (the official tool's input), for the known tasks."""
    results_dir = require(results_dir, "MME results folder", SECTION)
    rows: dict[str, list[MMERow]] = {}
    for task in ALL_TASKS:
        path = results_dir / f"{task}.txt"
        if not path.is_file():
            continue
        task_rows = []
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                fields = line.rstrip("\r\n").split("\t")
                if len(fields) != 4:
                    raise MalformedFileError(f"{path}, line {number}: expected 'file<TAB>prompt<TAB>gt<TAB>pred'")
                task_rows.append(MMERow(*fields))
        rows[task] = task_rows
    if not rows:
        raise FileNotFoundError(f"No MME task result files (<task>.txt) in {results_dir} ({SEE_SECTION})")
    return rows


# ------------------------------------------------------------------------------------------- step 2: calculate


def parse_yes_no(pred: str) -> str:
    """The official rule: lower-cased; exactly "yes"/"no", else "yes" or "no" within the first 4 characters
    ("yes" checked first), else "other" (always wrong)."""
    pred = pred.lower()
    if pred in ("yes", "no"):
        return pred
    head = pred[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def score_task(rows: list[MMERow], task: str = "") -> dict:
    """acc, acc+ and score = 100*acc + 100*acc+ of one task; rows pair up by position, two per image."""
    if not rows or len(rows) % 2:
        raise ValueError(f"MME task {task!r}: {len(rows)} answers, expected two per image")
    correct = both_right = other = 0
    for i in range(0, len(rows), 2):
        first, second = rows[i], rows[i + 1]
        if first.file != second.file:
            raise ValueError(
                f"MME task {task!r}: answers {i + 1} and {i + 2} are for different images ({first.file}, "
                f"{second.file}); the answers must be in question order, two per image ({SEE_SECTION})"
            )
        right = 0
        for row in (first, second):
            gt = row.gt.strip().lower()
            if gt not in ("yes", "no"):
                raise ValueError(f"MME task {task!r}: ground truth {row.gt!r} for {row.file} is not yes/no")
            pred = parse_yes_no(row.pred)
            other += pred == "other"
            right += pred == gt
        correct += right
        both_right += right == 2
    acc = correct / len(rows)
    acc_plus = both_right / (len(rows) // 2)
    return {
        "score": 100 * acc + 100 * acc_plus,
        "acc": 100 * acc,
        "acc_plus": 100 * acc_plus,
        "questions": len(rows),
        "images": len(rows) // 2,
        "other": other,
    }


def score_mme(rows: dict[str, list[MMERow]], failed: int | None = None) -> dict:
    """Per-task scores, Perception (= "reported"), Cognition and their total.

    Tasks absent from `rows` are listed in "missing_tasks" and add nothing to the sums; categories that are not MME
    tasks are listed in "unknown_tasks" and ignored, as the official tool does. `failed` is the number of answer
    records that carried an "error" (they are already wrong: their prediction is empty); None when unknown, as when
    scoring converted result files."""
    tasks = {task: score_task(rows[task], task) for task in ALL_TASKS if task in rows}
    perception = sum(tasks[t]["score"] for t in PERCEPTION_TASKS if t in tasks)
    cognition = sum(tasks[t]["score"] for t in COGNITION_TASKS if t in tasks)
    return {
        "reported": perception,
        "reported_label": "MME Perception",
        "perception": perception,
        "cognition": cognition,
        "total": perception + cognition,
        "tasks": tasks,
        "questions": sum(t["questions"] for t in tasks.values()),
        "failed": failed,
        "missing_tasks": [t for t in ALL_TASKS if t not in tasks],
        "unknown_tasks": sorted(set(rows) - set(ALL_TASKS)),
    }


def evaluate(
    data_dir: str | os.PathLike,
    result_file: str | os.PathLike,
    results_dir: str | os.PathLike | None = None,
    benchmark_dir: str | os.PathLike | None = None,
) -> dict:
    """Both steps: convert `result_file` (LLaVA answers jsonl) into per-category files under `results_dir` (if
    given), then score them."""
    data_dir = Path(data_dir)
    benchmark_dir = Path(benchmark_dir) if benchmark_dir else data_dir / "MME_Benchmark_release_version"
    ground_truth = load_ground_truth(benchmark_dir)
    result_file = require(result_file, "MME answers file (run the generator on llava_mme.jsonl first)", SECTION)
    answers = read_jsonl(result_file, required=("question_id", "prompt", "text"))
    if not answers:
        raise ValueError(f"MME answers file {result_file} is empty")
    rows = convert_answers(answers, ground_truth)
    if results_dir is not None:
        write_results(rows, results_dir)
    return score_mme(rows, failed=sum(is_failed(r) for r in answers))


def format_report(metrics: dict) -> str:
    lines = [f"{'task':<24}{'acc':>8}{'acc+':>8}{'score':>9}{'other':>7}"]
    for group, names in (("Perception", PERCEPTION_TASKS), ("Cognition", COGNITION_TASKS)):
        present = [n for n in names if n in metrics["tasks"]]
        if not present:
            continue
        lines.append(f"-- {group}")
        for name in present:
            t = metrics["tasks"][name]
            lines.append(f"{name:<24}{t['acc']:>8.2f}{t['acc_plus']:>8.2f}{t['score']:>9.2f}{t['other']:>7d}")
    lines.append(f"{'Perception':<24}{metrics['perception']:>25.2f}   (max 2000)")
    lines.append(f"{'Cognition':<24}{metrics['cognition']:>25.2f}   (max 800)")
    lines.append(f"{'Total (P+C)':<24}{metrics['total']:>25.2f}")
    failed = metrics["failed"]
    failed = "unknown (scored from converted files)" if failed is None else failed
    lines.append(f"questions: {metrics['questions']}, failed answers: {failed}")
    if metrics["missing_tasks"]:
        lines.append(
            "WARNING: no answers for " + ", ".join(metrics["missing_tasks"]) + "; the sums are not comparable "
            "to published MME numbers"
        )
    if metrics["unknown_tasks"]:
        lines.append("WARNING: ignored categories that are not MME tasks: " + ", ".join(metrics["unknown_tasks"]))
    lines.append(f"Reported (MME Perception, as LLaVA-1.5): {metrics['reported']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m llava.eval.eval_mme",
        description="Score MME answers: convert them to the official per-category files, then compute the scores.",
    )
    parser.add_argument(
        "--data-dir", default="playground/data/eval/MME", help=f"the MME folder (see {EVAL_DOC}, {SECTION})"
    )
    parser.add_argument("--result-file", default=None, help="answers jsonl; default <data-dir>/answers/<exp>.jsonl")
    parser.add_argument("--experiment", default=None, help="name of the run; default: the result file's stem")
    parser.add_argument("--benchmark-dir", default=None, help="default <data-dir>/MME_Benchmark_release_version")
    parser.add_argument("--output-dir", default=None, help="default <data-dir>/eval_tool/answers/<experiment>")
    parser.add_argument("--results-dir", default=None, help="only step 2: score existing per-category files here")
    args = parser.parse_args(argv)
    try:
        if args.results_dir:
            metrics = score_mme(read_results(args.results_dir))
        else:
            if not args.result_file and not args.experiment:
                parser.error("give --result-file or --experiment (or --results-dir to score converted files)")
            data_dir = Path(args.data_dir)
            experiment = args.experiment or Path(args.result_file).stem
            result_file = args.result_file or data_dir / "answers" / f"{experiment}.jsonl"
            output_dir = args.output_dir or data_dir / "eval_tool" / "answers" / experiment
            metrics = evaluate(data_dir, result_file, output_dir, args.benchmark_dir)
            print(f"MME result files written to {output_dir}")
    except (FileNotFoundError, MalformedFileError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(format_report(metrics))
    return metrics


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
