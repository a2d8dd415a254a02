"""Random test images (noise), deterministic by seed."""

from __future__ import annotations

import numpy as np
from PIL import Image


def random_image(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
