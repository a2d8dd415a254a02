"""DyCoke (CVPR 2025): token temporal merging (TTM) of a video's projected tokens before the LLM (spec 11).

TTM, as the reference's `dycole_ttm` computes it: in every frame pair (i, i+1), i even, frame i stays whole and
frame i+1 keeps the `int((1 - k) * n)` positions least cosine-similar to frame i at the same position; then, for i in
`range(0, F - 4, 4)`, frame i+2 is pruned again against frame i instead. Dropped tokens are discarded (the paper's
"merging" is pruning in the code). Frames are our layouts' views: Video-LLaVA's frames (their [CLS] tokens are kept,
unpruned, at the head of each frame, and similarities use the patches only, so n = 256 patches per frame), Qwen-VL's
frame pairs (one temporal patch = one view, n = its merged cells). Images are refused: DyCoke is video only.

Second stage, the decode-time dynamic KV selection (`DyCokeDecodePlan`, an engine `DecodePlan`): at every decode
step `a` is the head-mean attention row of the new token at layer l-1 over the sample's visual span (from its
`VisualLayout`, not the reference's hard-coded 14). If cos(a, a_prev) < 0.9 (always on the first step), layers >= l
attend to the top int(len * (1 - p)) visual keys plus every other key; else (quirk) to the FULL cache for that step.
`a_prev` is updated every step. Nothing is freed (compute-only saving, as in the reference); each sample has its own
selection. Quirk (reproduced unless `--dycoke-full-span`): the span is len = visual tokens - 1, the last visual token
counting as "other" (always kept). With a decode plan the step runs uncompiled. Decode-time savings are not counted
in the accounts (they count prefill and cache, not decode attention).

`VideoPruning`, the shared part of the video-only methods (image refusal, frames of a layout, pre-LLM FLOPs into the
accounts), lives here and HoliTom (`llava.sparse.holitom`) builds on it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.anyres import MergeLayout
from llava.sparse.attention_rows import RowsRequest
from llava.sparse.budget import Budget
from llava.sparse.engine import DecodePlan, PruningMethod, VisualLayout
from llava.sparse.registry import VIDEO, family_of, methods_that_apply, register

DEFAULT_K = 0.7  # the lmms-eval wrapper's default and the paper's headline row (K = 0.7)
DEFAULT_P = 0.7  # the paper's and the README example's p (its 14.25 % retained ratio); the lmms-eval wrapper has 0.8
DEFAULT_L = 3
SIMILAR = 0.9  # cos(a, a_prev) at or above which a step attends to the full cache
ORDERS = ("similarity", "raster")


def frame_tokens(tokens: MergeLayout) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per frame (view) of a clip's block: the indices of its leading tokens (Video-LLaVA's [CLS]) and of its patches
    in raster order. Every frame must hold the same patches."""
    leading, patches = [], []
    for view in range(tokens.num_views):
        in_view = tokens.view == view
        leading.append(torch.nonzero(in_view & (tokens.patch < 0)).flatten())
        index = torch.nonzero(in_view & (tokens.patch >= 0)).flatten()
        patches.append(index[torch.argsort(tokens.patch[index])])
    if len({len(p) for p in patches}) > 1:
        raise ValueError(
            "A video method needs every frame's patches; this block has frames of "
            f"{sorted({len(p) for p in patches})} patches (pruned before it?)"
        )
    return leading, patches


def frame_features(patches: list[torch.Tensor], embeddings: torch.Tensor) -> torch.Tensor:
    """[F, n, D]: each frame's patch rows of `embeddings`, in raster order."""
    return embeddings[torch.stack(patches).to(embeddings.device)]


class VideoPruning(PruningMethod):
    """A video-only pre-LLM method: refuses images and reads frames from the clip's layout."""

    def prepare(self, model, input_ids) -> None:
        rows = input_ids if not isinstance(input_ids, torch.Tensor) or input_ids.dim() > 1 else [input_ids]
        if any(bool((ids == IMAGE_TOKEN_INDEX).any()) for ids in rows):
            raise ValueError(
                f"{self.name} prunes video clips only (it merges tokens across frames); this batch holds an "
                f"<image>. Ask about a <video>, or use an image method. {methods_that_apply(model, videos=False)}."
            )

    def validate(self, model) -> None:
        if family_of(model) not in VIDEO:  # Video-LLaVA, Qwen2-VL / Qwen2.5-VL take clips
            raise ValueError(
                f"{self.name} prunes video clips only; this checkpoint takes no videos. Load Video-LLaVA or "
                f"Qwen2(.5)-VL, or use an image method. {methods_that_apply(model)}."
            )


