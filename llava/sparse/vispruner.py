"""VisPruner (Zhang et al., ICCV 2025): per view, keep T patches: the T_imp = int(T * r) most important by the
head-mean attention of the [CLS] query in the tower's selected layer, and T - T_imp diverse ones, found by
repeatedly dropping the residual tokens most similar to another (specs/methods.md section 4).

Diverse step (the official `encode_images`), on the residual tokens in descending attention order and their unit-
normalised selected-layer features: while more than T - T_imp remain, split them into even (a) and odd (b)
positions, score each a-token by its highest cosine to any b-token, drop the r' = min(8, R - (T - T_imp)) best-
scored a-tokens, and continue with [surviving a-tokens in descending-score order, all b-tokens]. The kept patches
enter the projector in raster order.

Constraints of the official code, handled here:
- R must be even at every step; when the first residual P - T_imp is odd the official code fails. As LightCompress
  does, T_imp is then raised by one (T stays exact; 576 patches: whenever T_imp is odd).
- r' may exceed the a-tokens near the end of a small diverse budget: the official code then drops every a-token
  (r' one too many) or fails (more). r' is capped at the a-tokens: the same result where the official code runs,
  exactly T where it fails (a plain bug fix).
- Ties keep their current order (stable sorts; the official code leaves them to the sort implementation).

LLaVA-NeXT: every view keeps T (the budget's share of the view), base view first, then the crop grid in raster
order, without unpadding or newline tokens (as FasterVLM's reference layout); crops are chosen by LLaVA's grid rule,
whereas the official code pins every image to 672x672: pass `--image-grid-pinpoints '[[672,672]]'` for its
numbers. Video-LLaVA: every frame keeps T of its patches ([CLS] dropped, as FasterVLM's video branch). Qwen-VL has
no [CLS] token and is refused (its port ranks by attention received, another algorithm).
"""

from __future__ import annotations

import torch

from llava.model.anyres import MergeLayout
from llava.sparse.engine import Selection, patches_per_view
from llava.sparse.pre_llm import PreLLMTopK
from llava.sparse.registry import WITH_CLS, BudgetArgs, register
from llava.sparse.visionzip import refuse_without_cls

STEP = 8  # the most a-tokens one diverse step drops (the official code's constant)


def diverse_tokens(normed: torch.Tensor, residual: torch.Tensor, count: int) -> tuple[torch.Tensor, float]:
    """VisPruner's diverse step: `residual` [V, R] indices into `normed` [V, P, C] (unit rows), in descending
    attention order, thinned to `count` per view; returns the survivors [V, count] in the step's order and the
    FLOPs of the similarity products."""
    flops = 0.0
    while True:
        size = residual.shape[1]
        a, b = residual[:, 0::2], residual[:, 1::2]
        drop = min(STEP, size - count, a.shape[1])
        if drop <= 0:
            return residual, flops
        scores = (_rows(normed, a) @ _rows(normed, b).transpose(1, 2)).max(dim=2).values  # [V, |a|]
        flops += 2.0 * residual.shape[0] * a.shape[1] * b.shape[1] * normed.shape[-1]
        survivors = scores.argsort(dim=1, descending=True, stable=True)[:, drop:]
        residual = torch.cat([a.gather(1, survivors), b], dim=1)


def _rows(features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return features.gather(1, index[..., None].expand(-1, -1, features.shape[-1]))


def vispruner_indices(
    features: torch.Tensor, cls_attention: torch.Tensor, count: int, important_ratio: float
) -> tuple[torch.Tensor, float]:
    """Indices [V, count] of the patches each view keeps (important first, then diverse), and the FLOPs spent."""
    patches = features.shape[1]
    important = int(count * important_ratio)
    diverse = count - important
    if diverse > 0 and (patches - important) % 2:  # quirk: LightCompress's even-R fix
        important, diverse = important + 1, diverse - 1
    order = cls_attention.argsort(dim=1, descending=True, stable=True)
    if diverse == 0:
        return order[:, :important], 0.0
    normed = features.float() / features.float().norm(dim=-1, keepdim=True)
    kept, flops = diverse_tokens(normed, order[:, important:], diverse)
    flops += 3.0 * features.numel()  # the normalisation
    return torch.cat([order[:, :important], kept], dim=1), flops


class VisPruner(PreLLMTopK):
    """VisPruner's important + diverse patches per view, before the projector (module docstring)."""

    name = "vispruner"
    needs_cls_attention = True
    grid_rule = "llava"  # the official code is LLaVA's anyres code (with every image pinned to 672x672)
    merge_type = "spatial"  # '_unpad' stripped: no unpadding, no newline tokens

    def __init__(self, retained_tokens: int | None = None, ratio: float | None = None, important_ratio: float = 0.5):
        if retained_tokens is None and ratio is None:
            retained_tokens = 192
        if not 0 <= important_ratio <= 1:
            raise ValueError(f"VisPruner: --vispruner-important-ratio {important_ratio} must be in [0, 1]")
        super().__init__(retained_tokens, None, ratio)
        self.important_ratio = important_ratio
        self.view_patches: int | None = None  # patches of the model's view or frame (set by validate, for describe)
        self._flops = 0.0

    def describe(self) -> str:
        per_view = ""
        if self.view_patches and self.nominal and self.nominal != self.view_patches:
            per_view = f" ({self.view_count(self.view_patches)}/view)"
        return f"{super().describe()}{per_view} r={self.important_ratio:g}"

    def validate(self, model) -> None:
        refuse_without_cls(self.name, model, " VisPruner's Qwen port ranks by attention received, another algorithm.")
        super().validate(model)
        video = getattr(getattr(model, "model", None), "video_tower", None)
        self.view_patches = video.num_patches if video is not None else patches_per_view(model)

    def choose(self, features, cls_attention, count):
        chosen, self._flops = vispruner_indices(
            features, cls_attention.to(features.device), count, self.important_ratio
        )
        return chosen

    def select_tokens(self, tokens: MergeLayout, features: torch.Tensor, cls_attention) -> Selection | None:
        self._flops = 0.0
        chosen = super().select_tokens(tokens, features, cls_attention)
        if chosen is None:
            return None
        kept = tokens.select(chosen)
        rows = features.reshape(-1, features.shape[-1])[kept.source().to(features.device)]
        # the [CLS] row over all keys, per view, then the diverse step
        views, width = features.shape[0], features.shape[-1]
        self.record_flops(self._flops + 2.0 * views * (features.shape[1] + 1) * width)
        return Selection(kept, rows)


def _add_args(group) -> None:
    group.add_argument(
        "--vispruner-important-ratio",
        type=float,
        default=0.5,
        help="VisPruner: share of each view's budget kept by [CLS] attention (the rest by diversity; default 0.5)",
    )


@register(
    "vispruner", add_args=_add_args, help="VisPruner: [CLS]-important + diverse patches per view", families=WITH_CLS
)
def _build(args, budget: BudgetArgs) -> VisPruner:
    return VisPruner(budget.count, budget.ratio, getattr(args, "vispruner_important_ratio", 0.5))
