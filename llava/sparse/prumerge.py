"""LLaVA-PruMerge and PruMerge+ (spec `methods.md` §9): keep the patches the [CLS] query of the tower's last layer
attends to unusually much, merge their key-similar neighbours into them, and add one token for the rest.

What the reference (42Shawn/LLaVA-PruMerge, `clip_encoder.py`) computes, per image:
1. Attention of the layer *after* the feature layer (CLIP-L: L23, whose input is the L22 features), single-head
   over the full width: softmax(q_cls . k^T / sqrt(C)) over all 577 keys, q/k = that layer's `q_proj` / `k_proj`
   outputs (bias included, before the per-head scaling); `a` = the [CLS] row over the patches.
2. IQR outliers of `a` (numpy percentiles, linear): rho = #{a > Q3 + 1.5 IQR} / N; keep `int(N * rho)` patches,
   the top of `a` in descending order (`adaptive` mode).
3. PruMerge+ only: add the grid positions `arange(0, N - 1, int(int(1 / rho) / 3))` not already kept, ascending.
4. Every kept patch x_i += sum over its 32 most key-cosine-similar *other* patches (kept or not) of a_j x_j (raw
   attention weights, not normalised).
5. One extra token, sum over the pruned patches of a_j x_j.
The tokens enter the projector in that order: attention order, then spatial samples, then the extra token.

Where we differ, and why:
- The IQR runs per image (the reference pools the whole batch's scores, so a sample's tokens depended on its batch
  mates; with batch 1, as the reference ran, they agree).
- Plain bugs fixed: PruMerge+'s stride `int(int(1 / rho) / 3)` is 0 when rho > 1/3 (the reference crashes; we
  use 1) and 1 / rho fails when no score is an outlier (we take the stride's limit: one sample at position 0).
  The hard-coded 575 (= 576 - 1) is N - 1, so other grids work; fewer than 32 other patches merge all of them.
- Attention, cosine similarities and sums run in float32 (the reference: the tower's dtype, fp16 in LLaVA).
- `fixed` mode (not in the reference, whose budget is adaptive; the VisPruner / CDPruner tables at 128/64/32 forced
  it somehow, spec §15.1): a budget of T tokens per image keeps T - 1 patches and the extra token; PruMerge keeps
  the top T - 1 by attention, PruMerge+ the top round((T - 1) / 4) by attention (the share the adaptive path
  typically gives attention: rho N against ~3 rho N spatial samples) and the rest of the T - 1 evenly spaced over
  the remaining patches in raster order.

Families: LLaVA-1.5 and Video-LLaVA (images, and clips frame by frame: each frame's [CLS] is dropped, as the
extra token plays its part). LLaVA-NeXT and Qwen-VL are refused. The method needs the tower's layer after the
feature layer, which `load_pretrained_model` drops today (`truncate_unused_layers`): `needs_full_tower` asks the
loader to keep it, and `validate` says so clearly when it is missing.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from llava.model.anyres import MergeLayout
from llava.sparse.budget import Budget
from llava.sparse.engine import PruningMethod, Selection
from llava.sparse.pooling import layout_from
from llava.sparse.registry import LLAVA_15, LLAVA_NEXT, QWEN_VL, VIDEO_LLAVA, family_of, methods_that_apply, register

MODES = ("auto", "adaptive", "fixed")
NEIGHBOURS = 32
PLUS_ATTENTION_SHARE = 0.25  # fixed-budget PruMerge+: the share of the kept patches chosen by attention


def iqr_outlier_ratio(scores: torch.Tensor) -> float:
    """The reference's `outlier_dectection`: the fraction of scores above Q3 + 1.5 (Q3 - Q1), percentiles by numpy's
    linear interpolation."""
    values = scores.detach().float().cpu().numpy().ravel()
    q1, q3 = np.percentile(values, 25), np.percentile(values, 75)
    upper = q3 + 1.5 * (q3 - q1)
    return int(np.count_nonzero(values > upper)) / values.size


def spatial_samples(ratio: float, num_patches: int, kept: torch.Tensor) -> torch.Tensor:
    """PruMerge+'s adaptive supplement: every `int(int(1 / ratio) / 3)`-th raster position (at least 1; ratio 0 ->
    only position 0) below N - 1, minus the positions already in `kept`, ascending."""
    stride = max(1, int(int(1 / ratio) / 3)) if ratio > 0 else num_patches
    grid = torch.arange(0, num_patches - 1, stride)
    return grid[~torch.isin(grid, kept.cpu())]


def even_samples(count: int, num_patches: int, kept: torch.Tensor) -> torch.Tensor:
    """`count` positions spread evenly (raster order) over the patches not in `kept` (fixed-budget PruMerge+)."""
    rest = torch.nonzero(~torch.isin(torch.arange(num_patches), kept.cpu())).flatten()
    if count <= 0 or len(rest) == 0:
        return rest[:0]
    return rest[torch.linspace(0, len(rest) - 1, min(count, len(rest))).round().long()]


def prune_merge(
    features: torch.Tensor, attention: torch.Tensor, keys: torch.Tensor, kept: torch.Tensor, neighbours: int
) -> torch.Tensor:
    """Merged features [len(kept) + 1, C] of one view: each kept patch plus the attention-weighted sum of its
    `neighbours` most key-cosine-similar other patches, then the attention-weighted sum of the pruned patches.
    `features` [N, C], `attention` [N], `keys` [N, C], `kept` [k] (in output order)."""
    x, a = features.float(), attention.float()
    kept = kept.to(x.device)
    unit = F.normalize(keys.float(), p=2, dim=-1)
    out = x[kept]
    if len(kept):
        similarity = unit[kept] @ unit.T  # [k, N]
        similarity[torch.arange(len(kept), device=x.device), kept] = float("-inf")  # never the patch itself
        nearest = similarity.topk(min(neighbours, len(x) - 1), dim=1).indices  # [k, n]
        out = out + (a[nearest][..., None] * x[nearest]).sum(dim=1)
    pruned = torch.ones(len(x), dtype=torch.bool, device=x.device)
    pruned[kept] = False
    extra = (a[pruned][:, None] * x[pruned]).sum(dim=0, keepdim=True)
    return torch.cat([out, extra]).to(features.dtype)


def next_layer(tower):
    """The encoder layer after the tower's feature layer, or None when the loader dropped it."""
    layers = tower.vision_tower.encoder.layers
    return layers[tower.num_layers_used] if len(layers) > tower.num_layers_used else None


