"""FasterVLM's two attention analyses, re-implemented (spec: `shared/specs/baselines.md` 1.8).

Attention shift: at each decoder layer, the head-averaged attention the prompt's queries pay each visual token,
summarised as four per-key profiles over the visual tokens (index j = 0..V-1 in the order they enter the LLM):

- ``full``: column sum over every query from the first image token to the last prompt token, divided by the
  number of those queries that can causally see key j: (V - j) image queries plus all T text queries;
- ``image``: column sum over the V image queries, divided by (V - j);
- ``text``: mean over the text queries after the image, the final prompt token excluded;
- ``last``: the final prompt token's row.

The profiles are averaged over samples; the tower's [CLS] attention (`CLIPVisionTower.forward_with_cls_attention`,
FasterVLM's score) is averaged the same way for comparison.

Attention dispersion: the [CLS] vector and the last prompt token's attention over the visual tokens at one decoder
layer (FastV's layer index 1 by default), each sorted in descending order, normalised to sum 1 and cumulatively
summed (a CDF over the share of tokens, averaged over samples), and the histogram of their max-normalised values.

How the attention is obtained: through the rows machinery (`llava.sparse.attention_rows`), the way FastV and
SparseVLM score tokens. A `PrefillPlan` asks, at each analysed layer, for the probabilities of just the query rows
the analysis needs (every row from the first image token on for the shift; the last row for the dispersion); the
layer's attention wrapper computes them from its post-RoPE queries and keys in float32, and the plan reduces them
to per-key profiles as soon as the layer has run, so at most one layer's [heads, rows, keys] block exists at a time
(LLaVA-1.5-7B: 32 x ~650 x ~650 floats, ~55 MB) and no layer ever returns a full attention map. The image span
comes from the spliced input, never from a constant like 35.

One sample per prefill. Pre-LLM pruning methods may be active (the profiles then run over the tokens that entered
the LLM); in-LLM methods (FastV, SparseVLM, ...) change the sequence between layers and are refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from pathlib import Path

import torch

from llava.model.anyres import MergeLayout
from llava.sparse.engine import PrefillPlan, PruningMethod, VisualLayout

SHIFT_KINDS = ("full", "image", "text", "last")


# -- the per-sample computations (pure functions, also used by the tests) -------------------------------------------
def shift_profiles(rows_attention: torch.Tensor, visual_start: int, visual: int) -> dict[str, torch.Tensor]:
    """The four per-key profiles of one sample at one layer.

    `rows_attention` [R, K]: head-averaged attention probabilities of the query rows from the first image token to
    the last prompt token (R = V image rows + T text rows, in sequence order) over all K keys of the sequence;
    `visual_start`: the first image token's key index; `visual`: V. Returns kind -> float64 [V]."""
    rows = rows_attention.shape[0]
    text = rows - visual
    if text < 1:
        raise ValueError("the prompt must have at least one text token after the image (the last query)")
    cols = rows_attention[:, visual_start : visual_start + visual].double()
    seen_by_images = visual - torch.arange(visual, dtype=torch.float64, device=cols.device)
    image_rows, text_rows = cols[:visual], cols[visual:]
    text_profile = text_rows[:-1].mean(dim=0) if text > 1 else torch.full_like(cols[0], float("nan"))
    return {
        "full": cols.sum(dim=0) / (seen_by_images + text),
        "image": image_rows.sum(dim=0) / seen_by_images,
        "text": text_profile,
        "last": cols[-1].clone(),
    }


def attention_cdf(attention: torch.Tensor) -> torch.Tensor:
    """Sorted-cumulative attention mass: the vector sorted in descending order, normalised to sum 1, cumulatively
    summed (float64 [N]; entry i is the share of the mass carried by the i + 1 most-attended tokens)."""
    values = attention.detach().double().flatten().sort(descending=True).values
    return (values / values.sum()).cumsum(dim=0)


