"""FasterVLM's attention-shift analysis: per decoder layer, the LLM's attention over the visual tokens as four
per-key profiles (full / image queries / text queries / last token, causal-visibility normalised), averaged over the
first --num-samples image (or video) questions, next to the vision tower's [CLS] attention. Writes
`attn_shift.json` (the numbers), `attn_shift.png` (overview), `shift_layer_XX.png` (bars + heat maps per layer) and
`shift_cls.png` into --out. See `llava.analysis.attention` for the definitions and how the attention rows are
computed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llava.analysis.attention import (
    ShiftAccumulator,
    add_analysis_args,
    iter_inputs,
    plot_shift,
    read_samples,
    shift_sample,
    write_json_atomic,
)


def parse_layers(text: str | None, num_layers: int) -> list[int] | None:
    if text is None:
        return None
    layers = sorted({int(part) for part in text.split(",") if part.strip()})
    bad = [layer for layer in layers if not 0 <= layer < num_layers]
    if bad:
        raise ValueError(f"--layers {text}: layer indices must be in 0..{num_layers - 1} (0-based)")
    return layers


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__)
    add_analysis_args(parser)
    parser.add_argument(
        "--layers", type=str, default=None, help="0-based decoder layers, comma separated (default: all)"
    )
    args = parser.parse_args(argv)
    if args.num_samples < 0:
        parser.error("--num-samples must be >= 0")
    try:
        samples = read_samples(args.question_file, args.image_folder, args.num_samples or None)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))

    from tqdm import tqdm

    from llava.model_args import load_from_args

    tokenizer, model, image_processor, _ = load_from_args(args)
    try:
        layers = parse_layers(args.layers, model.config.text_config.num_hidden_layers)
    except ValueError as err:
        parser.error(str(err))
    acc, skipped = ShiftAccumulator(), []
    for sample, ids, media in tqdm(
        iter_inputs(args, samples, tokenizer, model, image_processor), total=len(samples), desc="attention shift"
    ):
        if ids is None:
            skipped.append(sample.id)
            continue
        acc.add(shift_sample(model, ids, layers=layers, **media))
    if not acc.count:
        sys.exit("no sample could be analysed (every image failed to open)")
    result = acc.result()
    result.update(
        model_path=args.model_path, question_file=args.question_file, pruning=model.pruning.describe(), skipped=skipped
    )
    out = Path(args.out)
    write_json_atomic(out / "attn_shift.json", result)
    plot_shift(result, out)
    print(f"attention shift over {acc.count} samples written to {out}", file=sys.stderr)
    return out


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
