"""QwenVLForCausalLM: Qwen2-VL / Qwen2.5-VL on our decoder loop, with transformers' own vision tower and layers.

The modules are transformers' (`Qwen2_5_VLForConditionalGeneration` / `Qwen2VLForConditionalGeneration` loaded by
`from_pretrained`, then taken apart): the vision transformer with its merger, the text decoder layers, norm and
M-RoPE table, `lm_head`. What is ours: the splice of each image's merged tokens at its `<image>` placeholder, the
3-D rotary positions (`mrope_positions`, transformers' `get_rope_index` rule for images), and everything the shared
machinery does (`llava.model.vlm`): pruning between layers, the per-layer cache, decoding.

Positions are [B, L, 3] (temporal, height, width ids) through the engine; kept tokens keep theirs after pruning,
and the first generated token takes max(prompt ids) + 1 in every layer, as in transformers and every public port.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from llava.model.anyres import grid_layout
from llava.model.llava_arch import EncodedImage, MultimodalInputs, splice_image_features
from llava.model.vlm import VisionLanguageModel

FAMILIES = ("qwen2_vl", "qwen2_5_vl")
MERGE = 2  # spatial merge: 2 x 2 patches of 14 px per LLM token
PATCH = 14
QWEN_CONV_MODE = "qwen2_vl"


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


@dataclasses.dataclass
class QwenVLConfig:
    """What our machinery reads of a Qwen2(.5)-VL checkpoint (`hf`: transformers' config, kept whole)."""

    hf: object
    min_pixels: int
    max_pixels: int
    pruning_grid_rule: str | None = None
    pruning_merge_type: str | None = None
    # fixed for this family: LLaVA fields the generators read
    mm_use_im_start_end: bool = False
    image_aspect_ratio: str = "qwen"
    is_anyres: bool = False
    tokenizer_model_max_length: int | None = None
    conv_mode: str = QWEN_CONV_MODE
    repetition_penalty: float = 1.0  # the checkpoint's generation_config.json (1.05 for the Instruct models)

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
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def num_hidden_layers(self) -> int:
        return self.text_config.num_hidden_layers

    @property
    def vocab_size(self) -> int:
        return self.text_config.vocab_size

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
        """(rows, columns) of LLM tokens of an image of `image_size` (width, height)."""
        width, height = (int(x) for x in image_size)
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
        visual = self.model.visual
        pixels = torch.cat(list(images)).to(self.input_device, visual.dtype)
        merged = visual(pixels, grid_thw=thw).pooler_output
        encoded = []
        for feats, (rows, cols) in zip(merged.split([r * c for r, c in grids]), grids, strict=True):
            full = grid_layout(rows, cols)
            keep = self.pruning.select_tokens(full, feats[None], None)
            tokens = full if keep is None else full.select(keep)
            source = tokens.source()
            encoded.append(EncodedImage(feats[source.to(feats.device)], tokens, len(full)))
        return encoded

    def prepare_inputs(
        self, input_ids, images=None, attention_mask=None, image_sizes=None, videos=None
    ) -> MultimodalInputs:
        if videos is not None:
            raise ValueError("Video input is not supported for Qwen-VL yet")
        device = self.input_device
        encoded = None
        if images is not None:
            images = [images] if isinstance(images, torch.Tensor) and images.dim() == 2 else list(images)
            encoded = self.encode_images(images, image_sizes)
        if isinstance(input_ids, torch.Tensor):
            input_ids = input_ids.to(device)
            if input_ids.dim() == 1:
                input_ids = input_ids[None]
        else:
            input_ids = [ids.to(device) for ids in input_ids]
        if attention_mask is not None:
            attention_mask = attention_mask.to(device)
        features = None if encoded is None else [image.features for image in encoded]
        inputs = splice_image_features(input_ids, attention_mask, features, self.model.embed_tokens, None)
        inputs.images = encoded
        inputs.position_ids = mrope_positions(inputs, encoded)
        return inputs


def mrope_positions(inputs: MultimodalInputs, encoded: list[EncodedImage] | None) -> torch.Tensor:
    """[B, L, 3] M-RoPE ids of a spliced, left-padded batch (transformers' `get_rope_index` for images): text runs
    count on from the previous run on all three rows; an image's token at (row, col) of its grid gets (c, c + row,
    c + col) with c where its run starts, and the next run starts at c + max(rows, cols). Padding gets 0. Tokens
    a pre-LLM method dropped keep the ids of their grid cell."""
    batch, length = inputs.token_mask.shape
    positions = torch.zeros(batch, length, 3, dtype=torch.long)
    for b in range(batch):
        pad = length - inputs.lengths[b]
        cursor, at = 0, pad
        for (start, count), idx in zip(inputs.image_spans[b], inputs.image_indices[b], strict=True):
            text = start - at
            positions[b, at:start] = (cursor + torch.arange(text))[:, None]
            cursor += text
            tokens = encoded[idx].tokens
            rows, cols = tokens.grid_hw
            kept = tokens.select(slice(0, count))
            positions[b, start : start + count, 0] = cursor
            positions[b, start : start + count, 1] = cursor + kept.row
            positions[b, start : start + count, 2] = cursor + kept.col
            cursor += max(rows, cols)
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
