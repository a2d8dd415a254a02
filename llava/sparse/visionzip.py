"""VisionZip (Yang et al., CVPR 2025): per view, keep the [CLS] token and the patches its query attends to most
("dominant"), and fold the rest into a few "contextual" tokens; only those enter the projector.

Inside the tower's selected layer (LLaVA: L22, the layer producing the features) it reads the [CLS] query's
attention row summed over heads, the head-mean keys and the layer's output with [CLS] (specs/methods.md section 3):
1. dominant = [CLS] + the top D-1 patches by that row, in raster order ([CLS] first);
2. the other tokens, in raster order, are normalised by their keys; every step-th of them (step = R // C) is a
   target, every other one joins the target of highest key cosine; a contextual token is its target's hidden state
   PLUS the mean of its members' (# quirk: the official code adds, it does not average);
3. the view's tokens are [CLS, dominant patches, contextual], D + C in all, then projected.

Budgets: `--retained-tokens` is the tokens entering the LLM, split per view as the paper's settings (54+10 of 64,
108+20 of 128, 162+30 of 192, 27+5 of 32: C = round(5/32 of the view's share)); `--visionzip-dominant` and
`--visionzip-contextual` give D ([CLS] included) and C per view directly. A budget that covers the view keeps it
whole (no [CLS] added), so keeping everything is the unpruned model.

LLaVA-NeXT (the official `restore_image_features_sorted`): every view gets D + C; the block is the base view's
[CLS, dominant, contextual], then every crop's dominant patches in raster order of the whole crop grid, then the
crops' [CLS] tokens, then the crops' contextual tokens, without unpadding or newline tokens, crops chosen by
LLaVA's grid rule (its authors' 640/320/160 rows assume a fixed 2x2 grid: `--image-grid-pinpoints '[[672,672]]'`).
Video-LLaVA: every frame as a view (each frame has its own [CLS]), frames in order.

Qwen-VL has no [CLS] token; there the method is LightCompress's Qwen2.5-VL port (specs/methods.md section 3, which
the spec says mirrors the newer official code), on each image's (or whole clip's) merged tokens after the merger:
dominant = the top D by the attention each token receives at the tower's last full-attention block, the rest
grouped by that block's head-mean keys (after the rotary embedding) as in step 2, each contextual token its
target's LLM embedding plus the mean of its members'; tokens stay in place (a contextual token at its target's cell,
so it keeps that cell's M-RoPE ids). Both signals are averaged over each merged token's 2 x 2 patches
(`qwen_vl.run_with_attention_received`). The port's D and C are fractions of the image's tokens; here the budget
splits as above (T = 40: 34 + 6).
"""

from __future__ import annotations

import dataclasses

import torch

from llava.model.anyres import MERGED, MergeLayout
from llava.sparse.budget import Budget
from llava.sparse.engine import PruningMethod, Selection, patches_per_view
from llava.sparse.registry import EVERY_FAMILY, QWEN_VL, BudgetArgs, family_of, methods_that_apply, register

CONTEXTUAL_SHARE = (5, 32)  # C of a view's budget: 10 of 64, 20 of 128, 30 of 192 (the paper's splits)


def refuse_without_cls(name: str, model, extra: str = "") -> None:
    """A clear error where the vision tower has no [CLS] token (Qwen-VL)."""
    tower = model.get_vision_tower()
    if not hasattr(tower, "forward_with_cls_attention"):
        raise ValueError(
            f"{name} reads the vision tower's [CLS] token and its attention, and this model's tower has no [CLS] "
            f"token (Qwen-VL).{extra} {methods_that_apply(model)}."
        )


