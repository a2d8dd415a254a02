"""Pruning before the LLM: keep k of each view's patches, chosen by FasterVLM's [CLS] attention, at random, or on
a spatially even grid. The kept tokens stay in merge order (raster order of each view; LLaVA-NeXT: base view, then
the crop grid) and are the only ones projected; the LLM then runs unmodified on a shorter sequence with contiguous
positions (LLaVA rebuilds them), so the budget is simply the number of visual tokens entering the LLM.

On LLaVA-NeXT every view keeps the same k, the budget's share of one view (`llava.sparse.budget`), or exactly
`view_tokens` (FasterVLM's `--visual-token-num`). FasterVLM runs in its reference's mode there: its own grid
rule and the 'spatial' merge without unpadding or newline tokens; `FasterVLMGlobal` instead ranks all views
together in the checkpoint's own merge (newline tokens kept)."""

from __future__ import annotations

import math

import torch

from llava.sparse.budget import Budget
from llava.sparse.engine import PruningMethod, patches_per_view
from llava.sparse.registry import methods_that_apply


class PreLLMTopK(PruningMethod):
    """Shared budget handling: the budget's share of each view's patches (all of them when it covers the view),
    or exactly `view_tokens` per view."""

    def __init__(self, retained_tokens: int | None, view_tokens: int | None = None, ratio: float | None = None):
        self.retained_tokens = retained_tokens
        self.view_tokens = view_tokens
        self.budget = None if view_tokens is not None else Budget(retained_tokens, ratio)

    def describe(self) -> str:
        if self.view_tokens is not None:
            return f"{self.name} k={self.view_tokens}/view"
        return f"{self.name} k={self.budget.describe()}"

    def validate(self, model) -> None:
        patches = patches_per_view(model)
        if self.needs_cls_attention and not hasattr(model.get_vision_tower(), "forward_with_cls_attention"):
            raise ValueError(
                f"{self.name} ranks patches by the vision tower's [CLS] attention, and this model's tower has no "
                f"[CLS] token (Qwen-VL). {methods_that_apply(model)}."
            )
        if patches is None:  # each image has its own count: the budget is per image
            if self.view_tokens is not None:
                raise ValueError(f"{self.name}: --visual-token-num (per view) needs a model with fixed views")
            if self.retained_tokens is not None and self.retained_tokens < 1:
                raise ValueError(f"{self.name}: --retained-tokens must be at least 1")
            return
        if self.view_tokens is not None:
            if not 0 < self.view_tokens <= patches:
                raise ValueError(f"{self.name}: {self.view_tokens} tokens per view must be in 1..{patches}")
            return
        nominal = self.nominal or patches
        if self.retained_tokens is not None and not 0 < self.retained_tokens <= nominal:
            raise ValueError(
                f"{self.name}: --retained-tokens {self.retained_tokens} must be in 1..{nominal} (visual tokens of "
                "the model's nominal image)"
            )

    def view_count(self, patches: int) -> int:
        """Patches each view keeps."""
        if self.view_tokens is not None:
            return min(self.view_tokens, patches)
        return self.budget.count(patches, self.nominal or patches)

    def select_before_llm(self, features, cls_attention):
        count = self.view_count(features.shape[1])
        if count >= features.shape[1]:
            return None
        return self.choose(features, cls_attention, count).sort(dim=1).values

    def choose(self, features: torch.Tensor, cls_attention: torch.Tensor | None, count: int) -> torch.Tensor:
        raise NotImplementedError


class FasterVLM(PreLLMTopK):
    """Top-k patches per view by the head-averaged attention of the [CLS] query in the tower's selected layer;
    on LLaVA-NeXT with the reference's grid rule and 'spatial' merge."""

    name = "fastervlm"
    needs_cls_attention = True
    grid_rule = "fastervlm"
    merge_type = "spatial"

    def choose(self, features, cls_attention, count):
        return torch.topk(cls_attention, count, dim=1).indices


class FasterVLMGlobal(FasterVLM):
    """FasterVLM ranking every patch of the merged block at once (one [CLS] score per patch, from its own view),
    in the checkpoint's merge (LLaVA-NeXT: unpadded, newline tokens kept). The budget is the block's total."""

    name = "fastervlm-global"
    grid_rule = None
    merge_type = None

    def select_tokens(self, tokens, features, cls_attention):
        patch = (tokens.view >= 0) & (tokens.patch >= 0)  # not newline, merged or [CLS] tokens
        count = int(patch.sum())
        if self.view_tokens is not None:
            keep_count = min(count, self.view_tokens * tokens.num_views)
        else:
            keep_count = self.budget.count(count, self.nominal or count)
        if keep_count >= count:
            return None
        scores = cls_attention.cpu()[tokens.view[patch], tokens.patch[patch]]
        chosen = torch.nonzero(patch).flatten()[torch.topk(scores, keep_count).indices]
        return torch.cat([chosen, torch.nonzero(tokens.is_newline).flatten()]).sort().values


class RandomPruning(PreLLMTopK):
    """k patches drawn uniformly without replacement; every image draws from a generator seeded with `seed`, so
    a sample keeps the same patches alone or in any batch."""

    name = "random"

    def __init__(self, retained_tokens, seed: int | None = 0, view_tokens=None, ratio=None) -> None:
        super().__init__(retained_tokens, view_tokens, ratio)
        self.seed = seed

    def choose(self, features, cls_attention, count):
        rows = []
        for _ in range(features.shape[0]):
            generator = None if self.seed is None else torch.Generator().manual_seed(self.seed)
            rows.append(torch.randperm(features.shape[1], generator=generator)[:count])
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

    def select_tokens(self, tokens, features, cls_attention):
        if tokens.grid_hw is None:
            return super().select_tokens(tokens, features, cls_attention)
        # a non-square grid (Qwen-VL): stride sampling in raster order, per view (a video: per frame pair)
        per_view = [torch.nonzero(tokens.view == v).flatten() for v in range(tokens.num_views)]
        count = self.view_count(len(per_view[0]))
        if count >= len(per_view[0]):
            return None
        return torch.cat([idx[torch.linspace(0, len(idx) - 1, count).round().long()] for idx in per_view])

    def choose(self, features, cls_attention, count):
        side = math.isqrt(features.shape[1])
        if side * side != features.shape[1]:
            raise ValueError(f"uniform pruning needs a square patch grid, got {features.shape[1]} patches")
        grid = uniform_grid(side, count).to(features.device)
        return grid[None].expand(features.shape[0], -1)
