"""Qwen2.5-VL / Qwen2-VL video input on our loop, against transformers' own classes on the same weights: the video
preprocessing (sizes, patch order, the image path on a static clip, transformers' video processor where torchvision
is importable), logits and greedy ids, M-RoPE ids (`get_rope_index`), batches, file loading and errors."""

import numpy as np
import pytest
import torch
import transformers

from llava.constants import IMAGE_TOKEN_INDEX, VIDEO_TOKEN_INDEX
from llava.conversation import get_conv_template
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.model.language_model.qwen_vl import QwenVideo, preprocess_video, qwen_num_frames
from llava.sparse.pre_llm import RandomPruning, UniformPruning
from llava.testing.videos import synthetic_frames, write_video

from .helpers import random_image

REFERENCE = {
    "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
    "qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
}
SMALL = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 12}  # a few tokens per frame pair, to keep tests fast


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen2_vl"])
def qwen(request, tmp_path_factory):
    from llava.testing.qwen_checkpoints import write_tiny_qwen_vl

    family = request.param
    folder = write_tiny_qwen_vl(tmp_path_factory.mktemp(family) / family, family=family, seed=1)
    tokenizer, model, processor, _ = load_pretrained_model(str(folder), device="cpu", pruning=None)
    reference = REFERENCE[family].from_pretrained(str(folder), dtype=torch.float32).eval()
    return family, tokenizer, model, processor, reference


def frames(seed: int, count: int, height: int, width: int) -> np.ndarray:
    """Synthetic frames (a colour per frame, a moving square) with noise, so every frame pair differs."""
    noise = np.random.default_rng(seed).integers(0, 40, (count, height, width, 3))
    return (synthetic_frames(count, width, height) * 0.8 + noise).astype(np.uint8)


def prompt(tokenizer, model, question: str, media: str = "<video>\n") -> torch.Tensor:
    conv = get_conv_template(model.config.conv_mode)
    conv.append_message(conv.roles[0], media + question)
    conv.append_message(conv.roles[1], None)
    return tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")


def hf_inputs(family, reference, ids, videos=(), images=(), image_pixels=None) -> dict:
    """transformers' route, as its processor builds it: each placeholder expanded to `<|video_pad|>` (or
    `<|image_pad|>`) once per merged token, token types 2 (video) / 1 (image), the clips' pixels, grids and (Qwen2.5-VL)
    second_per_grid_ts."""
    config = reference.config
    videos, images = list(videos), list(images)
    pieces, types = [], []
    for token in ids.tolist():
        if token == VIDEO_TOKEN_INDEX:
            count = videos[len([t for t in types if t == 2])].num_tokens
            pieces += [config.video_token_id] * count
            types += [2] * count
        elif token == IMAGE_TOKEN_INDEX:
            count = int(image_pixels[len([t for t in types if t == 1])].shape[0]) // 4
            pieces += [config.image_token_id] * count
            types += [1] * count
        else:
            pieces.append(token)
            types.append(0)
    inputs = {"input_ids": torch.tensor([pieces]), "mm_token_type_ids": torch.tensor([types])}
    if videos:
        inputs["pixel_values_videos"] = torch.cat([v.pixels for v in videos])
        inputs["video_grid_thw"] = torch.tensor([v.grid_thw for v in videos])
        if family == "qwen2_5_vl":
            inputs["second_per_grid_ts"] = torch.tensor([v.second_per_grid_t for v in videos])
    if images:
        inputs["pixel_values"] = torch.cat(image_pixels)
        inputs["image_grid_thw"] = torch.tensor([[1, *(2 * x for x in g)] for g in images])
    return inputs


# -- preprocessing ------------------------------------------------------------------------------------------------


def test_preprocess_sizes_padding_and_time():
    """64 x 96 frames at the default bounds (128..768 x 28^2 pixels): smart_resize gives 280 x 392, so (20, 28)
    patches per frame; 3 frames are padded to 4 by repeating the last, 2 frame pairs; 2 / fps seconds a pair."""
    clip = frames(0, 3, 64, 96)
    video = preprocess_video(clip, fps=4.0)
    assert video.grid_thw == (2, 20, 28)
    assert tuple(video.pixels.shape) == (2 * 20 * 28, 3 * 2 * 14 * 14)
    assert video.num_tokens == 2 * 10 * 14
    assert (video.second_per_grid_t, video.fps) == (0.5, 4.0)
    # [pair, cell row, cell col, 2, 2, C, frame in pair, 14, 14]: the second pair is frame 2 twice
    patches = video.pixels.view(2, 10, 14, 2, 2, 3, 2, 14, 14)
    assert torch.equal(patches[1, ..., 0, :, :], patches[1, ..., 1, :, :])
    assert not torch.equal(patches[0, ..., 0, :, :], patches[0, ..., 1, :, :])


