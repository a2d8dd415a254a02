"""Score POPE (COCO; adversarial, popular, random) answers: yes/no confusion matrix, accuracy, precision, recall,
F1 and yes-ratio per split.

`python -m llava.eval.eval_pope --annotation-dir pope/coco --question-file pope/llava_pope_test.jsonl
--result-file answers.jsonl`

The label files `coco_pope_<split>.json` (POPE commit e3e3926; one JSON object per line with a `label`) carry no
ids shared with the question file, so, as in LLaVA's scorer, labels are paired with the questions of their split
by position: the answers are matched to the questions by `question_id`, and the questions of each split, in
question-file order, are paired with the label lines in file order. Where a label line repeats the image and the
question, the pairing is checked against them.

An answer is "no" if the text before its first "." holds (commas dropped, split on spaces) the word "No", "not" or
"no", and "yes" otherwise. Answers recorded as failed (an "error" field) count as wrong: the opposite of the label.
Papers report the mean F1 over the three splits x100 (LLaVA-1.5 7B and 13B: 85.9).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from llava.eval.answer_files import EVAL_DOC, MalformedFileError, is_failed, read_jsonl, require_dir, require_file

SECTION = "POPE"
SPLITS = ("adversarial", "popular", "random")
NO_WORDS = frozenset({"No", "not", "no"})


def parse_yes_no(text: str) -> str:
    """LLaVA's POPE rule: first sentence, commas dropped, split on spaces; any of No / not / no means "no"."""
    first_sentence = text.split(".", 1)[0]
    words = first_sentence.replace(",", "").split(" ")
    return "no" if NO_WORDS.intersection(words) else "yes"


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict:
    """Confusion matrix and rates for "yes"/"no" predictions against "yes"/"no" labels ("yes" is the positive)."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("no labels to score")
    pairs = list(zip(predictions, labels, strict=True))
    tp = pairs.count(("yes", "yes"))
    fp = pairs.count(("yes", "no"))
    tn = pairs.count(("no", "no"))
    fn = pairs.count(("no", "yes"))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n": len(labels),
        "TP": tp,
        "FP": fp,
        "TN": tn,
        "FN": fn,
        "accuracy": (tp + tn) / len(labels),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": sum(1 for p in predictions if p == "yes") / len(predictions),
    }


def _label(record: dict, where: str) -> str:
    label = record.get("label")
    if label not in ("yes", "no"):
        raise MalformedFileError(f"{where}: label should be 'yes' or 'no', got {label!r}")
    return label


def score_pope(questions: list[dict], answers: list[dict], labels: dict[str, list[dict]]) -> dict:
    """POPE metrics per split and their mean F1.

    `questions`: the question file records (question_id, text, category[, image]); `answers`: answer records
    (question_id, text[, error]); `labels`: split -> the label file's records, in file order. Every question of a
    split with labels must be answered. Returns {"splits": {split: metrics}, "mean_f1", "reported" (mean F1 x100),
    "failed", "samples"}."""
    by_id: dict = {}
    for number, answer in enumerate(answers, 1):
        qid = answer.get("question_id")
        if qid in by_id:
            raise MalformedFileError(f"answer record {number}: question_id {qid!r} is answered twice")
        by_id[qid] = answer

    categories = []
    for question in questions:
        if question["category"] not in categories:
            categories.append(question["category"])
    missing_labels = [c for c in categories if c not in labels]
    if missing_labels:
        raise ValueError(f"no labels for split(s) {', '.join(missing_labels)}")

    splits = {}
    failed = 0
    for category in sorted(categories, key=lambda c: (SPLITS.index(c) if c in SPLITS else len(SPLITS), c)):
        cat_questions = [q for q in questions if q["category"] == category]
        cat_labels = labels[category]
        if len(cat_questions) != len(cat_labels):
            raise ValueError(
                f"split {category}: {len(cat_questions)} questions but {len(cat_labels)} label lines; labels are "
                "paired by position, so the question file and coco_pope_*.json must be the same POPE version "
                "(LLaVA-1.5 used POPE commit e3e3926, whose random split has 2,910 questions)"
            )
        unanswered = [q["question_id"] for q in cat_questions if q["question_id"] not in by_id]
        if unanswered:
            shown = ", ".join(repr(q) for q in unanswered[:5])
            raise ValueError(
                f"split {category}: {len(unanswered)} question(s) have no answer (e.g. question_id {shown}); "
                "finish the run (it resumes) before scoring"
            )
        predictions, gold = [], []
        for position, (question, label_record) in enumerate(zip(cat_questions, cat_labels, strict=True)):
            where = f"coco_pope_{category}.json line {position + 1}"
            label = _label(label_record, where)
            _check_pairing(question, label_record, where)
            answer = by_id[question["question_id"]]
            if is_failed(answer):
                failed += 1
                prediction = "no" if label == "yes" else "yes"
            else:
                prediction = parse_yes_no(answer.get("text", ""))
            predictions.append(prediction)
            gold.append(label)
        splits[category] = pope_metrics(predictions, gold)

    mean_f1 = sum(m["f1"] for m in splits.values()) / len(splits) if splits else 0.0
    return {
        "splits": splits,
        "samples": sum(m["n"] for m in splits.values()),
        "failed": failed,
        "mean_f1": mean_f1,
        "reported": 100.0 * mean_f1,
    }


def _check_pairing(question: dict, label_record: dict, where: str) -> None:
    """Where both sides carry them, the label line's image and question must be the paired question's."""
    if "image" in question and "image" in label_record and question["image"] != label_record["image"]:
        raise ValueError(
            f"{where} is for image {label_record['image']!r} but the question paired with it by position "
            f"(question_id {question['question_id']!r}) is for {question['image']!r}; the question file and the labels "
            f"do not match (see {EVAL_DOC}, section {SECTION})"
        )
    if "text" in question and "text" in label_record:
        asked = question["text"].split("\n", 1)[0].strip()
        if asked != label_record["text"].strip():
            raise ValueError(
                f"{where} asks {label_record['text']!r} but the question paired with it by position "
                f"(question_id {question['question_id']!r}) asks {asked!r}; the question file and the labels do not "
                f"match (see {EVAL_DOC}, section {SECTION})"
            )


def load_labels(annotation_dir: str | os.PathLike, categories: Sequence[str]) -> dict[str, list[dict]]:
    """split -> records of `<annotation_dir>/coco_pope_<split>.json` (jsonl despite the name)."""
    annotation_dir = require_dir(annotation_dir, "POPE annotation folder", SECTION)
    return {
        c: read_jsonl(require_file(annotation_dir / f"coco_pope_{c}.json", "POPE label file", SECTION))
        for c in categories
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Score POPE answers (per-split F1 and their mean).")
    parser.add_argument("--annotation-dir", type=str, required=True, help="folder of coco_pope_<split>.json")
    parser.add_argument("--question-file", type=str, required=True, help="llava_pope_test.jsonl")
    parser.add_argument("--result-file", type=str, required=True, help="answers jsonl from model_vqa_loader")
    return parser


def format_table(metrics: dict) -> str:
    header = f"{'split':<12}{'n':>6}{'TP':>6}{'FP':>6}{'TN':>6}{'FN':>6}"
    header += f"{'acc':>8}{'prec':>8}{'recall':>8}{'F1':>8}{'yes%':>8}"
    lines = [header]
    for split, m in metrics["splits"].items():
        row = f"{split:<12}{m['n']:>6}{m['TP']:>6}{m['FP']:>6}{m['TN']:>6}{m['FN']:>6}"
        for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
            row += f"{100 * m[key]:>8.2f}"
        lines.append(row)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        questions = read_jsonl(
            require_file(args.question_file, "POPE question file", SECTION), ("question_id", "category")
        )
        answers = read_jsonl(require_file(args.result_file, "POPE answer file", SECTION), ("question_id",))
        categories = list(dict.fromkeys(q["category"] for q in questions))
        labels = load_labels(args.annotation_dir, categories)
        metrics = score_pope(questions, answers, labels)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"POPE: {Path(args.result_file).name}  ({metrics['samples']} answers, {metrics['failed']} failed)")
    print(format_table(metrics))
    print(f"Reported POPE (mean F1 over {len(metrics['splits'])} splits): {metrics['reported']:.2f}")
    return metrics


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
