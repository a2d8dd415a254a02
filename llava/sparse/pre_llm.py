"""Pruning before the LLM: keep k of each image's patches, chosen by FasterVLM's [CLS] attention, at random, or on
a spatially even grid. The kept tokens stay in raster order and are the only ones projected; the LLM then runs
unmodified on a shorter sequence with contiguous positions (LLaVA rebuilds them), so the budget is simply the
number of visual tokens entering the LLM."""

from __future__ import annotations

import math

import torch

from llava.sparse.engine import PruningMethod


class PreLLMTopK(PruningMethod):
    """Shared budget handling: `retained_tokens` patches per image (all of them when it equals the patch count)."""

    def __init__(self, retained_tokens: int) -> None:
        self.retained_tokens = retained_tokens

    def describe(self) -> str:
        return f"{self.name} k={self.retained_tokens}"

    def validate(self, model) -> None:
        patches = model.get_vision_tower().num_patches
        if not 0 < self.retained_tokens <= patches:
            raise ValueError(
                f"{self.name}: --retained-tokens {self.retained_tokens} must be in 1..{patches} (patches per image)"
            )

    def select_before_llm(self, features, cls_attention):
        if self.retained_tokens >= features.shape[1]:
            return None
        return self.choose(features, cls_attention).sort(dim=1).values

    def choose(self, features: torch.Tensor, cls_attention: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


class FasterVLM(PreLLMTopK):
    """Top-k patches by the head-averaged attention of the [CLS] query in the tower's selected layer."""

    name = "fastervlm"
    needs_cls_attention = True

    def choose(self, features, cls_attention):
        return torch.topk(cls_attention, self.retained_tokens, dim=1).indices


class RandomPruning(PreLLMTopK):
    """k patches drawn uniformly without replacement; every image draws from a generator seeded with `seed`, so
    a sample keeps the same patches alone or in any batch."""

    name = "random"

    def __init__(self, retained_tokens: int, seed: int | None = 0) -> None:
        super().__init__(retained_tokens)
        self.seed = seed

    def choose(self, features, cls_attention):
        rows = []
        for _ in range(features.shape[0]):
            generator = None if self.seed is None else torch.Generator().manual_seed(self.seed)
            rows.append(torch.randperm(features.shape[1], generator=generator)[: self.retained_tokens])
        return torch.stack(rows).to(features.device)


def uniform_grid(side: int, count: int) -> torch.Tensor:
    """Raster indices of `count` patches spread evenly over a side x side grid.

    The grid has r rows and c columns with r * c == count, r <= c, as square as possible (192 -> 12 x 16, 128 ->
    8 x 16, 64 -> 8 x 8), each row/column at the centre of an equal band. When no such factorisation fits, the
    smallest square grid holding `count` is thinned evenly in raster order."""
    pairs = [(r, count // r) for r in range(1, int(math.isqrt(count)) + 1) if count % r == 0]
    pairs = [(r, c) for r, c in pairs if c <= side]
    if pairs:
        rows, cols = pairs[-1]
        return _grid(side, rows, cols)
    n = math.isqrt(count - 1) + 1
    full = _grid(side, n, n)
    pick = torch.linspace(0, len(full) - 1, count).round().long()
    return full[pick]


def _grid(side: int, rows: int, cols: int) -> torch.Tensor:
    r = ((torch.arange(rows) + 0.5) * side / rows).floor().long()
    c = ((torch.arange(cols) + 0.5) * side / cols).floor().long()
    return (r[:, None] * side + c[None, :]).flatten()


class UniformPruning(PreLLMTopK):
    """k patches on a spatially even grid (`uniform_grid`), the same for every image."""

    name = "uniform"

    def choose(self, features, cls_attention):
        side = math.isqrt(features.shape[1])
        if side * side != features.shape[1]:
            raise ValueError(f"uniform pruning needs a square patch grid, got {features.shape[1]} patches")
        grid = uniform_grid(side, self.retained_tokens).to(features.device)
        return grid[None].expand(features.shape[0], -1)