def max_normalised_histogram(attention: torch.Tensor, bins: int = 200) -> torch.Tensor:
    """Counts (float64 [bins]) of the vector's values divided by its maximum, in `bins` equal bins over [0, 1]."""
    values = attention.detach().double().flatten().cpu()
    values = values / values.max()
    return torch.histogram(values, bins=bins, range=(0.0, 1.0)).hist


# -- capturing rows inside the prefill ------------------------------------------------------------------------------
class _ProbePlan(PrefillPlan):
    """Asks for attention rows at the analysed layers and reduces them right away; prunes nothing."""

    def __init__(self, layouts: list[VisualLayout], model, inputs, method, layers, rows: str, records: dict):
        text = model.config.text_config
        super().__init__(layouts, text.num_hidden_layers, text, model.dtype, inputs.num_encoded, method.prune_newlines)
        if len(layouts) != 1:
            raise ValueError("the attention analyses run one sample per prefill")
        self.layers, self.rows, self.records = layers, rows, records

    def rows_request(self, layer_idx, state):
        if layer_idx not in self.layers:
            return None
        layout = self.layouts[0]
        if layout.visual == 0:
            raise ValueError("this prompt has no image tokens in the LLM")
        if self.rows == "last":
            rows = torch.tensor([layout.length - 1])
        else:
            rows = torch.arange(layout.prefix, layout.length)
        return self.make_rows_request([rows.to(state.hidden_states.device)], state)

    def prune(self, layer_idx, state, request):
        if request is None:
            return state
        layout = self.layouts[0]
        start = layout.visual_start(state.hidden_states.shape[1])
        probs = request.probs[0].mean(dim=0)  # [rows, keys], head average
        if self.rows == "last":
            self.records[layer_idx] = probs[0, start : start + layout.visual].double().cpu()
        else:
            profiles = shift_profiles(probs, start, layout.visual)
            self.records[layer_idx] = {kind: value.cpu() for kind, value in profiles.items()}
        request.probs = None
        self.records["visual"] = layout.visual
        self.records["tokens"] = layout.tokens
        return state


def _probe(model, input_ids, images, image_sizes, layers, rows: str, videos=None) -> dict:
    method = model.pruning
    if type(method).plan is not PruningMethod.plan:
        raise ValueError(
            f"--method {method.name} prunes inside the LLM, which changes the sequence between layers; the attention "
            "analyses accept no pruning or a pre-LLM method (fastervlm, visionzip, ...)"
        )
    records: dict = {}

    def plan(layouts, model_, inputs):
        return _ProbePlan(layouts, model_, inputs, method, set(layers), rows, records)

    method.plan = plan  # this instance only, for this prefill
    try:
        with torch.no_grad():
            model.prefill(input_ids, images=images, use_cache=False, image_sizes=image_sizes, videos=videos)
    finally:
        del method.plan
    return records


NO_CLS_NOTE = (
    "no [CLS] profile: this model's vision tower has no [CLS] token (Qwen-VL's tower ends in a patch merger), so "
    "FasterVLM's [CLS] attention does not apply; the LLM's own profiles are complete"
)


def cls_attention(model, images=None, image_sizes=None, videos=None) -> torch.Tensor | None:
    """The tower's [CLS] attention over the patches of every view (a Video-LLaVA clip: every frame, from its video
    tower): [views, P] float64, or None for a tower without a [CLS] row (Qwen-VL; see `NO_CLS_NOTE`).
    `image_sizes` is accepted for symmetry with the prefill's arguments and not needed."""
    if videos is not None:
        tower = getattr(getattr(model, "model", None), "video_tower", None)
        if tower is None or not hasattr(tower, "forward_with_cls_attention"):
            return None
        clips = torch.stack([clip.to(tower.device, tower.dtype) for clip in videos])
        with torch.no_grad():
            _, row = tower.forward_with_cls_attention(clips)
        return row.flatten(0, 1).double().cpu()  # [clips * frames, P]
    tower = model.get_vision_tower()
    if tower is None or not hasattr(tower, "forward_with_cls_attention"):
        return None
    if isinstance(images, list):
        images = torch.cat([img.reshape(-1, *img.shape[-3:]) for img in images])
    else:
        images = images.reshape(-1, *images.shape[-3:])
    with torch.no_grad():
        _, row = tower.forward_with_cls_attention(images.to(tower.device, tower.dtype))
    return row.double().cpu()


