"""The method zoo's registry: each method module registers its name, its own command-line flags and how it is built
from them, so `llava.sparse.methods` (`--method NAME` / `METHOD`) serves every method without knowing each one.

A method module does

    @register("divprune", add_args=_add_args, help="diversity-maximising subset of the projected tokens")
    def _build(args, budget):
        return DivPrune(budget.tokens, budget.ratio)

and is imported by `llava.sparse.zoo`. `families` says which model families a method applies to (every one unless
it says otherwise); a method refusing a model names the methods that do apply from here
(`methods_that_apply`), so the lists in the errors never go stale.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class BudgetArgs:
    """The budget flags every method shares, resolved: `tokens` (`--retained-tokens` / `RETAIN_TOKN`, None when a
    ratio is given or the user gave neither), `ratio` (`--retained-ratio` / `RETAIN_RATIO`), `default` (what the
    budget is when the user gave neither: 192), and `seed` (`--pruning-seed`, None = unseeded)."""

    tokens: int | None
    ratio: float | None
    default: int
    seed: int | None

    @property
    def given(self) -> bool:
        """Whether the user gave a budget (a count or a ratio), as opposed to the default."""
        return self.tokens is not None or self.ratio is not None

    @property
    def count(self) -> int | None:
        """The token count in force (None when the budget is a ratio)."""
        if self.ratio is not None:
            return None
        return self.tokens if self.tokens is not None else self.default


LLAVA_15, LLAVA_NEXT, QWEN_VL, VIDEO_LLAVA = "LLaVA-1.5", "LLaVA-NeXT", "Qwen-VL", "Video-LLaVA"
EVERY_FAMILY = (LLAVA_15, LLAVA_NEXT, QWEN_VL, VIDEO_LLAVA)
WITH_CLS = (LLAVA_15, LLAVA_NEXT, VIDEO_LLAVA)  # towers with a [CLS] token (Qwen-VL's has none)
VIDEO = (QWEN_VL, VIDEO_LLAVA)  # families that take videos

# the methods `llava.sparse.methods` builds itself (not through the registry), in the order errors list them
BUILTIN_FAMILIES = {
    "sparsevlm": EVERY_FAMILY,
    "fastv": EVERY_FAMILY,
    "fastervlm": WITH_CLS,
    "random": EVERY_FAMILY,
    "uniform": EVERY_FAMILY,
}


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    name: str
    build: Callable[[argparse.Namespace, BudgetArgs], object]
    add_args: Callable[[argparse._ArgumentGroup], None] | None
    help: str
    families: tuple[str, ...] = EVERY_FAMILY
    video_only: bool = False


ZOO: dict[str, MethodSpec] = {}


def register(
    name: str,
    add_args: Callable | None = None,
    help: str = "",
    families: tuple[str, ...] = EVERY_FAMILY,
    video_only: bool = False,
):
    """Decorator registering `build(args, budget) -> PruningMethod` under `name`, for the model `families` it
    applies to (video clips only if `video_only`)."""

    def wrap(build):
        if name in ZOO and ZOO[name].build is not build:
            raise ValueError(f"Pruning method {name!r} is registered twice")
        if unknown := set(families) - set(EVERY_FAMILY):
            raise ValueError(f"Pruning method {name!r}: unknown families {sorted(unknown)}; use {EVERY_FAMILY}")
        ZOO[name] = MethodSpec(name, build, add_args, help, tuple(families), video_only)
        return build

    return wrap


def family_of(model) -> str:
    """The model family of a loaded model (one of EVERY_FAMILY), from its config."""
    config = model.config
    if getattr(config, "image_aspect_ratio", None) == "qwen":
        return QWEN_VL
    if getattr(config, "is_anyres", False):
        return LLAVA_NEXT
    if getattr(config, "is_video_llava", False):
        return VIDEO_LLAVA
    return LLAVA_15


def methods_for(family: str, videos: bool = True) -> tuple[str, ...]:
    """The methods that apply to `family`: the built-in ones, then the zoo's in registration order; video-only
    methods only if `videos`."""
    builtin = [name for name, families in BUILTIN_FAMILIES.items() if family in families]
    zoo = [spec.name for spec in ZOO.values() if family in spec.families and (videos or not spec.video_only)]
    return (*builtin, *zoo)


def methods_that_apply(model_or_family, videos: bool = True) -> str:
    """`Methods that apply to <family>: ...` for an error message (video-only methods marked), from the registry."""
    family = model_or_family if isinstance(model_or_family, str) else family_of(model_or_family)
    names = [
        f"{name} (video)" if name in ZOO and ZOO[name].video_only else name for name in methods_for(family, videos)
    ]
    return f"Methods that apply to {family}: {', '.join(names)}"
