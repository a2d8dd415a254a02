"""Video decoding and Video-LLaVA frame preprocessing against the values of spec video.md sections 2 and 7.

Clips are synthetic (llava.testing.videos) and lossless (libx264rgb, qp=0), so decoded frames must equal the source
frames exactly; the preprocessing is checked against an independent numpy float64 bilinear resize.
"""

from __future__ import annotations

import math
import random

import av
import numpy as np
import pytest
import torch

from llava.model.multimodal_encoder import video_processor
from llava.model.multimodal_encoder.image_processor import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from llava.model.multimodal_encoder.video_processor import (
    VideoLlavaVideoProcessor,
    VideoReadError,
    load_video,
    process_videos,
    read_video_frames,
    sample_frame_indices,
)
from llava.testing.videos import synthetic_frames, write_video

# ---------------------------------------------------------------- frame sampling


@pytest.mark.parametrize(
    ("total", "rule", "expected"),
    [
        (37, "videollava", [0, 5, 10, 15, 20, 25, 30, 36]),
        (37, "hf", [0, 4, 9, 13, 18, 23, 27, 32]),
        (37, "qwen", [0, 5, 10, 15, 21, 26, 31, 36]),
        (8, "videollava", list(range(8))),
        (8, "hf", list(range(8))),
        (8, "qwen", list(range(8))),
        (5, "videollava", [0, 0, 1, 1, 2, 2, 3, 4]),
        (5, "hf", [0, 0, 1, 1, 2, 3, 3, 4]),  # floor(0.625 * i)
        (5, "qwen", [0, 1, 1, 2, 2, 3, 3, 4]),  # round(4 / 7 * i)
    ],
)
def test_sample_frame_indices_match_the_spec_table(total, rule, expected):
    assert sample_frame_indices(total, 8, rule) == expected


def test_sample_frame_indices_always_return_k_indices_in_range():
    for total in range(1, 200):
        for rule in ("videollava", "hf", "qwen"):
            indices = sample_frame_indices(total, 8, rule)
            assert len(indices) == 8 and indices == sorted(indices) and 0 <= indices[0] and indices[-1] < total


@pytest.mark.parametrize(
    ("args", "match"),
    [((0, 8, "videollava"), "total"), ((10, 0, "videollava"), "num_frames"), ((10, 8, "uniform"), "rule")],
)
def test_sample_frame_indices_reject_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        sample_frame_indices(*args)


# ---------------------------------------------------------------- decoding


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """37 frames of 96x64 as lossless mp4 (frame count stored) and mkv (not stored), and a 5-frame mp4."""
    folder = tmp_path_factory.mktemp("videos")
    source = synthetic_frames(37, 96, 64)
    short = synthetic_frames(5, 96, 64)
    return {
        "source": source,
        "mp4": write_video(folder / "clip.mp4", source),
        "mkv": write_video(folder / "clip.mkv", source),
        "short_source": short,
        "short": write_video(folder / "short.mp4", short),
    }


def test_synthetic_frames_are_distinct():
    frames = synthetic_frames(37, 96, 64)
    assert frames.shape == (37, 64, 96, 3) and frames.dtype == np.uint8
    assert len({f.tobytes() for f in frames}) == 37


def test_lossless_mp4_round_trips_exactly_at_the_sampled_indices(clips):
    with av.open(str(clips["mp4"])) as container:
        assert container.streams.video[0].frames == 37
    for rule in ("videollava", "hf", "qwen"):
        frames = read_video_frames(clips["mp4"], 8, rule)
        assert frames.dtype == np.uint8 and frames.shape == (8, 64, 96, 3)
        np.testing.assert_array_equal(frames, clips["source"][sample_frame_indices(37, 8, rule)])


def test_mkv_without_frame_count_gives_the_same_frames(clips):
    with av.open(str(clips["mkv"])) as container:
        assert container.streams.video[0].frames == 0  # the counting fallback is what this exercises
    np.testing.assert_array_equal(read_video_frames(clips["mkv"]), read_video_frames(clips["mp4"]))


