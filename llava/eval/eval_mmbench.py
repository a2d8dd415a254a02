"""MMBench / MMBench-CN: local scoring of the dev split, and the xlsx submission for the OpenCompass server.

The answers file is the jsonl of `model_vqa_mmbench`: one record per TSV row, `question_id` = the TSV `index`,
`text` = the model's answer, plus `round_id`, `options`, `option_char`. Only round 0 is scored (LLaVA-1.5 runs one
round; the dev TSV already holds the circular-shift copies, index = base + k*10^6).

Scoring (dev TSVs only; the test TSV has no `answer` column). The predicted letter is, in this order:
the whole answer if it is one of the row's option letters; else a leading "X." / "X " letter; else the one option
letter standing alone in the text (not inside a word); else unmatched, which counts as wrong. Option letters are
A, B, ... up to the first empty / "nan" / "none" option, as the generator builds them. Reported are:
- accuracy: every TSV row scored on its own;
- single-pass accuracy: the original questions only (k = 0);
- circular accuracy: a base question counts only if all of its copies are right (MMBench's CircularEval).

"reported" = circular accuracy x100, the number the OpenCompass server gives and LLaVA-1.5 publishes (7B: MMBench
64.3, MMBench-CN 58.3, from LLaVA's submission of these dev TSVs). The official number comes from the server; this
local score is a close check of it, since the server also extracts letters from free-form answers in its own way.

Submission (LLaVA's `convert_mmbench_for_submission`): the TSV without its hint, category, source, image, comment
and l2-category columns, with a `prediction` column (the raw answer text) after the option columns, written as
`<upload-dir>/<experiment>.xlsx` through a temporary file and a rename.

    python -m llava.eval.eval_mmbench --annotation-file playground/data/eval/mmbench/mmbench_dev_20230712.tsv \\
        --result-dir playground/data/eval/mmbench/answers/mmbench_dev_20230712 \\
        --upload-dir playground/data/eval/mmbench/answers_upload/mmbench_dev_20230712 --experiment llava-v1.5-7b
"""

from __future__ import annotations

import argparse
import math
import os
import re
import string
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from llava.eval.answer_files import MalformedFileError, is_failed, malformed_in, read_jsonl, require_file

CIRCULAR_STRIDE = 1_000_000
DROPPED_COLUMNS = ("hint", "category", "source", "image", "comment", "l2-category")

_LEADING_LETTER = re.compile(r"([A-Z])[.\s]")
_LONE_LETTER = re.compile(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])")


def eval_section(path: str | os.PathLike) -> str:
    """The EVAL.md section for a file of MMBench or MMBench-CN, told apart by the folder or file name."""
    path = Path(path)
    if "mmbench_cn" in path.parts or re.search(r"(^|[_\-.])cn([_\-.]|$)", path.name.lower()):
        return "MMBench-CN"
    return "MMBench"