@torch.no_grad()
def last_layer_signals(tower, pixels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The tower's features and, per view (per frame of a clip), PruMerge's signals from the next layer: the
    single-head [CLS] attention over the patches ("attention" [..., N], float32) and the patches' `k_proj`
    outputs ("keys" [..., N, C]). Images [V, 3, H, W] -> features [V, N, C]; clips [B, 3, T, H, W] (Video-LLaVA's
    video tower) -> features [B, T, 1 + N, C] and signals [B, T, ...]. Only the [CLS] query is projected."""
    layer = next_layer(tower)
    if layer is None:
        raise ValueError(MISSING_LAYER)
    hidden = tower.encoder_hidden_states(pixels)  # the feature layer's output, [CLS] first
    video = hidden.dim() == 4
    x = hidden.reshape(-1, *hidden.shape[-2:])
    if hasattr(layer, "temporal_mix"):  # LanguageBind: the layer's temporal block comes before its q/k
        x = layer.temporal_mix(x)
    x = layer.layer_norm1(x)
    q = layer.self_attn.q_proj(x[:, :1]).float()
    k = layer.self_attn.k_proj(x)
    width = k.shape[-1]
    attention = ((q @ k.float().transpose(1, 2)) * width**-0.5).softmax(dim=-1)[:, 0, 1:]
    keys = k[:, 1:]
    if video:
        lead = hidden.shape[:2]
        attention, keys = attention.reshape(*lead, -1), keys.reshape(*lead, *keys.shape[1:])
        return hidden.to(pixels.dtype), {"attention": attention, "keys": keys}
    return tower.feature_select(hidden).to(pixels.dtype), {"attention": attention, "keys": keys}


MISSING_LAYER = (
    "PruMerge reads the vision tower's layer after the feature layer (CLIP-L: L23), and this tower was truncated "
    "to the feature layer when it was loaded (truncate_unused_layers). It needs a tower that keeps that layer: the "
    "loader must skip the truncation for methods with needs_full_tower = True."
)


class PruMerge(PruningMethod):
    """PruMerge (`plus=False`) or PruMerge+: adaptive IQR budget, or `budget` tokens per image (`fixed`)."""

    needs_full_tower = True

    def __init__(self, plus: bool = False, budget: Budget | None = None, neighbours: int = NEIGHBOURS) -> None:
        if neighbours < 1:
            raise ValueError(f"--prumerge-neighbours {neighbours} must be at least 1")
        self.plus, self.budget, self.neighbours = plus, budget, neighbours
        self.name = "prumerge+" if plus else "prumerge"

    def describe(self) -> str:
        if self.budget is None:
            return f"{self.name} adaptive (IQR)"
        return f"{self.name} fixed {self.budget.describe()} tokens per image (extra token included)"

    def validate(self, model) -> None:
        if family_of(model) == QWEN_VL:
            raise ValueError(
                f"{self.name} ranks patches by the vision tower's [CLS] attention, and Qwen-VL's tower has no [CLS] "
                f"token. {methods_that_apply(model)}."
            )
        if family_of(model) == LLAVA_NEXT:
            raise ValueError(
                f"{self.name} works on single-view LLaVA-1.5 images (and Video-LLaVA frames); LLaVA-NeXT's anyres "
                f"views are not supported. {methods_that_apply(model)}."
            )
        towers = [model.get_vision_tower(), getattr(model.model, "video_tower", None)]
        for tower in towers:
            if tower is not None and next_layer(tower) is None:
                raise ValueError(MISSING_LAYER)

    def tower_outputs(self, tower, pixels):
        return last_layer_signals(tower, pixels)

    def view_budgets(self, tokens: MergeLayout) -> list[int]:
        """Tokens (extra token included) each view keeps in fixed mode: the image's or clip's budget shared out."""
        total = self.budget.count(len(tokens), self.nominal or len(tokens))
        views = tokens.num_views
        return [total // views + (v < total % views) for v in range(views)]

    def choose(self, attention: torch.Tensor, tokens_here: int | None) -> torch.Tensor:
        """Patches one view keeps, in output order (attention order, then PruMerge+'s samples)."""
        n = len(attention)
        if tokens_here is None:
            ratio = iqr_outlier_ratio(attention)
            top = torch.topk(attention, int(n * ratio)).indices.cpu()  # descending, as the reference
            if self.plus:
                top = torch.cat([top, spatial_samples(ratio, n, top)])
            return top
        keep = max(0, min(tokens_here - 1, n))
        if not self.plus:
            return torch.topk(attention, keep).indices.cpu()
        top = torch.topk(attention, min(keep, round(keep * PLUS_ATTENTION_SHARE))).indices.cpu()
        return torch.cat([top, even_samples(keep - len(top), n, top)])

    def select_tokens(self, tokens, features, signals):
        attention, keys = signals["attention"], signals["keys"]
        views, per_view = features.shape[0], features.shape[1]
        budgets = [None] * views if self.budget is None else self.view_budgets(tokens)
        index, rows, members, flops = [], [], [], 0.0
        for v in range(views):
            patches = features[v, tokens.leading :]
            n, width = patches.shape
            kept = self.choose(attention[v], budgets[v])
            rows.append(prune_merge(patches, attention[v], keys[v], kept, self.neighbours))
            start = v * per_view + tokens.leading
            index += [start + kept, torch.tensor([-1])]
            pruned = torch.ones(n, dtype=torch.bool)
            pruned[kept] = False
            members.append(start + torch.nonzero(pruned).flatten())  # the extra token sums the pruned patches
            neighbours = min(self.neighbours, n - 1)
            # the next layer's q (one row) and k projections, the [CLS] row, cosine similarities, weighted sums
            flops += 2.0 * width * width * (n + 2) + 2.0 * (n + 1) * width
            flops += 2.0 * len(kept) * n * width + 2.0 * (len(kept) * neighbours + n - len(kept)) * width
        layout = layout_from(tokens, torch.cat(index))
        self.record_flops(flops)
        return Selection(layout, torch.cat(rows), members)


def _add_args(group) -> None:
    group.add_argument(
        "--prumerge-mode",
        choices=MODES,
        default="auto",
        help="prumerge / prumerge+: 'adaptive' (the reference's IQR budget), 'fixed' (the token budget per image, "
        "extra token included), or 'auto' (fixed when --retained-tokens / --retained-ratio is given, else adaptive)",
    )
    group.add_argument(
        "--prumerge-neighbours",
        type=int,
        default=NEIGHBOURS,
        help="prumerge / prumerge+: key-similar patches merged into each kept one (reference: 32)",
    )


def _build(args, budget, plus: bool) -> PruMerge:
    mode = getattr(args, "prumerge_mode", "auto")
    given = budget.given
    if mode == "adaptive" and given:
        raise ValueError("--prumerge-mode adaptive sets its own budget; drop --retained-tokens / --retained-ratio")
    fixed = mode == "fixed" or (mode == "auto" and given)
    chosen = Budget(budget.count, budget.ratio) if fixed else None
    return PruMerge(plus, chosen, getattr(args, "prumerge_neighbours", NEIGHBOURS))


@register(
    "prumerge",
    add_args=_add_args,
    help="PruMerge: IQR-adaptive [CLS]-attention outliers, key-neighbour merge",
    families=(LLAVA_15, VIDEO_LLAVA),
)
def _build_prumerge(args, budget) -> PruMerge:
    return _build(args, budget, plus=False)


@register("prumerge+", help="PruMerge+: PruMerge plus spatially uniform samples", families=(LLAVA_15, VIDEO_LLAVA))
def _build_plus(args, budget) -> PruMerge:
    return _build(args, budget, plus=True)