@dataclasses.dataclass
class ShiftSample:
    profiles: dict[int, dict[str, torch.Tensor]]  # layer -> kind -> [V]
    visual: int
    cls: torch.Tensor | None  # [views, P]
    tokens: MergeLayout | None = None  # where each visual token came from (the engine's provenance)


def shift_sample(model, input_ids, images=None, image_sizes=None, layers=None, videos=None) -> ShiftSample:
    """One sample's attention-shift profiles at `layers` (default: all decoder layers) and its [CLS] row; an image
    (`images`) or a clip (`videos`, one clip as the model's `load_video` gives it)."""
    num_layers = model.config.text_config.num_hidden_layers
    layers = list(range(num_layers)) if layers is None else list(layers)
    records = _probe(model, input_ids, images, image_sizes, layers, "all", videos)
    visual, tokens = records.pop("visual"), records.pop("tokens")
    return ShiftSample(records, visual, cls_attention(model, images, videos=videos), tokens)


def last_token_attention(model, input_ids, images=None, layer: int = 1, image_sizes=None, videos=None) -> torch.Tensor:
    """The last prompt token's head-averaged attention over the visual tokens at decoder layer `layer`: [V]."""
    records = _probe(model, input_ids, images, image_sizes, [layer], "last", videos)
    return records[layer]


def patch_cells(tokens: MergeLayout | None) -> dict[str, tuple[tuple[int, int], torch.Tensor, torch.Tensor]]:
    """Where each visual token sits on its image's patch grid, from the engine's provenance: grid name -> (shape,
    token indices, flat cell indices). One grid "image" for a single view (LLaVA-1.5: 24 x 24; Qwen-VL: its merged
    grid); a clip: "frame v" per frame (Qwen-VL: per frame pair); LLaVA-NeXT: "base" (the downsized view) and
    "crops" (the full high-res crop grid, unpadded cells absent). Newline and merged tokens sit on no cell. Empty
    without provenance."""
    if tokens is None:
        return {}
    view, row, col = tokens.view, tokens.row, tokens.col
    shape = tuple(tokens.grid_hw) if tokens.grid_hw is not None else (tokens.side, tokens.side)
    if tokens.num_views <= 1:
        grids = {"image": (shape, view == 0)}
    elif tokens.grid_hw is not None or tokens.grid == (0, 0):  # a clip: one grid per frame (Qwen: frame pair)
        grids = {f"frame {v}": (shape, view == v) for v in range(tokens.num_views)}
    else:
        columns, rows = tokens.grid
        grids = {
            "base": ((tokens.side, tokens.side), view == 0),
            "crops": ((rows * tokens.side, columns * tokens.side), view >= 1),
        }
    cells = {}
    for name, (shape, member) in grids.items():
        index = torch.nonzero(member & (tokens.patch >= 0)).flatten()
        if len(index):
            cells[name] = (shape, index, row[index] * shape[1] + col[index])
    return cells


def _nan_to_none(values):
    """Nested dicts / lists of floats with NaN as None (strict JSON)."""
    if isinstance(values, dict):
        return {key: _nan_to_none(v) for key, v in values.items()}
    if isinstance(values, list):
        return [_nan_to_none(v) for v in values]
    return None if isinstance(values, float) and math.isnan(values) else values