def ttm_kept_positions(features: torch.Tensor, keep: int, order: str = "similarity") -> list[torch.Tensor]:
    """DyCoke's TTM on one clip's frames `features` [F, n, D]: per frame, the positions (0..n-1) it keeps, in the
    order they enter the LLM.

    Pairs (i, i+1), i even: frame i+1 keeps the `keep` positions with the lowest cosine to frame i, in ascending
    similarity (quirk: not raster order; `order="raster"` sorts them). Then frame i+2 is re-pruned against frame i for
    i in range(0, F - 4, 4) (quirk: the last group's third frame stays whole). F <= 4 skips that second pass (the
    reference crashes stacking an empty list), so F = 4 prunes frames 1 and 3 only. An odd F keeps its unpaired last
    frame whole (the reference drops that frame entirely: a bug, fixed). Cosines in float32."""
    if order not in ORDERS:
        raise ValueError(f"DyCoke order {order!r}: use one of {ORDERS}")
    frames, n = features.shape[:2]
    kept = [torch.arange(n, device=features.device) for _ in range(frames)]

    def prune(anchor: int, frame: int) -> torch.Tensor:
        similarity = F.cosine_similarity(features[anchor].float(), features[frame].float(), dim=-1)
        chosen = torch.topk(similarity, keep, largest=False).indices  # ascending similarity
        return chosen if order == "similarity" else chosen.sort().values

    for i in range(0, frames - 1, 2):
        kept[i + 1] = prune(i, i + 1)
    for i in range(0, frames - 4, 4):
        kept[i + 2] = prune(i, i + 2)
    return kept


def pruned_frame_count(frames: int) -> int:
    """Frames TTM prunes in a clip of `frames` (the others stay whole)."""
    return frames // 2 + len(range(0, frames - 4, 4))


class DyCokeDecodePlan(DecodePlan):
    """DyCoke's dynamic KV selection over one batch's decode steps (see the module docstring)."""

    def __init__(self, layouts: list[VisualLayout], length: int, layer: int, p: float, full_span: bool) -> None:
        self.layer, self.p = layer, p
        self.starts = [layout.visual_start(length) for layout in layouts]
        # quirk: the reference's span is TTM tokens - 1 (its last visual token is never a candidate)
        self.spans = [max(0, layout.visual - (0 if full_span else 1)) for layout in layouts]
        self.previous: list[torch.Tensor | None] = [None] * len(layouts)
        self.keep: torch.Tensor | None = None
        self.rows: list[torch.Tensor] = []  # the head-mean rows `a` of each step, [B, K] (read by tests)

    def request(self, layer_idx, key_mask):
        if layer_idx != self.layer - 1:
            return None
        rows = torch.zeros(key_mask.shape[0], 1, dtype=torch.long, device=key_mask.device)
        return RowsRequest(rows, torch.ones_like(rows, dtype=torch.bool), key_mask)

    def take_row(self, layer_idx, request):
        attention = request.probs.mean(dim=1)[:, 0]  # [B, K] head mean
        self.rows.append(attention)
        keep = torch.ones_like(request.key_mask)
        for b, (start, span) in enumerate(zip(self.starts, self.spans, strict=True)):
            a = attention[b, start : start + span]
            previous, self.previous[b] = self.previous[b], a
            if span == 0 or (previous is not None and F.cosine_similarity(a, previous, dim=0) >= SIMILAR):
                continue  # quirk: a similar step attends to the full cache, not to the previous selection
            top = torch.topk(a, int(span * (1 - self.p))).indices
            keep[b, start : start + span] = False
            keep[b, start + top] = True
        self.keep = keep

    def key_mask(self, layer_idx):
        return self.keep if layer_idx >= self.layer else None


