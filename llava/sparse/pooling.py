"""Grid pooling of the visual tokens (spec `methods.md` §13); the downsampling baseline is `llava.sparse.downsample`.

`--method pool` averages each view's patch grid in 2-D, after the projector by default (LLaVA-OneVision's
`get_2dPool`: `avg_pool2d` with kernel = stride) or before it (`--pool-stage pre_proj`; the projector's GELU makes
the two differ). Stride 2 turns LLaVA-1.5's 24 x 24 grid into 12 x 12 = 144 tokens, stride 3 into 8 x 8 = 64. A
token budget instead of a stride becomes an `adaptive_avg_pool2d` grid (`pool_grid`: 128 -> 16 x 8, 192 -> 16 x 12
on a square grid); without either, stride 2. Pooled tokens enter the LLM in raster order, without newline tokens.

Per family:
- LLaVA-1.5 (and Video-LLaVA's images): the one 24 x 24 view.
- LLaVA-NeXT: every view (base and each crop, before unpadding) pooled on its own grid, the views one after another,
  no newline tokens; the budget is the image's total against the nominal 2,880 (5 views), shared equally.
- Video-LLaVA clips: every frame's patch grid pooled on its own; each frame's [CLS] token is kept, unpooled, ahead
  of its pooled patches (it is no grid cell); a budget counts the clip's tokens, [CLS] included.
- Qwen2(.5)-VL: each image's (each video frame pair's) merged-token grid, after the merger only. Odd grids keep
  their last row / column as partial windows (`ceil_mode`); a pooled token takes the M-RoPE ids of its window's
  top-left token (its layout entry is that token's), so positions stay those of the image's own grid.

On the LLaVA families the pooled tokens are `MERGED` tokens (their positions are contiguous anyway).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from llava.model.anyres import MERGED, MergeLayout, frames_layout
from llava.sparse.budget import Budget
from llava.sparse.engine import PruningMethod, Selection
from llava.sparse.registry import QWEN_VL, family_of, register

STAGES = ("post_proj", "pre_proj")


def layout_from(tokens: MergeLayout, index: torch.Tensor) -> MergeLayout:
    """The layout of tokens `index` of `tokens`, where -1 marks a `MERGED` token (built from several)."""
    index = index.cpu()
    merged = index < 0
    safe = index.clamp(min=0)

    def field(values: torch.Tensor) -> torch.Tensor:
        return torch.where(merged, torch.full_like(safe, MERGED), values[safe])

    return dataclasses.replace(
        tokens, view=field(tokens.view), patch=field(tokens.patch), row=field(tokens.row), col=field(tokens.col)
    )


def pool_grid(rows: int, cols: int, count: int) -> tuple[int, int]:
    """(h, w) of the pooled grid of about `count` tokens of a rows x cols grid.

    On a square grid: the most square exact h x w = count with h >= w and h <= rows (128 -> 16 x 8, 192 -> 16 x 12,
    64 -> 8 x 8); otherwise, or when no such pair exists, the grid's own aspect scaled to the count (rounded)."""
    if count >= rows * cols:
        return rows, cols
    if rows == cols:
        pairs = [(count // w, w) for w in range(1, math.isqrt(count) + 1) if count % w == 0 and count // w <= rows]
        if pairs:
            return pairs[-1]
    scale = math.sqrt(count / (rows * cols))
    return max(1, min(rows, round(rows * scale))), max(1, min(cols, round(cols * scale)))


def pool_2d(
    grid: torch.Tensor, stride: int | None = None, shape: tuple[int, int] | None = None, ceil: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool a [H, W, C] grid: windows of `stride` (`avg_pool2d`, partial edge windows kept when `ceil`), or
    `adaptive_avg_pool2d` to `shape`. Returns the pooled rows [h * w, C] in raster order and each window's top-left
    cell as a raster index into the grid [h * w]."""
    height, width, channels = grid.shape
    x = grid.permute(2, 0, 1)[None].float()
    if stride is not None:
        pooled = F.avg_pool2d(x, kernel_size=stride, stride=stride, ceil_mode=ceil)[0]
        h, w = pooled.shape[1:]
        top, left = torch.arange(h) * stride, torch.arange(w) * stride
    else:
        pooled = F.adaptive_avg_pool2d(x, shape)[0]
        h, w = shape
        top, left = torch.arange(h) * height // h, torch.arange(w) * width // w
    corner = (top[:, None] * width + left[None, :]).flatten()
    return pooled.permute(1, 2, 0).reshape(h * w, channels).to(grid.dtype), corner


def pool_windows(
    height: int, width: int, stride: int | None = None, shape: tuple[int, int] | None = None, ceil: bool = False
) -> list[torch.Tensor]:
    """The cells (raster indices into the height x width grid) each pooled token of `pool_2d` averages, in its
    order: `stride` windows (partial edge windows only when `ceil`), or `adaptive_avg_pool2d`'s windows
    [floor(i H / h), ceil((i + 1) H / h))."""
    if stride is not None:
        rows = [(r, min(r + stride, height)) for r in range(0, height if ceil else height - stride + 1, stride)]
        cols = [(c, min(c + stride, width)) for c in range(0, width if ceil else width - stride + 1, stride)]
    else:
        h, w = shape
        rows = [(i * height // h, -(-(i + 1) * height // h)) for i in range(h)]
        cols = [(j * width // w, -(-(j + 1) * width // w)) for j in range(w)]
    return [
        (torch.arange(r0, r1)[:, None] * width + torch.arange(c0, c1)[None, :]).flatten()
        for r0, r1 in rows
        for c0, c1 in cols
    ]


class GridPooling(PruningMethod):
    """2-D average pooling of each view's patch grid, by `stride`, or to the grid of `budget` tokens."""

    name = "pool"

    def __init__(self, stride: int | None = None, budget: Budget | None = None, stage: str = "post_proj") -> None:
        if (stride is None) == (budget is None):
            raise ValueError("pool: give a stride (--pool-stride) or a token budget, not both")
        if stride is not None and stride < 1:
            raise ValueError(f"--pool-stride {stride} must be at least 1")
        if stage not in STAGES:
            raise ValueError(f"--pool-stage {stage!r}: use one of {STAGES}")
        self.stride, self.budget, self.stage = stride, budget, stage
        self.qwen = False
        self.side: int | None = None

    def describe(self) -> str:
        """The stride or budget, with the pooled grid of one view where the model's grid is fixed."""
        where = "" if self.stage == "post_proj" else f" {self.stage}"
        known = self.side is not None and not self.qwen
        if self.stride is not None:
            out = self.side // self.stride if known else None
            grid = f" ({self.side}x{self.side} -> {out}x{out} per view)" if known else ""
            return f"pool stride {self.stride}{grid}{where}"
        grid = ""
        if known and self.nominal:
            patches = self.side * self.side
            views = self.nominal // patches
            leading = (self.nominal - views * patches) // views
            count = max(1, round(self.budget.count(self.nominal, self.nominal) / views) - leading)
            h, w = pool_grid(self.side, self.side, count)
            grid = f" ({h}x{w} per view)"
        return f"pool {self.budget.describe()} tokens{grid}{where}"

    def validate(self, model) -> None:
        self.qwen = family_of(model) == QWEN_VL
        if self.qwen and self.stage == "pre_proj":
            raise ValueError("pool: Qwen-VL's merger output is already the LLM's input; use --pool-stage post_proj")
        tower = model.get_vision_tower()
        self.side = None if self.qwen else tower.num_patches_per_side
        if self.side is not None and self.stride is not None and self.stride > self.side:
            raise ValueError(f"--pool-stride {self.stride} is larger than the {self.side}x{self.side} patch grid")

    # -- hooks --------------------------------------------------------------------------------------------------------
    def select_tokens(self, tokens, features, signals):
        if tokens.grid_hw is not None:  # Qwen-VL: the merger's tokens, pooled in select_projected
            return None
        flat = frames_layout(features.shape[0], tokens.side, cls=tokens.leading > 0)
        rows = features.reshape(-1, features.shape[-1])
        if self.stage == "pre_proj":
            return self.pool(flat, rows)
        if len(flat) == len(tokens) and torch.equal(flat.source(), tokens.source()):
            return None
        return Selection(flat, rows)  # LLaVA-NeXT: every view whole, one after another, no newline tokens

    def select_projected(self, tokens, embeddings, signals):
        if self.stage == "pre_proj":
            return None
        return self.pool(tokens, embeddings)

    # -- pooling ------------------------------------------------------------------------------------------------------
    def pool(self, tokens: MergeLayout, rows: torch.Tensor) -> Selection:
        """Pool every view of a view-major block (each view: its leading [CLS] tokens, then its raster of patches)."""
        height, width = tokens.grid_hw or (tokens.side, tokens.side)
        per_view = tokens.leading + height * width
        if len(tokens) != tokens.num_views * per_view:
            raise ValueError(f"pool: expected {tokens.num_views} whole views of {per_view} tokens, got {len(tokens)}")
        count, shape = None, None
        if self.budget is not None:
            total = self.budget.count(len(tokens), self.nominal or len(tokens))
            count = max(1, round(total / tokens.num_views) - tokens.leading)
            shape = pool_grid(height, width, count)
        index, pieces, members = [], [], []
        for v in range(tokens.num_views):
            start = v * per_view
            leading = torch.arange(start, start + tokens.leading)
            grid = rows[start + tokens.leading : start + per_view].reshape(height, width, -1)
            pooled, corner = pool_2d(grid, self.stride, shape, ceil=self.qwen)
            corner = start + tokens.leading + corner
            index += [leading, corner if self.qwen else torch.full_like(corner, -1)]
            pieces += [rows[start : start + tokens.leading], pooled]
            if not self.qwen:  # the pooled (merged) tokens absorbed their windows' cells
                members += [start + tokens.leading + cells for cells in pool_windows(height, width, self.stride, shape)]
        pooled_layout = layout_from(tokens, torch.cat(index))
        self.record_flops(float(tokens.num_views * height * width * rows.shape[-1]))
        return Selection(pooled_layout, torch.cat(pieces), None if self.qwen else members)


def _add_args(group) -> None:
    group.add_argument(
        "--pool-stride",
        type=int,
        default=None,
        help="pool: window and stride of the 2-D average pooling (2: 24x24 -> 12x12 = 144; 3 -> 64); default 2 "
        "unless a token budget (--retained-tokens / --retained-ratio) asks for an adaptive grid",
    )
    group.add_argument(
        "--pool-stage",
        choices=STAGES,
        default="post_proj",
        help="pool: average the projector's outputs (LLaVA-OneVision's get_2dPool, default) or the tower's features",
    )


@register("pool", add_args=_add_args, help="2-D average pooling of each view's grid (stride 2: 576 -> 144)")
def _build(args, budget) -> GridPooling:
    stride = getattr(args, "pool_stride", None)
    given = budget.given
    if stride is not None and given:
        raise ValueError("pool: give --pool-stride or a token budget (--retained-tokens / --retained-ratio), not both")
    stage = getattr(args, "pool_stage", "post_proj")
    if not given:
        return GridPooling(stride=stride or 2, stage=stage)
    return GridPooling(budget=Budget(budget.tokens, budget.ratio), stage=stage)
