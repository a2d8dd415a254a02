"""The method zoo's registry: each method module registers its name, its own command-line flags and how it is built
from them, so `llava.sparse.methods` (`--method NAME` / `METHOD`) serves every method without knowing each one.

A method module does

    @register("divprune", add_args=_add_args, help="diversity-maximising subset of the projected tokens")
    def _build(args, budget):
        return DivPrune(budget.tokens, budget.ratio)

and is imported by `llava.sparse.zoo`.
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


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    name: str
    build: Callable[[argparse.Namespace, BudgetArgs], object]
    add_args: Callable[[argparse._ArgumentGroup], None] | None
    help: str


ZOO: dict[str, MethodSpec] = {}


def register(name: str, add_args: Callable | None = None, help: str = ""):
    """Decorator registering `build(args, budget) -> PruningMethod` under `name`."""

    def wrap(build):
        if name in ZOO and ZOO[name].build is not build:
            raise ValueError(f"Pruning method {name!r} is registered twice")
        ZOO[name] = MethodSpec(name, build, add_args, help)
        return build

    return wrap
