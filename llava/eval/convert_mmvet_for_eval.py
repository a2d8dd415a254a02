"""MM-Vet: turn an answers jsonl into the results JSON that the official MM-Vet grader reads.

MM-Vet is not scored here. Its number (LLaVA-1.5: 7B 31.1, 13B 36.1) is the "total" score of the official MM-Vet
GPT-4 grader (the notebook / script of the MM-Vet repository, or its Hugging Face space), which is external and needs
an OpenAI key. This module only writes `{"v1_<question_id>": answer text}` (LLaVA's `convert_mmvet_for_eval.py`),
atomically, for that grader:

    python -m llava.eval.convert_mmvet_for_eval --src playground/data/eval/mm-vet/answers/llava-v1.5-7b.jsonl \\
        --dst playground/data/eval/mm-vet/results/llava-v1.5-7b.json

Failed questions (answer records with an "error" field) go in with their empty text, so the grader scores them 0;
they are counted in "failed". GPT-graded numbers drift with the grader's GPT version (spec section 5): report them
apart from the locally scored benchmarks. "reported" is None here: the reported number comes from the grader.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from llava.eval.answer_files import (
    EVAL_DOC,
    MalformedFileError,
    is_failed,
    malformed_in,
    read_jsonl,
    require_file,
    write_json_atomic,
)

SECTION = "MM-Vet"
MMVET_QUESTIONS = 218


def convert_answers(answers: Sequence[dict]) -> dict[str, str]:
    """`{"v1_<question_id>": text}` in answer order; a question answered twice is an error."""
    results: dict[str, str] = {}
    for record in answers:
        key = f"v1_{record['question_id']}"
        if key in results:
            raise MalformedFileError(f"question_id {record['question_id']} is answered more than once")
        results[key] = str(record.get("text") or "")
    return results


def convert_mmvet_for_eval(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """Write the grader's results JSON from an answers jsonl; returns counts ("reported" is None: external)."""
    src = require_file(src, "MM-Vet answers file", SECTION)
    answers = read_jsonl(src, required=("question_id", "text"))
    with malformed_in(src):
        results = convert_answers(answers)
    write_json_atomic(dst, results)
    return {
        "reported": None,
        "n": len(results),
        "failed": sum(1 for record in answers if is_failed(record)),
        "dst": str(dst),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Write MM-Vet answers as the official grader's results JSON.")
    parser.add_argument("--src", required=True, help="answers jsonl (model_vqa output)")
    parser.add_argument("--dst", required=True, help="results JSON to write, e.g. mm-vet/results/<exp>.json")
    args = parser.parse_args(argv)
    metrics = convert_mmvet_for_eval(args.src, args.dst)
    print(f"MM-Vet: wrote {metrics['n']} answers ({metrics['failed']} failed, empty) to {metrics['dst']}")
    print(f"Grade it with the official MM-Vet GPT-4 grader (external; see {EVAL_DOC}, section {SECTION}).")
    if metrics["n"] != MMVET_QUESTIONS:
        print(f"warning: MM-Vet has {MMVET_QUESTIONS} questions, the answers file has {metrics['n']}", file=sys.stderr)
    return metrics


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
