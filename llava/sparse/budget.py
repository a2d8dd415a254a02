"""Budgets: the one place where the number a user types becomes the number of visual tokens a method keeps.

A budget is stated against the model's *nominal* visual token count: 576 for LLaVA-1.5, and for LLaVA-NeXT the
papers' 2,880 (five views of 576: the base view and the largest crop grid of the pinpoints, without unpadding or
newline tokens), so `RETAIN_TOKN=640` on NeXT is the papers' "640 tokens" row. Real NeXT images have fewer or more
tokens than nominal (1,176 to 2,928 with newlines); every method scales the budget to the image's own count of
rankable tokens, so it keeps the same fraction of every image. `--retained-ratio` gives that fraction directly.
On LLaVA-1.5 the image's count is the nominal one and the budget is kept as typed.
Qwen-VL has no nominal count (every image has its own, one token per 28x28 pixels): a budget is a count of
each image's own tokens, and `--retained-ratio` a fraction of them.
"""

from __future__ import annotations

import dataclasses

from llava.model.anyres import parse_pinpoints


def nominal_visual_tokens(config, patches_per_view: int, view_size: int) -> int:
    """Visual tokens of the model's largest image without unpadding and newlines: one view's patches for
    single-view models, (1 + the largest crop grid) views for anyres models."""
    if not getattr(config, "is_anyres", False):
        return patches_per_view
    cells = max((w // view_size) * (h // view_size) for w, h in parse_pinpoints(config.image_grid_pinpoints))
    return patches_per_view * (1 + cells)


@dataclasses.dataclass(frozen=True)
class Budget:
    """`tokens` at the nominal count, or `ratio` of the visual tokens (exactly one is set)."""

    tokens: int | None = None
    ratio: float | None = None

    def __post_init__(self) -> None:
        if (self.tokens is None) == (self.ratio is None):
            raise ValueError("A budget is a token count or a ratio, not both")
        if self.ratio is not None and not 0 < self.ratio <= 1:
            raise ValueError(f"--retained-ratio {self.ratio} must be in (0, 1]")

    def fraction(self, nominal: int) -> float:
        return self.ratio if self.ratio is not None else self.tokens / nominal

    def count(self, num_visual: int, nominal: int) -> int:
        """Tokens to keep out of `num_visual` (at least 1, at most all)."""
        if self.tokens is not None and num_visual == nominal:
            return min(self.tokens, num_visual)
        return max(1, min(num_visual, round(self.fraction(nominal) * num_visual)))

    def describe(self) -> str:
        return f"{self.tokens}" if self.tokens is not None else f"ratio {self.ratio:g}"
