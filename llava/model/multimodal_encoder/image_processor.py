"""CLIP image preprocessing with PIL + numpy, pixel-equal to the slow (PIL) `CLIPImageProcessor` LLaVA used.

transformers 5 made the torchvision backend the default `CLIPImageProcessor`; its antialiased tensor bicubic does not
give the PIL pixels the LLaVA-1.5 numbers were produced with, so the steps are written out here: RGB, shortest edge
to `size` with PIL bicubic (on uint8), centre crop, rescale by 1/255, normalise by the CLIP mean and std.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESSOR_CONFIG = "preprocessor_config.json"


class CLIPImagePreprocessor:
    """The subset of `CLIPImageProcessor` that LLaVA calls: `preprocess(images, return_tensors="pt")`,
    `image_mean`, `image_std`, `crop_size`, `size`."""

    def __init__(
        self,
        size: int = 336,
        crop_size: int = 336,
        image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN,
        image_std: tuple[float, ...] = OPENAI_CLIP_STD,
        rescale_factor: float = 1 / 255,
        do_resize: bool = True,
        do_center_crop: bool = True,
    ) -> None:
        self.size = {"shortest_edge": int(size)}
        self.crop_size = {"height": int(crop_size), "width": int(crop_size)}
        self.image_mean = [float(x) for x in image_mean]
        self.image_std = [float(x) for x in image_std]
        self.rescale_factor = rescale_factor
        self.do_resize = do_resize
        self.do_center_crop = do_center_crop

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> CLIPImagePreprocessor:
        """Read `preprocessor_config.json` from a CLIP (or llava-hf) folder."""
        path = Path(folder) / PREPROCESSOR_CONFIG
        if not path.is_file():
            raise FileNotFoundError(
                f"No {PREPROCESSOR_CONFIG} in {folder}: the image preprocessing settings (size, mean, std) come from "
                "that file. Copy it from the CLIP tower the checkpoint was trained with (for LLaVA-1.5: "
                "openai/clip-vit-large-patch14-336)."
            )
        cfg = json.loads(path.read_text())
        size = cfg.get("size", 336)
        size = size.get("shortest_edge", size.get("height")) if isinstance(size, dict) else size
        crop = cfg.get("crop_size", size)
        crop = crop.get("height", crop.get("shortest_edge")) if isinstance(crop, dict) else crop
        return cls(
            size=size,
            crop_size=crop,
            image_mean=tuple(cfg.get("image_mean", OPENAI_CLIP_MEAN)),
            image_std=tuple(cfg.get("image_std", OPENAI_CLIP_STD)),
            rescale_factor=cfg.get("rescale_factor", 1 / 255),
            do_resize=cfg.get("do_resize", True),
            do_center_crop=cfg.get("do_center_crop", True),
        )

    def to_dict(self) -> dict:
        return {
            "image_processor_type": "CLIPImageProcessor",
            "size": self.size,
            "crop_size": self.crop_size,
            "image_mean": self.image_mean,
            "image_std": self.image_std,
            "rescale_factor": self.rescale_factor,
            "do_resize": self.do_resize,
            "do_center_crop": self.do_center_crop,
            "do_rescale": True,
            "do_normalize": True,
            "do_convert_rgb": True,
            "resample": 3,
        }

    def save_pretrained(self, folder: str | Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / PREPROCESSOR_CONFIG).write_text(json.dumps(self.to_dict(), indent=2))

    def _resize(self, image: Image.Image) -> Image.Image:
        short = self.size["shortest_edge"]
        w, h = image.size
        if w <= h:
            new_w, new_h = short, int(short * h / w)
        else:
            new_w, new_h = int(short * w / h), short
        return image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)

    def _center_crop(self, pixels: np.ndarray) -> np.ndarray:
        ch, cw = self.crop_size["height"], self.crop_size["width"]
        h, w = pixels.shape[:2]
        if h < ch or w < cw:  # pad with zeros like transformers when the image is smaller than the crop
            padded = np.zeros((max(h, ch), max(w, cw), pixels.shape[2]), dtype=pixels.dtype)
            top, left = -(-(padded.shape[0] - h) // 2), -(-(padded.shape[1] - w) // 2)
            padded[top : top + h, left : left + w] = pixels
            pixels, h, w = padded, padded.shape[0], padded.shape[1]
        top, left = (h - ch) // 2, (w - cw) // 2
        return pixels[top : top + ch, left : left + cw]

    def preprocess_one(self, image: Image.Image) -> torch.Tensor:
        """One PIL image -> float32 tensor [3, crop, crop]."""
        image = image.convert("RGB")
        if self.do_resize:
            image = self._resize(image)
        pixels = np.asarray(image)
        if self.do_center_crop:
            pixels = self._center_crop(pixels)
        pixels = (pixels.astype(np.float64) * self.rescale_factor).astype(np.float32)
        mean = np.asarray(self.image_mean, dtype=np.float32)
        std = np.asarray(self.image_std, dtype=np.float32)
        pixels = (pixels - mean) / std
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))

    def preprocess(self, images, return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        if return_tensors != "pt":
            raise ValueError("Only return_tensors='pt' is supported")
        if isinstance(images, Image.Image):
            images = [images]
        return {"pixel_values": torch.stack([self.preprocess_one(im) for im in images])}

    __call__ = preprocess