def test_short_video_raises_unless_repeat_short(clips):
    with pytest.raises(VideoReadError, match=r"has 5 frame.*repeat_short=True.*--repeat-short-videos"):
        read_video_frames(clips["short"])
    frames = read_video_frames(clips["short"], repeat_short=True)
    np.testing.assert_array_equal(frames, clips["short_source"][[0, 0, 1, 1, 2, 2, 3, 4]])


def test_over_reported_length_clamps_to_the_last_decoded_frame_and_warns(clips, monkeypatch):
    monkeypatch.setattr(video_processor, "_frame_count", lambda path: 50)  # 13 frames more than decodable
    with pytest.warns(UserWarning, match="50 frames expected but only 37 decoded"):
        frames = read_video_frames(clips["mp4"])
    expected = [min(i, 36) for i in sample_frame_indices(50)]  # 0 7 14 21 28 35 42 49 -> ... 35 36 36
    np.testing.assert_array_equal(frames, clips["source"][expected])


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        read_video_frames(tmp_path / "nope.mp4")


def test_text_file_named_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 20)
    with pytest.raises(VideoReadError, match=r"Cannot open video .*notes\.mp4.*InvalidDataError"):
        read_video_frames(path)


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = tmp_path / "audio.mkv"
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(VideoReadError, match="no video stream"):
        read_video_frames(path)


# ---------------------------------------------------------------- preprocessing


def reference_resize(frames: np.ndarray, size: int = 224) -> np.ndarray:
    """Independent float64 version of section 2.1 without the crop: /255, CLIP normalisation, bilinear short-side
    scale with half-pixel centres (src = (dst + 0.5) * in / out - 0.5, clamped at 0; no antialias).
    Returns (3, T, new_h, new_w)."""

    def axis_weights(n_in: int, n_out: int):
        # Source coordinates in float32, as PyTorch computes them for float32 input; at sharp edges float64
        # coordinates alone would move values by ~1e-5.
        scale = np.float32(n_in / n_out)
        src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
        src = np.maximum(src, np.float32(0.0))
        low = np.floor(src).astype(int)
        high = np.minimum(low + 1, n_in - 1)
        return low, high, (src - low).astype(np.float64)

    video = (frames.astype(np.float64) / 255.0 - np.array(OPENAI_CLIP_MEAN)) / np.array(OPENAI_CLIP_STD)
    h, w = video.shape[1:3]
    new_h, new_w = (size, math.floor(w / h * size)) if w >= h else (math.floor(h / w * size), size)
    y0, y1, fy = axis_weights(h, new_h)
    x0, x1, fx = axis_weights(w, new_w)
    rows = video[:, y0] * (1 - fy)[None, :, None, None] + video[:, y1] * fy[None, :, None, None]
    resized = rows[:, :, x0] * (1 - fx)[None, None, :, None] + rows[:, :, x1] * fx[None, None, :, None]
    return resized.transpose(3, 0, 1, 2)


def test_processor_defaults():
    processor = VideoLlavaVideoProcessor()
    assert (processor.size, processor.num_frames, processor.rule, processor.flip) == (224, 8, "videollava", "none")
    assert processor.image_mean == list(OPENAI_CLIP_MEAN) and processor.image_std == list(OPENAI_CLIP_STD)
    config = {"vision_config": {"image_size": 112, "num_frames": 4}}
    small = VideoLlavaVideoProcessor.from_config(config, rule="qwen")
    assert (small.size, small.num_frames, small.rule) == (112, 4, "qwen")
    from_preprocessor = VideoLlavaVideoProcessor.from_config({"size": {"shortest_edge": 160}})
    assert (from_preprocessor.size, from_preprocessor.num_frames) == (160, 8)


