"""Reading question / answer files and writing answer files that survive interruption.

Answer files are jsonl, one complete record per line, appended and flushed one line at a time, so an interrupted
run loses nothing already written and a re-run skips the question ids already answered. Readers name the file and
line of anything malformed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path


class MalformedFileError(ValueError):
    """A question or answer file line that is not the JSON it should be."""


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
    """Appends answer records to a jsonl file, one flushed line each; knows which ids are already answered.

    A trailing partial line (a run killed mid-write) is cut off on open, so the file is always whole records."""

    def __init__(self, path: str | os.PathLike, id_key: str = "question_id") -> None:
        self.path = Path(path)
        self.id_key = id_key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_partial_line()
        self.answered: set = set()
        if self.path.exists():
            self.answered = {self._key(r[id_key]) for r in iter_jsonl(self.path) if id_key in r}
        self._file = self.path.open("a", encoding="utf-8")

    @staticmethod
    def _key(question_id) -> str:
        return json.dumps(question_id)

    def done(self, question_id) -> bool:
        return self._key(question_id) in self.answered

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        self.answered.add(self._key(record[self.id_key]))

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


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2), encoding="utf-8")
    os.replace(tmp, path)