class DyCoke(VideoPruning):
    """DyCoke's TTM with `k` (the fraction of each pruned frame's patches dropped), or with the per-frame keep count
    set from our budget (`budget`, tokens at the clip's nominal count or a ratio): the largest count whose clip
    total (whole frames, kept patches, [CLS] tokens) stays within the budget."""

    name = "dycoke"

    def __init__(
        self,
        k: float | None = DEFAULT_K,
        order: str = "similarity",
        budget: Budget | None = None,
        p: float | None = DEFAULT_P,
        layer: int = DEFAULT_L,
        full_span: bool = False,
    ) -> None:
        if (k is None) == (budget is None):
            raise ValueError("DyCoke takes either k or a budget")
        if k is not None and not 0 <= k < 1:
            raise ValueError(f"--dycoke-k {k} must be in [0, 1) (the fraction of a pruned frame's tokens dropped)")
        if order not in ORDERS:
            raise ValueError(f"--dycoke-order {order!r}: use one of {ORDERS}")
        if p is not None and not 0 <= p < 1:
            raise ValueError(f"--dycoke-p {p} must be in [0, 1) (the fraction of visual keys decode skips)")
        if layer < 1:
            raise ValueError(f"--dycoke-l {layer} must be >= 1 (the row is read at layer l - 1)")
        super().__init__()
        self.k, self.order, self.budget = k, order, budget
        self.p, self.layer, self.full_span = p, layer, full_span

    def decode_plan(self, layouts, length):
        """DyCoke's decode-time KV selection (None: TTM only, `p` None)."""
        if self.p is None:
            return None
        return DyCokeDecodePlan(layouts, length, self.layer, self.p, self.full_span)

    def describe(self) -> str:
        knob = f"k={self.k:g}" if self.budget is None else f"budget={self.budget.describe()}"
        decode = "no decode KV pruning" if self.p is None else f"decode KV p={self.p:g} l={self.layer}"
        span = " full-span" if self.full_span else ""
        return f"dycoke TTM {knob} order={self.order}, {decode}{span}"

    def keep_count(self, tokens: MergeLayout, frames: int, n: int, leading: int) -> int:
        """Patches each pruned frame keeps."""
        if self.budget is None:
            return int((1 - self.k) * n)
        target = self.budget.count(len(tokens), self.nominal or len(tokens))
        pruned = pruned_frame_count(frames)
        fixed = (frames - pruned) * n + leading
        keep = (target - fixed) // pruned
        if keep < 0:
            raise ValueError(
                f"dycoke: a budget of {target} of this clip's {len(tokens)} tokens is below what TTM keeps with "
                f"every pruned frame empty ({fixed}: {frames - pruned} whole frames and the [CLS] tokens); raise the "
                "budget or give --dycoke-k"
            )
        return min(n, keep)

    def select_projected(self, tokens, embeddings, signals):
        leading, patches = frame_tokens(tokens)
        frames, n = len(patches), len(patches[0])
        self.record_flops(3.0 * pruned_frame_count(frames) * n * embeddings.shape[-1])  # the cosines
        if frames < 2:
            return None
        keep = self.keep_count(tokens, frames, n, sum(len(lead) for lead in leading))
        positions = ttm_kept_positions(frame_features(patches, embeddings), keep, self.order)
        return torch.cat(
            [
                torch.cat([lead, patch[kept.cpu()]])
                for lead, patch, kept in zip(leading, patches, positions, strict=True)
            ]
        )


def _add_args(group) -> None:
    group.add_argument(
        "--dycoke-k",
        type=float,
        default=None,
        help=f"DyCoke: fraction of the tokens of frames 1-3 of every 4 that TTM drops (default {DEFAULT_K}, the "
        "lmms-eval wrapper's and the paper's K; without it, a --retained-tokens / --retained-ratio budget sets the "
        "per-frame keep count instead)",
    )
    group.add_argument(
        "--dycoke-order",
        choices=ORDERS,
        default="similarity",
        help="DyCoke: order of a pruned frame's kept tokens, ascending similarity (reference) or raster",
    )

    group.add_argument(
        "--dycoke-p",
        type=float,
        default=DEFAULT_P,
        help=f"DyCoke: fraction of the visual keys layers >= l skip at a decode step (default {DEFAULT_P}, the "
        "paper's; the lmms-eval wrapper uses 0.8)",
    )
    group.add_argument("--dycoke-l", type=int, default=DEFAULT_L, help="DyCoke: first layer of decode KV pruning")
    group.add_argument("--dycoke-no-decode", action="store_true", help="DyCoke: TTM only, no decode-time KV pruning")
    group.add_argument(
        "--dycoke-full-span",
        action="store_true",
        help="DyCoke: rank every visual key at decode (the reference leaves out the last one)",
    )


@register(
    "dycoke",
    add_args=_add_args,
    help="DyCoke temporal merging and decode-time KV selection (video only)",
    families=VIDEO,
    video_only=True,
)
def _build(args, budget) -> DyCoke:
    k = getattr(args, "dycoke_k", None)
    order = getattr(args, "dycoke_order", "similarity")
    decode = {
        "p": None if getattr(args, "dycoke_no_decode", False) else getattr(args, "dycoke_p", DEFAULT_P),
        "layer": getattr(args, "dycoke_l", DEFAULT_L),
        "full_span": getattr(args, "dycoke_full_span", False),
    }
    if k is None and budget.given:
        return DyCoke(None, order, Budget(budget.tokens, budget.ratio), **decode)
    return DyCoke(DEFAULT_K if k is None else k, order, **decode)
