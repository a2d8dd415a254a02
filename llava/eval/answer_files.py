"""Reading question / answer files and writing answer files that survive interruption.

Answer files are jsonl, one complete record per line, appended and flushed one line at a time, so an interrupted
run loses nothing already written and a re-run skips the question ids already answered. Readers name the file and
line of anything malformed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

EVAL_DOC = "EVAL.md"


class MissingDataError(FileNotFoundError):
    """A benchmark file or folder that is not where the evaluation expects it."""


# benchmark folder (under playground/data/eval) -> EVAL.md section
SECTIONS = {
    "vqav2": "VQAv2",
    "gqa": "GQA",
    "vizwiz": "VizWiz",
    "scienceqa": "ScienceQA",
    "textvqa": "TextVQA",
    "pope": "POPE",
    "MME": "MME",
    "mmbench": "MMBench",
    "mmbench_cn": "MMBench-CN",
    "seed_bench": "SEED-Bench",
    "llava-bench-in-the-wild": "LLaVA-Bench",
    "mm-vet": "MM-Vet",
    "qbench": "Q-Bench",
}


def section_for(path: str | os.PathLike) -> str:
    """The EVAL.md section of a benchmark file, from the benchmark folder it sits in."""
    for part in reversed(Path(path).parts):
        if part in SECTIONS:
            return SECTIONS[part]
    return "Layout"


def _not_found(path: Path, what: str, section: str | None) -> MissingDataError:
    section = section or section_for(path)
    return MissingDataError(f"{what} not found: {path}. See {EVAL_DOC}, section {section}, for where to get it.")


def require(path: str | os.PathLike | None, what: str, section: str | None = None) -> Path:
    """The path, or a clear error naming it and the EVAL.md section that says where to get it."""
    if not path:
        raise MissingDataError(f"No {what} given; see {EVAL_DOC}, section {section or 'Layout'}")
    path = Path(path)
    if not path.exists():
        raise _not_found(path, what, section)
    return path


def require_file(path: str | os.PathLike | None, what: str, section: str | None = None) -> Path:
    """`require` for a file: a folder of that name is reported as the file not found."""
    path = require(path, what, section)
    if not path.is_file():
        raise _not_found(path, what, section)
    return path


def require_dir(path: str | os.PathLike | None, what: str, section: str | None = None) -> Path:
    """`require` for a folder: a file of that name is reported as the folder not found."""
    path = require(path, what, section)
    if not path.is_dir():
        raise _not_found(path, what, section)
    return path


def is_failed(record: dict) -> bool:
    """Whether an answer record is a failed question: one whose "error" field is set."""
    return bool(record.get("error"))


class MalformedFileError(ValueError):
    """A question or answer file line that is not the JSON it should be."""


@contextmanager
def malformed_in(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise a MalformedFileError from the block (about records, not their file) with `path` in front."""
    try:
        yield
    except MalformedFileError as err:
        raise MalformedFileError(f"{path}: {err}") from None


def read_jsonl(path: str | os.PathLike, required: Iterable[str] = ()) -> list[dict]:
    """All records of a jsonl file; blank lines are skipped; `required` keys are checked on every record."""
    return list(iter_jsonl(path, required))


def iter_jsonl(path: str | os.PathLike, required: Iterable[str] = ()) -> Iterator[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"File not found: {path}")
    required = tuple(required)
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                # an interrupted writer can leave a last partial line; say so rather than guess
                raise MalformedFileError(f"{path}, line {number}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise MalformedFileError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
            missing = [k for k in required if k not in record]
            if missing:
                raise MalformedFileError(f"{path}, line {number}: missing field(s) {', '.join(missing)}")
            yield record


def read_json(path: str | os.PathLike):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"File not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise MalformedFileError(f"{path}, line {err.lineno}: not valid JSON ({err.msg})") from None


class AnswerWriter:
    """Appends answer records to a jsonl file, one flushed line each; knows which questions are already answered.

    A question is identified by `key_fields` of its record (default: question_id and prompt, because some
    benchmarks reuse an id for several questions: TextVQA's question_id is the image id). A trailing partial line
    (a run killed mid-write) is cut off on open, so the file always holds whole records."""

    def __init__(self, path: str | os.PathLike, key_fields: tuple[str, ...] = ("question_id", "prompt")) -> None:
        self.path = Path(path)
        self.key_fields = key_fields
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_partial_line()
        self.answered: set[str] = set()
        if self.path.exists():
            self.answered = {self.key(r) for r in iter_jsonl(self.path)}
        self._file = self.path.open("a", encoding="utf-8")

    def key(self, record: dict) -> str:
        return json.dumps([record.get(k) for k in self.key_fields], ensure_ascii=False)

    def done(self, record: dict) -> bool:
        """Whether a record with the same key fields (e.g. the question's id and prompt) is already written."""
        return self.key(record) in self.answered

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        self.answered.add(self.key(record))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> AnswerWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _truncate_partial_line(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        data = self.path.read_bytes()
        if data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        with self.path.open("r+b") as f:
            f.truncate(keep)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write text (utf-8, newlines as given) through a temporary file and a rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half a file."""
    write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=2))
