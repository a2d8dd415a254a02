"""Answers for the zero-shot video-QA benchmarks (MSVD, MSRVTT, TGIF, ActivityNet; Video-ChatGPT protocol):

    python -m llava.eval.model_video_qa --model-path LanguageBind/Video-LLaVA-7B \\
        --video-folder GPT_Zero_Shot_QA/MSVD_Zero_Shot_QA/videos \\
        --question-file GPT_Zero_Shot_QA/MSVD_Zero_Shot_QA/test_q.json \\
        --answer-file GPT_Zero_Shot_QA/MSVD_Zero_Shot_QA/test_a.json --answers-file answers.jsonl [--subset 1k]

Questions are paired with their ground-truth answers by question_id, and every answer record carries its own
question's ground truth (question_id, video_name, question, answer, type, subset), so chunks and torchrun shards
cannot mis-pair them. A question whose video is missing or unreadable is kept and recorded as a failed answer.
Defaults follow the reference evaluation: greedy decoding (--temperature 0) and --max_new_tokens 1024. Judge the
answers with `python -m llava.eval.eval_video_qa`.
"""

from __future__ import annotations

import argparse
import sys

from llava.eval.answer_files import require_dir
from llava.eval.answering import Question, add_generation_args, generate_answers
from llava.eval.video_qa import SECTION, SUBSETS, expected_video, find_video, load_benchmark

MAX_NEW_TOKENS = 1024  # Video-LLaVA's video-QA generator


def add_video_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--video-folder", type=str, default=None, help="folder of the video files (videos/, all_test/)")
    parser.add_argument("--answer-file", type=str, default=None, help="the ground-truth answers, test_a.json")
    parser.add_argument(
        "--subset",
        choices=SUBSETS,
        default="full",
        help="1k: test_q_1k.json / test_a_1k.json next to the given files if present, else the first 1000 "
        "questions (recorded as 1k-first1000); 1K numbers are not comparable with full-set numbers",
    )
    parser.add_argument(
        "--num-frames",
        type=int,
        default=None,
        help="frames sampled per video (default: the model's; Video-LLaVA's tower is built for 8, Qwen-VL samples "
        "--video-fps frames a second)",
    )
    parser.add_argument(
        "--video-fps", type=float, default=None, help="Qwen-VL: frames sampled per second of video (default 2.0)"
    )
    parser.add_argument(
        "--max-frames", type=int, default=None, help="Qwen-VL: at most this many frames per video (default 768)"
    )
    parser.add_argument(
        "--repeat-short-videos",
        action="store_true",
        help="a video with fewer frames than --num-frames repeats frames (as Video-LLaVA's index rule does) "
        "instead of being recorded as a failed answer",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_generation_args(parser, max_new_tokens=MAX_NEW_TOKENS)
    add_video_args(parser)
    parser.set_defaults(temperature=0.0)  # greedy, as the spec recommends (the references sample or crash)
    return parser


def build_questions(args: argparse.Namespace) -> list[Question]:
    """One Question per question of the chosen subset, in question-file order, with its video file; a missing
    video gets the path it was looked for at, so its question fails alone when the generator opens it."""
    if args.question_file is None or args.answer_file is None:
        raise ValueError("give --question-file (test_q.json) and --answer-file (test_a.json)")
    items, subset = load_benchmark(args.question_file, args.answer_file, args.subset)
    folder = require_dir(args.video_folder, "video folder", SECTION)
    questions, missing = [], []
    for item in items:
        video = find_video(folder, item.video_name)
        if video is None:
            missing.append(item.video_name)
            video = expected_video(folder, item.video_name)
        questions.append(Question(text=item.question, image=None, record=item.record(subset), video=video))
    if missing:
        names = sorted(set(missing))
        print(
            f"warning: {len(names)} video(s) not found in {folder} (e.g. {', '.join(names[:3])}); their "
            f"{len(missing)} question(s) will be recorded as failed answers",
            file=sys.stderr,
        )
    return questions


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.num_frames is not None and args.num_frames < 1:
        raise SystemExit("error: --num-frames must be at least 1")
    try:
        questions = build_questions(args)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    generate_answers(questions, args)


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
