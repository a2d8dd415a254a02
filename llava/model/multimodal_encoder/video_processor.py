"""Video decoding (PyAV) and Video-LLaVA's frame preprocessing, written out step by step.

Video-LLaVA (LanguageBind's `processing_video.py`, decord backend) samples 8 frames with
`floor(linspace(0, n-1, 8))`, divides by 255, normalises with the CLIP mean/std, scales the short side to 224 with
bilinear `F.interpolate` (no antialias), centre-crops 224 and returns (3, T, 224, 224). Its eval transform also holds
an unseeded `RandomHorizontalFlipVideo(p=0.5)`, so half the videos are mirrored at random and runs cannot be
reproduced; here the flip is off by default, and `flip="reference"` draws it from a seeded `random.Random`.

Frames are decoded with PyAV rather than decord: decord trusts the container's frame count, which can over-report and
then hang, and it cannot open some files. The recipe (spec video.md section 2.3): count = `stream.frames` when > 0,
else one full decode; decode in presentation order, keep the sampled indices, stop after the last one; if the stream
ends early, reuse the last decoded frame and warn.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

from llava.model.multimodal_encoder.image_processor import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

SAMPLING_RULES = ("videollava", "hf", "qwen")
FLIP_MODES = ("none", "reference")


class VideoReadError(ValueError):
    """A video file that exists but cannot be decoded into the frames asked for."""


def sample_frame_indices(total: int, num_frames: int = 8, rule: str = "videollava") -> list[int]:
    """Indices of `num_frames` frames out of `total`, in time order (duplicates when `total < num_frames`).

    - "videollava": floor(linspace(0, total-1, k)), Video-LLaVA and lmms-eval; first and last frame always included.
    - "hf": floor(arange(0, total, total/k)), the HF Video-LLaVA docs; never includes the last frame.
    - "qwen": round(linspace(0, total-1, k)) in float32, as qwen-vl-utils computes it with torch.
    """
    if isinstance(total, bool) or not isinstance(total, (int, np.integer)) or total < 1:
        raise ValueError(f"total must be a positive frame count, got {total!r}")
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    if rule == "videollava":
        indices = np.linspace(0, total - 1, num_frames, dtype=int)
    elif rule == "hf":
        # Float steps can give one element too many through rounding; the docs' snippet keeps the first k.
        indices = np.arange(0, total, total / num_frames).astype(int)[:num_frames]
    elif rule == "qwen":
        indices = torch.linspace(0, total - 1, num_frames).round().long().numpy()
    else:
        raise ValueError(f"Unknown frame sampling rule {rule!r}; choose one of {', '.join(SAMPLING_RULES)}")
    return [int(i) for i in indices]


def _open(path: Path) -> av.container.InputContainer:
    """Open a container, turning FFmpeg's errors into a VideoReadError that names the file."""
    try:
        return av.open(str(path))
    except av.FFmpegError as err:
        raise VideoReadError(
            f"Cannot open video {path}: {type(err).__name__}: {err}. Check that it is a video file that FFmpeg can "
            "read (re-encode it, e.g. `ffmpeg -i in -c:v libx264 out.mp4`, if it is damaged or in an odd format)."
        ) from err


def _video_stream(container: av.container.InputContainer, path: Path) -> av.VideoStream:
    if not container.streams.video:
        raise VideoReadError(f"{path} has no video stream (streams: {[s.type for s in container.streams]}).")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame threading keeps the output order; it only decodes faster
    return stream


def _frame_count(path: Path) -> int:
    """`stream.frames` (the container's nb_frames) when known, else the count from one full decode.

    Matroska/WebM store no frame count, so `stream.frames` is 0 there.
    """
    with _open(path) as container:
        stream = _video_stream(container, path)
        if stream.frames > 0:
            return int(stream.frames)
        try:
            return sum(1 for _ in container.decode(stream))
        except av.FFmpegError as err:
            raise VideoReadError(f"Decoding {path} failed while counting its frames: {err}") from err


