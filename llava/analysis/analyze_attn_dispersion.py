"""FasterVLM's attention-dispersion analysis: the vision tower's [CLS] attention vs the last prompt token's attention
over the visual tokens at one decoder layer (default 1, i.e. the second layer, where FastV scores), as the averaged
sorted-cumulative attention mass (CDF) and the histogram of max-normalised attention values, over the first
--num-samples image (or video) questions. Writes `attn_dispersion.json` and `attn_dispersion.png` into --out. See
`llava.analysis.attention` for the definitions and how the attention row is computed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llava.analysis.attention import (
    NO_CLS_NOTE,
    DispersionAccumulator,
    add_analysis_args,
    cls_attention,
    iter_inputs,
    last_token_attention,
    plot_dispersion,
    read_samples,
    write_json_atomic,
)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__)
    add_analysis_args(parser)
    parser.add_argument("--layer", type=int, default=1, help="0-based decoder layer of the last-token row (default 1)")
    parser.add_argument("--bins", type=int, default=200, help="histogram bins over [0, 1] (default 200)")
    args = parser.parse_args(argv)
    if args.num_samples < 0:
        parser.error("--num-samples must be >= 0")
    if args.bins < 1:
        parser.error("--bins must be >= 1")
    try:
        samples = read_samples(args.question_file, args.image_folder, args.num_samples or None)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))

    from tqdm import tqdm

    from llava.model_args import load_from_args

    tokenizer, model, image_processor, _ = load_from_args(args)
    num_layers = model.config.text_config.num_hidden_layers
    if not 0 <= args.layer < num_layers:
        parser.error(f"--layer {args.layer}: the model has decoder layers 0..{num_layers - 1}")
    acc, skipped = DispersionAccumulator(args.bins), []
    for sample, ids, media in tqdm(
        iter_inputs(args, samples, tokenizer, model, image_processor), total=len(samples), desc="attention dispersion"
    ):
        if ids is None:
            skipped.append(sample.id)
            continue
        acc.add("last", last_token_attention(model, ids, layer=args.layer, **media))
        cls = cls_attention(model, **media)
        for view in [] if cls is None else cls:
            acc.add("cls", view)
    if not acc.count:
        sys.exit("no sample could be analysed (every image failed to open)")
    result = acc.result()
    if "cls" not in acc.count:
        result["cls_note"] = NO_CLS_NOTE
    result.update(
        model_path=args.model_path,
        question_file=args.question_file,
        layer=args.layer,
        pruning=model.pruning.describe(),
        skipped=skipped,
    )
    out = Path(args.out)
    write_json_atomic(out / "attn_dispersion.json", result)
    plot_dispersion(result, out / "attn_dispersion.png", args.layer)
    print(f"attention dispersion over {acc.count['last']} samples written to {out}", file=sys.stderr)
    return out


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
