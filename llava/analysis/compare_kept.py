"""Several pruning methods on one image and question, side by side: each method's kept-token map
(`llava.analysis.kept_map`) with its answer under it.

    python -m llava.analysis.compare_kept --model-path P --image IMG --query Q \\
        --methods fastv-64 sparsevlm-1_0-64 sparsevlm-2_0-64 fastervlm-64 random-64 --out fig.png

A method spec is NAME, NAME-BUDGET or (SparseVLM) sparsevlm-VERSION-BUDGET; NAME is any `--method` name
(`llava.sparse.methods.method_names`) and BUDGET the retained visual tokens (default `--budget`, else the method's
own default). Any other pruning flag (`--fastv-k`, `--pruning-seed`, ...) applies to every method. `--video-file`
replaces `--image` on video checkpoints.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from llava.analysis.kept_map import BACKGROUND, TEXT, _font, save_kept_map
from llava.sparse.methods import method_names, pruning_from_args


def parse_spec(spec: str) -> dict:
    """{"method", "retained_tokens", "sparse_version"} of NAME, NAME-BUDGET or sparsevlm-VERSION[-BUDGET]."""
    names = method_names()
    if spec in names:
        return {"method": spec, "retained_tokens": None, "sparse_version": None}
    head, _, tail = spec.rpartition("-")
    budget = None
    if head and tail.isdigit():
        spec, budget = head, int(tail)
    version = None
    if spec not in names and spec.startswith("sparsevlm-"):
        spec, version = "sparsevlm", spec.removeprefix("sparsevlm-")
    if spec not in names:
        raise ValueError(
            f"Unknown method spec {spec!r}: use NAME, NAME-BUDGET or sparsevlm-VERSION-BUDGET, NAME one of "
            + ", ".join(names)
        )
    return {"method": spec, "retained_tokens": budget, "sparse_version": version}


def method_args(args: argparse.Namespace, spec: str) -> argparse.Namespace:
    """`args` with the pruning flags of one method spec."""
    parsed = parse_spec(spec)
    out = copy.copy(args)
    out.method = parsed["method"]
    out.retained_tokens = parsed["retained_tokens"] if parsed["retained_tokens"] is not None else args.budget
    out.sparse_version = parsed["sparse_version"] or args.sparse_version
    return out


def side_by_side(pictures: list[Image.Image], labels: list[str], title: str | None = None) -> Image.Image:
    """The pictures in one row, top-aligned, each under its label."""
    font, pad, label_h = _font(18), 12, 26
    title_lines = title.splitlines() if title else []
    title_h = 24 * len(title_lines) + (8 if title_lines else 0)  # a question may span lines (answer-format suffix)
    width = pad + sum(p.width + pad for p in pictures)
    height = title_h + label_h + max(p.height for p in pictures) + pad
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    pen = ImageDraw.Draw(canvas)
    for i, line in enumerate(title_lines):
        pen.text((pad, 6 + 24 * i), line, fill=TEXT, font=font)
    x = pad
    for picture, label in zip(pictures, labels, strict=True):
        pen.text((x, title_h + 4), label, fill=TEXT, font=font)
        canvas.paste(picture, (x, title_h + label_h))
        x += picture.width + pad
    return canvas


def compare(args: argparse.Namespace, loaded=None) -> tuple[Image.Image, dict[str, str]]:
    """(the figure, each method's answer) for `args.methods` on `args.image` / `args.query`."""
    from llava.eval.run_llava import eval_model
    from llava.model_args import load_from_args

    specs = [method_args(args, spec) for spec in args.methods]
    methods = [pruning_from_args(spec) for spec in specs]
    if loaded is None:  # load with a method that needs the whole tower, if any, so that every method can run
        first = next((i for i, m in enumerate(methods) if getattr(m, "needs_full_tower", False)), 0)
        loaded = load_from_args(specs[first])
    model = loaded[1]
    answers, pictures = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (spec, ns, method) in enumerate(zip(args.methods, specs, methods, strict=True)):
            model.set_pruning(method)
            ns.image_file, ns.save_kept_map = args.image, str(Path(tmp) / f"{i}.png")
            answers[spec] = eval_model(ns, loaded)
            with Image.open(ns.save_kept_map) as picture:
                pictures.append(picture.convert("RGB"))
    figure = side_by_side(pictures, list(args.methods), f"Q: {args.query}")
    return figure, answers


def build_parser() -> argparse.ArgumentParser:
    from llava.eval.run_llava import build_parser as run_parser

    parser = run_parser()
    parser.description = __doc__
    parser.add_argument("--image", type=str, default=None, help="the image (same as --image-file)")
    parser.add_argument("--methods", nargs="+", required=True, help="NAME, NAME-BUDGET or sparsevlm-VERSION-BUDGET")
    parser.add_argument("--budget", type=int, default=None, help="budget of specs without one")
    parser.add_argument("--out", type=str, required=True, help="the PNG to write")
    for group in parser._mutually_exclusive_groups:  # --image may replace the required --image-file / --video-file
        group.required = False
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.image = args.image or args.image_file
    if args.image is None and args.video_file is None:
        raise SystemExit("give --image (or --video-file)")
    if args.video_file is not None:
        args.image = None
    figure, answers = compare(args)
    save_kept_map(args.out, figure)
    for spec, answer in answers.items():
        print(f"{spec}: {answer}")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