# -- accumulating over samples --------------------------------------------------------------------------------------
class ShiftAccumulator:
    """Sums of each layer's four profiles and of the [CLS] profile (mean over a sample's views) over samples."""

    def __init__(self) -> None:
        self.sums: dict[int, dict[str, torch.Tensor]] = {}
        self.count = 0
        self.visual: int | None = None
        self.cls_sum: torch.Tensor | None = None
        self.cls_count = 0
        # patch-grid heat maps: per layer, kind and grid, the sum of the values each cell received and how many
        # samples had a token on it (a pre-LLM method keeps different patches per sample)
        self.map_sums: dict[int, dict[str, dict[str, torch.Tensor]]] = {}
        self.map_counts: dict[str, torch.Tensor] = {}
        self.map_shapes: dict[str, tuple[int, int]] = {}

    def add(self, sample: ShiftSample) -> None:
        if self.visual is not None and sample.visual != self.visual:
            raise ValueError(
                f"samples enter the LLM with different visual token counts ({self.visual}, {sample.visual}), so "
                "their per-token profiles cannot be averaged; use a fixed resolution (LLaVA-NeXT: "
                "--image-grid-pinpoints '[[672,672]]') and a fixed per-image budget"
            )
        self.visual = sample.visual
        for layer, profiles in sample.profiles.items():
            into = self.sums.setdefault(
                layer, {kind: torch.zeros(sample.visual, dtype=torch.float64) for kind in SHIFT_KINDS}
            )
            for kind in SHIFT_KINDS:
                into[kind] += profiles[kind]
        self.count += 1
        cells = patch_cells(sample.tokens)
        for name, (shape, _, flat) in list(cells.items()):
            if self.map_shapes.setdefault(name, shape) != shape:  # another grid (NeXT: another crop layout)
                raise ValueError(
                    f"samples use different {name} patch grids ({self.map_shapes[name]}, {shape}); use a fixed "
                    "resolution (LLaVA-NeXT: --image-grid-pinpoints '[[672,672]]')"
                )
            count = self.map_counts.setdefault(name, torch.zeros(shape[0] * shape[1], dtype=torch.float64))
            count[flat] += 1
        for layer, profiles in sample.profiles.items():
            per_kind = self.map_sums.setdefault(layer, {})
            for kind in SHIFT_KINDS:
                per_grid = per_kind.setdefault(kind, {})
                for name, (shape, index, flat) in cells.items():
                    into = per_grid.setdefault(name, torch.zeros(shape[0] * shape[1], dtype=torch.float64))
                    into[flat] += profiles[kind][index]
        if sample.cls is not None:
            cls = sample.cls.mean(dim=0)
            self.cls_sum = cls if self.cls_sum is None else self.cls_sum + cls
            self.cls_count += 1

    def result(self) -> dict:
        if not self.count:
            raise ValueError("no sample was analysed")
        return {
            "num_samples": self.count,
            "num_visual_tokens": self.visual,
            "kinds": list(SHIFT_KINDS),
            "layers": {
                str(layer): {kind: _nan_to_none((value / self.count).tolist()) for kind, value in sums.items()}
                for layer, sums in sorted(self.sums.items())
            },
            "cls": None if self.cls_sum is None else (self.cls_sum / self.cls_count).tolist(),
            **({"cls_note": NO_CLS_NOTE} if self.cls_sum is None else {}),
            "maps": _nan_to_none(
                {
                    str(layer): {
                        kind: {
                            name: (total / self.map_counts[name]).view(self.map_shapes[name]).tolist()
                            for name, total in grids.items()
                        }
                        for kind, grids in kinds.items()
                    }
                    for layer, kinds in sorted(self.map_sums.items())
                }
            ),
        }


class DispersionAccumulator:
    """Per source ("cls", "last"): the sum of the samples' CDFs and of their max-normalised histogram counts."""

    def __init__(self, bins: int = 200) -> None:
        self.bins = bins
        self.cdf: dict[str, torch.Tensor] = {}
        self.hist: dict[str, torch.Tensor] = {}
        self.count: dict[str, int] = {}

    def add(self, source: str, attention: torch.Tensor) -> None:
        cdf = attention_cdf(attention).cpu()
        if source in self.cdf and len(cdf) != len(self.cdf[source]):
            raise ValueError(
                f"{source} attention vectors of different lengths ({len(self.cdf[source])}, {len(cdf)}) cannot be "
                "averaged; use a fixed resolution and budget"
            )
        self.cdf[source] = self.cdf.get(source, 0) + cdf
        self.hist[source] = self.hist.get(source, 0) + max_normalised_histogram(attention, self.bins)
        self.count[source] = self.count.get(source, 0) + 1

    def result(self) -> dict:
        if not self.count:
            raise ValueError("no sample was analysed")
        out = {"bins": self.bins, "bin_edges": torch.linspace(0, 1, self.bins + 1).tolist(), "sources": {}}
        for source in self.cdf:
            cdf = self.cdf[source] / self.count[source]
            hist = self.hist[source]
            out["sources"][source] = {
                "num_samples": self.count[source],
                "num_tokens": len(cdf),
                "token_share": ((torch.arange(len(cdf)) + 1) / len(cdf)).tolist(),
                "cdf": cdf.tolist(),
                "histogram": (hist / hist.sum()).tolist(),
            }
        return out


