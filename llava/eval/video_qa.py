"""The zero-shot video-QA benchmarks of the Video-ChatGPT protocol (MSVD-QA, MSRVTT-QA, TGIF-QA, ActivityNet-QA):
reading a benchmark's question and answer files, choosing the subset, and finding each question's video.

A benchmark folder `GPT_Zero_Shot_QA/<Set>_Zero_Shot_QA/` holds `test_q.json` (a list of {video_name, question_id,
question}), `test_a.json` (a list of {answer, type, question_id}) and the videos (`videos/<video_name>.<ext>`;
ActivityNet: `all_test/v_<video_name>.mp4`). Questions are paired with their answers by question_id, never by
position: the reference generator paired them by position within each GPU chunk and mis-paired every chunk but the
first (spec video.md section 3.2). Each pair keeps its ground truth from here on, so an answer record cannot meet
another question's answer, whatever the chunking.

The "1k" subset (FastV / FasterVLM) is `test_q_1k.json` / `test_a_1k.json` where those files exist, recorded as
"1k"; otherwise the first 1000 rows of `test_q.json`, recorded as "1k-first1000" (that the published 1K files are
such a prefix is unverified). 1K numbers are not comparable with full-set numbers.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from llava.eval.answer_files import MalformedFileError, read_json, require_file

SECTION = "Video-QA"  # the EVAL.md section that says where to get the data
ROOT = "GPT_Zero_Shot_QA"  # the folder under playground/data/eval that holds the four benchmark folders
# benchmark folder -> name in tables
BENCHMARKS = {
    "MSVD_Zero_Shot_QA": "MSVD-QA",
    "MSRVTT_Zero_Shot_QA": "MSRVTT-QA",
    "TGIF_Zero_Shot_QA": "TGIF-QA",
    "Activitynet_Zero_Shot_QA": "ActivityNet-QA",
}
SUBSETS = ("full", "1k")
SUBSET_SIZE = 1000
# searched in this order; Video-LLaVA's generator looks for the first four, TGIF ships GIFs
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")
# ActivityNet's files are v_<video_name>.mp4 while its test_q.json names them without the prefix
VIDEO_PREFIXES = ("", "v_")


@dataclasses.dataclass(frozen=True)
class VideoQA:
    """One question with its ground truth, paired by question_id."""

    question_id: str | int
    video_name: str
    question: str
    answer: str
    type: str | int | None

    def record(self, subset: str) -> dict:
        """The fields an answer record starts from: the question and its own ground truth."""
        return {
            "question_id": self.question_id,
            "video_name": self.video_name,
            "question": self.question,
            "answer": self.answer,
            "type": self.type,
            "subset": subset,
        }


def benchmark_name(path: str | os.PathLike) -> str | None:
    """The table name (MSVD-QA, ...) of a file inside a benchmark folder, or None."""
    for part in reversed(Path(path).parts):
        if part in BENCHMARKS:
            return BENCHMARKS[part]
    return None


def _rows(path: Path) -> list:
    rows = read_json(path)
    if not isinstance(rows, list):
        raise MalformedFileError(f"{path}: expected a JSON list of rows, got {type(rows).__name__}")
    return rows


def _valid_id(value) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool) and value != ""


def _check_row(path: Path, index: int, row, fields: dict[str, tuple[type, ...]]) -> None:
    """A row must be an object whose `fields` are present with one of the given types (question_id: str or int)."""
    where = f"{path}, row {index}"
    if not isinstance(row, dict):
        raise MalformedFileError(f"{where}: expected an object, got {type(row).__name__}")
    missing = [k for k in fields if k not in row]
    if missing:
        raise MalformedFileError(f"{where}: missing field(s) {', '.join(missing)}")
    if not _valid_id(row["question_id"]):
        raise MalformedFileError(f"{where}: question_id must be a non-empty string or an integer")
    for key, types in fields.items():
        if key != "question_id" and (not isinstance(row[key], types) or isinstance(row[key], bool)):
            names = " or ".join(t.__name__ for t in types)
            raise MalformedFileError(f"{where}: {key} must be {names}, got {type(row[key]).__name__}")


def _by_id(path: Path, rows: list) -> dict:
    """question_id -> row; a repeated id is an error naming its rows (it would make the pairing ambiguous)."""
    seen: dict = {}
    for index, row in enumerate(rows):
        seen.setdefault(row["question_id"], []).append(index)
    repeated = {qid: idx for qid, idx in seen.items() if len(idx) > 1}
    if repeated:
        shown = "; ".join(f"{qid!r} (rows {', '.join(map(str, idx))})" for qid, idx in list(repeated.items())[:10])
        raise MalformedFileError(f"{path}: {len(repeated)} duplicate question_id(s): {shown}")
    return {row["question_id"]: row for row in rows}


def read_questions(path: str | os.PathLike, limit: int | None = None) -> list[dict]:
    """The rows of a test_q.json (all, or the first `limit`), checked."""
    path = require_file(path, "video-QA question file", SECTION)
    rows = _rows(path)[:limit]
    for index, row in enumerate(rows):
        _check_row(path, index, row, {"question_id": (), "video_name": (str,), "question": (str,)})
    _by_id(path, rows)
    return rows


def read_answers(path: str | os.PathLike) -> dict:
    """question_id -> row of a test_a.json, checked (type is optional; an answer may be a number, kept as text)."""
    path = require_file(path, "video-QA answer file", SECTION)
    rows = _rows(path)
    for index, row in enumerate(rows):
        _check_row(path, index, row, {"question_id": (), "answer": (str, int, float)})
    return _by_id(path, rows)


def pair(questions: list[dict], answers: dict, question_file: str | os.PathLike, answer_file: str | os.PathLike):
    """The questions, in question-file order, each with the answer of its question_id; every question needs one.
    Answers without a question are ignored (a subset's questions are checked against the full answer file)."""
    lacking = [q["question_id"] for q in questions if q["question_id"] not in answers]
    if lacking:
        shown = ", ".join(repr(qid) for qid in lacking[:10]) + (", ..." if len(lacking) > 10 else "")
        raise MalformedFileError(
            f"{len(lacking)} question(s) of {question_file} have no answer in {answer_file}: question_id {shown}"
        )
    return [
        VideoQA(
            question_id=q["question_id"],
            video_name=q["video_name"],
            question=q["question"],
            answer=str(answers[q["question_id"]]["answer"]),
            type=answers[q["question_id"]].get("type"),
        )
        for q in questions
    ]


def _subset_file(path: Path) -> Path:
    return path.with_name(f"{path.stem}_1k{path.suffix}")


def load_benchmark(
    question_file: str | os.PathLike, answer_file: str | os.PathLike, subset: str = "full"
) -> tuple[list[VideoQA], str]:
    """(paired questions, subset label) for `subset` "full" or "1k" of the given test_q.json / test_a.json.

    "1k": the sibling test_q_1k.json (with test_a_1k.json if present, else the given answer file) labelled "1k";
    without it, the first 1000 rows of the question file, labelled "1k-first1000". A question file already named
    *_1k.json is the 1K subset and needs `subset="1k"`."""
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {', '.join(SUBSETS)}, not {subset!r}")
    question_file, answer_file = Path(question_file), Path(answer_file)
    is_1k_file = question_file.stem.endswith("_1k")
    if subset == "full":
        if is_1k_file:
            raise ValueError(f"{question_file} is a 1K subset file; use subset 1k (or give test_q.json for full)")
        label, limit = "full", None
    elif is_1k_file:
        label, limit = "1k", None
    elif _subset_file(question_file).is_file():
        question_file, label, limit = _subset_file(question_file), "1k", None
        if _subset_file(answer_file).is_file():
            answer_file = _subset_file(answer_file)
    else:
        label, limit = "1k-first1000", SUBSET_SIZE
    questions = read_questions(question_file, limit)
    return pair(questions, read_answers(answer_file), question_file, answer_file), label


def find_video(folder: str | os.PathLike, video_name: str) -> Path | None:
    """The video file of `video_name` in `folder`: <name> or v_<name> (ActivityNet) with the first extension of
    VIDEO_EXTENSIONS that exists; None if there is none."""
    folder = Path(folder)
    for prefix in VIDEO_PREFIXES:
        for ext in VIDEO_EXTENSIONS:
            path = folder / f"{prefix}{video_name}{ext}"
            if path.is_file():
                return path
    return None


def expected_video(folder: str | os.PathLike, video_name: str) -> Path:
    """Where a missing video was looked for first; given to the generator, whose decoder then records the
    question as failed (a missing video never drops its question)."""
    return Path(folder) / f"{video_name}{VIDEO_EXTENSIONS[0]}"
