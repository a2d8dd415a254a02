"""Prompt tokenization with image placeholders, image loading and LLaVA's image preprocessing modes."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import torch
from PIL import Image

from llava.constants import (
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_TOKEN,
    DEFAULT_VIDEO_TOKEN,
    IMAGE_TOKEN_INDEX,
    VIDEO_TOKEN_INDEX,
)
from llava.model.anyres import anyres_views


def image_token(mm_use_im_start_end: bool) -> str:
    """The text that stands for an image in a prompt: "<image>", or "<im_start><image><im_end>" for checkpoints
    trained with `mm_use_im_start_end`."""
    if mm_use_im_start_end:
        return DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
    return DEFAULT_IMAGE_TOKEN


def tokenizer_image_token(prompt: str, tokenizer, image_token_index: int = IMAGE_TOKEN_INDEX, return_tensors=None):
    """Token ids of `prompt` with one `image_token_index` where each "<image>" stood (and `VIDEO_TOKEN_INDEX`
    where each "<video>" stood).

    Each text chunk is tokenized on its own (so each gets its own leading "▁"), the first chunk keeps its BOS and
    the BOS of every later chunk is dropped, exactly as LLaVA does.
    """
    pieces = re.split(f"({re.escape(DEFAULT_IMAGE_TOKEN)}|{re.escape(DEFAULT_VIDEO_TOKEN)})", prompt)
    chunks = [tokenizer(chunk).input_ids for chunk in pieces[::2]]
    placeholders = [image_token_index if p == DEFAULT_IMAGE_TOKEN else VIDEO_TOKEN_INDEX for p in pieces[1::2]]
    bos = tokenizer.bos_token_id
    input_ids: list[int] = []
    offset = 0
    if chunks and chunks[0] and chunks[0][0] == bos:
        offset = 1
        input_ids.append(chunks[0][0])
    for i, chunk in enumerate(chunks):
        if i > 0:
            input_ids.append(placeholders[i - 1])
        input_ids.extend(chunk[offset:])
    if return_tensors is None:
        return input_ids
    if return_tensors == "pt":
        return torch.tensor(input_ids, dtype=torch.long)
    raise ValueError(f"Unsupported tensor type: {return_tensors}")


def expand2square(image: Image.Image, background_color: tuple[int, ...]) -> Image.Image:
    """Pad `image` to a square of side max(W, H), centred, on `background_color`."""
    width, height = image.size
    if width == height:
        return image
    if width > height:
        result = Image.new(image.mode, (width, width), background_color)
        result.paste(image, (0, (width - height) // 2))
        return result
    result = Image.new(image.mode, (height, height), background_color)
    result.paste(image, ((height - width) // 2, 0))
    return result


def process_anyres_image(image: Image.Image, image_processor, grid_pinpoints, rule: str = "llava") -> torch.Tensor:
    """One image -> its anyres views [1 + N, 3, H, W]: the base view, then the crops (`llava.model.anyres`)."""
    views = anyres_views(
        image,
        grid_pinpoints,
        view_size=image_processor.crop_size["height"],
        base_size=image_processor.size["shortest_edge"],
        rule=rule,
    )
    return image_processor.preprocess(views, return_tensors="pt")["pixel_values"]


def process_images(images: list[Image.Image], image_processor, model_cfg) -> torch.Tensor | list[torch.Tensor]:
    """Images -> pixels, as LLaVA's `process_images`. `image_aspect_ratio == "pad"` squares each image on the
    processor's mean colour first (LLaVA-1.5) and "anyres" cuts each into views (LLaVA-NeXT: [N, 1 + crops, 3, H,
    W] when every image has as many views, else a list of [1 + crops, 3, H, W]); anything else resizes and
    centre-crops ([N, 3, H, W])."""
    aspect = getattr(model_cfg, "image_aspect_ratio", None)
    factor = getattr(model_cfg, "pruning_image_downsample", None)
    if factor is not None:  # the downsampling baseline (dynamic-resolution models only)
        images = [downsample_image(image, factor) for image in images]
    if aspect == "qwen":  # Qwen-VL: per image its pixel patches [patches, 1176], at its own resolution
        return [image_processor(images=[image], return_tensors="pt")["pixel_values"] for image in images]
    if aspect == "anyres":
        rule = getattr(model_cfg, "grid_rule", "llava")
        views = [process_anyres_image(image, image_processor, model_cfg.image_grid_pinpoints, rule) for image in images]
        if all(v.shape == views[0].shape for v in views):
            return torch.stack(views)
        return views
    if aspect == "pad":
        background = tuple(int(x * 255) for x in image_processor.image_mean)
        images = [expand2square(image, background) for image in images]
    return image_processor.preprocess(images, return_tensors="pt")["pixel_values"]


def downsampled_size(size: tuple[int, int], factor: int) -> tuple[int, int]:
    """(width, height) of an image of `size` after `downsample_image` by `factor`."""
    if factor < 1:
        raise ValueError(f"downsample factor {factor} must be at least 1")
    width, height = size
    return max(1, width // factor), max(1, height // factor)


def downsample_image(image: Image.Image, factor: int, jpeg_quality: int | None = 75) -> Image.Image:
    """VTC-Bench's downsampling baseline for dynamic-resolution models: the image resized to (w // r, h // r) with
    bicubic resampling and re-encoded as JPEG (PIL's default quality 75; None: no re-encoding), before the
    processor."""
    image = image.resize(downsampled_size(image.size, factor), resample=Image.Resampling.BICUBIC)
    if jpeg_quality is None:
        return image
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=jpeg_quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def load_image(image_file: str | os.PathLike, timeout: float = 10.0) -> Image.Image:
    """Open an image from a local path or an http(s) URL, as RGB, with errors that say what to do."""
    image_file = str(image_file)
    if image_file.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(image_file, timeout=timeout) as response:
                data = response.read()
        except (urllib.error.URLError, OSError) as err:
            raise ConnectionError(
                f"Could not download {image_file} ({err}). If this machine is offline, download the image "
                "elsewhere and pass its local path instead."
            ) from err
        return Image.open(io.BytesIO(data)).convert("RGB")
    path = Path(image_file)
    if not path.is_file():
        raise FileNotFoundError(f"Image file not found: {path}")
    return Image.open(path).convert("RGB")


def to_device(pixels: torch.Tensor | list[torch.Tensor], device, dtype) -> torch.Tensor | list[torch.Tensor]:
    """`process_images` output moved to the model's device and dtype (a list stays a list)."""
    if isinstance(pixels, torch.Tensor):
        return pixels.to(device, dtype)
    return [p.to(device, dtype) for p in pixels]


def get_model_name_from_path(model_path: str) -> str:
    """The last path component, or `parent_checkpoint-N` for trainer checkpoints (LLaVA's convention)."""
    parts = str(model_path).strip("/").split("/")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return parts[-2] + "_" + parts[-1]
    return parts[-1]