# -- inputs -----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Sample:
    id: str
    text: str
    image: Path | None
    video: Path | None = None  # a clip instead of an image (video checkpoints)


def read_samples(question_file: str | os.PathLike, image_folder: str | os.PathLike, num_samples: int | None):
    """The first `num_samples` image (or video) questions of a question file: LLaVA's jsonl {question_id, image,
    text}, or a conversation file (json list or jsonl; {id, image, conversations}, the first human turn is the
    prompt, as in FasterVLM's llava_v1_5_mix1k.jsonl); a `video` field instead of `image` names a clip (video
    checkpoints). Entries with neither are skipped."""
    path = Path(question_file)
    if not path.is_file():
        raise FileNotFoundError(f"--question-file {path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        rows = json.loads(text)
        rows = rows if isinstance(rows, list) else [rows]
    except json.JSONDecodeError:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}, line {number}: not valid JSON ({err.msg})") from None
    samples = []
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not (row.get("image") or row.get("video")):
            continue
        if "text" in row:
            prompt = row["text"]
        elif "conversations" in row:
            human = [turn for turn in row["conversations"] if turn.get("from") == "human"]
            if not human:
                continue
            prompt = human[0]["value"]
        else:
            raise ValueError(f"{path}, entry {number}: needs a 'text' or a 'conversations' field")
        for token in ("<image>", "<video>"):
            prompt = prompt.replace(f"{token}\n", "").replace(f"\n{token}", "").replace(token, "").strip()
        sample_id = str(row.get("question_id", row.get("id", number)))
        if row.get("image"):
            image = row["image"][0] if isinstance(row["image"], list) else row["image"]
            samples.append(Sample(sample_id, prompt, Path(image_folder) / image))
        else:
            samples.append(Sample(sample_id, prompt, None, Path(image_folder) / row["video"]))
        if num_samples is not None and len(samples) >= num_samples:
            break
    if not samples:
        raise ValueError(f"--question-file {path}: no entry with an image or a video")
    return samples


def add_analysis_args(parser: argparse.ArgumentParser) -> None:
    from llava.model_args import add_model_args

    add_model_args(parser)
    parser.add_argument(
        "--question-file",
        type=str,
        required=True,
        help="jsonl {question_id, image, text} or a conversation file {id, image, conversations} (first human turn)",
    )
    parser.add_argument("--image-folder", type=str, default="")
    parser.add_argument("--num-samples", type=int, default=200, help="the first N image questions (0: all)")
    parser.add_argument("--out", type=str, required=True, help="output folder for the PNGs and the JSON")
    parser.add_argument("--conv-mode", type=str, default=None, help="prompt template (default: the model's own)")
    parser.add_argument(
        "--image-mode",
        choices=["pad", "crop"],
        default=None,
        help="override the checkpoint's image_aspect_ratio (LLaVA-1.5: pad)",
    )