@torch.no_grad()
def selected_layer_signals(tower, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The selected layer's output with [CLS] ([..., tokens, C], tower dtype), the [CLS] query's attention to
    every patch summed over heads ([..., patches], float32) and the head-mean keys ([..., tokens, head_dim],
    float32), for a CLIP tower (pixels [views, 3, H, W]) or a LanguageBind video tower ([clips, 3, T, H, W]).

    The queries and keys are the layer's own q/k projections, caught by hooks as the tower runs (nothing is
    recomputed); only the [CLS] row of the attention is formed."""
    layer = tower.vision_tower.encoder.layers[tower.num_layers_used - 1]
    attn = layer.self_attn
    captured: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, args, output):
            captured[name] = output

        return hook

    handles = [attn.q_proj.register_forward_hook(keep("q")), attn.k_proj.register_forward_hook(keep("k"))]
    try:
        hidden = tower.encoder_hidden_states(pixels)
    finally:
        for handle in handles:
            handle.remove()
    frames, tokens, _ = captured["k"].shape
    q = captured["q"][:, :1].float().view(frames, 1, attn.num_heads, attn.head_dim).transpose(1, 2)
    k = captured["k"].float().view(frames, tokens, attn.num_heads, attn.head_dim).transpose(1, 2)
    probs = (torch.matmul(q, k.transpose(2, 3)) * attn.scale).softmax(dim=-1)  # [frames, heads, 1, tokens]
    cls_row = probs[:, :, 0, 1:].sum(dim=1)
    keys = k.mean(dim=1)
    lead = hidden.shape[:-2]
    return hidden, cls_row.view(*lead, tokens - 1), keys.view(*lead, tokens, attn.head_dim)


def contextual_groups(
    cls_attention: torch.Tensor, keys: torch.Tensor, dominant: int, contextual: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """VisionZip's choice on views ([CLS] row [V, P], head-mean keys [V, 1 + P, d]): the dominant rows [V, dominant]
    (sorted, 0 = [CLS]), the other rows in raster order [V, R], which of those are targets [R] and the target each
    other one joins [V, R - contextual] (steps 1-2 of the module docstring)."""
    top = torch.topk(cls_attention, dominant - 1, dim=1).indices + 1
    dominant_rows = torch.cat([torch.zeros_like(top[:, :1]), top], dim=1).sort(dim=1).values
    return dominant_rows, *contextual_assignment(keys, dominant_rows, contextual)


def contextual_assignment(
    keys: torch.Tensor, dominant_rows: torch.Tensor, contextual: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 2 of the module docstring on views with keys [V, N, d] and their dominant rows [V, D]: the other rows in
    raster order [V, R], which of those are targets [R] and the target each other one joins [V, R - contextual]."""
    views, tokens = keys.shape[:2]
    dominant = dominant_rows.shape[1]
    rest = torch.ones((views, tokens), dtype=torch.bool, device=keys.device)
    rest.scatter_(1, dominant_rows, False)
    rest_rows = torch.nonzero(rest)[:, 1].view(views, tokens - dominant)  # raster order
    remaining = rest_rows.shape[1]
    is_target = torch.zeros(remaining, dtype=torch.bool, device=keys.device)
    if contextual == 0:
        return rest_rows, is_target, rest_rows[:, :0]
    metric = keys.gather(1, rest_rows[..., None].expand(-1, -1, keys.shape[-1]))
    metric = metric / metric.norm(dim=-1, keepdim=True)
    step = max(1, remaining // contextual)  # quirk: targets evenly spaced in the remaining list, not on the grid
    is_target[torch.arange(0, remaining, step, device=keys.device)[:contextual]] = True
    similarity = metric[:, ~is_target] @ metric[:, is_target].transpose(1, 2)  # [V, members, targets]
    return rest_rows, is_target, similarity.argmax(dim=2)  # the first target on ties


def contextual_states(
    hidden: torch.Tensor, rest_rows: torch.Tensor, is_target: torch.Tensor, assigned: torch.Tensor
) -> torch.Tensor:
    """The contextual tokens [V, C, C_hidden] (float32) of `contextual_groups`' assignment on views [V, 1 + P, C]:
    each target's state plus the mean of its members' (# quirk: the official code adds, it does not average)."""
    if not bool(is_target.any()):
        return hidden.new_zeros((hidden.shape[0], 0, hidden.shape[-1]), dtype=torch.float32)
    states = hidden.float().gather(1, rest_rows[..., None].expand(-1, -1, hidden.shape[-1]))
    members, targets = states[:, ~is_target], states[:, is_target]
    sums = torch.zeros_like(targets).scatter_add_(1, assigned[..., None].expand_as(members), members)
    counts = torch.zeros(targets.shape[:2], device=hidden.device).scatter_add_(
        1, assigned, torch.ones_like(members[..., 0])
    )
    return targets + sums / counts.clamp(min=1)[..., None]  # quirk: target + mean, not an average


def contextual_members(rest_rows: torch.Tensor, is_target: torch.Tensor, assigned: torch.Tensor) -> list[list]:
    """Per view, per contextual token: the rows of the view it absorbed (its target, then its members)."""
    targets, others = rest_rows[:, is_target].cpu(), rest_rows[:, ~is_target].cpu()
    assigned = assigned.cpu()
    return [
        [torch.cat([targets[v, j : j + 1], others[v, assigned[v] == j]]) for j in range(targets.shape[1])]
        for v in range(len(rest_rows))
    ]


def visionzip_tokens(
    hidden: torch.Tensor, cls_attention: torch.Tensor, keys: torch.Tensor, dominant: int, contextual: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """VisionZip on views [V, 1 + P, C] ([CLS] first): the dominant rows [V, dominant] (sorted, 0 = [CLS]) and the
    contextual tokens [V, contextual, C] (float32), from the [CLS] row [V, P] and the head-mean keys [V, 1 + P, d]."""
    dominant_rows, rest_rows, is_target, assigned = contextual_groups(cls_attention, keys, dominant, contextual)
    return dominant_rows, contextual_states(hidden, rest_rows, is_target, assigned)


class VisionZip(PruningMethod):
    """VisionZip's dominant + contextual tokens per view, before the projector (module docstring)."""

    name = "visionzip"
    needs_attention_received = True  # Qwen-VL's signals (LLaVA's come from tower_outputs)
    grid_rule = "llava"  # the official code runs on LLaVA's own anyres code
    merge_type = "spatial"  # no unpadding, no newline tokens (the official NeXT layout)

    def __init__(
        self,
        retained_tokens: int | None = None,
        ratio: float | None = None,
        dominant: int | None = None,
        contextual: int | None = None,
    ) -> None:
        if retained_tokens is None and ratio is None:
            retained_tokens = 192
        if (dominant is None) != (contextual is None):
            raise ValueError("VisionZip: give --visionzip-dominant and --visionzip-contextual together")
        if dominant is not None and (dominant < 1 or contextual < 0):
            raise ValueError(
                f"VisionZip: dominant {dominant} must be >= 1 ([CLS] counts) and contextual {contextual} >= 0"
            )
        self.dominant, self.contextual = dominant, contextual
        self.budget = None if dominant is not None else Budget(retained_tokens, ratio)
        self.view_tokens: int | None = None  # tokens of the model's unpruned view (set by validate, for describe)

    def split(self, view_tokens: int) -> tuple[int, int] | None:
        """(D, C) for a view of `view_tokens` unpruned tokens (LLaVA: its patches; Video-LLaVA: [CLS] + patches),
        or None when the budget covers the view."""
        if self.dominant is not None:
            dominant, contextual = self.dominant, self.contextual
        else:
            count = self.budget.count(view_tokens, self.nominal or view_tokens)
            num, den = CONTEXTUAL_SHARE
            contextual = (count * num + den // 2) // den
            dominant = count - contextual
        if dominant + contextual >= view_tokens:
            return None
        return dominant, contextual

    def describe(self) -> str:
        if self.dominant is not None:
            return f"{self.name} {self.dominant}+{self.contextual}/view"
        split = self.split(self.view_tokens) if self.view_tokens else None
        per_view = "" if split is None else f" ({split[0]}+{split[1]}/view)"
        return f"{self.name} k={self.budget.describe()}{per_view}"

    def validate(self, model) -> None:
        if family_of(model) == QWEN_VL:  # LightCompress's port, on each image's (clip's) merged tokens
            self.view_tokens = None
            if self.budget is not None and self.budget.tokens is not None and self.budget.tokens < 1:
                raise ValueError(f"{self.name}: --retained-tokens must be at least 1")
            return
        refuse_without_cls(self.name, model)
        video = getattr(getattr(model, "model", None), "video_tower", None)
        self.view_tokens = video.num_patches + 1 if video is not None else patches_per_view(model)
        nominal = self.nominal or self.view_tokens
        if self.budget is not None and self.budget.tokens is not None and not 0 < self.budget.tokens <= nominal:
            raise ValueError(f"{self.name}: --retained-tokens {self.budget.tokens} must be in 1..{nominal}")

    def tower_outputs(self, tower, pixels):
        hidden, cls_attention, keys = selected_layer_signals(tower, pixels)
        features = tower.feature_select(hidden) if hasattr(tower, "feature_select") else hidden
        signals = {"cls_attention": cls_attention, "keys": keys, "cls": hidden[..., 0, :].to(pixels.dtype)}
        return features.to(pixels.dtype), signals

    def select_tokens(self, tokens: MergeLayout, features: torch.Tensor, signals) -> Selection | None:
        if signals is None:  # Qwen-VL: merged tokens, no [CLS] (`select_projected`)
            return None
        split = self.split(features.shape[1])
        if split is None:
            return None
        dominant, contextual = split
        hidden = features if tokens.leading else torch.cat([signals["cls"][:, None], features], dim=1)
        rows, rest_rows, is_target, assigned = contextual_groups(
            signals["cls_attention"], signals["keys"], dominant, contextual
        )
        merged = contextual_states(hidden, rest_rows, is_target, assigned)
        views, count, width = hidden.shape
        members = count - dominant - contextual
        # the [CLS] row (q.k over all heads), member-target key cosines, then the sums and means of the states
        flops = views * (
            2.0 * count * width + 2.0 * members * contextual * signals["keys"].shape[-1] + 2.0 * members * width
        )
        pieces = _Pieces(tokens, hidden, merged.to(hidden.dtype), contextual_members(rest_rows, is_target, assigned))
        # quirk (LLaVA-NeXT, the official layout): base [CLS, dominant, contextual], then the crops' dominant patches
        # on the whole crop grid, then every crop's [CLS], then every crop's contextual tokens
        crops = tokens.num_views > 1 and tokens.grid != (0, 0)
        for v in range(1 if crops else views):
            pieces.cls(v)
            pieces.patches(v, rows[v, 1:] - 1)
            pieces.merged(v)
        if crops:
            pieces.crop_grid(rows[1:, 1:] - 1)
            for v in range(1, views):
                pieces.cls(v)
            for v in range(1, views):
                pieces.merged(v)
        selection = pieces.selection()
        self.record_flops(flops)
        return selection

    def select_projected(self, tokens: MergeLayout, embeddings: torch.Tensor, signals) -> Selection | None:
        """Qwen-VL (LightCompress's Qwen2.5-VL port; LLaVA's path is `select_tokens`): on the merged tokens of one
        image or whole clip, dominant = the top D by attention received at the tower's last full-attention block, the
        rest grouped by the head-mean keys there (step 2), each contextual token = its target's LLM embedding plus
        the mean of its members'; the tokens stay in place, a contextual token at its target's (original M-RoPE
        ids)."""
        if not isinstance(signals, dict) or "received" not in signals:
            return None
        split = self.split(len(tokens))
        if split is None:
            return None
        dominant, contextual = split
        keys = signals["keys"].reshape(1, len(tokens), -1).to(embeddings.device)
        received = signals["received"].reshape(1, len(tokens)).to(embeddings.device)
        dominant_rows = torch.topk(received, dominant, dim=1).indices.sort(dim=1).values
        rest_rows, is_target, assigned = contextual_assignment(keys, dominant_rows, contextual)
        merged = contextual_states(embeddings[None], rest_rows, is_target, assigned)[0]
        targets = rest_rows[0, is_target]
        kept = torch.cat([dominant_rows[0], targets]).sort().values
        rows = embeddings.clone()
        rows[targets] = merged.to(rows.dtype)
        members = len(tokens) - dominant - contextual
        self.record_flops(2.0 * members * contextual * keys.shape[-1] + 2.0 * members * embeddings.shape[-1])
        return Selection(tokens.select(kept.cpu()), rows[kept])


class _Pieces:
    """VisionZip's output block, piece by piece: provenance (view, patch, row, col) and tower features."""

    def __init__(self, tokens: MergeLayout, hidden: torch.Tensor, merged: torch.Tensor, groups: list[list]) -> None:
        self.tokens, self.hidden, self.merged_states, self.groups = tokens, hidden, merged, groups
        patches = hidden.shape[1] - 1
        is_patch = (tokens.view >= 0) & (tokens.patch >= 0)
        self.position = torch.full((tokens.num_views, patches), -1, dtype=torch.long)  # (view, patch) -> block index
        self.position[tokens.view[is_patch], tokens.patch[is_patch]] = torch.nonzero(is_patch).flatten()
        self.layout: list[torch.Tensor] = []  # [4, n] per piece
        self.features: list[torch.Tensor] = []
        self.members: list[torch.Tensor] = []  # per contextual token: the block indices of the patches it absorbed

    def cls(self, v: int) -> None:
        self.layout.append(torch.tensor([[v], [-1], [-1], [-1]]))
        self.features.append(self.hidden[v, :1])

    def patches(self, v: int, patches: torch.Tensor) -> None:
        self._from_block(self.position[v, patches.cpu()])

    def crop_grid(self, patches: torch.Tensor) -> None:
        """Every crop's patches (rows: views 1..) in the block's order: raster order of the whole crop grid."""
        views = torch.arange(1, len(patches) + 1)[:, None].expand_as(patches)
        self._from_block(self.position[views.flatten(), patches.cpu().flatten()].sort().values)

    def merged(self, v: int) -> None:
        count = self.merged_states.shape[1]
        self.layout.append(torch.full((4, count), MERGED))
        self.features.append(self.merged_states[v])
        self.members += [self.position[v, rows - 1] for rows in self.groups[v]]  # rows count the [CLS] first

    def _from_block(self, index: torch.Tensor) -> None:
        t = self.tokens
        self.layout.append(torch.stack([t.view[index], t.patch[index], t.row[index], t.col[index]]))
        flat = self.hidden.reshape(-1, self.hidden.shape[-1])
        rows = t.view[index] * self.hidden.shape[1] + 1 + t.patch[index]
        self.features.append(flat[rows.to(flat.device)])

    def selection(self) -> Selection:
        view, patch, row, col = torch.cat(self.layout, dim=1)
        layout = dataclasses.replace(self.tokens, view=view, patch=patch, row=row, col=col)
        return Selection(layout, torch.cat(self.features), self.members)


def _add_args(group) -> None:
    group.add_argument(
        "--visionzip-dominant",
        type=int,
        default=None,
        help="VisionZip: dominant tokens per view, [CLS] included (with --visionzip-contextual; default: the "
        "budget's per-view share split as the paper's 54+10 / 108+20 / 162+30)",
    )
    group.add_argument(
        "--visionzip-contextual", type=int, default=None, help="VisionZip: contextual (merged) tokens per view"
    )


@register(
    "visionzip",
    add_args=_add_args,
    help="VisionZip: [CLS]-attended dominant + key-merged contextual tokens (Qwen-VL: LightCompress's port)",
    families=EVERY_FAMILY,
)
def _build(args, budget: BudgetArgs) -> VisionZip:
    dominant = getattr(args, "visionzip_dominant", None)
    contextual = getattr(args, "visionzip_contextual", None)
    return VisionZip(budget.count, budget.ratio, dominant, contextual)
