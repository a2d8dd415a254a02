"""HiRED (spec `methods.md` §10): LLaVA-NeXT token budgets per view from the tower's [CLS] attention.

What the reference (hasanar1f/HiRED, its llava-hf `LlavaNext` fork) computes, per image of P = 1 + crops views:
1. Budgets: total = int(P * 576 * rate), base ("full") = min(int(total * alpha), 576), crops ("sub") =
   min(total - full, (P - 1) * 576).
2. The base view keeps its top `full` patches by the feature layer's (L22) [CLS] attention, per-head softmax
   summed over heads.
3. The top int(576 * (1 - alpha)) base patches by the *first* layer's (L0) [CLS] attention are counted per crop
   and each crop gets int(count / sum * sub) (at most 576), its top patches by its own L22 [CLS] attention.
   Quirk (`faithful`, default): the counts come from reshaping the raster-flattened 24 x 24 mask into P - 1
   contiguous chunks, so on a 2 x 2 grid crop (0, 0) counts base rows 0-5, crop (0, 1) rows 6-11, and so on, not
   the crop's own quadrant. `--hired-partition spatial` counts each crop's 2-D block of the base view instead.
4. Packing: the base's kept patches in raster order, then the crops' kept patches in the crop grid's raster order
   after unpadding (patches chosen in the padding are dropped there), no newline tokens.
A rate of 1 or more selects nothing away (the reference's switch), but still packs without newline tokens; so does
a single-view image (the reference's packing applies no mask to one).

Our budget (`--retained-tokens` T against the nominal 2,880, or `--retained-ratio`) becomes the rate T / 2,880
(576 -> 0.2, the reference's scripts); `--hired-rate` sets it directly. Plain bugs fixed: a crop count that does
not divide 576 splits the mask into near-equal chunks (the reference's reshape fails), and an all-empty L0 mask
(alpha = 1) shares the crop budget equally (the reference divides by zero).
The [CLS] rows are computed from each layer's input and q/k projections (one query row, no attention maps); the
L0 row comes from a hook on the first encoder layer. LLaVA-NeXT only: other families get a clear error.
"""

from __future__ import annotations

import torch

from llava.model.multimodal_encoder.clip_encoder import cls_attention
from llava.sparse.budget import Budget
from llava.sparse.engine import PruningMethod, Selection
from llava.sparse.registry import LLAVA_NEXT, family_of, methods_that_apply, register

PARTITIONS = ("faithful", "spatial")
RATE, ALPHA = 0.2, 0.5


def cls_attention_sum(layer, x: torch.Tensor) -> torch.Tensor:
    """[views, T - 1] float32: the attention of the [CLS] query (token 0) to every other token inside `layer` for
    its input `x` [views, T, C], per-head softmax summed over the heads (HiRED's score)."""
    return cls_attention(layer.self_attn, layer.layer_norm1(x)).sum(dim=1)


def hired_budgets(views: int, per_view: int, rate: float | None, alpha: float, total: int | None = None):
    """(total, base, crops) token budgets of an image of `views` views (base included) of `per_view` patches."""
    if total is None:
        total = int(views * per_view * rate)
    full = min(int(total * alpha), per_view)
    return total, full, min(total - full, (views - 1) * per_view)


