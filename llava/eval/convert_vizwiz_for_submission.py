"""Turn VizWiz-VQA test answers into an EvalAI submission file (VizWiz is scored online, not here).

`python -m llava.eval.convert_vizwiz_for_submission --annotation-file vizwiz/llava_test.jsonl
--result-file answers.jsonl --result-upload-file vizwiz/answers_upload/NAME.json`

Every question of the question file (`--annotation-file`, 8,000 test questions) must be answered. Each answer is
normalised with `EvalAIAnswerProcessor` and written, in question-file order, as `[{"image", "answer"}]` for EvalAI
challenge 2185. Answers recorded as failed (an "error" field) are submitted as "" and counted. Papers report EvalAI's
test-dev overall accuracy (LLaVA-1.5 7B: 50.0, 13B: 53.6), which this module cannot compute ("reported" is None).
"""

from __future__ import annotations

import argparse

from llava.eval.answer_files import is_failed, read_jsonl, require_file, write_json_atomic
from llava.eval.m4c_evaluator import EvalAIAnswerProcessor

SECTION = "VizWiz"


def vizwiz_submission(questions: list[dict], answers: list[dict]) -> dict:
    """The submission rows, one per question, and counts.

    Returns submission ([{"image", "answer"}] in question order), total, failed (answers with an "error", submitted
    as "") and reported (None: the score comes from EvalAI). Raises ValueError if a question has no answer."""
    processor = EvalAIAnswerProcessor()
    by_id = {answer["question_id"]: answer for answer in answers}
    unanswered = [q["question_id"] for q in questions if q["question_id"] not in by_id]
    if unanswered:
        shown = ", ".join(repr(qid) for qid in unanswered[:5])
        raise ValueError(
            f"{len(unanswered)} of {len(questions)} questions have no answer (e.g. question_id {shown}); EvalAI needs "
            "every test question, so finish the run (it resumes) before converting"
        )
    submission = []
    failed = 0
    for question in questions:
        answer = by_id[question["question_id"]]
        if is_failed(answer):
            failed += 1
            text = ""
        else:
            text = processor(answer.get("text", ""))
        submission.append({"image": question["image"], "answer": text})
    return {"submission": submission, "total": len(submission), "failed": failed, "reported": None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Write the EvalAI submission file for VizWiz answers.")
    parser.add_argument("--annotation-file", type=str, required=True, help="the question file, vizwiz/llava_test.jsonl")
    parser.add_argument("--result-file", type=str, required=True, help="answers jsonl from model_vqa_loader")
    parser.add_argument("--result-upload-file", type=str, required=True, help="the JSON file to upload")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        questions = read_jsonl(
            require_file(args.annotation_file, "VizWiz question file", SECTION), ("question_id", "image")
        )
        answers = read_jsonl(require_file(args.result_file, "VizWiz answer file", SECTION), ("question_id",))
        result = vizwiz_submission(questions, answers)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    write_json_atomic(args.result_upload_file, result["submission"])
    print(f"VizWiz submission: {args.result_upload_file}")
    print(f"  {'total':<10}{result['total']:>8}")
    print(f"  {'failed':<10}{result['failed']:>8}")
    print("Reported VizWiz: upload the file to EvalAI (challenge 2185); the score is computed there.")
    return result


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
