"""Kept-token pictures: which patches each pruning stage let through, drawn from the engine's own provenance.

Every prefill records, per sample, the provenance of its visual block entering the LLM and after every pruning
event (`SampleAccount.stages`: `llava.sparse.accounting.Stage`, each a `llava.model.anyres.MergeLayout`), so the
picture is read off what the engine did, never recomputed. One row per stage, one panel per grid:
- LLaVA-1.5: the view's side x side grid over the (square-padded) image;
- LLaVA-NeXT: the base view's grid over the squashed image, then the whole crop grid over the image resized and
  padded to the grid resolution (`spatial*` merges; `flat`: one panel per view);
- video: one panel per frame (Qwen-VL video: per frame pair, shown on its first frame);
- Qwen-VL images: its merged-patch grid (rows x columns) over the image resized to that aspect.
Kept patches show the image, dropped ones are dimmed; merged tokens are drawn on the patches they absorbed, one
colour per merged token, where the method told the engine (`PrefillPlan.rebuild(merged_members=...)`); otherwise
they are listed as a count under the stage ("membership not recorded"). SparseVLM's text raters are listed when
given.

`kept_map(image, stages, ...)` returns a PIL image, `save_kept_map(...)` writes it atomically, and
`kept_map_for(model, tokenizer, image, query, ...)` runs one generation and draws its map.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from llava.model.anyres import MERGED, MergeLayout, resize_and_pad
from llava.sparse.accounting import Stage

DIM = 0.3  # brightness of a dropped patch
TINT = 0.55  # weight of a merged cluster's colour over its patches
KEPT_OUTLINE = (40, 220, 80)
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
    (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128),
)  # fmt: skip


def cluster_color(k: int) -> tuple[int, int, int]:
    """The colour of merged token k of a stage."""
    return PALETTE[k % len(PALETTE)]


@dataclasses.dataclass
class Panel:
    """One grid of a stage: `key` names it (a view, "base", "crops", a frame), `rows` x `cols` cells."""

    key: str
    view: int | None  # the view / frame it shows (None: the NeXT crop grid, several views)
    rows: int
    cols: int


def panels_of(tokens: MergeLayout) -> list[Panel]:
    """The grids a block's geometry draws on (from the block entering the LLM: its provenance says the model)."""
    if tokens.grid_hw is not None:  # Qwen-VL: one merged grid per image, per frame pair of a video
        rows, cols = tokens.grid_hw
        if tokens.num_views == 1:
            return [Panel("grid", 0, rows, cols)]
        return [Panel(f"frames {2 * v}-{2 * v + 1}", v, rows, cols) for v in range(tokens.num_views)]
    side = tokens.side
    if tokens.grid != (0, 0):  # LLaVA-NeXT spatial merges: base view, then the whole crop grid
        cols, rows = tokens.grid
        return [Panel("base", 0, side, side), Panel("crops", None, rows * side, cols * side)]
    if tokens.num_views == 1:
        return [Panel("image", 0, side, side)]
    name = "frame" if tokens.leading else "view"
    return [Panel(f"{name} {v}", v, side, side) for v in range(tokens.num_views)]


def token_cells(tokens: MergeLayout, panels: list[Panel]) -> list[tuple[int, int, int] | None]:
    """Per token, (panel index, row, column) of the patch it shows, or None (newline, merged, [CLS])."""
    crops = next((i for i, p in enumerate(panels) if p.view is None), None)
    by_view = {p.view: i for i, p in enumerate(panels) if p.view is not None}
    out = []
    for view, patch, row, col in zip(tokens.view.tolist(), tokens.patch.tolist(), tokens.row.tolist(),
                                     tokens.col.tolist(), strict=True):  # fmt: skip
        if view < 0 or patch < 0:
            out.append(None)
        elif crops is not None and view >= 1:
            out.append((crops, row, col))
        else:
            out.append((by_view[view], row, col))
    return out


