"""Gather every run under the evaluation folder into one table and two plots:
`python -m llava.eval.summarize_results --eval-dir playground/data/eval --out results`.

A run is an answer file `<eval-dir>/<benchmark>/answers/[<split>/]<model>/<tag>.jsonl` (the layout the scripts in
scripts/v1_5/eval write; video QA sits one folder deeper: `<eval-dir>/GPT_Zero_Shot_QA/<Set>_Zero_Shot_QA/answers/
<subset>/<model>/<tag>.jsonl`). For each one it runs the benchmark's scorer (where the score is local) and averages
the efficiency metadata of its answers. Video QA is scored by a paid GPT judge, never run here: its rows read the
judge's results, `<Set>_Zero_Shot_QA/results/<subset>/<model>/<tag>/<judge model>.json` (one row per judge), with
Accuracy (percent) as the score and the judge's 0-5 Score in `gpt_score`. Writes `results.md` (scores per model and
method, video QA as "Accuracy / Score", then efficiency per run), `results.csv` (one row per run),
`score_vs_tokens.png` and `score_vs_flops.png` (score against equal tokens and against decoder TFLOPs, one line per
method, one panel per benchmark).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import re
from collections import defaultdict
from pathlib import Path

from llava.eval import video_qa
from llava.eval.answer_files import is_failed, iter_jsonl, read_json

EFFICIENCY = (
    "equal_tokens",
    "equal_tokens_input",
    "visual_tokens",
    "newline_tokens",
    "decoder_tflops",
    "method_tflops",
    "prefill_ms",
    "total_ms",
    "kv_cache_mb",
)


def _scorer_args(bench: str, folder: Path, split: str, answers: Path, model: str, tag: str):
    """(scorer module, argv) of a benchmark whose score is computed locally; None for server / judge ones."""
    table = {
        "pope": (
            "eval_pope",
            ["--annotation-dir", folder / "coco", "--question-file", folder / "llava_pope_test.jsonl"],
        ),
        "textvqa": ("eval_textvqa", ["--annotation-file", folder / "TextVQA_0.5.1_val.json"]),
        "MME": ("eval_mme", ["--data-dir", folder, "--experiment", f"{model}-{tag}"]),
        "gqa": ("eval_gqa", ["--question-file", folder / "data" / "testdev_balanced_questions.json"]),
        "scienceqa": ("eval_science_qa", ["--base-dir", folder]),
        "seed_bench": ("eval_seed", ["--annotation-file", folder / "SEED-Bench.json"]),
        "mmbench": ("eval_mmbench", ["--annotation-file", folder / f"{split}.tsv"]),
        "mmbench_cn": ("eval_mmbench", ["--annotation-file", folder / f"{split}.tsv"]),
        "synthetic": ("llava.synthetic.benchmark", ["score", "--data", folder]),
    }
    if bench == "qbench" and split == "dev":
        return "eval_qbench", ["--question-file", str(folder / "llvisionqa_dev.json"), "--answers-file", str(answers)]
    if bench not in table:
        return None
    module, argv = table[bench]
    return module, [str(a) for a in argv] + ["--result-file", str(answers)]


def find_runs(eval_dir: Path) -> list[dict]:
    """Every answer file under <eval-dir>/<benchmark>/answers, and under the video-QA folders one level deeper."""
    runs = []
    for root in (eval_dir, eval_dir / video_qa.ROOT):
        for answers in sorted(root.glob("*/answers/**/*.jsonl")):
            rel = answers.relative_to(root)
            if any(p.endswith(".chunks") for p in rel.parts) or answers.stem.endswith("_output"):
                continue
            bench, inner = rel.parts[0], rel.parts[2:]
            if len(inner) < 2:
                continue
            runs.append(
                {
                    "benchmark": bench,
                    "split": "/".join(inner[:-2]),
                    "model": inner[-2],
                    "tag": answers.stem,
                    "answers": answers,
                    "folder": root / bench,
                }
            )
    return runs


def efficiency(answers: Path) -> dict:
    sums, counts = defaultdict(float), defaultdict(int)
    total = failed = 0
    for record in iter_jsonl(answers):
        total += 1
        failed += is_failed(record)
        for key in EFFICIENCY:
            value = record.get("metadata", {}).get(key)
            if isinstance(value, (int, float)):
                sums[key] += value
                counts[key] += 1
    out = {key: (sums[key] / counts[key] if counts[key] else None) for key in EFFICIENCY}
    return {"answers_count": total, "failed": failed, **out}


def score(run: dict, eval_dir: Path) -> tuple[float | None, str]:
    folder = run.get("folder", eval_dir / run["benchmark"])
    spec = _scorer_args(run["benchmark"], folder, run["split"], run["answers"], run["model"], run["tag"])
    if spec is None:
        return None, "scored externally"
    module, argv = spec
    import importlib

    scorer = importlib.import_module(module if "." in module else f"llava.eval.{module}")
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            metrics = scorer.main(argv)
    except (Exception, SystemExit) as err:  # one unscorable run must not hide the others
        return None, f"{type(err).__name__}: {err}".splitlines()[0][:160]
    return (metrics or {}).get("reported"), ""


def video_scores(run: dict) -> list[tuple[float | None, float | None, str]]:
    """(Accuracy, Score, note) of a video-QA run from each judge's results JSON (the judge is a paid API call, so
    it is never run here); one entry saying how to judge when there is none."""
    folder = run["folder"] / "results" / run["split"] / run["model"] / run["tag"]
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            results = read_json(path)
            note = f"judge {results['judge_model']}"
            if results.get("failures"):
                note += f", {results['failures']} judge failures left out"
            found.append((results["accuracy"], results["score"], note))
        except (OSError, ValueError, KeyError, TypeError) as err:
            found.append((None, None, f"{path.name}: {type(err).__name__}: {err}".splitlines()[0][:160]))
    script = "eval_qa_" + run["benchmark"].split("_")[0].lower() + ".sh"
    return found or [(None, None, f"not judged yet: JUDGE_MODEL=... bash scripts/v1_5/eval/{script}")]


def family(tag: str) -> str:
    """The method a tag belongs to, without its budget: sparsevlm-2_0-64 -> sparsevlm-2_0."""
    return re.sub(r"-\d+$", "", tag)


def summarize(eval_dir: str | Path, out: str | Path) -> list[dict]:
    eval_dir, out = Path(eval_dir), Path(out)
    rows = []
    for run in find_runs(eval_dir):
        if run["benchmark"] in video_qa.BENCHMARKS:
            scores = video_scores(run)
        else:
            reported, note = score(run, eval_dir)
            scores = [(reported, None, note)]
        for reported, gpt_score, note in scores:
            rows.append(
                {
                    **{k: run[k] for k in ("benchmark", "split", "model", "tag")},
                    "score": reported,
                    "gpt_score": gpt_score,
                    "note": note,
                    **efficiency(run["answers"]),
                }
            )
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(rows, out / "results.csv")
    (out / "results.md").write_text(_markdown(rows), encoding="utf-8")
    if rows:
        _plot(rows, "equal_tokens", "equal tokens (layer-averaged visual tokens)", out / "score_vs_tokens.png")
        _plot(rows, "decoder_tflops", "decoder TFLOPs per answer (prefill)", out / "score_vs_flops.png")
    return rows


def _write_csv(rows: list[dict], path: Path) -> None:
    fields = [
        "benchmark",
        "split",
        "model",
        "tag",
        "score",
        "gpt_score",
        "note",
        "answers_count",
        "failed",
        *EFFICIENCY,
    ]
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def _fmt(value, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _markdown(rows: list[dict]) -> str:
    benches = sorted({r["benchmark"] for r in rows})
    lines = ["| model | method | " + " | ".join(benches) + " |", "|---|---|" + "---|" * len(benches)]
    for model, tag in sorted({(r["model"], r["tag"]) for r in rows}):
        cells = []
        for bench in benches:
            match = [r for r in rows if (r["model"], r["tag"], r["benchmark"]) == (model, tag, bench)]
            cells.append(_cell(match[0]) if match else "")
        lines.append(f"| {model} | {tag} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| benchmark | model | method | answers | failed | visual tokens in | equal tokens | input-count | TFLOPs "
        "| method TFLOPs | prefill ms | total ms | KV MB | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['benchmark']}{'/' + r['split'] if r['split'] else ''} | {r['model']} | {r['tag']} | "
            f"{r['answers_count']} | {r['failed']} | {_visual(r)} | {_fmt(r['equal_tokens'])} | "
            f"{_fmt(r['equal_tokens_input'])} | "
            f"{_fmt(r['decoder_tflops'], 4)} | {_fmt(r['method_tflops'], 4)} | {_fmt(r['prefill_ms'])} | "
            f"{_fmt(r['total_ms'])} | {_fmt(r['kv_cache_mb'])} | {r['note']} |"
        )
    return "\n".join(lines) + "\n"


def _cell(row: dict) -> str:
    """The score; for video QA "Accuracy / Score" (the judge's 0-5 score), as papers report them."""
    if row["score"] is None:
        return ""
    if row.get("gpt_score") is None:
        return _fmt(row["score"])
    return f"{_fmt(row['score'])} / {_fmt(row['gpt_score'])}"


def _visual(row: dict) -> str:
    """Mean visual tokens entering the LLM (as FasterVLM's loader reports), with the newline share on NeXT."""
    text = _fmt(row["visual_tokens"])
    if row.get("newline_tokens"):
        text += f" (incl. {_fmt(row['newline_tokens'])} newline)"
    return text


def _plot(rows: list[dict], x_key: str, x_label: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in rows if r["score"] is not None and r[x_key] is not None]
    benches = sorted({r["benchmark"] for r in scored}) or ["(no local scores)"]
    cols = min(3, len(benches))
    fig, axes = plt.subplots(
        (len(benches) + cols - 1) // cols,
        cols,
        figsize=(5 * cols, 3.6 * ((len(benches) + cols - 1) // cols)),
        squeeze=False,
    )
    for ax, bench in zip(axes.flat, benches, strict=False):
        for (model, method), group in _groups([r for r in scored if r["benchmark"] == bench]).items():
            group.sort(key=lambda r: r[x_key])
            ax.plot([r[x_key] for r in group], [r["score"] for r in group], marker="o", label=f"{method} ({model})")
        ax.set_title(bench)
        ax.set_xlabel(x_label)
        ax.set_ylabel("score")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(benches) :]:
        ax.axis("off")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def _groups(rows: list[dict]) -> dict:
    groups: dict = defaultdict(list)
    for r in rows:
        groups[(r["model"], family(r["tag"]))].append(r)
    return groups


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--eval-dir", default="playground/data/eval")
    parser.add_argument("--out", default="results")
    args = parser.parse_args(argv)
    rows = summarize(args.eval_dir, args.out)
    print((Path(args.out) / "results.md").read_text(encoding="utf-8"))
    return rows


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
