"""Prompt tokenization and image preprocessing against expectations computed independently from the spec."""

import numpy as np
import pytest
import torch
from PIL import Image

from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import expand2square, process_images, tokenizer_image_token
from llava.model.multimodal_encoder.image_processor import OPENAI_CLIP_MEAN, CLIPImagePreprocessor


@pytest.fixture(scope="module")
def tokenizer(tiny_llava):
    from llava.model.builder import load_tokenizer

    return load_tokenizer(tiny_llava)


def test_tokenizer_image_token_splices_one_placeholder_per_image(tokenizer):
    prompt = "A chat. USER: <image>\nWhat is this? ASSISTANT:"
    ids = tokenizer_image_token(prompt, tokenizer)
    backend = tokenizer.backend_tokenizer  # the raw `tokenizers` pipeline, without BOS
    before = backend.encode("A chat. USER: ", add_special_tokens=False).ids
    after = backend.encode("\nWhat is this? ASSISTANT:", add_special_tokens=False).ids
    assert ids == [tokenizer.bos_token_id] + before + [IMAGE_TOKEN_INDEX] + after
    assert ids.count(tokenizer.bos_token_id) == 1 and tokenizer.eos_token_id not in ids


def test_each_chunk_gets_its_own_leading_space_piece(tokenizer):
    """As in LLaVA: ... ':' '▁' | image | '▁' '<0x0A>' ... around the placeholder."""
    ids = tokenizer_image_token("USER: <image>\nQ", tokenizer)
    k = ids.index(IMAGE_TOKEN_INDEX)
    around = tokenizer.convert_ids_to_tokens(ids[k - 2 : k]) + tokenizer.convert_ids_to_tokens(ids[k + 1 : k + 3])
    assert around == [":", "▁", "▁", "<0x0A>"]


def test_multiple_images_and_tensor_output(tokenizer):
    ids = tokenizer_image_token("<image> a <image> b", tokenizer, return_tensors="pt")
    assert isinstance(ids, torch.Tensor) and ids.dtype == torch.long
    assert (ids == IMAGE_TOKEN_INDEX).sum() == 2 and ids[0] == tokenizer.bos_token_id and ids[1] == IMAGE_TOKEN_INDEX


def _solid(size, color):
    return Image.new("RGB", size, color)


def test_expand2square_landscape_pads_top_and_bottom():
    bg = tuple(int(x * 255) for x in OPENAI_CLIP_MEAN)
    assert bg == (122, 116, 104)  # spec 2.5
    out = np.asarray(expand2square(_solid((40, 20), (255, 0, 0)), bg))
    assert out.shape == (40, 40, 3)
    assert (out[:10] == bg).all() and (out[30:] == bg).all() and (out[10:30] == (255, 0, 0)).all()


def test_expand2square_portrait_pads_left_and_right():
    bg = (122, 116, 104)
    out = np.asarray(expand2square(_solid((21, 40), (0, 255, 0)), bg))
    assert out.shape == (40, 40, 3)
    # offset (H - W) // 2 = 9 columns of background on the left, 10 on the right
    assert (out[:, :9] == bg).all() and (out[:, 9:30] == (0, 255, 0)).all() and (out[:, 30:] == bg).all()


def test_expand2square_keeps_square_images():
    image = _solid((17, 17), (1, 2, 3))
    assert expand2square(image, (0, 0, 0)) is image


def _random_image(w, h, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [(336, 336), (500, 375), (240, 400), (100, 80)])
def test_preprocessing_matches_transformers_pil_clip_processor(size):
    from transformers import CLIPImageProcessorPil

    ours = CLIPImagePreprocessor(size=336, crop_size=336)
    reference = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    image = _random_image(*size, seed=size[0])
    expected = reference(image, return_tensors="pt")["pixel_values"]
    got = ours.preprocess(image, return_tensors="pt")["pixel_values"]
    assert got.shape == expected.shape == (1, 3, 336, 336)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_pad_mode_is_expand2square_then_preprocess():
    class Cfg:
        image_aspect_ratio = "pad"

    proc = CLIPImagePreprocessor(size=336, crop_size=336)
    image = _random_image(300, 200, seed=1)
    got = process_images([image], proc, Cfg)
    # Independent: pad by hand on the mean colour, then resize with PIL bicubic, then normalise.
    canvas = Image.new("RGB", (300, 300), (122, 116, 104))
    canvas.paste(image, (0, 50))
    pixels = np.asarray(canvas.resize((336, 336), Image.Resampling.BICUBIC)).astype(np.float32) / 255.0
    expected = (pixels - np.float32(OPENAI_CLIP_MEAN)) / np.float32(proc.image_std)
    torch.testing.assert_close(got[0], torch.from_numpy(expected.transpose(2, 0, 1)), atol=1e-5, rtol=0)


def test_resize_mode_crops_the_centre():
    class Cfg:
        image_aspect_ratio = None

    proc = CLIPImagePreprocessor(size=8, crop_size=8)
    image = Image.new("RGB", (16, 8), (0, 0, 0))
    image.paste(Image.new("RGB", (8, 8), (255, 255, 255)), (4, 0))  # white centre, black sides
    out = process_images([image], proc, Cfg)[0]
    white = (1.0 - torch.tensor(proc.image_mean)) / torch.tensor(proc.image_std)
    torch.testing.assert_close(out[:, :, 2:6], white[:, None, None].expand(3, 8, 4), atol=1e-5, rtol=0)