def _is_none(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in ("", "nan", "none")


def option_letters(row: dict) -> list[str]:
    """A, B, ... for the row's options, up to the first missing one (as model_vqa_mmbench builds the prompt)."""
    letters = []
    for letter in string.ascii_uppercase:
        if letter not in row or _is_none(row[letter]):
            break
        letters.append(letter)
    return letters


def parse_letter(text: str, letters: Sequence[str]) -> str | None:
    """The option letter an answer names, or None: exact letter, else leading "X."/"X ", else one lone letter."""
    text = text.strip()
    if text in letters:
        return text
    lead = _LEADING_LETTER.match(text)
    if lead and lead.group(1) in letters:
        return lead.group(1)
    found = {m.group(1) for m in _LONE_LETTER.finditer(text)} & set(letters)
    if len(found) == 1:
        return found.pop()
    return None


def _index(value: object) -> int:
    """An MMBench index from a TSV cell or a question_id (int, integral float or digit string)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (bool, float)):
        raise MalformedFileError(f"question_id {value!r} is not an MMBench index (an integer)")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise MalformedFileError(f"question_id {value!r} is not an MMBench index (an integer)") from None


def index_answers(answers: Sequence[dict]) -> tuple[dict[int, dict], int]:
    """Round-0 answer records by TSV index, and how many records of other rounds were left out."""
    by_index: dict[int, dict] = {}
    other_rounds = 0
    for record in answers:
        if _index(record.get("round_id") or 0) != 0:
            other_rounds += 1
            continue
        index = _index(record["question_id"])
        if index in by_index:
            raise MalformedFileError(f"question_id {index} is answered more than once")
        by_index[index] = record
    return by_index, other_rounds


def read_tsv(path: str | os.PathLike, with_images: bool = False) -> pd.DataFrame:
    """The MMBench TSV (pandas' default missing-value rules, as LLaVA reads it); the base64 image column is skipped
    unless asked for."""
    path = require_file(path, "MMBench TSV", eval_section(path))
    try:
        table = pd.read_csv(path, sep="\t", usecols=None if with_images else (lambda column: column != "image"))
    except (ValueError, UnicodeDecodeError) as err:  # pandas' parser and empty-data errors are ValueErrors
        raise MalformedFileError(f"{path}: not a readable TSV ({err})") from None
    if "index" not in table.columns:
        raise MalformedFileError(f"{path}: no 'index' column; is this an MMBench TSV?")
    return table


def read_answers(path: str | os.PathLike) -> list[dict]:
    return read_jsonl(require_file(path, "MMBench answers file", eval_section(path)), required=("question_id", "text"))


def _ratio(correct: int, total: int) -> float:
    return correct / total if total else float("nan")


def score_mmbench(table: pd.DataFrame, answers: Sequence[dict]) -> dict:
    """Accuracy, single-pass accuracy, circular accuracy and per-category numbers of answers against a dev TSV.

    Failed records (with an "error" field), unmatched answers and TSV rows without an answer count as wrong."""
    if "answer" not in table.columns:
        raise ValueError(
            "the TSV has no 'answer' column: it is a test split, which only the OpenCompass server scores "
            "(write a submission with --upload-dir)"
        )
    if table.empty:
        raise ValueError("the TSV has no rows")
    by_index, other_rounds = index_answers(answers)
    failed = sum(1 for record in answers if is_failed(record))
    unmatched = missing = 0
    rows: list[tuple[int, str, bool]] = []  # (index, category, correct)
    for row in table.to_dict("records"):
        index = _index(row["index"])
        record = by_index.get(index)
        prediction = None
        if record is None:
            missing += 1
        elif "error" not in record:
            prediction = parse_letter(str(record.get("text") or ""), option_letters(row))
            unmatched += prediction is None
        category = "" if _is_none(row.get("category")) else str(row.get("category"))
        rows.append((index, category, prediction is not None and prediction == str(row["answer"]).strip()))
    tsv_indices = {index for index, _, _ in rows}
    extra = sum(1 for index in by_index if index not in tsv_indices)

    overall = _group_scores(rows)
    per_category: dict[str, dict] = {}
    if "category" in table.columns:
        by_category: dict[str, list] = defaultdict(list)
        base_category: dict[int, str] = {}
        for index, category, _ in sorted(rows):  # the base row (k = 0) comes first and names the category
            base_category.setdefault(index % CIRCULAR_STRIDE, category)
        for index, _, correct in rows:
            by_category[base_category[index % CIRCULAR_STRIDE]].append((index, "", correct))
        per_category = {category: _group_scores(group) for category, group in sorted(by_category.items())}
    return {
        "reported": 100 * overall["circular_accuracy"],
        **overall,
        "unmatched": unmatched,
        "failed": failed,
        "missing": missing,
        "extra": extra,
        "other_rounds": other_rounds,
        "per_category": per_category,
    }


def _group_scores(rows: Sequence[tuple[int, str, bool]]) -> dict:
    bases: dict[int, bool] = {}
    single = [correct for index, _, correct in rows if index < CIRCULAR_STRIDE]
    for index, _, correct in rows:
        base = index % CIRCULAR_STRIDE
        bases[base] = bases.get(base, True) and correct
    right = sum(correct for _, _, correct in rows)
    return {
        "accuracy": _ratio(right, len(rows)),
        "single_pass_accuracy": _ratio(sum(single), len(single)),
        "circular_accuracy": _ratio(sum(bases.values()), len(bases)),
        "n_rows": len(rows),
        "n_single": len(single),
        "n_circular": len(bases),
        "correct_rows": right,
        "correct_circular": sum(bases.values()),
    }


def evaluate(annotation_file: str | os.PathLike, result_file: str | os.PathLike) -> dict:
    """score_mmbench on files; malformed answers are reported with the answers file's path."""
    table = read_tsv(annotation_file)
    answers = read_answers(result_file)
    with malformed_in(result_file):
        return score_mmbench(table, answers)


def submission_table(table: pd.DataFrame, answers: Sequence[dict]) -> pd.DataFrame:
    """The TSV without the dropped columns, with a `prediction` column (answer text; empty where unanswered)."""
    by_index, _ = index_answers(answers)
    out = table.drop(columns=[column for column in DROPPED_COLUMNS if column in table.columns])
    options = [c for c in out.columns if isinstance(c, str) and len(c) == 1 and c in string.ascii_uppercase]
    position = out.columns.get_loc(options[-1]) + 1 if options else len(out.columns)
    # control characters a model may emit cannot be stored in a worksheet; drop them
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    predictions = [
        ILLEGAL_CHARACTERS_RE.sub("", by_index[i]["text"]) if i in by_index else None for i in map(_index, out["index"])
    ]
    out.insert(position, "prediction", predictions)
    return out


def write_xlsx_atomic(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write an xlsx through a temporary file in the same folder and a rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.xlsx", dir=path.parent)
    os.close(fd)
    try:
        frame.to_excel(tmp, index=False, engine="openpyxl")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_submission(
    annotation_file: str | os.PathLike, result_file: str | os.PathLike, upload_dir: str | os.PathLike, experiment: str
) -> Path:
    """`<upload_dir>/<experiment>.xlsx` for the OpenCompass MMBench server; returns its path."""
    table = read_tsv(annotation_file)
    answers = read_answers(result_file)
    with malformed_in(result_file):
        frame = submission_table(table, answers)
    return write_xlsx_atomic(frame, Path(upload_dir) / f"{experiment}.xlsx")


def _pct(x: float) -> str:
    return f"{'-':>6}" if math.isnan(x) else f"{100 * x:6.2f}"


def format_table(metrics: dict, title: str = "MMBench") -> str:
    header = f"{'category':<40} {'rows':>5} {'acc':>6} {'single':>6} {'bases':>5} {'circ':>6}"
    lines = [title, header, "-" * len(header)]
    groups = [*metrics["per_category"].items(), ("overall", metrics)]
    for name, m in groups:
        lines.append(
            f"{name[:40]:<40} {m['n_rows']:>5} {_pct(m['accuracy'])} {_pct(m['single_pass_accuracy'])} "
            f"{m['n_circular']:>5} {_pct(m['circular_accuracy'])}"
        )
    lines.append(
        f"failed {metrics['failed']}, unmatched {metrics['unmatched']}, missing {metrics['missing']}, "
        f"not in the TSV {metrics['extra']}, other rounds {metrics['other_rounds']}"
    )
    lines.append(f"reported (circular accuracy x100): {metrics['reported']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(
        description="Score MMBench dev answers locally (circular accuracy) and/or write the xlsx for the server."
    )
    parser.add_argument("--annotation-file", required=True, help="the MMBench TSV (dev or test)")
    parser.add_argument("--result-file", help="answers jsonl; default <result-dir>/<experiment>.jsonl")
    parser.add_argument("--result-dir", help="folder of <experiment>.jsonl (LLaVA's flag)")
    parser.add_argument("--upload-dir", help="write <upload-dir>/<experiment>.xlsx for the OpenCompass server")
    parser.add_argument("--experiment", help="experiment name: the answers' and the xlsx's file stem")
    args = parser.parse_args(argv)
    if args.result_file:
        result_file = Path(args.result_file)
    elif args.result_dir and args.experiment:
        result_file = Path(args.result_dir) / f"{args.experiment}.jsonl"
    else:
        parser.error("give --result-file, or --result-dir and --experiment")
    table = read_tsv(args.annotation_file)
    answers = read_answers(result_file)
    with malformed_in(result_file):
        if args.upload_dir:
            frame = submission_table(table, answers)
            path = write_xlsx_atomic(frame, Path(args.upload_dir) / f"{args.experiment or result_file.stem}.xlsx")
            print(f"Wrote {path}")
        metrics = score_mmbench(table, answers) if "answer" in table.columns else None
    if metrics is None:
        if not args.upload_dir:
            parser.error(f"{args.annotation_file} has no answers (test split): only --upload-dir applies")
        print("Test split: no local score; upload the xlsx to the OpenCompass MMBench server.")
        return None
    print(format_table(metrics, f"{eval_section(args.annotation_file)}: {result_file}"))
    if metrics["missing"]:
        print(f"warning: {metrics['missing']} TSV rows have no answer (counted wrong)", file=sys.stderr)
    return metrics


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