def read_video_frames(
    path: str | Path, num_frames: int = 8, rule: str = "videollava", repeat_short: bool = False
) -> np.ndarray:
    """Decode the sampled frames of a video as uint8 RGB, shape (num_frames, H, W, 3).

    A video with fewer frames than `num_frames` raises unless `repeat_short=True`, which repeats frames as the
    reference does (for 5 frames and the Video-LLaVA rule: 0 0 1 1 2 2 3 4).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Video file not found: {path}")
    total = _frame_count(path)
    if total == 0:
        raise VideoReadError(f"{path} has a video stream but no decodable frame.")
    if total < num_frames and not repeat_short:
        raise VideoReadError(
            f"{path} has {total} frame(s), fewer than the {num_frames} asked for. Pass repeat_short=True "
            "(--repeat-short-videos) to repeat frames as the reference Video-LLaVA pipeline does."
        )
    indices = sample_frame_indices(total, num_frames, rule)
    wanted = set(indices)
    last_wanted = max(indices)

    kept: dict[int, np.ndarray] = {}
    last: av.VideoFrame | None = None  # the most recently decoded frame, for clamping
    decoded = 0
    with _open(path) as container:
        stream = _video_stream(container, path)
        try:
            for frame in container.decode(stream):  # decoder output is in presentation order
                if decoded in wanted:
                    kept[decoded] = frame.to_ndarray(format="rgb24")
                last = frame
                decoded += 1
                if decoded > last_wanted:
                    break
        except av.FFmpegError as err:
            if last is None:
                raise VideoReadError(f"Decoding {path} failed: {type(err).__name__}: {err}") from err
            warnings.warn(f"Decoding {path} stopped after {decoded} frames with an error: {err}", stacklevel=2)
        if last is None:
            raise VideoReadError(f"{path}: no frame could be decoded (the container reports {total}).")
        if decoded <= last_wanted:
            # The container over-reported its length: reuse the last decoded frame rather than seek or block.
            missing = sorted({i for i in indices if i not in kept})
            warnings.warn(
                f"{path}: {total} frames expected but only {decoded} decoded; sampled frames {missing} reuse the last "
                f"decoded frame ({decoded - 1}).",
                stacklevel=2,
            )
            fill = last.to_ndarray(format="rgb24")
            for i in missing:
                kept[i] = fill
    return np.stack([kept[i] for i in indices])


class VideoLlavaVideoProcessor:
    """Video-LLaVA's eval transform on decoded frames: uint8 (T, H, W, 3) -> float32 (3, T, size, size).

    Steps, all in float32 on the (C, T, H, W) tensor as in the reference: /255; normalise per channel with the CLIP
    mean/std; scale the short side to `size` with bilinear `F.interpolate(align_corners=False)`, no antialias, long
    side floor(long / short * size); centre crop `size` at offsets round((h - size) / 2), round((w - size) / 2).

    `flip="reference"` reproduces the reference's `RandomHorizontalFlipVideo(p=0.5)`: each `preprocess` call draws
    from a `random.Random(seed)` owned by this processor and mirrors the clip when the draw is < 0.5. The original draws
    from Python's global, unseeded generator, which makes runs unreproducible; that is a bug and not the default.
    """

    def __init__(
        self,
        size: int = 224,
        num_frames: int = 8,
        rule: str = "videollava",
        image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        image_std: Sequence[float] = OPENAI_CLIP_STD,
        flip: str = "none",
        seed: int = 0,
    ) -> None:
        if int(size) < 1 or int(num_frames) < 1:
            raise ValueError(f"size and num_frames must be positive, got size={size}, num_frames={num_frames}")
        if rule not in SAMPLING_RULES:
            raise ValueError(f"Unknown frame sampling rule {rule!r}; choose one of {', '.join(SAMPLING_RULES)}")
        if flip not in FLIP_MODES:
            raise ValueError(f"Unknown flip mode {flip!r}; choose one of {', '.join(FLIP_MODES)}")
        self.size = int(size)
        self.crop_size = {"height": self.size, "width": self.size}
        self.num_frames = int(num_frames)
        self.rule = rule
        self.image_mean = [float(x) for x in image_mean]
        self.image_std = [float(x) for x in image_std]
        self.flip = flip
        self.seed = seed
        self._rng = random.Random(seed)

    @classmethod
    def from_config(cls, config: Mapping | object | None = None, **overrides) -> VideoLlavaVideoProcessor:
        """Build from a LanguageBind-style config (dict or object; `vision_config` is looked into when present).

        Reads `image_size` (or `size`, also as {"shortest_edge": n}), `num_frames`, `frame_sample_rule`,
        `image_mean` and `image_std`; keyword arguments override them.
        """

        def get(source, key):
            if source is None:
                return None
            return source.get(key) if isinstance(source, Mapping) else getattr(source, key, None)

        def lookup(*keys):
            for source in (get(config, "vision_config"), config):
                for key in keys:
                    if get(source, key) is not None:
                        return get(source, key)
            return None

        found = {
            "size": lookup("image_size", "size"),
            "num_frames": lookup("num_frames"),
            "rule": lookup("frame_sample_rule"),
            "image_mean": lookup("image_mean"),
            "image_std": lookup("image_std"),
        }
        if isinstance(found["size"], Mapping):  # a preprocessor_config.json `size` such as {"shortest_edge": 224}
            found["size"] = found["size"].get("shortest_edge", found["size"].get("height"))
        kwargs = {name: value for name, value in found.items() if value is not None}
        kwargs.update(overrides)
        return cls(**kwargs)

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """pytorchvideo `ShortSideScale`: the short side becomes `size`, the long one floor(long / short * size)."""
        if width < height:
            return int(math.floor(height / width * self.size)), self.size
        return self.size, int(math.floor(width / height * self.size))

    def preprocess(self, frames: np.ndarray | torch.Tensor | Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 RGB frames (T, H, W, 3) -> float32 (3, T, size, size)."""
        if isinstance(frames, (list, tuple)):
            frames = np.stack([np.asarray(f) for f in frames])
        video = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frames))
        if video.dtype != torch.uint8 or video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(
                f"Expected uint8 RGB frames of shape (T, H, W, 3), got {video.dtype} {tuple(video.shape)}; "
                "decode with read_video_frames()."
            )
        video = video.permute(3, 0, 1, 2).to(torch.float32) / 255.0  # (C, T, H, W)
        mean = torch.tensor(self.image_mean, dtype=torch.float32).view(-1, 1, 1, 1)
        std = torch.tensor(self.image_std, dtype=torch.float32).view(-1, 1, 1, 1)
        video = (video - mean) / std

        height, width = video.shape[-2:]
        new_h, new_w = self.resized_shape(height, width)
        # C is the batch and T the channels of the interpolation, exactly as pytorchvideo calls it.
        video = F.interpolate(video, size=(new_h, new_w), mode="bilinear", align_corners=False)

        top = int(round((new_h - self.size) / 2.0))
        left = int(round((new_w - self.size) / 2.0))
        video = video[..., top : top + self.size, left : left + self.size]

        if self.flip == "reference" and self._rng.random() < 0.5:
            video = video.flip(-1)
        return video.contiguous()

    def __call__(self, frames: np.ndarray | torch.Tensor | Sequence[np.ndarray]) -> torch.Tensor:
        return self.preprocess(frames)


def load_video(path: str | Path, processor: VideoLlavaVideoProcessor, repeat_short: bool = False) -> torch.Tensor:
    """Decode `processor.num_frames` frames with `processor.rule` and preprocess them: float32 (3, T, size, size)."""
    frames = read_video_frames(path, processor.num_frames, processor.rule, repeat_short=repeat_short)
    return processor.preprocess(frames)


def process_videos(
    videos: Sequence[str | Path | np.ndarray | torch.Tensor],
    processor: VideoLlavaVideoProcessor,
    repeat_short: bool = False,
) -> torch.Tensor:
    """Paths or decoded uint8 frame arrays -> float32 (N, 3, T, size, size)."""
    clips = [
        load_video(v, processor, repeat_short) if isinstance(v, (str, Path)) else processor.preprocess(v)
        for v in videos
    ]
    if not clips:
        raise ValueError("process_videos needs at least one video")
    shapes = {tuple(c.shape) for c in clips}
    if len(shapes) != 1:
        raise ValueError(f"Videos have different frame counts after preprocessing: {sorted(shapes)}")
    return torch.stack(clips)
