"""VTC-Bench's downsampling baseline (`--method downsample`): the spec's resize example, and on a tiny Qwen2.5-VL the
model fed the original images and sizes equals the unpruned model fed images shrunk by hand; LLaVA-1.5 and budgets
are refused with what to use instead."""

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from llava.conversation import get_conv_template
from llava.mm_utils import downsample_image, process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.sparse.downsample import Downsample
from llava.sparse.methods import add_pruning_args, pruning_from_args

from .helpers import random_image


def test_spec_resize_example_bicubic_then_jpeg():
    image = random_image(0, (1000, 700))
    assert downsample_image(image, 2).size == (500, 350) and downsample_image(image, 1).size == (1000, 700)
    plain = downsample_image(image, 2, jpeg_quality=None)
    assert np.array_equal(np.asarray(plain), np.asarray(image.resize((500, 350), Image.Resampling.BICUBIC)))
    jpeg = np.asarray(downsample_image(image, 2)).astype(int)
    assert (
        not np.array_equal(jpeg, np.asarray(plain)) and np.abs(jpeg - np.asarray(plain)).mean() < 40
    )  # lossy on noise, not garbage


def test_flags_and_refusals(tiny_llava):
    parser = argparse.ArgumentParser()
    add_pruning_args(parser)
    method = pruning_from_args(parser.parse_args(["--method", "downsample", "--downsample-factor", "3"]), env={})
    assert isinstance(method, Downsample) and method.image_downsample == 3
    assert pruning_from_args(parser.parse_args(["--method", "downsample"]), env={}).image_downsample == 2
    with pytest.raises(ValueError, match="--downsample-factor"):
        pruning_from_args(parser.parse_args(["--method", "downsample", "--retained-tokens", "64"]), env={})
    with pytest.raises(ValueError, match="at least 1"):
        Downsample(0)
    model = load_pretrained_model(str(tiny_llava), device="cpu", pruning=None)[1]
    with pytest.raises(ValueError, match="--method pool"):
        model.set_pruning(Downsample(2))


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    from llava.testing.qwen_checkpoints import write_tiny_qwen_vl

    folder = write_tiny_qwen_vl(tmp_path_factory.mktemp("downsample") / "qwen2_5_vl", seed=5)
    tokenizer, model, processor, _ = load_pretrained_model(
        str(folder), device="cpu", pruning=None, min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 1024
    )
    conv = get_conv_template(model.config.conv_mode)
    conv.append_message(conv.roles[0], "<image>\nWhat is in the picture?")
    conv.append_message(conv.roles[1], None)
    ids = tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")
    return model, processor, ids


def _logits(model, processor, ids, images, method=None):
    model.set_pruning(method)
    try:
        pixels = process_images(images, processor, model.config)
        out = model.prefill([ids] * len(images), images=pixels, image_sizes=[im.size for im in images], use_cache=False)
        return model.lm_head(out.hidden_states[:, -1]).float(), out.accounts
    finally:
        model.set_pruning(None)


def test_qwen_sees_the_shrunk_image_and_counts_its_tokens(qwen):
    model, processor, ids = qwen
    images = [random_image(1, (448, 336)), random_image(2, (280, 504))]
    for factor in (2, 3):
        logits, accounts = _logits(model, processor, ids, images, Downsample(factor))
        by_hand, expected = _logits(model, processor, ids, [downsample_image(im, factor) for im in images])
        torch.testing.assert_close(logits, by_hand, atol=1e-5, rtol=0)
        assert [a.num_visual for a in accounts] == [a.num_visual for a in expected]
    _, full = _logits(model, processor, ids, images)
    _, halved = _logits(model, processor, ids, images, Downsample(2))
    assert [a.num_visual for a in full] == [16 * 12, 10 * 18]  # 448 x 336 -> 16 x 12 merged cells; 280 x 504 -> 10 x 18
    assert [a.num_visual for a in halved] == [8 * 6, 5 * 9]
    assert model.config.pruning_image_downsample is None  # unset with the method