def iter_inputs(args, samples, tokenizer, model, image_processor):
    """(sample, input_ids [1, T], media) per sample, `media` the prefill's visual keyword arguments ({images,
    image_sizes} or, for a video question, {videos}); a sample whose image or clip cannot be read is reported on
    stderr and comes with None for both."""
    import sys

    from PIL import Image

    from llava.constants import DEFAULT_VIDEO_TOKEN
    from llava.conversation import get_conv_template, resolve_conv_mode
    from llava.mm_utils import get_model_name_from_path, image_token, process_images, to_device, tokenizer_image_token

    conv_mode = resolve_conv_mode(args.conv_mode, get_model_name_from_path(args.model_path), model.config)
    aspect = args.image_mode or model.config.image_aspect_ratio
    mode_cfg = model.config if aspect in ("anyres", "qwen") else argparse.Namespace(image_aspect_ratio=aspect)
    for sample in samples:
        try:
            if sample.video is not None:
                clip = model.load_video(str(sample.video), image_processor)
                clip = clip.to(model.input_device, model.dtype) if isinstance(clip, torch.Tensor) else clip
                media, token = {"videos": [clip]}, DEFAULT_VIDEO_TOKEN
            else:
                with Image.open(sample.image) as img:
                    image = img.convert("RGB")
                pixels = to_device(process_images([image], image_processor, mode_cfg), model.input_device, model.dtype)
                media = {"images": pixels, "image_sizes": [image.size]}
                token = image_token(model.config.mm_use_im_start_end)
        except (OSError, ValueError, RuntimeError) as err:
            what = f"video {sample.video}" if sample.video is not None else f"image {sample.image}"
            print(f"[skip] {sample.id}: {what} could not be read ({err})", file=sys.stderr)
            yield sample, None, None
            continue
        conv = get_conv_template(conv_mode)
        conv.append_message(conv.roles[0], token + "\n" + sample.text)
        conv.append_message(conv.roles[1], None)
        ids = tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")[None]
        yield sample, ids, media


# -- outputs ----------------------------------------------------------------------------------------------------------
def write_json_atomic(path: str | os.PathLike, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=False), encoding="utf-8")
    os.replace(tmp, path)


def _save_figure(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, path)


def grid_shape(count: int) -> tuple[int, int] | None:
    """(side, side) when `count` tokens fill a square grid (24 x 24 for 576), else None."""
    side = math.isqrt(count)
    return (side, side) if side * side == count else None


def heat_map(values, grids: dict | None = None):
    """The 2-D array a profile is drawn as (NaN: no token on that cell): the provenance maps of `grids` (name ->
    2-D list, None for empty cells; several grids side by side, one blank column apart), else the values on a
    square grid in raster order; None when neither applies."""
    import numpy as np

    if grids:
        arrays = [
            np.array([[np.nan if v is None else v for v in row] for row in grid], dtype=float)
            for grid in grids.values()
        ]
        height = max(a.shape[0] for a in arrays)
        padded = []
        for a in arrays:
            padded.append(np.pad(a, ((0, height - a.shape[0]), (0, 1)), constant_values=np.nan))
        return np.concatenate(padded, axis=1)[:, :-1]
    values = np.array([np.nan if v is None else v for v in values], dtype=float)
    shape = grid_shape(len(values))
    return None if shape is None else values.reshape(shape)


def _bars_and_map(fig, top, bottom, values, title, grids=None):
    import numpy as np

    values = np.array([np.nan if v is None else v for v in values], dtype=float)
    top.stairs(np.nan_to_num(values), np.arange(len(values) + 1) + 0.5, fill=True, color="tab:blue")
    top.set_title(title, fontsize=9)
    top.set_xlabel("visual token index", fontsize=8)
    top.tick_params(labelsize=7)
    grid = heat_map(values.tolist(), grids)
    if grid is None:
        bottom.axis("off")
        bottom.text(0.5, 0.5, f"{len(values)} tokens: no patch grid", ha="center", va="center", fontsize=8)
        return
    image = bottom.imshow(np.ma.masked_invalid(grid), cmap="viridis")
    bottom.set_xticks([])
    bottom.set_yticks([])
    fig.colorbar(image, ax=bottom, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)


