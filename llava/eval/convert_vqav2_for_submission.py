"""Turn VQAv2 test-dev answers into an EvalAI submission file (VQAv2 is scored online, not here).

`python -m llava.eval.convert_vqav2_for_submission --dir vqav2 --split llava_vqav2_mscoco_test-dev2015 --ckpt NAME`

reads `<dir>/answers/<split>/<ckpt>/merge.jsonl`, normalises every answer with `EvalAIAnswerProcessor`, gives each
question of the full test2015 file `<dir>/llava_vqav2_mscoco_test2015.jsonl` that has no answer (test-dev is a
subset of test) the answer "", and writes `<dir>/answers_upload/<split>/<ckpt>.json` as
`[{"question_id", "answer"}]`, in question-file order, for the test-dev phase of EvalAI challenge 830. Answers
recorded as failed (an "error" field) are submitted as "" and counted. Papers report EvalAI's test-dev overall
accuracy (LLaVA-1.5 7B: 78.5, 13B: 80.0), which this module cannot compute ("reported" is None).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llava.eval.answer_files import is_failed, read_jsonl, require_file, write_json_atomic
from llava.eval.m4c_evaluator import EvalAIAnswerProcessor

SECTION = "VQAv2"
TEST_FILE = "llava_vqav2_mscoco_test2015.jsonl"


def vqav2_submission(test_questions: list[dict], answers: list[dict]) -> dict:
    """The submission rows for every test2015 question, and counts.

    Returns submission ([{"question_id", "answer"}] in question order), total, answered, filled (questions without
    an answer, submitted as ""), failed (answers with an "error", submitted as ""), unknown (answers for ids not in
    the test file, left out) and reported (None: the score comes from EvalAI)."""
    processor = EvalAIAnswerProcessor()
    by_id = {}
    for answer in answers:
        by_id[answer["question_id"]] = answer
    submission = []
    filled = failed = 0
    known = set()
    for question in test_questions:
        qid = question["question_id"]
        known.add(qid)
        answer = by_id.get(qid)
        if answer is None:
            filled += 1
            text = ""
        elif is_failed(answer):
            failed += 1
            text = ""
        else:
            text = processor(answer.get("text", ""))
        submission.append({"question_id": qid, "answer": text})
    unknown = sum(1 for qid in by_id if qid not in known)
    if by_id and unknown == len(by_id):
        raise ValueError(f"none of the {len(by_id)} answers is for a question of the test file; wrong files?")
    return {
        "submission": submission,
        "total": len(submission),
        "answered": len(by_id) - unknown,
        "filled": filled,
        "failed": failed,
        "unknown": unknown,
        "reported": None,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Write the EvalAI submission file for VQAv2 answers.")
    parser.add_argument("--dir", type=str, default="./playground/data/eval/vqav2", help="the vqav2 benchmark folder")
    parser.add_argument("--ckpt", type=str, default=None, help="LLaVA's layout: answers/<split>/<ckpt>/merge.jsonl")
    parser.add_argument("--split", type=str, required=True, help="e.g. llava_vqav2_mscoco_test-dev2015")
    parser.add_argument("--result-file", type=str, default=None, help="the answers jsonl (instead of --ckpt)")
    parser.add_argument("--result-upload-file", type=str, default=None, help="where to write (with --result-file)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    root = Path(args.dir)
    if args.result_file:
        src = Path(args.result_file)
        dst = Path(args.result_upload_file or src.with_suffix(".upload.json"))
    elif args.ckpt:
        src = root / "answers" / args.split / args.ckpt / "merge.jsonl"
        dst = root / "answers_upload" / args.split / f"{args.ckpt}.json"
    else:
        raise SystemExit("error: give --ckpt (LLaVA's answer layout) or --result-file")
    try:
        answers = read_jsonl(require_file(src, "VQAv2 merged answer file", SECTION), ("question_id",))
        questions = read_jsonl(
            require_file(root / TEST_FILE, "VQAv2 test2015 question file", SECTION), ("question_id",)
        )
        result = vqav2_submission(questions, answers)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    write_json_atomic(dst, result["submission"])
    print(f"VQAv2 submission: {dst}")
    for key in ("total", "answered", "filled", "failed", "unknown"):
        print(f"  {key:<10}{result[key]:>8}")
    if result["unknown"]:
        print(f"warning: {result['unknown']} answers are for ids not in {TEST_FILE}; left out", file=sys.stderr)
    print("Reported VQAv2: upload the file to EvalAI (challenge 830, test-dev phase); the score is computed there.")
    return result


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
