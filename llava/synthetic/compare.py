"""Every pruning method at every budget on the bundled tiny LLaVA and the synthetic benchmark, in one table.

    python -m llava.synthetic.compare                   # 240 held-out questions, 192 / 128 / 64 tokens (~4 min)
    python -m llava.synthetic.compare --questions 1200  # the full held-out split (about 5x as long)
    python -m llava.synthetic.compare --questions 1200 --methods none random-64   # the accuracy bar only
    python -m llava.synthetic.compare --preset zoo      # the method zoo's image methods (--preset all: both)

Writes the held-out split (seed 1, never used in training) and the answers under `--out` (default
`playground/synthetic-<questions>`), as `<out>/synthetic/answers/<model>/<method>.jsonl`, so runs resume and the results
summary (`llava.eval.summarize_results`) scores them: accuracy (overall; per question type in each answer file's
scorer output), equal tokens, decoder TFLOPs and latency per method, in `<out>/results/` (markdown, CSV, plots).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llava.eval.answering import Question, add_generation_args, generate_answers, image_opener, read_questions
from llava.synthetic.benchmark import write_split

BUNDLED = Path(__file__).resolve().parents[2] / "assets" / "tiny-llava" / "llava-tiny-synthetic"


PRESETS = ("classic", "zoo", "all")
# The zoo's image methods on the bundled 20-layer model. PyramidDrop's stages move to layers 2 / 6 / 12 (its default
# 8 / 16 / 24 assume 32 layers; with the first stage at a quarter of the depth no budget under 144 is reachable).
# CDPruner is left out: it needs a CLIP text tower and tokenizer, and the bundled CLIP was trained without one.
ZOO_ROWS = (
    ("visionzip", []),
    ("vispruner", []),
    ("divprune", []),
    ("dart", []),
    ("pdrop", ["--pdrop-layers", "2", "6", "12"]),
    ("prumerge+", []),
    ("pool", []),
)


def configurations(budgets: list[int], preset: str = "classic") -> list[tuple[str, list[str]]]:
    """(tag, pruning flags) for the unpruned model and every method of the preset at every budget: "classic" the
    methods of the README's table, "zoo" the method zoo's image methods, "all" both."""
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r}: use one of {PRESETS}")
    rows = [("none", ["--method", "none"])]
    for budget in budgets:
        b = str(budget)
        if preset in ("classic", "all"):
            rows += [
                (f"sparsevlm-1_0-{b}", ["--method", "sparsevlm", "--sparse-version", "1_0", "--retained-tokens", b]),
                (f"sparsevlm-2_0-{b}", ["--method", "sparsevlm", "--sparse-version", "2_0", "--retained-tokens", b]),
                (f"fastv-{b}", ["--method", "fastv", "--retained-tokens", b]),
                (f"fastervlm-{b}", ["--method", "fastervlm", "--retained-tokens", b]),
                (f"random-{b}", ["--method", "random", "--retained-tokens", b]),
                (f"uniform-{b}", ["--method", "uniform", "--retained-tokens", b]),
            ]
        if preset in ("zoo", "all"):
            rows += [(f"{name}-{b}", ["--method", name, "--retained-tokens", b, *extra]) for name, extra in ZOO_ROWS]
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    from llava.eval import summarize_results
    from llava.model_args import load_from_args
    from llava.sparse.methods import pruning_from_args

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(BUNDLED))
    parser.add_argument("--out", type=Path, default=None, help="default: playground/synthetic-<questions>")
    parser.add_argument("--questions", type=int, default=240)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--budgets", type=int, nargs="+", default=[192, 128, 64])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--methods", nargs="+", default=None, help="only these rows, by tag prefix (e.g. none random-64)"
    )
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        default="classic",
        help="classic: SparseVLM, FastV, FasterVLM, random, uniform (the README's table); zoo: VisionZip, VisPruner, "
        "DivPrune, DART, PyramidDrop, PruMerge+, pooling; all: both",
    )
    args = parser.parse_args(argv)

    args.out = args.out or Path(f"playground/synthetic-{args.questions}")
    data = args.out / "synthetic"
    if not (data / "questions.jsonl").is_file():
        write_split(data, args.seed, args.questions)
    rows = read_questions(data / "questions.jsonl", ("question_id", "image", "text"))
    if len(rows) != args.questions:
        raise SystemExit(
            f"{data} holds a split of {len(rows)} questions, not {args.questions}: pass another --out (the answer "
            "files there are scored against that split)"
        )
    questions = [
        Question(
            r["text"],
            image_opener(data / "images" / r["image"]),
            {"question_id": r["question_id"], "prompt": r["text"]},
        )
        for r in rows
    ]
    model_name = Path(args.model).name
    loaded, full_tower = None, False
    runs = configurations(args.budgets, args.preset)
    if args.methods:
        runs = [(tag, flags) for tag, flags in runs if tag.startswith(tuple(args.methods))]
    for tag, flags in runs:
        gen_parser = argparse.ArgumentParser()
        add_generation_args(gen_parser, max_new_tokens=8)
        gen_args = gen_parser.parse_args(
            [
                "--model-path",
                args.model,
                "--question-file",
                str(data / "questions.jsonl"),
                "--answers-file",
                str(data / "answers" / model_name / f"{tag}.jsonl"),
                "--conv-mode",
                "vicuna_v1",
                "--temperature",
                "0",
                "--batch-size",
                str(args.batch),
                "--device",
                "cpu",
                *flags,
            ]
        )
        method = pruning_from_args(gen_args, env={})
        if loaded is None or (method.needs_full_tower and not full_tower):  # PruMerge reads the tower's last layer
            loaded = load_from_args(gen_args)
            full_tower = method.needs_full_tower
        loaded[1].set_pruning(method)
        generate_answers(questions, gen_args, loaded=loaded)
    return summarize_results.main(["--eval-dir", str(args.out), "--out", str(args.out / "results")])


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