def plot_shift(result: dict, out: str | os.PathLike) -> list[Path]:
    """PNGs of an attention-shift result: per layer, the four profiles as bars over token index (top) and heat maps
    on the patch grid (bottom; from the tokens' provenance, so pruned runs show each patch where it was) as
    `shift_layer_XX.png`; the [CLS] profile (`shift_cls.png`); an overview of every layer's full-profile heat map
    next to [CLS] (`attn_shift.png`)."""
    import numpy as np
    from matplotlib.figure import Figure

    out = Path(out)
    maps = result.get("maps") or {}
    written = []
    for layer, profiles in result["layers"].items():
        fig = Figure(figsize=(16, 7))
        axes = fig.subplots(2, 4)
        for col, kind in enumerate(SHIFT_KINDS):
            grids = maps.get(layer, {}).get(kind)
            _bars_and_map(fig, axes[0, col], axes[1, col], profiles[kind], f"layer {layer}: {kind}", grids)
        fig.suptitle(f"LLM attention over visual tokens, decoder layer index {layer} ({result['num_samples']} samples)")
        path = out / f"shift_layer_{int(layer):02d}.png"
        _save_figure(fig, path)
        written.append(path)
    if result.get("cls") is not None:
        fig = Figure(figsize=(5, 7))
        axes = fig.subplots(2, 1)
        _bars_and_map(fig, axes[0], axes[1], result["cls"], "vision tower [CLS] attention")
        path = out / "shift_cls.png"
        _save_figure(fig, path)
        written.append(path)
    panels = [("[CLS]", result["cls"], None)] if result.get("cls") is not None else []
    panels += [
        (f"layer {layer}: full", p["full"], maps.get(layer, {}).get("full")) for layer, p in result["layers"].items()
    ]
    cols = min(6, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(2.6 * cols, 2.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, values, grids) in zip(axes.flat, panels, strict=False):
        grid = heat_map(values, grids)
        if grid is None:  # no grid: bars instead
            ax.axis("on")
            ax.stairs(np.nan_to_num(np.array(values, dtype=float)), np.arange(len(values) + 1) + 0.5, fill=True)
            ax.tick_params(labelsize=6)
        else:
            ax.imshow(np.ma.masked_invalid(grid))
        ax.set_title(title, fontsize=8)
    fig.suptitle("attention shift: [CLS] vs LLM (all queries, causal-visibility normalised)")
    path = out / "attn_shift.png"
    _save_figure(fig, path)
    written.append(path)
    return written


def plot_dispersion(result: dict, path: str | os.PathLike, layer: int) -> Path:
    """One PNG: the averaged CDFs of every source (x: % of tokens, y: % of attention mass), and one histogram of
    max-normalised attention per source with log-scaled proportions."""
    import numpy as np
    from matplotlib.figure import Figure

    sources = result["sources"]
    labels = {"cls": "vision tower [CLS]", "last": f"LLM last token, decoder layer index {layer}"}
    fig = Figure(figsize=(5 * (1 + len(sources)), 4.2))
    axes = fig.subplots(1, 1 + len(sources), squeeze=False)[0]
    for source, data in sources.items():
        x = 100 * np.asarray(data["token_share"])
        axes[0].plot(
            np.concatenate([[0], x]), 100 * np.concatenate([[0], data["cdf"]]), label=labels.get(source, source)
        )
    axes[0].set_xlabel("% of visual tokens (most attended first)")
    axes[0].set_ylabel("% of attention mass")
    axes[0].set_title("attention CDF")
    axes[0].legend(fontsize=8)
    edges = np.asarray(result["bin_edges"])
    for ax, (source, data) in zip(axes[1:], sources.items(), strict=True):
        hist = np.asarray(data["histogram"])
        ax.bar(edges[:-1], np.where(hist > 0, hist, np.nan), width=np.diff(edges), align="edge", color="tab:orange")
        ax.set_yscale("log")
        ax.set_xlim(0, 1)
        ax.set_xlabel("attention / max attention")
        ax.set_ylabel("proportion of tokens")
        ax.set_title(labels.get(source, source))
    fig.suptitle("attention dispersion")
    fig.subplots_adjust(top=0.84, wspace=0.3)
    path = Path(path)
    _save_figure(fig, path)
    return path
