"""One switch for every pruning method: `--method` / `METHOD`, with each method's parameters as flags and the
SparseVLM reference's environment variables (`RETAIN_TOKN`, `USE_VERSION`).

The budget (`--retained-tokens` / `RETAIN_TOKN`, default 192) means, per method:
- sparsevlm: the schedule's equal tokens (layer-averaged visual tokens, reference convention);
- fastv: visual tokens kept from layer K on (or `--fastv-r`, the dropped fraction, instead);
- fastervlm, random, uniform: visual tokens entering the LLM, per image.
On LLaVA-NeXT the budget is the image's total against the papers' nominal 2,880 tokens, scaled to each image's
own count (`llava.sparse.budget`); `--retained-ratio` gives a fraction instead, and FasterVLM's `--visual-token-num`
a count per view. Newline tokens are kept unless `--prune-newlines`.
Every method reports equal tokens, FLOPs and timing the same way (`llava.sparse.accounting`).

Resolution, read when the model is built (never at import): an explicit `--method` wins, then `METHOD`; without
either, any SparseVLM setting (`--sparse`, `--retained-tokens`, `--sparse-version`, `RETAIN_TOKN`, `USE_VERSION`)
selects SparseVLM, as in the reference repository; otherwise the model runs unpruned (`none`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

import llava.sparse.zoo  # noqa: F401  (registers the method zoo)
from llava.sparse.engine import PruningMethod
from llava.sparse.fastv import SCORES, FastV
from llava.sparse.pre_llm import FasterVLM, FasterVLMGlobal, RandomPruning, UniformPruning
from llava.sparse.registry import BUILTIN_FAMILIES, ZOO, BudgetArgs
from llava.sparse.sparsevlm import PRIORITY_HEADS, SparseVLM

BUILTIN_METHODS = ("none", *BUILTIN_FAMILIES)
DEFAULT_BUDGET = 192


def method_names() -> tuple[str, ...]:
    """Every method `--method` accepts: the built-in ones, then the registered zoo."""
    return BUILTIN_METHODS + tuple(name for name in ZOO if name not in BUILTIN_METHODS)


METHODS = method_names()


def add_pruning_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("visual token pruning")
    group.add_argument("--method", type=str, default=None, help=f"one of {', '.join(method_names())} (env: METHOD)")
    group.add_argument(
        "--retained-tokens",
        "--retained_tokens",
        dest="retained_tokens",
        type=int,
        default=None,
        help="token budget (env: RETAIN_TOKN; SparseVLM: the schedule's equal tokens)",
    )
    group.add_argument(
        "--sparse-version",
        dest="sparse_version",
        type=str,
        default=None,
        help="SparseVLM version: 1_0 (v1.5 schedule, default), 2_0 (SparseVLM+) or video (the reference's Video-LLaVA "
        "branch: rank-adaptive at layer 1, no budget) (env: USE_VERSION)",
    )
    group.add_argument("--sparse", action="store_true", help="SparseVLM v1.0: rank-adaptive budget, see --scale/--bias")
    group.add_argument("--scale", type=float, default=13.5, help="SparseVLM v1.0: keep = rank * scale + bias")
    group.add_argument("--bias", type=float, default=0.0, help="SparseVLM v1.0: keep = rank * scale + bias")
    group.add_argument(
        "--pruning-layers",
        type=int,
        nargs=3,
        default=None,
        help="SparseVLM: the three layers after which it prunes (default 2 6 15, the reference's and the public "
        "Qwen port's; scaled to depth: 2 5 13 for 28 layers, 2 7 17 for 36)",
    )
    group.add_argument("--priority-heads", type=int, default=PRIORITY_HEADS, help="SparseVLM+ (2_0) head count")
    group.add_argument("--fastv-k", type=int, default=2, help="FastV: layers that see every token (score at K-1)")
    group.add_argument("--fastv-r", type=float, default=None, help="FastV: fraction of image tokens dropped")
    group.add_argument(
        "--fastv-score",
        type=str,
        default="last",
        choices=SCORES,
        help="FastV: last prompt token's row (released code) or all-query mean (paper)",
    )
    group.add_argument(
        "--retained-ratio",
        "--retained_ratio",
        dest="retained_ratio",
        type=float,
        default=None,
        help="budget as a fraction of each image's visual tokens instead of a count (env: RETAIN_RATIO)",
    )
    group.add_argument(
        "--visual-token-num",
        "--visual_token_num",
        dest="visual_token_num",
        type=int,
        default=None,
        help="FasterVLM's own flag: tokens kept per view (LLaVA-NeXT: base view and every crop); implies fastervlm",
    )
    group.add_argument(
        "--fastervlm-mode",
        choices=("view", "global"),
        default="view",
        help="FasterVLM on LLaVA-NeXT: per-view top-k as the reference (its grid rule, no unpadding, no newline "
        "tokens) or one ranking over the whole unpadded block (newline tokens kept)",
    )
    group.add_argument(
        "--prune-newlines",
        action="store_true",
        help="LLaVA-NeXT: let in-LLM methods rank and drop the newline tokens (kept by default)",
    )
    for spec in ZOO.values():
        if spec.add_args is not None:
            spec.add_args(group)
    group.add_argument(
        "--pruning-seed",
        type=int,
        default=0,
        help="seed of the methods' randomness (SparseVLM's clustering noise); -1 = unseeded",
    )


def pruning_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> PruningMethod:
    """The method the flags (and, where a flag is absent, the environment) ask for."""
    env = os.environ if env is None else env
    method = _method_from_args(args, env)
    method.prune_newlines = getattr(args, "prune_newlines", False)
    return method


def _method_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> PruningMethod:
    budget = args.retained_tokens if args.retained_tokens is not None else _env_int(env, "RETAIN_TOKN")
    ratio = getattr(args, "retained_ratio", None)
    if ratio is None and env.get("RETAIN_RATIO"):
        ratio = float(env["RETAIN_RATIO"])
    view_tokens = getattr(args, "visual_token_num", None)
    version = args.sparse_version or env.get("USE_VERSION") or None
    method = args.method or env.get("METHOD") or None
    if method is None and view_tokens is not None:
        method = "fastervlm"
    if method is None:
        asked = args.sparse or budget is not None or ratio is not None or version is not None
        method = "sparsevlm" if asked else "none"
    if view_tokens is not None and method != "fastervlm":
        raise ValueError(f"--visual-token-num is FasterVLM's per-view budget; it does not apply to --method {method}")
    if ratio is not None and budget is not None and args.retained_tokens is not None:
        raise ValueError("Give either --retained-tokens or --retained-ratio, not both")
    seed = None if args.pruning_seed is not None and args.pruning_seed < 0 else args.pruning_seed
    if ratio is not None:
        budget = None
    elif budget is None:
        budget = DEFAULT_BUDGET
    if method == "none":
        return PruningMethod()
    if method == "sparsevlm":
        if args.sparse:
            return SparseVLM("v1.0", scale=args.scale, bias=args.bias, seed=seed)
        layers = getattr(args, "pruning_layers", None)
        return SparseVLM(
            version or "1_0", budget, priority_heads=args.priority_heads, seed=seed, ratio=ratio, pruning_layers=layers
        )
    if method == "fastv":
        drop = args.fastv_r if ratio is None else 1 - ratio
        return FastV(args.fastv_k, budget, drop, args.fastv_score)
    if method == "fastervlm":
        kind = FasterVLMGlobal if getattr(args, "fastervlm_mode", "view") == "global" else FasterVLM
        return kind(budget, view_tokens, ratio)
    if method == "random":
        return RandomPruning(budget, seed, ratio=ratio)
    if method == "uniform":
        return UniformPruning(budget, ratio=ratio)
    if method in ZOO:  # the method decides what an absent budget means (its own knob's default, or 192)
        given = args.retained_tokens if args.retained_tokens is not None else _env_int(env, "RETAIN_TOKN")
        resolved = BudgetArgs(
            tokens=None if ratio is not None else given, ratio=ratio, default=DEFAULT_BUDGET, seed=seed
        )
        return ZOO[method].build(args, resolved)
    raise ValueError(
        f"Unknown pruning method {method!r} (--method / METHOD); choose one of: {', '.join(method_names())}"
    )


def pruning_from_env(
    env: Mapping[str, str] | None = None, model_path: str | None = None, model_base: str | None = None
) -> PruningMethod:
    """The method the environment alone asks for (what `load_pretrained_model` uses by default), built as the
    command line would build it for `--model-path model_path --model-base model_base`."""
    parser = argparse.ArgumentParser()
    add_pruning_args(parser)
    args = parser.parse_args([])
    args.model_path, args.model_base = model_path, model_base
    return pruning_from_args(args, env)


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer token budget") from None
