"""LLaVA-NeXT "anyres" geometry: which crop grid an image gets, how it is resized and cut into views, and where
every token of the merged visual block comes from.

An anyres image becomes 1 + N views of the tower's input size (the base view, a squash of the whole image, then
N crops of the image resized and padded to the chosen grid resolution, row-major). The merge turns the views'
patch features into one visual block (`mm_patch_merge_type`): `flat` (views one after another), `spatial` (base,
then one raster over the whole crop grid) or `spatial_unpad` (base, then the crop grid without the rows/columns
that only show padding, each row followed by a newline token). `merge_layout` describes that block as provenance
per token, which the feature merge, the pruning methods and the accounting all read.

Three rule sets decide the grid and the unpadding, and they disagree on real images (specs/llava_next.md 3.3, 5.1):
- "llava" (the original LLaVA code, the default): pinpoints read as (width, height), the largest effective
  resolution wins, ties go to the least waste; unpadding truncates with `int()`.
- "hf" (transformers' LlavaNext): pinpoints read as (height, width), same criterion; unpadding `int(round(x, 7))`.
- "fastervlm" (FasterVLM's fork): pinpoints as (width, height), the largest fill ratio wins (no tie-break);
  unpadding as "llava" (FasterVLM itself never unpads).
"""

from __future__ import annotations

import ast
import dataclasses
import math

import torch
from PIL import Image

GRID_RULES = ("llava", "hf", "fastervlm")
MERGE_TYPES = ("flat", "spatial", "spatial_unpad")
NEWLINE = -1  # provenance of a newline token (it comes from no view)
MERGED = -2  # provenance of a token a pruning method merged from several (SparseVLM's recycled clusters)


def parse_pinpoints(pinpoints) -> list[tuple[int, int]]:
    """`image_grid_pinpoints` as a list of pairs; configs store a list, or its string form as LLaVA accepts."""
    if isinstance(pinpoints, str):
        pinpoints = ast.literal_eval(pinpoints)
    if not pinpoints or not all(len(p) == 2 for p in pinpoints):
        raise ValueError(f"image_grid_pinpoints must be a non-empty list of [a, b] pairs, got {pinpoints!r}")
    return [(int(a), int(b)) for a, b in pinpoints]


def select_best_resolution(image_size: tuple[int, int], pinpoints, rule: str = "llava") -> tuple[int, int]:
    """The grid resolution (width, height) an image of `image_size` (width, height) is resized and padded to."""
    if rule not in GRID_RULES:
        raise ValueError(f"Unknown anyres grid rule {rule!r}; use one of {GRID_RULES}")
    width, height = image_size
    candidates = parse_pinpoints(pinpoints)
    if rule == "hf":
        candidates = [(w, h) for h, w in candidates]
    best, best_key = None, None
    for w, h in candidates:
        scale = min(w / width, h / height)
        fitted = int(width * scale) * int(height * scale)
        if rule == "fastervlm":
            key = (fitted / (w * h),)
        else:
            effective = min(fitted, width * height)
            key = (effective, -(w * h - effective))
        if best_key is None or key > best_key:
            best, best_key = (w, h), key
    return best


def grid_shape(image_size: tuple[int, int], pinpoints, view_size: int, rule: str = "llava") -> tuple[int, int]:
    """(columns, rows) of crops for an image of `image_size` (width, height)."""
    w, h = select_best_resolution(image_size, pinpoints, rule)
    return w // view_size, h // view_size


