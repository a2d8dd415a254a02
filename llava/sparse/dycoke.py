"""DyCoke (CVPR 2025): token temporal merging (TTM) of a video's projected tokens before the LLM (spec 11).

TTM, as the reference's `dycole_ttm` computes it: in every frame pair (i, i+1), i even, frame i stays whole and
frame i+1 keeps the `int((1 - k) * n)` positions least cosine-similar to frame i at the same position; then, for i in
`range(0, F - 4, 4)`, frame i+2 is pruned again against frame i instead. Dropped tokens are discarded (the paper's
"merging" is pruning in the code). Frames are our layouts' views: Video-LLaVA's frames (their [CLS] tokens are kept,
unpruned, at the head of each frame, and similarities use the patches only, so n = 256 patches per frame), Qwen-VL's
frame pairs (one temporal patch = one view, n = its merged cells). Images are refused: DyCoke is video only.

Not implemented: DyCoke's second stage, the decode-time dynamic KV selection (attention row of layer l-1 for every
generated token, layers >= l attending to a top-(1-p) subset of the image keys). Our decode step is one static,
compiled function over the shared KV cache (`llava.model.language_model.cache`, `DecoderLoop.step`) with no hook
for a per-step plan, so that part needs an engine change (a decode plan: one attention row at layer l-1, an extra
key mask for layers >= l); the image span it needs is `VisualLayout.prefix` / `visual`, not the reference's 14.

`VideoPruning`, the shared part of the video-only methods (image refusal, frames of a layout, pre-LLM FLOPs into the
accounts), lives here and HoliTom (`llava.sparse.holitom`) builds on it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.anyres import MergeLayout
from llava.sparse.budget import Budget
from llava.sparse.engine import PruningMethod
from llava.sparse.registry import register

DEFAULT_K = 0.7  # the lmms-eval wrapper's default and the paper's headline row (K = 0.7)
ORDERS = ("similarity", "raster")
VIDEO_FAMILIES = ("qwen2_vl", "qwen2_5_vl")


def supports_video(model) -> bool:
    """Whether `model` takes video clips (Video-LLaVA, original or -hf; Qwen2-VL / Qwen2.5-VL)."""
    config = model.config
    return bool(getattr(config, "is_video_llava", False)) or getattr(config, "model_type", None) in VIDEO_FAMILIES


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
                "<image>. Ask about a <video>, or use an image method (e.g. fastervlm, sparsevlm, fastv)."
            )

    def validate(self, model) -> None:
        if not supports_video(model):
            raise ValueError(
                f"{self.name} prunes video clips only; this checkpoint takes no videos. Load Video-LLaVA or "
                "Qwen2(.5)-VL, or use an image method (e.g. fastervlm, sparsevlm, fastv)."
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


class DyCoke(VideoPruning):
    """DyCoke's TTM with `k` (the fraction of each pruned frame's patches dropped), or with the per-frame keep count
    set from our budget (`budget`, tokens at the clip's nominal count or a ratio): the largest count whose clip
    total (whole frames, kept patches, [CLS] tokens) stays within the budget."""

    name = "dycoke"

    def __init__(self, k: float | None = DEFAULT_K, order: str = "similarity", budget: Budget | None = None) -> None:
        if (k is None) == (budget is None):
            raise ValueError("DyCoke takes either k or a budget")
        if k is not None and not 0 <= k < 1:
            raise ValueError(f"--dycoke-k {k} must be in [0, 1) (the fraction of a pruned frame's tokens dropped)")
        if order not in ORDERS:
            raise ValueError(f"--dycoke-order {order!r}: use one of {ORDERS}")
        super().__init__()
        self.k, self.order, self.budget = k, order, budget

    def describe(self) -> str:
        knob = f"k={self.k:g}" if self.budget is None else f"budget={self.budget.describe()}"
        return f"dycoke TTM {knob} order={self.order} (no decode-time KV pruning)"

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


@register("dycoke", add_args=_add_args, help="DyCoke token temporal merging of video frames (TTM only; video only)")
def _build(args, budget) -> DyCoke:
    k = getattr(args, "dycoke_k", None)
    order = getattr(args, "dycoke_order", "similarity")
    if k is None and budget.given:
        return DyCoke(None, order, Budget(budget.tokens, budget.ratio))
    return DyCoke(DEFAULT_K if k is None else k, order)