def test_96x64_resizes_to_336x224_and_crops_at_x56(clips):
    frames = clips["source"][:8]
    full = reference_resize(frames)
    assert full.shape == (3, 8, 224, 336)
    processor = VideoLlavaVideoProcessor()
    assert processor.resized_shape(64, 96) == (224, 336)  # (h, w)
    out = processor.preprocess(frames)
    assert out.dtype == torch.float32 and out.shape == (3, 8, 224, 224)
    np.testing.assert_allclose(out.numpy(), full[..., 0:224, 56:280], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("width", "height", "resized_hw", "offset_yx"),
    [
        (64, 96, (336, 224), (56, 0)),  # portrait
        (100, 75, (224, 298), (0, 37)),  # non-integer scale: floor(100 / 75 * 224) = 298; round(37.0)
        (227, 224, (224, 227), (0, 2)),  # odd margin: round(1.5) = 2
        (225, 224, (224, 225), (0, 0)),  # round(0.5) = 0 (half to even, as Python's round)
        (224, 224, (224, 224), (0, 0)),  # identity resize
        (40, 40, (224, 224), (0, 0)),  # upscale of a square
    ],
)
def test_non_square_and_portrait_sizes(width, height, resized_hw, offset_yx):
    processor = VideoLlavaVideoProcessor()
    assert processor.resized_shape(height, width) == resized_hw
    frames = synthetic_frames(3, width, height)
    full = reference_resize(frames)
    assert full.shape[-2:] == resized_hw
    out = processor.preprocess(frames)
    assert out.shape == (3, 3, 224, 224)
    top, left = offset_yx
    np.testing.assert_allclose(out.numpy(), full[..., top : top + 224, left : left + 224], rtol=0, atol=1e-5)


def test_flip_is_off_by_default_and_seeded_in_reference_mode():
    frames = synthetic_frames(8, 96, 64)
    plain = VideoLlavaVideoProcessor().preprocess(frames)
    default = VideoLlavaVideoProcessor()
    assert all(torch.equal(default.preprocess(frames), plain) for _ in range(4))

    draws = random.Random(3)
    expected = [draws.random() < 0.5 for _ in range(8)]
    assert any(expected) and not all(expected)  # seed 3 exercises both branches
    first, second = (VideoLlavaVideoProcessor(flip="reference", seed=3) for _ in range(2))
    for flipped in expected:
        a, b = first.preprocess(frames), second.preprocess(frames)
        assert torch.equal(a, b)
        assert torch.equal(a, plain.flip(-1) if flipped else plain)


def test_preprocess_rejects_float_or_channel_first_frames():
    processor = VideoLlavaVideoProcessor()
    with pytest.raises(ValueError, match="uint8 RGB"):
        processor.preprocess(np.zeros((8, 64, 96, 3), np.float32))
    with pytest.raises(ValueError, match="uint8 RGB"):
        processor.preprocess(np.zeros((8, 3, 64, 96), np.uint8))
    mirrored = synthetic_frames(2, 96, 64)[:, :, ::-1]  # negative strides are accepted
    assert processor.preprocess(mirrored).shape == (3, 2, 224, 224)
    with pytest.raises(ValueError, match="flip"):
        VideoLlavaVideoProcessor(flip="random")


def test_load_video_and_process_videos(clips):
    processor = VideoLlavaVideoProcessor()
    one = load_video(clips["mp4"], processor)
    expected = processor.preprocess(clips["source"][sample_frame_indices(37)])
    assert torch.equal(one, expected)
    batch = process_videos([clips["mp4"], str(clips["mkv"]), clips["source"][:8]], processor)
    assert batch.shape == (3, 3, 8, 224, 224)
    assert torch.equal(batch[0], one) and torch.equal(batch[1], one)
    assert torch.equal(batch[2], processor.preprocess(clips["source"][:8]))
    with pytest.raises(VideoReadError, match="repeat_short"):
        process_videos([clips["short"]], processor)
    assert process_videos([clips["short"]], processor, repeat_short=True).shape == (1, 3, 8, 224, 224)