def resize_and_pad(image: Image.Image, resolution: tuple[int, int]) -> Image.Image:
    """Fit `image` inside `resolution` (width, height) keeping its aspect ratio (PIL bicubic), centred on black."""
    target_w, target_h = resolution
    width, height = image.size
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        new_w, new_h = target_w, min(math.ceil(height * scale_w), target_h)
    else:
        new_w, new_h = min(math.ceil(width * scale_h), target_w), target_h
    resized = image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (target_w, target_h), (0, 0, 0))
    canvas.paste(resized, ((target_w - new_w) // 2, (target_h - new_h) // 2))
    return canvas


def divide_to_views(image: Image.Image, view_size: int) -> list[Image.Image]:
    """Row-major `view_size` squares covering `image`."""
    width, height = image.size
    return [
        image.crop((left, top, left + view_size, top + view_size))
        for top in range(0, height, view_size)
        for left in range(0, width, view_size)
    ]


def anyres_views(image: Image.Image, pinpoints, view_size: int, base_size: int, rule: str = "llava") -> list:
    """The 1 + N PIL views of one image: the base view (squashed to `base_size`, as LLaVA does), then the crops."""
    padded = resize_and_pad(image, select_best_resolution(image.size, pinpoints, rule))
    return [image.resize((base_size, base_size), resample=Image.Resampling.BICUBIC)] + divide_to_views(
        padded, view_size
    )


def unpadded_window(
    image_size: tuple[int, int], rows: int, cols: int, rule: str = "llava"
) -> tuple[int, int, int, int]:
    """(first row, end row, first column, end column) of a `rows` x `cols` feature grid that survive unpadding
    for an image of `image_size` (width, height). Both sides lose the same floor padding, so the kept count is the
    scaled size or one more."""
    width, height = image_size
    if width / height > cols / rows:
        scaled = height * (cols / width)
        new_rows = int(round(scaled, 7)) if rule == "hf" else int(scaled)
        pad = (rows - new_rows) // 2
        return pad, rows - pad, 0, cols
    scaled = width * (rows / height)
    new_cols = int(round(scaled, 7)) if rule == "hf" else int(scaled)
    pad = (cols - new_cols) // 2
    return 0, rows, pad, cols - pad


@dataclasses.dataclass
class MergeLayout:
    """Where each token of one image's merged visual block comes from.

    `view[t]` is the view (0 = base, 1.. = crops) and `patch[t]` the raster index inside that view, both
    `NEWLINE` (-1) for a newline token and `MERGED` (-2) for a token a method merged; `row[t]`, `col[t]` are the
    token's place in its view's own grid (base) or in the full crop grid (crops), a newline token taking
    column = grid width."""

    view: torch.Tensor  # [T] long
    patch: torch.Tensor  # [T] long
    row: torch.Tensor  # [T] long
    col: torch.Tensor  # [T] long
    num_views: int
    side: int  # patches per view side
    grid: tuple[int, int]  # (columns, rows) of crops; (0, 0) for a single view
    leading: int = 0  # tokens before the patches in each view's features ([CLS] with `cls_patch` features)
    grid_hw: tuple[int, int] | None = None  # (rows, columns) of a single non-square view (Qwen-VL's merged grid)

    def __len__(self) -> int:
        return len(self.view)

    @property
    def is_newline(self) -> torch.Tensor:
        return self.view == NEWLINE

    def source(self) -> torch.Tensor:
        """Index of each token into the image's views' features flattened view-major ([num_views * (leading +
        side^2)]), NEWLINE for newline tokens."""
        per_view = self.leading + (self.side * self.side if self.grid_hw is None else self.grid_hw[0] * self.grid_hw[1])
        return torch.where(self.view < 0, self.view, self.view * per_view + self.leading + self.patch)

    def select(self, keep: torch.Tensor) -> MergeLayout:
        """The layout of the tokens at `keep` (indices or a bool mask), in their order."""
        return dataclasses.replace(
            self, view=self.view[keep], patch=self.patch[keep], row=self.row[keep], col=self.col[keep]
        )

    def with_merged(self, count: int) -> MergeLayout:
        """This layout followed by `count` merged tokens."""
        if count == 0:
            return self
        extra = torch.full((count,), MERGED)
        return dataclasses.replace(
            self,
            view=torch.cat([self.view, extra]),
            patch=torch.cat([self.patch, extra]),
            row=torch.cat([self.row, extra]),
            col=torch.cat([self.col, extra]),
        )

    def per_view_counts(self) -> list[int]:
        """Tokens from each view (newline and merged tokens not counted)."""
        return torch.bincount(self.view[self.view >= 0], minlength=self.num_views).tolist()

    @property
    def num_newlines(self) -> int:
        return int(self.is_newline.sum())

    @property
    def num_merged(self) -> int:
        return int((self.view == MERGED).sum())


def single_view_layout(side: int, newline: bool = False, cls: bool = False) -> MergeLayout:
    """One view's raster (LLaVA-1.5), optionally after its [CLS] token (`cls_patch` features: patch -1, row and
    column -1) and followed by one newline token (`spatial_unpad` on one view)."""
    n = side * side
    patch = torch.arange(-1 if cls else 0, n)
    view = torch.zeros(len(patch), dtype=torch.long)
    row, col = torch.where(patch < 0, -1, patch // side), torch.where(patch < 0, -1, patch % side)
    if newline:
        extra = torch.tensor([NEWLINE])
        view, patch = torch.cat([view, extra]), torch.cat([patch, extra])
        row, col = torch.cat([row, torch.tensor([side - 1])]), torch.cat([col, torch.tensor([side])])
    return MergeLayout(view, patch, row, col, 1, side, (0, 0), leading=int(cls))


def frames_layout(num_frames: int, side: int, cls: bool = True) -> MergeLayout:
    """A video's visual block: its frames one after another (view = frame index), each frame's raster of
    side x side patches, after its [CLS] token when `cls` (Video-LLaVA keeps it: 8 x 257 = 2,056 tokens)."""
    frame = single_view_layout(side, cls=cls)
    per_frame = len(frame)
    view = torch.arange(num_frames).repeat_interleave(per_frame)
    return MergeLayout(
        view,
        frame.patch.repeat(num_frames),
        frame.row.repeat(num_frames),
        frame.col.repeat(num_frames),
        num_frames,
        side,
        (0, 0),
        leading=int(cls),
    )


def grid_layout(rows: int, cols: int) -> MergeLayout:
    """One view of `rows` x `cols` tokens in raster order, of any aspect (Qwen-VL's merged-patch grid)."""
    patch = torch.arange(rows * cols)
    view = torch.zeros(len(patch), dtype=torch.long)
    return MergeLayout(view, patch, patch // cols, patch % cols, 1, max(rows, cols), (0, 0), grid_hw=(rows, cols))


def merge_layout(
    num_views: int,
    side: int,
    merge_type: str,
    grid: tuple[int, int] | None = None,
    image_size: tuple[int, int] | None = None,
    rule: str = "llava",
) -> MergeLayout:
    """The merged visual block of one image with `num_views` views of `side` x `side` patches.

    `grid` (columns, rows) and `image_size` (width, height) are needed for `spatial*` merges of more than one view."""
    if merge_type not in MERGE_TYPES:
        raise ValueError(f"Unknown mm_patch_merge_type {merge_type!r}; use one of {MERGE_TYPES}")
    unpad = merge_type == "spatial_unpad"
    if num_views == 1 or merge_type == "flat":
        if num_views == 1:
            return single_view_layout(side, newline=unpad)
        n = side * side
        index = torch.arange(num_views * n)
        view, patch = index // n, index % n
        return MergeLayout(view, patch, patch // side, patch % side, num_views, side, (0, 0))
    cols, rows = grid
    if cols * rows != num_views - 1:
        raise ValueError(
            f"{num_views - 1} crops do not fill the {cols}x{rows} grid chosen for an image of {image_size}; the "
            "pixels were made with other anyres settings (image_grid_pinpoints or grid rule) than the model uses"
        )
    base = single_view_layout(side)
    full_rows, full_cols = rows * side, cols * side
    r0, r1, c0, c1 = (0, full_rows, 0, full_cols)
    if unpad:
        r0, r1, c0, c1 = unpadded_window(image_size, full_rows, full_cols, rule)
    r = torch.arange(r0, r1)[:, None].expand(-1, c1 - c0)
    c = torch.arange(c0, c1)[None, :].expand(r1 - r0, -1)
    view = 1 + (r // side) * cols + c // side
    patch = (r % side) * side + c % side
    if unpad:  # a newline token closes every kept row
        newline_col = torch.full((r1 - r0, 1), full_cols)
        r = torch.cat([r, r[:, :1]], dim=1)
        c = torch.cat([c, newline_col], dim=1)
        view = torch.cat([view, torch.full((r1 - r0, 1), NEWLINE)], dim=1)
        patch = torch.cat([patch, torch.full((r1 - r0, 1), NEWLINE)], dim=1)
    return MergeLayout(
        torch.cat([base.view, view.flatten()]),
        torch.cat([base.patch, patch.flatten()]),
        torch.cat([base.row, r.flatten()]),
        torch.cat([base.col, c.flatten()]),
        num_views,
        side,
        grid,
    )
