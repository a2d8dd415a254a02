"""Write a split of the synthetic benchmark in LLaVA's evaluation format, and score answers to it.

    python -m llava.synthetic.benchmark write --out playground/data/eval/synthetic --seed 1 --questions 1200
    python -m llava.synthetic.benchmark score --data playground/data/eval/synthetic --result-file answers.jsonl

`write` draws scenes from `--seed` (the training run draws from its own seed; the default evaluation seed 1 never
overlaps it in practice: 10^5+ distinct layouts) and keeps asking questions until `--questions`, balancing the six
question types. It writes `questions.jsonl` (question_id, image, text, category), `answers.jsonl` (ground truth) and
`images/`. `score` reports accuracy per question type and overall (an answer is right when, lower-cased and without a
final period, it equals the ground truth).
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

from llava.eval.answer_files import is_failed, read_jsonl, require, write_text_atomic
from llava.synthetic.scenes import QUESTION_TYPES, SUFFIX, draw, make_scene, questions_for

SECTION = "Synthetic"


def generate(seed: int, num_questions: int) -> list[tuple[object, list[tuple[str, str, str]]]]:
    """(scene, [(type, question, answer)]) with question types balanced to within one of each other."""
    rng = random.Random(seed)
    per_type = Counter()
    quota = -(-num_questions // len(QUESTION_TYPES))
    out, total = [], 0
    while total < num_questions:
        scene = make_scene(rng)
        chosen = []
        candidates = questions_for(scene, rng)
        rng.shuffle(candidates)  # e.g. the "yes" and the "no" existence question come in random order
        for qtype, question, answer in candidates:
            if per_type[qtype] < quota and total < num_questions and qtype not in {c[0] for c in chosen}:
                chosen.append((qtype, question, answer))
                per_type[qtype] += 1
                total += 1
        if chosen:
            out.append((scene, chosen))
    return out


def write_split(out: str | Path, seed: int = 1, num_questions: int = 1200) -> Path:
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    questions, answers = [], []
    for i, (scene, chosen) in enumerate(generate(seed, num_questions)):
        name = f"{i:05d}.png"
        draw(scene).save(out / "images" / name)
        for qtype, question, answer in chosen:
            qid = len(questions)
            questions.append({"question_id": qid, "image": name, "text": question + SUFFIX, "category": qtype})
            answers.append({"question_id": qid, "answer": answer, "category": qtype})
    write_text_atomic(out / "questions.jsonl", "".join(json.dumps(q) + "\n" for q in questions))
    write_text_atomic(out / "answers.jsonl", "".join(json.dumps(a) + "\n" for a in answers))
    return out


def normalise(text: str) -> str:
    return text.strip().lower().rstrip(".").strip()


def score(truth: list[dict], answers: list[dict]) -> dict:
    """Accuracy x100 per question type and overall ("reported"); unanswered and failed answers count wrong."""
    by_id = {a["question_id"]: a for a in answers}
    right, seen = Counter(), Counter()
    failed = missing = 0
    for t in truth:
        seen[t["category"]] += 1
        answer = by_id.get(t["question_id"])
        if answer is None:
            missing += 1
            continue
        if is_failed(answer):
            failed += 1
            continue
        right[t["category"]] += normalise(answer["text"]) == normalise(t["answer"])
    per_type = {k: 100.0 * right[k] / seen[k] for k in QUESTION_TYPES if seen[k]}
    total = sum(seen.values())
    return {
        "reported": 100.0 * sum(right.values()) / total if total else 0.0,
        "per_type": per_type,
        "questions": total,
        "failed": failed,
        "missing": missing,
    }


def main(argv: list[str] | None = None) -> dict | Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write")
    w.add_argument("--out", required=True)
    w.add_argument("--seed", type=int, default=1)
    w.add_argument("--questions", type=int, default=1200)
    s = sub.add_parser("score")
    s.add_argument("--data", required=True)
    s.add_argument("--result-file", required=True)
    args = parser.parse_args(argv)
    if args.command == "write":
        out = write_split(args.out, args.seed, args.questions)
        print(out)
        return out
    truth = read_jsonl(require(Path(args.data) / "answers.jsonl", "synthetic ground truth", SECTION))
    metrics = score(truth, read_jsonl(require(args.result_file, "answers file", SECTION)))
    for qtype, acc in metrics["per_type"].items():
        print(f"{qtype:<10}{acc:7.2f}")
    print(f"{'overall':<10}{metrics['reported']:7.2f}  ({metrics['questions']} questions, {metrics['failed']} failed)")
    return metrics


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
