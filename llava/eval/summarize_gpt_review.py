"""LLaVA-Bench-in-the-Wild: summarize GPT-4 judge reviews into the relative score.

Each review record (a line of a review jsonl) carries `category` (llava_bench_conv / _detail / _complex) and the
judge's two scores, GPT-4's reference answer first and the model's second: `tuple` or `scores` = [s_gpt4, s_model],
else the first line "s1 s2" of the judge's `content`. Per category and overall:

    relative score = mean(s_model) / mean(s_gpt4) * 100,

with both means (on the judge's 1-10 scale; LLaVA's script prints them x10). Records that carry an "error" field or
whose scores cannot be read are left out of the means and counted in "failed".

The reported LLaVA-W number (LLaVA-1.5: 7B 65.4, 13B 72.5) is the overall relative score averaged over 3 judge runs
(3 review files; eval.zip's 7B reviews give 64.8 / 65.3 / 66.3). "reported" is that mean over the files given:

    python -m llava.eval.summarize_gpt_review -f reviews/llava-v1.5-7b-run1.jsonl reviews/llava-v1.5-7b-run2.jsonl \\
        reviews/llava-v1.5-7b-run3.jsonl

No judge ships with this package. The reviews come from LLaVA's `llava/eval/eval_gpt_review_bench.py` (external, needs
an OpenAI API key in OPENAI_API_KEY; the 1.5 paper used gpt-4-0314 at temperature 0.2 with the rule set
`llava/eval/table/rule.json`, rules llava_bench_conv / _detail / _complex), run once per judge run:

    python llava/eval/eval_gpt_review_bench.py \\
        --question playground/data/eval/llava-bench-in-the-wild/questions.jsonl \\
        --context playground/data/eval/llava-bench-in-the-wild/context.jsonl \\
        --rule llava/eval/table/rule.json \\
        --answer-list playground/data/eval/llava-bench-in-the-wild/answers_gpt4.jsonl \\
                      playground/data/eval/llava-bench-in-the-wild/answers/llava-v1.5-7b.jsonl \\
        --output playground/data/eval/llava-bench-in-the-wild/reviews/llava-v1.5-7b.jsonl

Judge drift: other GPT-4 versions move these numbers by several points; report them apart (spec section 5).
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from llava.eval.answer_files import is_failed, read_jsonl, require_dir, require_file

SECTION = "LLaVA-Bench"
OVERALL = "all"


def parse_score_pair(content: str) -> tuple[float, float] | None:
    """The two scores on the first line of the judge's text ("8 7", "8, 7"), or None."""
    first_line = content.strip().split("\n", 1)[0] if content else ""
    parts = re.split(r"[\s,]+", first_line.strip())
    if len(parts) != 2:
        return None
    try:
        pair = float(parts[0]), float(parts[1])
    except ValueError:
        return None
    return pair if all(math.isfinite(x) for x in pair) else None


def review_scores(record: dict) -> tuple[float, float] | None:
    """(s_gpt4, s_model) of a review record from `tuple`, `scores` or the judge's `content`; None if unreadable.

    LLaVA's judge script writes [-1, -1] when it cannot parse the judge; that is unreadable too."""
    for key in ("tuple", "scores"):
        if key in record:
            value = record[key]
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                return None
            try:
                pair = float(value[0]), float(value[1])
            except (TypeError, ValueError):
                return None
            return pair if all(x >= 0 and math.isfinite(x) for x in pair) else None
    return parse_score_pair(str(record.get("content") or ""))


def _summary(pairs: Sequence[tuple[float, float]]) -> dict:
    gpt4 = sum(p[0] for p in pairs) / len(pairs)
    model = sum(p[1] for p in pairs) / len(pairs)
    return {
        "relative": 100 * model / gpt4 if gpt4 else float("nan"),
        "gpt4_mean": gpt4,
        "model_mean": model,
        "n": len(pairs),
    }


def summarize_reviews(reviews: Sequence[dict]) -> dict:
    """Per-category and overall ("all") relative scores of one judge run."""
    by_category: dict[str, list[tuple[float, float]]] = defaultdict(list)
    failed = 0
    for record in reviews:
        pair = None if is_failed(record) else review_scores(record)
        if pair is None:
            failed += 1
            continue
        by_category[str(record.get("category") or "uncategorized")].append(pair)
    if not by_category:
        raise ValueError("no review with readable scores")
    categories = {name: _summary(pairs) for name, pairs in sorted(by_category.items())}
    overall = _summary([pair for pairs in by_category.values() for pair in pairs])
    return {"reported": overall["relative"], "failed": failed, "overall": overall, "categories": categories}


def summarize_runs(runs: Sequence[Sequence[dict]]) -> dict:
    """Each run summarized, and the per-category and overall relative scores averaged over the runs."""
    if not runs:
        raise ValueError("no review runs")
    summaries = [summarize_reviews(reviews) for reviews in runs]
    names = sorted({name for summary in summaries for name in summary["categories"]})
    mean = {
        name: _mean([s["categories"][name]["relative"] for s in summaries if name in s["categories"]]) for name in names
    }
    mean[OVERALL] = _mean([s["overall"]["relative"] for s in summaries])
    return {
        "reported": mean[OVERALL],
        "failed": sum(s["failed"] for s in summaries),
        "runs": summaries,
        "mean": mean,
    }


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def read_reviews(path: str | os.PathLike) -> list[dict]:
    return read_jsonl(require_file(path, "Review file", SECTION))


def summarize_files(paths: Sequence[str | os.PathLike]) -> dict:
    """summarize_runs over review jsonl files, one judge run per file."""
    return summarize_runs([read_reviews(path) for path in paths])


def format_table(result: dict, names: Sequence[str]) -> str:
    lines = []
    header = f"{'category':<28} {'relative':>8} {'gpt4':>6} {'model':>6} {'n':>4}"
    for name, summary in zip(names, result["runs"], strict=True):
        lines += [str(name), header, "-" * len(header)]
        rows = [*summary["categories"].items(), (OVERALL, summary["overall"])]
        for category, s in rows:
            lines.append(
                f"{category:<28} {s['relative']:>8.1f} {s['gpt4_mean']:>6.2f} {s['model_mean']:>6.2f} {s['n']:>4}"
            )
        if summary["failed"]:
            lines.append(f"failed (error or unreadable scores, left out): {summary['failed']}")
        lines.append("")
    if len(names) > 1:
        lines.append(f"mean over {len(names)} runs (relative score)")
        for category, value in result["mean"].items():
            lines.append(f"{category:<28} {value:>8.1f}")
    lines.append(f"reported (overall relative score, mean over {len(names)} run(s)): {result['reported']:.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Summarize LLaVA-Bench GPT-4 reviews into relative scores.")
    parser.add_argument("-f", "--files", nargs="+", default=[], help="review jsonl files, one per judge run")
    parser.add_argument("-d", "--dir", help="a folder whose *.jsonl files are the review runs")
    args = parser.parse_args(argv)
    paths = [Path(p) for p in args.files]
    if args.dir:
        paths += sorted(require_dir(args.dir, "Review folder", SECTION).glob("*.jsonl"))
    if not paths:
        parser.error("give review files with -f, or a folder of them with -d")
    result = summarize_files(paths)
    print(format_table(result, [str(p) for p in paths]))
    return result


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