def crop_budgets(
    chosen: torch.Tensor, grid: tuple[int, int], budget: int, per_view: int, partition: str = "faithful"
) -> list[int]:
    """Each crop's budget from the boolean mask `chosen` [per_view] over the base view's raster (its top L0 [CLS]
    patches): `faithful` counts P - 1 contiguous raster chunks (the reference's reshape), `spatial` each crop's
    2-D block; grid = (columns, rows) of crops, crops numbered row-major."""
    cols, rows = grid
    crops = cols * rows
    if partition == "faithful":  # quirk: raster chunks, not the crops' quadrants
        counts = torch.stack([chunk.sum() for chunk in chosen.cpu().tensor_split(crops)])
    elif partition == "spatial":
        side = round(per_view**0.5)
        r, c = torch.arange(per_view) // side, torch.arange(per_view) % side
        cell = (r * rows // side) * cols + c * cols // side
        counts = torch.bincount(cell[chosen.cpu()], minlength=crops)
    else:
        raise ValueError(f"HiRED partition {partition!r}: use one of {PARTITIONS}")
    if int(counts.sum()) == 0:
        share = torch.full((crops,), 1.0 / crops)
    else:
        share = counts / counts.sum()  # float32, as the reference
    return (share * budget).int().clamp(max=per_view).tolist()


class HiRED(PruningMethod):
    """HiRED on LLaVA-NeXT: `rate` of the image's patches (or `budget` tokens against the nominal count), `alpha`
    of them for the base view, the crops' share spread by the L0 [CLS] attention (`partition`)."""

    name = "hired"

    def __init__(
        self,
        rate: float | None = RATE,
        alpha: float = ALPHA,
        partition: str = "faithful",
        budget: Budget | None = None,
    ) -> None:
        if (rate is None) == (budget is None):
            raise ValueError("HiRED: give --hired-rate or a token budget (--retained-tokens / --retained-ratio)")
        if rate is not None and rate <= 0:
            raise ValueError(f"--hired-rate {rate} must be positive")
        if not 0 <= alpha <= 1:
            raise ValueError(f"--hired-alpha {alpha} must be in [0, 1]")
        if partition not in PARTITIONS:
            raise ValueError(f"--hired-partition {partition!r}: use one of {PARTITIONS}")
        self.rate, self.alpha, self.partition, self.budget = rate, alpha, partition, budget

    def describe(self) -> str:
        if self.rate is not None:
            knob = f"rate {self.rate:g}"
        elif self.budget.ratio is not None:
            knob = f"rate {self.budget.ratio:g}"
        elif self.nominal:
            knob = f"{self.budget.tokens} of {self.nominal} tokens (rate {self.budget.tokens / self.nominal:g})"
        else:
            knob = f"{self.budget.tokens} tokens of the nominal count"
        return f"hired {knob} alpha {self.alpha:g} ({self.partition})"

    def validate(self, model) -> None:
        if family_of(model) != LLAVA_NEXT:
            raise ValueError(
                f"HiRED spreads its budget over LLaVA-NeXT's anyres views; {family_of(model)} has none (on LLaVA-1.5, "
                f"HiRED's variant is fastervlm's top-k by [CLS] attention). {methods_that_apply(model)}."
            )
        if not hasattr(model.get_vision_tower(), "forward_with_cls_attention"):
            raise ValueError("HiRED reads the vision tower's [CLS] attention; this tower has no [CLS] token")

    def tower_outputs(self, tower, pixels):
        """Features, and per view the summed-head [CLS] rows of the first layer ("top") and of the feature layer
        ("bottom"), each from its layer's input captured by a hook."""
        layers = tower.vision_tower.encoder.layers
        first, last = layers[0], layers[tower.num_layers_used - 1]
        captured: dict[int, torch.Tensor] = {}

        def grab(index):
            def hook(module, args, kwargs):
                captured[index] = args[0] if args else kwargs["hidden_states"]

            return hook

        handles = [first.register_forward_pre_hook(grab(0), with_kwargs=True)]
        handles.append(last.register_forward_pre_hook(grab(1), with_kwargs=True))
        try:
            features = tower(pixels)
        finally:
            for handle in handles:
                handle.remove()
        with torch.no_grad():
            top, bottom = cls_attention_sum(first, captured[0]), cls_attention_sum(last, captured[1])
        return features, {"top": top, "bottom": bottom}

    def effective_rate(self) -> float:
        """The reference's `token_budget_rate` in force (a token budget: its share of the nominal count)."""
        if self.rate is not None:
            return self.rate
        if self.budget.ratio is not None:
            return self.budget.ratio
        return self.budget.tokens / (self.nominal or self.budget.tokens)

    def total(self, views: int, per_view: int) -> int:
        """The image's total budget; a token budget is scaled with integer arithmetic (576 of 2,880 -> 576 for
        five views, 345 for three)."""
        if self.rate is not None:
            return int(views * per_view * self.rate)
        if self.budget.tokens is not None:
            return views * per_view * self.budget.tokens // (self.nominal or views * per_view)
        return int(views * per_view * self.budget.ratio)

    def keep_mask(self, top: torch.Tensor, bottom: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """[views, per_view] bool: the patches each view keeps (`top`, `bottom`: the views' [CLS] rows)."""
        views, per_view = bottom.shape
        mask = torch.zeros(views, per_view, dtype=torch.bool)
        if self.effective_rate() >= 1 or views == 1:
            return ~mask  # quirk: the reference selects only below a rate of 1, and never in a single-view image
        total, full, sub = hired_budgets(views, per_view, None, self.alpha, self.total(views, per_view))
        mask[0, bottom[0].topk(full).indices.cpu()] = True
        if sub > 0:
            chosen = torch.zeros(per_view, dtype=torch.bool)
            chosen[top[0].topk(int(per_view * (1 - self.alpha))).indices.cpu()] = True
            for crop, count in enumerate(crop_budgets(chosen, grid, sub, per_view, self.partition)):
                mask[crop + 1, bottom[crop + 1].topk(count).indices.cpu()] = True
        return mask

    def select_tokens(self, tokens, features, signals):
        views, per_view, width = features.shape
        grid = tokens.grid if tokens.grid != (0, 0) else (views - 1, 1)
        mask = self.keep_mask(signals["top"], signals["bottom"], grid)
        is_patch = (tokens.view >= 0) & (tokens.patch >= 0)
        picked = mask[tokens.view.clamp(min=0), tokens.patch.clamp(min=0)] & is_patch  # newline tokens dropped
        kept = tokens.select(torch.nonzero(picked).flatten())
        rows = features.reshape(-1, width)[kept.source().to(features.device)]
        self.record_flops(2 * views * (2.0 * width * width * (per_view + 2) + 2.0 * (per_view + 1) * width))
        return Selection(kept, rows)


def _add_args(group) -> None:
    group.add_argument(
        "--hired-rate",
        type=float,
        default=None,
        help=f"hired: token_budget_rate, the kept share of the image's patches (default {RATE}, the reference's "
        "scripts; or from --retained-tokens T as T / 2880, or --retained-ratio)",
    )
    group.add_argument("--hired-alpha", type=float, default=ALPHA, help="hired: the base view's share of the budget")
    group.add_argument(
        "--hired-partition",
        choices=PARTITIONS,
        default="faithful",
        help="hired: spread the crops' budget by the reference's raster chunks of the base view (faithful) or by "
        "each crop's 2-D block of it (spatial)",
    )


@register(
    "hired",
    add_args=_add_args,
    help="HiRED (LLaVA-NeXT): per-view budgets from L0 / L22 [CLS] attention",
    families=(LLAVA_NEXT,),
)
def _build(args, budget) -> HiRED:
    rate = getattr(args, "hired_rate", None)
    given = budget.given
    if rate is not None and given:
        raise ValueError("hired: give --hired-rate or a token budget (--retained-tokens / --retained-ratio), not both")
    alpha, partition = getattr(args, "hired_alpha", ALPHA), getattr(args, "hired_partition", "faithful")
    if given:
        return HiRED(None, alpha, partition, Budget(budget.tokens, budget.ratio))
    return HiRED(rate if rate is not None else RATE, alpha, partition)
