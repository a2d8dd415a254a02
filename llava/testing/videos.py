"""Synthetic video fixtures: frames that are easy to tell apart and a PyAV writer for lossless test clips.

`libx264rgb` with `qp=0` in mp4 or mkv round-trips rgb24 frames exactly through PyAV (spec video.md section 7), so
decoded frames can be compared with the source frames bit for bit. mp4 stores the frame count (`stream.frames`);
mkv does not (`stream.frames == 0`), which exercises the counting fallback of the reader.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# Pixel format each encoder is fed; lossless for the RGB-native ones (spec video.md section 7).
PIX_FMTS = {
    "libx264rgb": "rgb24",
    "libx264": "yuv420p",
    "ffv1": "bgr0",
    "utvideo": "gbrp",
    "png": "rgb24",
    "qtrle": "rgb24",
    "mpeg4": "yuv420p",
    "mjpeg": "yuvj420p",
}
CODEC_OPTIONS = {"libx264rgb": {"qp": "0"}}
CONTAINER_FORMATS = {".mp4": "mp4", ".mkv": "matroska", ".avi": "avi", ".mov": "mov"}


def synthetic_frames(count: int, width: int, height: int) -> np.ndarray:
    """uint8 RGB (count, height, width, 3): a solid colour that depends on the index, plus a moving white square."""
    frames = np.empty((count, height, width, 3), dtype=np.uint8)
    side = max(2, min(width, height) // 4)
    for i in range(count):
        frames[i] = ((40 + 37 * i) % 200, (90 + 71 * i) % 200, (150 + 53 * i) % 200)  # never white
        x = (3 * i) % max(1, width - side)
        y = (2 * i) % max(1, height - side)
        frames[i, y : y + side, x : x + side] = 255
    return frames


def write_video(path: str | Path, frames: np.ndarray, codec: str = "libx264rgb", fps: int = 10) -> Path:
    """Encode uint8 RGB frames (T, H, W, 3) with PyAV; the container follows the suffix (.mp4, .mkv, .avi, .mov).

    Written to a temporary file next to `path`, then renamed, so a reader never sees a half-written clip.
    """
    path = Path(path)
    if path.suffix not in CONTAINER_FORMATS:
        raise ValueError(f"Unsupported container {path.suffix!r}; use one of {', '.join(CONTAINER_FORMATS)}")
    if codec not in PIX_FMTS:
        raise ValueError(f"No pixel format known for codec {codec!r}; known: {', '.join(PIX_FMTS)}")
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"Expected uint8 RGB frames (T, H, W, 3), got {frames.dtype} {frames.shape}")

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        with av.open(str(tmp), "w", format=CONTAINER_FORMATS[path.suffix]) as container:
            stream = container.add_stream(codec, rate=fps, options=CODEC_OPTIONS.get(codec, {}))
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = PIX_FMTS[codec]
            for i, rgb in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, fps)
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))  # flush the encoder's delayed frames
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
