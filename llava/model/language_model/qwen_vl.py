"""QwenVLForCausalLM: Qwen2-VL / Qwen2.5-VL on our decoder loop, with transformers' own vision tower and layers.

The modules are transformers' (`Qwen2_5_VLForConditionalGeneration` / `Qwen2VLForConditionalGeneration` loaded by
`from_pretrained`, then taken apart): the vision transformer with its merger, the text decoder layers, norm and
M-RoPE table, `lm_head`. What is ours: the splice of each image's merged tokens at its `<image>` placeholder (and of
each video clip's at its `<video>` placeholder), the 3-D rotary positions (`mrope_positions`, transformers 5.23's
`get_rope_index` rule), the video preprocessing (`preprocess_video`, transformers' Qwen2-VL video processor written
out, since that one needs torchvision), and everything the shared machinery does (`llava.model.vlm`): pruning
between layers, the per-layer cache, decoding.

Positions are [B, L, 3] (temporal, height, width ids) through the engine; kept tokens keep theirs after pruning,
and the first generated token takes max(prompt ids) + 1 in every layer, as in transformers and every public port.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llava.mm_utils import downsampled_size
from llava.model.anyres import MergeLayout, grid_layout
from llava.model.config import TextShape
from llava.model.llava_arch import EncodedImage, MultimodalInputs, splice_image_features
from llava.model.vlm import VisionLanguageModel, ids_on_device
from llava.sparse.engine import apply_selection

FAMILIES = ("qwen2_vl", "qwen2_5_vl")
MERGE = 2  # spatial merge: 2 x 2 patches of 14 px per LLM token
PATCH = 14
TEMPORAL_PATCH = 2  # two consecutive frames form one 3-D patch (an image is its own frame twice)
QWEN_CONV_MODE = "qwen2_vl"
# Per-frame pixel bounds of a video: transformers' `Qwen2VLVideoProcessor` class defaults = qwen-vl-utils'
# VIDEO_MIN_PIXELS / VIDEO_MAX_PIXELS.
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MROPE_VIDEO_RULES = ("transformers", "qwen")


def smart_resize(height: int, width: int, min_pixels: int, max_pixels: int, factor: int = PATCH * MERGE):
    """(height, width) Qwen's processor resizes an image to: multiples of `factor` near the original, scaled into
    [min_pixels, max_pixels] (transformers' and qwen-vl-utils' rule)."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"Qwen-VL takes images with an aspect ratio below 200, got {width}x{height}")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = (height * width / max_pixels) ** 0.5
        h = max(factor, int(height / beta / factor) * factor)
        w = max(factor, int(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = (min_pixels / (height * width)) ** 0.5
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


# -- video preprocessing ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class QwenVideo:
    """One preprocessed clip, what `prepare_inputs(videos=[...])` takes: pixel patches [t * h * w, 3 * 2 * 14 * 14]
    (temporal patches outermost, then merge-block-major as for images), `grid_thw` = (t, h, w) in patch units
    (t frame pairs, h x w patches of 14 px per frame), and the time one frame pair spans."""

    pixels: torch.Tensor
    grid_thw: tuple[int, int, int]
    second_per_grid_t: float  # temporal_patch_size / fps: transformers' `second_per_grid_ts` entry
    fps: float  # the rate the frames were sampled at

    @property
    def num_tokens(self) -> int:
        """LLM tokens of the clip: frame pairs x merged cells per frame."""
        t, h, w = self.grid_thw
        return t * (h // MERGE) * (w // MERGE)


def _processor_value(processor, name: str, default):
    value = getattr(processor, name, None) if processor is not None else None
    return default if value is None else value


def _as_frames(frames) -> torch.Tensor:
    """uint8 RGB frames [T, H, W, 3] (numpy, torch, or a list of equally sized frames / PIL images) as a tensor."""
    if isinstance(frames, (list, tuple)):
        arrays = [np.asarray(frame) for frame in frames]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(
                f"The frames of one video must all have one size, got shapes {sorted(shapes)}; resize them to one "
                "size first (or decode them with read_video_frames)"
            )
        frames = np.stack(arrays) if arrays else np.zeros((0, 0, 0, 3), np.uint8)
    video = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frames))
    if video.dtype != torch.uint8 or video.dim() != 4 or video.shape[-1] != 3 or video.shape[0] == 0:
        raise ValueError(
            f"A video must be uint8 RGB frames of shape (T, H, W, 3) with T >= 1, got {video.dtype} "
            f"{tuple(video.shape)}"
        )
    return video.cpu()


def preprocess_video(
    frames,
    processor=None,
    fps: float = 2.0,
    min_pixels: int = VIDEO_MIN_PIXELS,
    max_pixels: int = VIDEO_MAX_PIXELS,
) -> QwenVideo:
    """uint8 RGB frames [T, H, W, 3] -> `QwenVideo`, the steps of transformers 5.23's `Qwen2VLVideoProcessor`
    (torchvision backend, frames on the CPU, no frame sampling, `cap_pixels_per_frame` off):

    1. every frame gets the size `smart_resize(H, W, min_pixels, max_pixels)` (factor 28) and is resized as a uint8
       tensor by torchvision's `resize(..., BICUBIC, antialias=True)`, which on the CPU is
       `F.interpolate(uint8, mode="bicubic", antialias=True, align_corners=False)` computed natively in uint8 (so it
       rounds and clamps inside, and is not the float path; on a GPU torchvision goes through float32 and rounds, which
       differs by a few levels). A frame already at that size is left as it is.
    2. rescale and normalise fused in float32: (x - 255 * mean) / (255 * std).
    3. an odd frame count is padded by repeating the last frame; patches are cut as [t, h/2, w/2, 2, 2, C, 2, 14, 14]
       (frame pair, merged row, merged column, patch row and column in the cell, channel, frame in the pair, pixels).

    `processor` (the model's image processor) gives the mean, std and patch sizes; `fps` is the rate the frames were
    sampled at (`second_per_grid_t` = 2 / fps). The default pixel bounds are the video processor's class defaults
    (128..768 x 28^2, qwen-vl-utils' too). Note: transformers' `AutoVideoProcessor` on a Hub folder without a
    `video_preprocessor_config.json` reads `preprocessor_config.json` instead, so videos then get the *image* bounds
    (3136..12845056 on the Hub checkpoints); pass those to match such a run."""
    video = _as_frames(frames)
    patch = int(_processor_value(processor, "patch_size", PATCH))
    merge = int(_processor_value(processor, "merge_size", MERGE))
    temporal = int(_processor_value(processor, "temporal_patch_size", TEMPORAL_PATCH))
    if (patch, merge) != (PATCH, MERGE):
        raise ValueError(f"Qwen-VL video patches are {PATCH} px merged {MERGE}x{MERGE}, got {patch} and {merge}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    mean = _processor_value(processor, "image_mean", OPENAI_CLIP_MEAN)
    std = _processor_value(processor, "image_std", OPENAI_CLIP_STD)
    rescale = float(_processor_value(processor, "rescale_factor", 1 / 255))

    video = video.permute(0, 3, 1, 2).contiguous()  # [T, 3, H, W]
    height, width = video.shape[-2:]
    new_h, new_w = smart_resize(height, width, min_pixels, max_pixels, factor=patch * merge)
    if (new_h, new_w) != (height, width):
        video = F.interpolate(video, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    scale = 1.0 / rescale
    mean = (torch.tensor(mean) * scale).view(-1, 1, 1)
    std = (torch.tensor(std) * scale).view(-1, 1, 1)
    video = (video.to(torch.float32) - mean) / std

    if pad := -len(video) % temporal:
        video = torch.cat([video, video[-1:].expand(pad, -1, -1, -1)])
    t, h, w = len(video) // temporal, new_h // patch, new_w // patch
    patches = video.view(t, temporal, 3, h // merge, merge, patch, w // merge, merge, patch)
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(t * h * w, 3 * temporal * patch * patch)
    return QwenVideo(patches, (t, h, w), temporal / fps, float(fps))


def qwen_num_frames(total: int, video_fps: float, fps: float = 2.0, min_frames: int = 4, max_frames: int = 768) -> int:
    """Frames qwen-vl-utils samples from a video of `total` frames at `video_fps` (`smart_nframes`, fps mode):
    total / video_fps * fps, clamped to [min_frames rounded up to even, min(max_frames, total) rounded down to even]
    and to `total`, then rounded down to an even count."""
    low = math.ceil(min_frames / TEMPORAL_PATCH) * TEMPORAL_PATCH
    high = math.floor(min(max_frames, total) / TEMPORAL_PATCH) * TEMPORAL_PATCH
    count = min(max(total / video_fps * fps, low), high, total)
    count = math.floor(count / TEMPORAL_PATCH) * TEMPORAL_PATCH
    if not TEMPORAL_PATCH <= count <= total:
        raise ValueError(f"A video of {total} frames is too short for Qwen-VL (at least {TEMPORAL_PATCH} frames)")
    return count


def video_metadata(path: str | os.PathLike) -> tuple[int, float]:
    """(frame count, frames per second) of a video file, read with PyAV: the container's frame count when it has one
    (Matroska/WebM have none: one full decode counts them) and the stream's average rate."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise ValueError(f"{path}: the frame rate is unknown; pass num_frames to load_video")
        total = int(stream.frames) if stream.frames > 0 else sum(1 for _ in container.decode(stream))
    return total, float(rate)


def attention_received(attn, hidden: torch.Tensor, cu_seqlens: torch.Tensor, position_embeddings):
    """([N] float32, [N, head_dim] float32) of one vision block: the attention each patch receives in its full
    attention (each `cu_seqlens` segment, an image or frame pair, attends within itself), averaged over heads and
    over the segment's queries, and its keys (after the rotary embedding) averaged over heads; recomputed from the
    block's normed input and qkv projection, one [S, S] map at a time."""
    rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb_vision
    q, k, _ = attn.qkv(hidden).reshape(len(hidden), 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = rotate(q, k, *position_embeddings)  # [N, heads, head_dim]
    received = torch.zeros(len(hidden), dtype=torch.float32, device=hidden.device)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        for head in range(attn.num_heads):
            scores = q[start:end, head].float() @ k[start:end, head].float().T * attn.scaling
            received[start:end] += scores.softmax(dim=-1).mean(dim=0) / attn.num_heads
    return received, k.float().mean(dim=1)


def attention_received_flops(frames: int, patches: int, width: int) -> float:
    """What `attention_received` costs on one image or clip: q and k of the block, one map per frame (pair)."""
    return frames * (4.0 * patches * width * width + 2.0 * patches * patches * width)


def run_with_attention_received(visual, pixels: torch.Tensor, grid_thw: torch.Tensor):
    """(merged tokens [M, D], received [M], keys [M, head_dim]) of one run of Qwen-VL's vision tower: at the tower's
    last full-attention block (Qwen2.5-VL: the last of `fullatt_block_indexes`, the last block in the released
    models; Qwen2-VL: the last block), the attention each patch receives and its head-mean key, each averaged over
    the 2 x 2 patches of a merged token, in the merged tokens' order. HoliTom's score on a tower without [CLS]
    (SigLIP's "mean attention received" at its last layer) and VisionZip's Qwen2.5-VL port's score and keys."""
    full_blocks = getattr(visual, "fullatt_block_indexes", None) or [len(visual.blocks) - 1]
    attn = visual.blocks[max(full_blocks)].attn
    captured = []

    def capture(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        captured.append(attention_received(module, hidden, kwargs["cu_seqlens"], kwargs["position_embeddings"]))

    handle = attn.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        merged = visual(pixels, grid_thw=grid_thw).pooler_output
    finally:
        handle.remove()
    unit = visual.spatial_merge_size**2
    received, keys = captured[0]
    received = in_merged_order(visual, received.view(-1, unit).mean(dim=1), grid_thw)
    keys = in_merged_order(visual, keys.view(-1, unit, keys.shape[-1]).mean(dim=1), grid_thw)
    return merged, received, keys


def in_merged_order(visual, per_unit: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
    """Rows given per 2 x 2 merge unit in the vision blocks' order, put in the merged tokens' order: Qwen2.5-VL's
    blocks see the units permuted window by window (undone after its merger); Qwen2-VL's see them in order."""
    if not hasattr(visual, "window_size"):
        return per_unit
    from transformers.vision_utils import get_vision_window_index

    window_index, _ = get_vision_window_index(
        grid_thw, visual.spatial_merge_size, visual.window_size, visual.patch_size
    )
    return per_unit[torch.argsort(window_index.to(per_unit.device))]


def video_layout(frame_pairs: int, rows: int, cols: int) -> MergeLayout:
    """The merged block of a clip: one view per frame pair (view = temporal index), each a `rows` x `cols` raster, so
    per-view (per-frame) methods act on each frame pair."""
    per_view = rows * cols
    index = torch.arange(frame_pairs * per_view)
    view, patch = index // per_view, index % per_view
    row, col = patch // cols, patch % cols
    return MergeLayout(view, patch, row, col, frame_pairs, max(rows, cols), (0, 0), grid_hw=(rows, cols))


@dataclasses.dataclass
class EncodedVideo(EncodedImage):
    """A clip's visual block; M-RoPE spaces its frame pairs `time_interval` temporal ids apart (before flooring)."""

    time_interval: torch.Tensor = dataclasses.field(default_factory=lambda: torch.tensor(1.0))


@dataclasses.dataclass
class QwenVLConfig(TextShape):
    """What our machinery reads of a Qwen2(.5)-VL checkpoint (`hf`: transformers' config, kept whole)."""

    hf: object
    min_pixels: int
    max_pixels: int
    pruning_grid_rule: str | None = None
    pruning_merge_type: str | None = None
    pruning_image_downsample: int | None = None  # the downsampling baseline's factor (`set_pruning`)
    # fixed for this family: LLaVA fields the generators read
    mm_use_im_start_end: bool = False
    image_aspect_ratio: str = "qwen"
    is_anyres: bool = False
    tokenizer_model_max_length: int | None = None
    conv_mode: str = QWEN_CONV_MODE
    repetition_penalty: float = 1.0  # the checkpoint's generation_config.json (1.05 for the Instruct models)
    # where text after a video resumes in M-RoPE: "transformers" (5.23) or "qwen" (original code), see mrope_positions
    mrope_video_rule: str = "transformers"

    @property
    def model_type(self) -> str:
        return self.hf.model_type

    @property
    def text_config(self):
        return self.hf.text_config

    @property
    def vision_config(self):
        return self.hf.vision_config

    @property
    def num_text_tokens(self) -> int:
        """Rows of the logits generation may pick (all of them, as transformers does)."""
        return self.text_config.vocab_size

    @property
    def image_token_id(self) -> int:
        return self.hf.image_token_id


class MRotaryEmbedding(nn.Module):
    """transformers' M-RoPE table on the engine's positions: [B, L, 3] (t, h, w) ids, or [B, L] text ids (the three
    equal, as for every generated token)."""

    def __init__(self, rotary: nn.Module) -> None:
        super().__init__()
        self.rotary = rotary

    @property
    def inv_freq(self) -> torch.Tensor:
        return self.rotary.inv_freq

    @property
    def attention_scaling(self) -> float:
        return self.rotary.attention_scaling

    @property
    def mrope_section(self) -> list[int]:
        return list(self.rotary.mrope_section)

    def forward(self, x: torch.Tensor, positions: torch.Tensor):
        if positions.dim() == 2:
            positions = positions[..., None].expand(-1, -1, 3)
        return self.rotary(x, positions.permute(2, 0, 1))


class QwenVLModel(nn.Module):
    """`embed_tokens`, `layers`, `norm`, `rotary_emb` (M-RoPE) and `visual`, taken from transformers' model."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        text = hf_model.model.language_model
        self.embed_tokens = text.embed_tokens
        self.layers = text.layers
        self.norm = text.norm
        self.rotary_emb = MRotaryEmbedding(text.rotary_emb)
        self.visual = hf_model.model.visual
        self.layer_devices: tuple[torch.device, ...] | None = None


class QwenVLForCausalLM(VisionLanguageModel):
    """Qwen2-VL / Qwen2.5-VL for inference on the shared engine. `images` are per-image pixel patches
    ([patches, 3 * 2 * 14 * 14], what `process_images` gives); `image_sizes` (width, height) give each image's
    grid through the processor's resize rule."""

    def __init__(self, hf_model: nn.Module, config: QwenVLConfig, attn_implementation: str = "sdpa") -> None:
        super().__init__(config, attn_implementation)
        self.model = QwenVLModel(hf_model)
        self.lm_head = hf_model.lm_head

    def get_vision_tower(self):
        return self.model.visual

    @property
    def nominal_visual_tokens(self) -> int | None:
        """None: Qwen's visual count is each image's own, so budgets are absolute counts or fractions of it."""
        return None

    def image_grid(self, image_size) -> tuple[int, int]:
        """(rows, columns) of LLM tokens of an image of `image_size` (width, height), as given to `process_images`
        (which shrinks it first under the downsampling baseline)."""
        width, height = (int(x) for x in image_size)
        if self.config.pruning_image_downsample is not None:
            width, height = downsampled_size((width, height), self.config.pruning_image_downsample)
        h, w = smart_resize(height, width, self.config.min_pixels, self.config.max_pixels)
        return h // (PATCH * MERGE), w // (PATCH * MERGE)

    def encode_images(self, images: list[torch.Tensor], image_sizes) -> list[EncodedImage]:
        """Per image, its merged tokens in raster order (the tower runs once over the whole batch)."""
        if image_sizes is None or len(image_sizes) != len(images):
            raise ValueError("Qwen-VL images need their sizes: pass image_sizes=[image.size for image in images]")
        grids = [self.image_grid(size) for size in image_sizes]
        for pixels, (rows, cols), size in zip(images, grids, image_sizes, strict=True):
            if pixels.dim() != 2 or pixels.shape[0] != rows * cols * MERGE * MERGE:
                raise ValueError(
                    f"pixel patches of shape {tuple(pixels.shape)} do not match an image of size {tuple(size)} "
                    f"({rows} x {cols} tokens of {MERGE}x{MERGE} patches): preprocess with the model's own image "
                    "processor (process_images(images, image_processor, model.config))"
                )
        thw = torch.tensor([[1, rows * MERGE, cols * MERGE] for rows, cols in grids], device=self.input_device)
        encoded = []
        for feats, signals, (rows, cols) in zip(*self._run_tower(torch.cat(list(images)), thw), grids, strict=True):
            full = grid_layout(rows, cols)
            tokens, block = self._select(full, feats, feats[None], signals)
            encoded.append(EncodedImage(block, tokens, len(full), self.pruning.take_flops()))
        return encoded

    def _run_tower(self, pixels: torch.Tensor, thw: torch.Tensor):
        """The vision tower once over a batch of images or clips (`thw` their grids): each one's merged tokens and
        its tower signals, None unless the method `needs_attention_received`: {"received": [frame pairs, tokens],
        "keys": [frame pairs, tokens, head_dim]} (`run_with_attention_received`; the tower work is counted for the
        method, each item's when its block is selected)."""
        visual = self.model.visual
        pixels = pixels.to(self.input_device, visual.dtype)
        sizes = [t * (h // MERGE) * (w // MERGE) for t, h, w in thw.tolist()]
        if not self.pruning.needs_attention_received:
            return visual(pixels, grid_thw=thw).pooler_output.split(sizes), [None] * len(sizes)
        merged, received, keys = run_with_attention_received(visual, pixels, thw)
        signals = [
            {
                "received": r.view(t, -1),
                "keys": k.view(t, -1, k.shape[-1]),
                "flops": attention_received_flops(t, h * w, visual.config.hidden_size),
            }
            for (t, h, w), r, k in zip(thw.tolist(), received.split(sizes), keys.split(sizes), strict=True)
        ]
        return merged.split(sizes), signals

    def _select(self, full, feats: torch.Tensor, views: torch.Tensor, signals: dict | None = None):
        """The pruning method's pre-LLM choice on one block of merged tokens (`feats` [n, D], already in the LLM's
        space; `views` the same per view): `select_tokens`, then `select_projected` (with the tower's `signals`)."""
        if signals is not None:
            self.pruning.record_flops(signals["flops"])
        tokens, block = apply_selection(full, feats, self.pruning.select_tokens(full, views, None))
        return apply_selection(tokens, block, self.pruning.select_projected(tokens, block, signals))

    def encode_videos(self, videos: Sequence[QwenVideo]) -> list[EncodedVideo]:
        """Per clip, its merged tokens in (frame pair, row, column) order (the tower runs once over all clips; its
        attention never crosses frames). Qwen2.5-VL spaces frame pairs tokens_per_second x second_per_grid_t
        temporal ids apart, Qwen2-VL one."""
        grids = []
        for i, video in enumerate(videos):
            if not isinstance(video, QwenVideo):
                raise ValueError(
                    f"video {i} is a {type(video).__name__}; Qwen-VL takes the clips model.load_video(...) returns"
                )
            t, h, w = (int(x) for x in video.grid_thw)
            patch_dim = 3 * TEMPORAL_PATCH * PATCH * PATCH
            if (
                min(t, h, w) < 1
                or h % MERGE
                or w % MERGE
                or video.pixels.dim() != 2
                or tuple(video.pixels.shape) != (t * h * w, patch_dim)
            ):
                raise ValueError(
                    f"video {i}: pixel patches of shape {tuple(video.pixels.shape)} do not match its grid_thw "
                    f"{(t, h, w)} (expected ({t * h * w}, {patch_dim}), h and w even); preprocess the frames with "
                    "model.load_video(frames, image_processor)"
                )
            grids.append((t, h, w))
        thw = torch.tensor(grids, device=self.input_device)
        pixels = torch.cat([video.pixels for video in videos])
        tokens_per_second = getattr(self.config.vision_config, "tokens_per_second", None)
        encoded = []
        for feats, signals, (t, h, w), video in zip(*self._run_tower(pixels, thw), grids, videos, strict=True):
            full = video_layout(t, h // MERGE, w // MERGE)
            tokens, block = self._select(full, feats, feats.view(t, -1, feats.shape[-1]), signals)
            if self.config.model_type == "qwen2_5_vl":  # float32, as transformers multiplies the processor's tensor
                interval = tokens_per_second * torch.tensor(video.second_per_grid_t, dtype=torch.float32)
            else:
                interval = torch.tensor(1.0)
            encoded.append(EncodedVideo(block, tokens, len(full), self.pruning.take_flops(), time_interval=interval))
        return encoded

    def load_video(
        self,
        path_or_frames,
        processor=None,
        num_frames: int | None = None,
        fps: float = 2.0,
        min_pixels: int = VIDEO_MIN_PIXELS,
        max_pixels: int = VIDEO_MAX_PIXELS,
        max_frames: int = 768,
        repeat_short: bool = False,
    ) -> QwenVideo:
        """A video file or decoded uint8 frames [T, H, W, 3] -> the clip `generate(videos=[...])` takes.

        A file: `num_frames` frames (rounded to an even count, as qwen-vl-utils does) or, when None, qwen-vl-utils'
        fps rule (`qwen_num_frames`: `fps` frames a second, 4..`max_frames`, even) from the file's frame count and
        rate, picked at round(linspace(0, total - 1, n)) (`read_video_frames(..., rule="qwen")`); the sampled rate
        n / total x the file's rate sets the clip's time stamps. Frames given directly are taken as sampled at `fps`
        (transformers' processor would assume 24 fps for frames without metadata). `repeat_short`: a file with fewer
        frames than asked repeats frames instead of failing. Preprocessing: `preprocess_video`."""
        if not isinstance(path_or_frames, (str, os.PathLike)):
            return preprocess_video(path_or_frames, processor, fps, min_pixels, max_pixels)
        from llava.model.multimodal_encoder.video_processor import read_video_frames

        total, video_fps = video_metadata(path_or_frames)
        if num_frames is None:
            num_frames = qwen_num_frames(total, video_fps, fps, max_frames=max_frames)
        else:
            num_frames = max(TEMPORAL_PATCH, round(num_frames / TEMPORAL_PATCH) * TEMPORAL_PATCH)
        frames = read_video_frames(path_or_frames, num_frames, rule="qwen", repeat_short=repeat_short)
        sampled_fps = num_frames / total * video_fps
        return preprocess_video(frames, processor, sampled_fps, min_pixels, max_pixels)

    def prepare_inputs(
        self, input_ids, images=None, attention_mask=None, image_sizes=None, videos=None
    ) -> MultimodalInputs:
        """Images are spliced at `<image>` placeholders and videos (`QwenVideo`s, from `load_video`) at `<video>`
        ones. A batch may mix image and video samples. One prompt holding both is spliced and positioned as
        transformers does, but the engine's prefill (`llava.sparse.engine.layouts_from_spans`) takes one visual
        block per sample for now."""
        device = self.input_device
        self.pruning.prepare(self, input_ids)
        encoded: list[EncodedImage] = []
        if images is not None:
            images = [images] if isinstance(images, torch.Tensor) and images.dim() == 2 else list(images)
            encoded += self.encode_images(images, image_sizes)
        features = [image.features for image in encoded] if images is not None else None
        video_features = None
        if videos is not None:
            videos = [videos] if isinstance(videos, QwenVideo) else list(videos)
            encoded_videos = self.encode_videos(videos) if videos else []
            video_features = [video.features for video in encoded_videos]
            encoded += encoded_videos
        input_ids, attention_mask = ids_on_device(input_ids, attention_mask, device)
        inputs = splice_image_features(
            input_ids, attention_mask, features, self.model.embed_tokens, None, video_features=video_features
        )
        inputs.images = encoded if images is not None or videos is not None else None
        inputs.position_ids = mrope_positions(inputs, inputs.images, self.config.mrope_video_rule)
        return inputs


def mrope_positions(
    inputs: MultimodalInputs, encoded: list[EncodedImage] | None, video_rule: str = "transformers"
) -> torch.Tensor:
    """[B, L, 3] M-RoPE ids of a spliced, left-padded batch (transformers 5.23's `get_rope_index`): text runs count
    on from the previous run on all three rows; the token of frame pair k at (row, col) of a visual block gets
    (c + floor(k x interval), c + row, c + col) with c where its run starts (interval: `EncodedVideo.time_interval`;
    an image is one frame pair). Padding gets 0. Tokens a pre-LLM method dropped keep the ids of their cell.

    The next run starts at c + max(rows, cols) (`video_rule="transformers"`, what transformers 5.23 does, even when a
    video's temporal ids run higher, so text after a long video can reuse temporal positions), or at the block's
    largest id + 1 (`"qwen"`: the original Qwen code and transformers <= 5.0). Both agree on images."""
    if video_rule not in MROPE_VIDEO_RULES:
        raise ValueError(f"Unknown M-RoPE video rule {video_rule!r}; use one of {MROPE_VIDEO_RULES}")
    batch, length = inputs.token_mask.shape
    positions = torch.zeros(batch, length, 3, dtype=torch.long)
    for b in range(batch):
        pad = length - inputs.lengths[b]
        cursor, at = 0, pad
        for (start, count), idx in zip(inputs.image_spans[b], inputs.image_indices[b], strict=True):
            text = start - at
            positions[b, at:start] = (cursor + torch.arange(text))[:, None]
            cursor += text
            block = encoded[idx]
            tokens = block.tokens
            rows, cols = tokens.grid_hw
            interval = getattr(block, "time_interval", torch.tensor(1.0))
            kept = tokens.select(slice(0, count))
            positions[b, start : start + count, 0] = cursor + (kept.view * interval).long()
            positions[b, start : start + count, 1] = cursor + kept.row
            positions[b, start : start + count, 2] = cursor + kept.col
            extent = max(rows, cols)
            if video_rule == "qwen":
                extent = max(extent, int(((tokens.num_views - 1) * interval).long()) + 1)
            cursor += extent
            at = start + count
        positions[b, at:] = (cursor + torch.arange(length - at))[:, None]
    return positions.to(inputs.token_mask.device)


def is_qwen_vl(model_type: str | None) -> bool:
    return model_type in FAMILIES


def load_qwen_vl(model_path: str, device, dtype, attn_implementation: str, min_pixels=None, max_pixels=None):
    """(tokenizer, model, image_processor) of a transformers-format Qwen2(.5)-VL folder."""
    import transformers
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    hf_config = AutoConfig.from_pretrained(model_path)
    architecture = {
        "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
        "qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
    }[hf_config.model_type]
    tower_attn = "sdpa" if attn_implementation == "flash_attention_2" and not _has_flash() else attn_implementation
    hf_model = architecture.from_pretrained(model_path, dtype=dtype, attn_implementation=tower_attn)
    hf_model.to(device).eval()
    pixel_bounds = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    image_processor = AutoImageProcessor.from_pretrained(model_path, **pixel_bounds)
    size = image_processor.size
    config = QwenVLConfig(hf_model.config, size["shortest_edge"], size["longest_edge"])  # the layers' own config
    config.repetition_penalty = float(getattr(hf_model.generation_config, "repetition_penalty", None) or 1.0)
    model = QwenVLForCausalLM(hf_model, config, attn_implementation).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    return tokenizer, model, image_processor


def _has_flash() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None