@dataclasses.dataclass
class StageCells:
    """What one stage's row of the picture marks: kept cells per panel, and per merged token the cells it
    absorbed (None where the method did not say)."""

    label: str
    kept: list[set[tuple[int, int]]]
    merged: list[list[set[tuple[int, int]]] | None]  # per merged token: cells per panel
    num_tokens: int
    num_newlines: int
    num_merged: int


def stage_cells(stages: list, panels: list[Panel] | None = None) -> tuple[list[Panel], list[StageCells]]:
    """The cells every stage marks (the picture's content, for tests and other renderers)."""
    stages = [s if isinstance(s, Stage) else Stage(*s) for s in stages]
    if not stages:
        raise ValueError("No stages to draw: the prefill recorded no visual provenance (no image in the prompt?)")
    panels = panels or panels_of(stages[0].tokens)
    out = []
    for stage in stages:
        tokens = stage.tokens
        kept = [set() for _ in panels]
        for cell in token_cells(tokens, panels):
            if cell is not None:
                kept[cell[0]].add(cell[1:])
        merged = []
        num_merged = int((tokens.view == MERGED).sum())
        absorbed = stage.absorbed or [None] * num_merged
        for members in absorbed:
            if members is None:
                merged.append(None)
                continue
            cells = [set() for _ in panels]
            for cell in token_cells(members, panels):
                if cell is not None:
                    cells[cell[0]].add(cell[1:])
            merged.append(cells)
        label = "into the LLM" if stage.layer == "input" else f"after layer {stage.layer}"
        out.append(StageCells(label, kept, merged, len(tokens), int((tokens.view == -1).sum()), num_merged))
    return panels, out


def panel_images(image, panels: list[Panel], tokens: MergeLayout, frames=None) -> list[Image.Image]:
    """The picture under each panel, before scaling to its grid: the padded square (one view), the squashed image
    and the anyres canvas (NeXT), the frames (video), the image (Qwen, flat views)."""
    if frames is not None:
        return [frames[min(len(frames) - 1, (2 * p.view if tokens.grid_hw is not None else p.view))] for p in panels]
    out = []
    for panel in panels:
        if panel.view is None:  # NeXT crop grid: resized and padded to the grid's aspect, as anyres does
            out.append(resize_and_pad(image, (panel.cols * 14, panel.rows * 14)))
        elif panel.key == "image":
            out.append(_expand_square(image))
        else:
            out.append(image)
    return out


