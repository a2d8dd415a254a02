"""VTC-Bench's downsampling baseline (spec `methods.md` §13): the image itself, shrunk before the processor.

For dynamic-resolution models (Qwen2-VL / Qwen2.5-VL) `--method downsample --downsample-factor r` resizes every
image to (w // r, h // r) with bicubic resampling and re-encodes it as JPEG (`llava.mm_utils.downsample_image`), so
the model sees about r^2 fewer visual tokens and nothing is pruned inside it. VTC-Bench uses r in {1, 2, 3, 4, 5, 10}
and finds this baseline beats many pruning methods on standard benchmarks.

The resize happens in `process_images` (told by the model's config, as `set_pruning` sets it) and the model maps
each image's given size to the shrunk one, so callers pass images and `image_sizes` exactly as for an unpruned run.
The accounts count the tokens the shrunk image really has.

On LLaVA-1.5 / LLaVA-NeXT the processor resizes every image back to its fixed grid, so downsampling saves nothing
there; grid pooling (`--method pool`) is the equivalent baseline, and the method is refused with that advice. The
factor is the knob: a token budget has no fixed factor (it would depend on each image's size), so budgets are
refused too.
"""

from __future__ import annotations

from llava.sparse.engine import PruningMethod
from llava.sparse.registry import QWEN_VL, family_of, methods_that_apply, register

DEFAULT_FACTOR = 2


class Downsample(PruningMethod):
    """Shrink every image by `factor` before the processor (dynamic-resolution models only)."""

    name = "downsample"

    def __init__(self, factor: int = DEFAULT_FACTOR) -> None:
        if factor < 1:
            raise ValueError(f"--downsample-factor {factor} must be at least 1")
        self.image_downsample = factor

    def validate(self, model) -> None:
        if family_of(model) != QWEN_VL:  # Qwen2-VL / Qwen2.5-VL: dynamic resolution
            raise ValueError(
                "downsample applies to dynamic-resolution models (Qwen2-VL / Qwen2.5-VL): this model's processor "
                "resizes every image back to its fixed grid, so a smaller image saves no tokens. Use --method pool "
                f"(2-D grid pooling), its equivalent here. {methods_that_apply(model)}."
            )

    def describe(self) -> str:
        return f"downsample r={self.image_downsample} (bicubic, JPEG)"


def _add_args(group) -> None:
    group.add_argument(
        "--downsample-factor",
        type=int,
        default=DEFAULT_FACTOR,
        help="downsample: shrink each image to (w // r, h // r) before the processor (about r^2 fewer tokens)",
    )


@register(
    "downsample",
    add_args=_add_args,
    help="VTC-Bench's baseline: shrink the image r times (Qwen-VL)",
    families=(QWEN_VL,),
)
def _build(args, budget) -> Downsample:
    if budget.given:
        raise ValueError(
            "downsample's knob is --downsample-factor r (tokens fall by about r^2, depending on each image's size); "
            "it takes no --retained-tokens / --retained-ratio"
        )
    return Downsample(getattr(args, "downsample_factor", DEFAULT_FACTOR))