def test_static_clip_gives_the_image_patches(qwen):
    """A clip of one image twice is one frame pair whose patches are the image processor's (which duplicates an image
    along the temporal patch): the same patch order. At the image's own size (no resize) up to float rounding of the
    fused normalisation; resized, up to the last level of PIL's vs torch's uint8 bicubic."""
    _, _, model, processor, _ = qwen
    bounds = {"min_pixels": processor.size["shortest_edge"], "max_pixels": processor.size["longest_edge"]}
    for size, atol in (((84, 56), 1e-6), ((100, 80), 3 / 255 / min(processor.image_std))):
        image = random_image(3, size)
        expected = process_images([image], processor, model.config)[0]
        video = preprocess_video(np.stack([np.asarray(image)] * 2), processor, **bounds)
        rows, cols = model.image_grid(image.size)
        assert video.grid_thw == (1, 2 * rows, 2 * cols)
        torch.testing.assert_close(video.pixels, expected, atol=atol, rtol=0)
        assert (video.pixels - expected).abs().mean() < 1e-3


def test_preprocess_is_transformers_video_processor():
    """Bit for bit against transformers' Qwen2VLVideoProcessor (torchvision backend, CPU); needs torchvision."""
    pytest.importorskip("torchvision")
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    processor = Qwen2VLVideoProcessor()
    for count, height, width, bounds in ((5, 64, 96, {}), (4, 300, 170, {"min_pixels": 3136, "max_pixels": 200704})):
        clip = frames(count, count, height, width)
        size = {"shortest_edge": bounds.get("min_pixels", 100352), "longest_edge": bounds.get("max_pixels", 602112)}
        expected = processor(videos=[clip], size=size, cap_pixels_per_frame=False, return_tensors="pt")
        video = preprocess_video(clip, processor, **bounds)
        assert list(video.grid_thw) == expected["video_grid_thw"][0].tolist()
        assert torch.equal(video.pixels, expected["pixel_values_videos"])


def test_frame_count_rule():
    """qwen-vl-utils' fps rule: total / fps_file x 2, within [4, even part of min(768, total)], rounded down to even."""
    assert qwen_num_frames(37, 10.0) == 6  # 7.4 -> 6
    assert qwen_num_frames(300, 30.0) == 20
    assert qwen_num_frames(5, 30.0) == 4  # the 4-frame floor
    assert qwen_num_frames(3000, 1.0) == 768
    with pytest.raises(ValueError, match="too short"):
        qwen_num_frames(1, 30.0)


def test_frames_of_different_sizes_are_refused(qwen):
    _, tokenizer, model, processor, _ = qwen
    with pytest.raises(ValueError, match="one size"):
        model.load_video([np.zeros((56, 84, 3), np.uint8), np.zeros((84, 56, 3), np.uint8)], processor)
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        model.load_video(np.zeros((2, 56, 84), np.uint8), processor)
    video = model.load_video(frames(1, 4, 56, 84), processor, **SMALL)
    broken = QwenVideo(video.pixels[:-4], video.grid_thw, video.second_per_grid_t, video.fps)
    ids = prompt(tokenizer, model, "What?")
    with pytest.raises(ValueError, match="do not match its grid_thw"):
        model(ids[None], videos=[broken])
    with pytest.raises(ValueError, match="more <video> placeholders than videos"):
        model(prompt(tokenizer, model, "And?", "<video>\n<video>\n")[None], videos=[video])


# -- the model against transformers ---------------------------------------------------------------------------------

CLIPS = {
    "3 frames, padded": dict(count=3, height=56, width=84, fps=2.0),
    # fps 0.5: temporal ids step 8 (Qwen2.5-VL), past the block's spatial extent, so the text after the video
    # follows transformers 5.23's resume rule
    "6 frames at 0.5 fps": dict(count=6, height=84, width=56, fps=0.5),
}