def _expand_square(image: Image.Image) -> Image.Image:
    """LLaVA-1.5's `pad` aspect: the image centred on a square of the CLIP mean colour."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), (122, 116, 104))
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # old Pillow
        return ImageFont.load_default()


def _wrap(text: str, width_px: int, font) -> list[str]:
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}".strip()
            if line and font.getlength(trial) > width_px:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def draw_panel(picture: Image.Image, panel: Panel, kept: set, merged: list, cell: int) -> Image.Image:
    """One panel: `picture` scaled to the grid, dropped cells dimmed, kept cells outlined, merged tokens' cells
    tinted in their colour."""
    width, height = panel.cols * cell, panel.rows * cell
    base = picture.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    out = Image.eval(base, lambda v: int(v * DIM))
    mask = Image.new("L", (width, height), 0)
    pen = ImageDraw.Draw(mask)
    for r, c in kept:
        pen.rectangle((c * cell, r * cell, (c + 1) * cell - 1, (r + 1) * cell - 1), fill=255)
    out.paste(base, (0, 0), mask)
    for k, cells in merged:
        tint = Image.blend(base, Image.new("RGB", base.size, cluster_color(k)), TINT)
        mask = Image.new("L", (width, height), 0)
        pen = ImageDraw.Draw(mask)
        for r, c in cells:
            pen.rectangle((c * cell, r * cell, (c + 1) * cell - 1, (r + 1) * cell - 1), fill=255)
        out.paste(tint, (0, 0), mask)
    if cell >= 6 and len(kept) < panel.rows * panel.cols:  # outline the kept cells once some were dropped
        pen = ImageDraw.Draw(out)
        for r, c in kept:
            pen.rectangle((c * cell, r * cell, (c + 1) * cell - 1, (r + 1) * cell - 1), outline=KEPT_OUTLINE)
    return out


def _stage_label(stage: StageCells) -> str:
    merged = ""
    if stage.num_merged:
        unknown = sum(m is None for m in stage.merged)
        merged = f" + {stage.num_merged} merged" + (f" ({unknown} with membership not recorded)" if unknown else "")
    newline = f", {stage.num_newlines} newline" if stage.num_newlines else ""
    return f"{stage.label}: {stage.num_tokens} tokens ({sum(len(k) for k in stage.kept)} patches{newline}){merged}"


@dataclasses.dataclass
class MapGeometry:
    """Where each (stage, panel) was drawn in the picture: its top-left corner and cell size in pixels."""

    origins: dict[tuple[int, int], tuple[int, int]]
    cell: dict[int, int]  # per panel
    panels: list[Panel]
    cells: list[StageCells]


def kept_map(
    image: Image.Image | None,
    stages: list,
    *,
    frames: list[Image.Image] | None = None,
    raters: list[str] | None = None,
    title: str | None = None,
    answer: str | None = None,
    panel_size: int | None = None,
    geometry: dict | None = None,
) -> Image.Image:
    """The picture of `stages` (an account's `stages`, or (layer, MergeLayout[, absorbed]) tuples) over `image`
    (video: `frames`, one PIL image per frame). `raters`: SparseVLM's text raters, listed; `answer`: printed under
    the panels; `panel_size`: pixels of a panel's longer side (default 336, 168 from four panels on). `geometry`,
    a dict, receives a `MapGeometry` under "geometry" (tests read it)."""
    panels, cells = stage_cells(stages)
    pictures = panel_images(image, panels, stages[0][1], frames)
    font, small = _font(16), _font(13)
    panel_size = panel_size or (336 if len(panels) < 4 else 168)
    sizes = [max(2, panel_size // max(p.rows, p.cols)) for p in panels]
    pad = 10
    widths = [p.cols * s for p, s in zip(panels, sizes, strict=True)]
    heights = [p.rows * s for p, s in zip(panels, sizes, strict=True)]
    total_w = max(pad + sum(w + pad for w in widths), 360)
    text_lines = _wrap(title, total_w - 2 * pad, font) if title else []
    header_h = pad + 20 * len(text_lines)
    labels = [_wrap(_stage_label(stage), total_w - 2 * pad, small) for stage in cells]
    row_hs = [18 * len(lines) + 4 + max(heights) + 20 for lines in labels]
    footer = []
    if raters is not None:
        footer += _wrap("Text raters: " + (", ".join(repr(r) for r in raters) or "(none)"), total_w - 2 * pad, small)
    if answer is not None:
        footer += _wrap("Answer: " + answer, total_w - 2 * pad, small)
    total_h = header_h + sum(row_hs) + 18 * len(footer) + pad
    canvas = Image.new("RGB", (total_w, total_h), BACKGROUND)
    pen = ImageDraw.Draw(canvas)
    for i, line in enumerate(text_lines):
        pen.text((pad, pad + 20 * i), line, fill=TEXT, font=font)
    origins = {}
    y = header_h
    for s, stage in enumerate(cells):
        for i, line in enumerate(labels[s]):
            pen.text((pad, y + 2 + 18 * i), line, fill=TEXT, font=small)
        top = y + 18 * len(labels[s]) + 4
        x = pad
        for p, panel in enumerate(panels):
            merged = [(k, m[p]) for k, m in enumerate(stage.merged) if m is not None]
            drawn = draw_panel(pictures[p], panel, stage.kept[p], merged, sizes[p])
            canvas.paste(drawn, (x, top))
            origins[(s, p)] = (x, top)
            pen.text((x, top + heights[p] + 2), panel.key, fill=TEXT, font=small)
            x += widths[p] + pad
        y += row_hs[s]
    for i, line in enumerate(footer):
        pen.text((pad, y + 18 * i), line, fill=TEXT, font=small)
    if geometry is not None:
        geometry["geometry"] = MapGeometry(origins, dict(enumerate(sizes)), panels, cells)
    return canvas


def save_kept_map(path, picture: Image.Image) -> Path:
    """Write `picture` as PNG atomically (a temporary file in the same folder, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            picture.save(handle, format="PNG")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


# -- running a model ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def capture_plans(model):
    """Collect the prefill plans the model's pruning method builds inside the block (read, not recomputed: e.g.
    SparseVLM's raters)."""
    method = model.pruning
    plans = []
    original = method.plan

    def plan(*args, **kwargs):
        made = original(*args, **kwargs)
        plans.append(made)
        return made

    method.plan = plan
    try:
        yield plans
    finally:
        del method.plan


def rater_words(plan, input_ids: torch.Tensor, tokenizer, sample: int = 0) -> list[str] | None:
    """SparseVLM's raters of `sample` decoded (its indices count from the text after the image), or None for
    methods without raters."""
    from llava.constants import IMAGE_TOKEN_INDEX, VIDEO_TOKEN_INDEX

    raters = getattr(plan, "raters", None)
    if raters is None:
        return None
    ids = input_ids[sample] if input_ids.dim() == 2 else input_ids
    where = torch.nonzero((ids == IMAGE_TOKEN_INDEX) | (ids == VIDEO_TOKEN_INDEX)).flatten()
    suffix = ids[int(where[-1]) + 1 :] if len(where) else ids
    return [tokenizer.decode([int(suffix[i])]) for i in raters[sample].tolist() if i < len(suffix)]


def describe_stages(stages) -> str:
    return " -> ".join(f"{s.layer}:{len(s.tokens)}" for s in stages)


CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _to_images(frames: torch.Tensor) -> list[Image.Image]:
    """[T, 3, H, W] CLIP-normalised frames as PIL images."""
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    pixels = ((frames.detach().float().cpu() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
    return [Image.fromarray(frame.permute(1, 2, 0).numpy()) for frame in pixels]


def frames_from_clip(clip) -> list[Image.Image] | None:
    """Displayable frames of a clip as the model took it: Video-LLaVA's tensor [3, T, H, W], or Qwen-VL's
    `QwenVideo` (its patch rows put back into frames); CLIP-normalised. None for other forms."""
    if isinstance(clip, torch.Tensor) and clip.dim() == 4:
        return _to_images(clip.permute(1, 0, 2, 3))
    pixels, grid = getattr(clip, "pixels", None), getattr(clip, "grid_thw", None)
    if pixels is None or grid is None:
        return None
    t, h, w = (int(x) for x in grid)
    merge, patch = 2, 14
    temporal = pixels.shape[-1] // (3 * patch * patch)
    x = pixels.reshape(t, h // merge, w // merge, merge, merge, 3, temporal, patch, patch)
    x = x.permute(0, 6, 5, 1, 3, 7, 2, 4, 8).reshape(t * temporal, 3, h * patch, w * patch)
    return _to_images(x)


def map_of_generation(
    model, tokenizer, plans, input_ids, image=None, video=None, answer=None, title=None, sample: int = 0
) -> Image.Image:
    """The kept map of the last `model.generate` call's sample `sample` (`plans` from `capture_plans` around it,
    for SparseVLM's raters; `image` the PIL image, or `video` the clip as the model took it)."""
    if not model.last_accounts:
        raise ValueError("No generation to draw: call model.generate first")
    stages = model.last_accounts[sample].stages
    frames = None
    if video is not None:
        frames = frames_from_clip(video)
        tokens = stages[0].tokens if stages else None
        if frames is None and tokens is not None:  # a form we cannot show (Qwen's patch rows): grey frames
            frames = [Image.new("RGB", (336, 336), (128, 128, 128))] * (2 * tokens.num_views)  # noqa: E501
    raters = rater_words(plans[-1], input_ids, tokenizer, sample) if plans else None
    return kept_map(image, stages, frames=frames, raters=raters, title=title, answer=answer)
