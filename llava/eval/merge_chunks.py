"""Join the per-process answer chunks of a multi-GPU run, in question order:
`python -m llava.eval.merge_chunks --answers-file A.jsonl --num-chunks N` reads `A.chunks/N_0.jsonl` ...
`A.chunks/N_{N-1}.jsonl` and writes A.jsonl (through a temporary file, so it is never half-written)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from llava.eval.answering import chunk_path


def merge_chunks(answers_file: str | os.PathLike, num_chunks: int) -> Path:
    answers_file = Path(answers_file)
    chunks = [chunk_path(answers_file, num_chunks, k) for k in range(num_chunks)]
    missing = [str(c) for c in chunks if not c.is_file()]
    if missing:
        raise FileNotFoundError(f"Missing answer chunk(s): {', '.join(missing)}; re-run the generation (it resumes)")
    tmp = answers_file.with_suffix(answers_file.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for chunk in chunks:
            data = chunk.read_text(encoding="utf-8")
            out.write(data if not data or data.endswith("\n") else data + "\n")
    os.replace(tmp, answers_file)
    return answers_file


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--answers-file", required=True)
    parser.add_argument("--num-chunks", type=int, required=True)
    args = parser.parse_args(argv)
    print(merge_chunks(args.answers_file, args.num_chunks))


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