@pytest.mark.parametrize("clip", CLIPS, ids=list(CLIPS))
def test_logits_and_greedy_ids_equal_transformers(qwen, clip):
    family, tokenizer, model, processor, reference = qwen
    spec = CLIPS[clip]
    video = model.load_video(
        frames(2, spec["count"], spec["height"], spec["width"]), processor, fps=spec["fps"], **SMALL
    )
    ids = prompt(tokenizer, model, "What happens in the video?")
    ours = model(ids[None], videos=[video])
    inputs = hf_inputs(family, reference, ids, [video])
    with torch.no_grad():
        expected = reference(**inputs).logits
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)
    eos = reference.generation_config.eos_token_id  # [<|im_end|>, <|endoftext|>]; ours defaults to the first only
    for penalty in (1.0, None):  # None: both take the checkpoint's generation_config value (1.05)
        kwargs = {} if penalty is None else {"repetition_penalty": penalty}
        generated = model.generate(ids[None], videos=[video], max_new_tokens=6, eos_token_id=eos, **kwargs)
        with torch.no_grad():
            hf = reference.generate(**inputs, max_new_tokens=6, do_sample=False, **kwargs)
        hf = hf[0, inputs["input_ids"].shape[1] :].tolist()
        assert generated[0, : len(hf)].tolist() == hf  # after an EOS ours pads to max_new_tokens, transformers stops


def test_mrope_positions_follow_get_rope_index(qwen):
    """A video prompt and an image + video prompt; Qwen2.5-VL's temporal ids are floor(k x 2 x 2 / fps)."""
    family, tokenizer, model, processor, reference = qwen
    video = model.load_video(frames(3, 6, 84, 56), processor, fps=0.75, **SMALL)
    image = random_image(4, (84, 56))
    image_pixels = process_images([image], processor, model.config)
    for media, images in (("<video>\n", []), ("<image>\n<video>\n", [image])):
        ids = prompt(tokenizer, model, "Compare them.", media)
        sizes = [im.size for im in images] or None
        inputs = model.prepare_inputs(ids[None], image_pixels if images else None, None, sizes, videos=[video])
        grids = [model.image_grid(im.size) for im in images]
        hf = hf_inputs(family, reference, ids, [video], grids, image_pixels)
        extra = {"second_per_grid_ts": hf["second_per_grid_ts"]} if family == "qwen2_5_vl" else {}
        expected, _ = reference.model.get_rope_index(
            hf["input_ids"],
            hf["mm_token_type_ids"],
            image_grid_thw=hf.get("image_grid_thw"),
            video_grid_thw=hf["video_grid_thw"],
            **extra,
        )
        assert inputs.position_ids.permute(2, 0, 1).tolist() == expected.tolist()
        if family == "qwen2_5_vl":  # 3 frame pairs at 2 x 2 / 0.75 s: temporal steps floor(0, 5.33, 10.67)
            start = inputs.image_spans[0][-1][0]
            t = inputs.position_ids[0, start : start + video.num_tokens, 0]
            assert sorted(set((t - t[0]).tolist())) == [0, 5, 10]


def test_original_qwen_rule_resumes_text_after_the_largest_id(qwen):
    """mrope_video_rule="qwen": ids up to the end of the video as transformers', the text after it from the block's
    largest id + 1 instead of start + max(rows, cols)."""
    family, tokenizer, model, processor, _ = qwen
    video = model.load_video(frames(5, 6, 56, 84), processor, fps=0.5, **SMALL)
    ids = prompt(tokenizer, model, "What?")
    hf_rule = model.prepare_inputs(ids[None], videos=[video]).position_ids[0]
    model.config.mrope_video_rule = "qwen"
    try:
        qwen_rule = model.prepare_inputs(ids[None], videos=[video]).position_ids[0]
    finally:
        model.config.mrope_video_rule = "transformers"
    inputs = model.prepare_inputs(ids[None], videos=[video])
    start, count = inputs.image_spans[0][0]
    end = start + count
    assert torch.equal(qwen_rule[:end], hf_rule[:end])
    assert qwen_rule[end, 0] == qwen_rule[:end].max() + 1
    shift = 8 * 2 + 1 - 3 if family == "qwen2_5_vl" else 0  # temporal ids reach 16; the grid is 2 x 3 cells
    assert torch.equal(qwen_rule[end:], hf_rule[end:] + shift)


# -- batches, files, pruning ----------------------------------------------------------------------------------------


