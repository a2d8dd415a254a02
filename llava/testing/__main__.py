"""`python -m llava.testing DIR [--hf]`: write a tiny random LLaVA-1.5 checkpoint (and its CLIP tower) into DIR."""

from __future__ import annotations

import argparse
from pathlib import Path

from llava.testing.checkpoints import convert_to_llava_hf, write_tiny_pair


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--hf", action="store_true", help="also write the llava-hf conversion")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    llava, clip = write_tiny_pair(args.folder, seed=args.seed)
    print(f"original-format checkpoint: {llava}\nCLIP tower: {clip}")
    if args.hf:
        print(f"llava-hf checkpoint: {convert_to_llava_hf(llava, args.folder / 'llava-1.5-tiny-hf')}")


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