def test_batch_of_two_clip_sizes_equals_one_by_one(qwen):
    _, tokenizer, model, processor, _ = qwen
    videos = [
        model.load_video(frames(6, 4, 56, 84), processor, **SMALL),
        model.load_video(frames(7, 3, 112, 56), processor, fps=1.0, **SMALL),
    ]
    assert videos[0].grid_thw != videos[1].grid_thw
    ids = [prompt(tokenizer, model, "What?"), prompt(tokenizer, model, "Which colours are there in the clip?")]
    batch = model.generate(ids, videos=videos, max_new_tokens=5, eos_token_id=-1)
    for i in range(2):
        alone = model.generate(ids[i][None], videos=videos[i : i + 1], max_new_tokens=5, eos_token_id=-1)
        assert batch[i].tolist() == alone[0].tolist()


def test_image_and_video_samples_in_one_batch(qwen):
    _, tokenizer, model, processor, _ = qwen
    image = random_image(8, (100, 80))
    pixels = process_images([image], processor, model.config)
    video = model.load_video(frames(8, 4, 56, 84), processor, **SMALL)
    ids = [prompt(tokenizer, model, "What is it?", "<image>\n"), prompt(tokenizer, model, "And this?")]
    batch = model.generate(
        ids, images=pixels, image_sizes=[image.size], videos=[video], max_new_tokens=5, eos_token_id=-1
    )
    alone = [
        model.generate(ids[0][None], images=pixels, image_sizes=[image.size], max_new_tokens=5, eos_token_id=-1),
        model.generate(ids[1][None], videos=[video], max_new_tokens=5, eos_token_id=-1),
    ]
    for i in range(2):
        assert batch[i].tolist() == alone[i][0].tolist()


def test_load_video_from_a_file(qwen, tmp_path):
    """A 37-frame, 10 fps file: qwen-vl-utils' rule samples 6 frames at round(linspace) (0 7 14 22 29 36), so the
    sampled rate is 6 / 37 x 10 fps; a given num_frames is rounded to an even count (5 -> 4, half to even)."""
    _, _, model, processor, _ = qwen
    source = frames(9, 37, 56, 84)
    path = write_video(tmp_path / "clip.mp4", source, fps=10)
    video = model.load_video(path, processor, **SMALL)
    expected = preprocess_video(source[[0, 7, 14, 22, 29, 36]], processor, 6 / 37 * 10, **SMALL)
    assert video.grid_thw == expected.grid_thw == (3, 4, 6)
    assert torch.equal(video.pixels, expected.pixels)
    assert video.second_per_grid_t == pytest.approx(2 / (60 / 37))
    four = model.load_video(str(path), processor, num_frames=5, **SMALL)
    assert four.grid_thw == (2, 4, 6) and four.fps == pytest.approx(4 / 37 * 10)
    assert torch.equal(four.pixels, preprocess_video(source[[0, 12, 24, 36]], processor, **SMALL).pixels)
    short = write_video(tmp_path / "short.mp4", source[:3], fps=10)  # fewer frames than asked: an error, or repeats
    with pytest.raises(ValueError, match="repeat_short"):
        model.load_video(short, processor, num_frames=4, **SMALL)
    repeated = model.load_video(short, processor, num_frames=4, repeat_short=True, **SMALL)
    assert torch.equal(repeated.pixels, preprocess_video(source[[0, 1, 1, 2]], processor, **SMALL).pixels)


@pytest.mark.parametrize("method", [RandomPruning(3), UniformPruning(3)], ids=["random", "uniform"])
def test_pre_llm_pruning_acts_per_frame_pair_and_keeps_positions(qwen, method):
    """The clip's layout has one view per frame pair: random and uniform pruning keep k tokens of each, and kept
    tokens keep the M-RoPE ids of their cells."""
    _, tokenizer, model, processor, _ = qwen
    video = model.load_video(frames(10, 6, 84, 84), processor, fps=1.0, **SMALL)
    ids = prompt(tokenizer, model, "What?")
    full = model.prepare_inputs(ids[None], videos=[video])
    model.set_pruning(method)
    try:
        pruned = model.prepare_inputs(ids[None], videos=[video])
    finally:
        model.set_pruning(None)
    tokens = pruned.images[0].tokens
    assert tokens.num_views == 3 and tokens.per_view_counts() == [3, 3, 3]
    (start, count), (full_start, full_count) = pruned.image_spans[0][0], full.image_spans[0][0]
    assert full_count == 27 and count == 9
    assert torch.equal(
        pruned.position_ids[0, start : start + count], full.position_ids[0, full_start + tokens.source()]
    )
    assert torch.equal(pruned.position_ids[0, start + count :], full.position_ids[0, full_start + full_count :])
