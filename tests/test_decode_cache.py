"""The static decode path: per-layer preallocated KV buffers (llava.model.language_model.cache), growth past the
room asked for, and the decode step compiled by torch.compile giving the eager tokens on a pruned, padded batch."""

import pytest
import torch

from llava.mm_utils import process_images
from llava.model.language_model.cache import CAPACITY_MULTIPLE
from llava.sparse.fastv import FastV

from .helpers import pixels, prompt_ids, random_image


@pytest.fixture(scope="module")
def samples(loaded):
    tokenizer, model, image_processor, _ = loaded
    ids = [prompt_ids(tokenizer, "What is the color of the circle?")]
    return ids, pixels(image_processor, model, random_image(20))


def test_buffers_are_sized_per_layer_and_grow_past_the_room_asked_for(loaded, samples):
    """A prefill that reserves no room still decodes (buffers grow on the host between steps) and gives the same
    logits as one that reserved room for every step; FastV's two segments get their own sizes."""
    _, model, _, _ = loaded
    ids, px = samples
    model.set_pruning(FastV(k=2, retained_tokens=64))
    try:
        roomy = model.prefill(ids[0][None], images=px[:1], max_new_tokens=80)
        tight = model.prefill(ids[0][None], images=px[:1], max_new_tokens=0)
    finally:
        model.set_pruning(None)
    full = roomy.inputs.lengths[0]
    assert [len(s.layers) for s in roomy.cache.segments] == [2, model.config.num_hidden_layers - 2]
    for cache, room in ((roomy.cache, 80), (tight.cache, 0)):
        for segment, length in zip(cache.segments, (full, full - 576 + 64), strict=True):
            assert segment.length == length
            assert segment.capacity % CAPACITY_MULTIPLE == 0 and length + room <= segment.capacity
            assert segment.capacity < length + room + CAPACITY_MULTIPLE
            assert int(segment.slot) == length and segment.key_mask.sum() == length
    text = model.config.text_config
    per_token = 2 * text.num_key_value_heads * (text.hidden_size // text.num_attention_heads) * 4  # fp32 K and V
    assert roomy.cache.nbytes() == per_token * (2 * full + (text.num_hidden_layers - 2) * (full - 512))
    capacity_before = tight.cache.segments[1].capacity
    token = model.lm_head(roomy.hidden_states[:, -1]).float().argmax(-1)
    for _ in range(80):
        expected = model.decode_step(token, roomy.cache)
        got = model.decode_step(token, tight.cache)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        token = expected.argmax(-1)
    assert tight.cache.segments[1].capacity > capacity_before  # it grew
    assert [s.length for s in tight.cache.segments] == [s.length for s in roomy.cache.segments]


def _next_batch(tokenizer, processor, model):
    images = [random_image(3, (640, 480)), random_image(4, (336, 1008))]
    questions = ["What is the color of the largest object?", "How many shapes are there? Answer with a number."]
    ids = [prompt_ids(tokenizer, q) for q in questions]
    return ids, process_images(images, processor, model.config), [im.size for im in images]


def test_compiled_decode_gives_the_eager_tokens_on_a_pruned_padded_batch(loaded_next):
    """torch.compile (fullgraph: any host sync or data-dependent shape in the step would fail it) on a batch of two
    NeXT images of different sizes and prompts of different lengths, pruned by FastV to counts that differ per
    sample, gives token for token what eager decoding gives, and what each sample gives alone."""
    tokenizer, model, processor, _ = loaded_next
    ids, px, sizes = _next_batch(tokenizer, processor, model)
    model.set_pruning(FastV(k=2, retained_tokens=320))
    try:
        eager = model.generate(ids, images=px, image_sizes=sizes, max_new_tokens=8, eos_token_id=-1)
        kept = [account.visual_after_layer[-1] for account in model.last_accounts]
        assert kept[0] != kept[1]
        alone = [
            model.generate(
                ids[i][None], images=px[i : i + 1], image_sizes=sizes[i : i + 1], max_new_tokens=8, eos_token_id=-1
            )[0]
            for i in range(2)
        ]
        model.compile_decode()
        compiled = model.generate(ids, images=px, image_sizes=sizes, max_new_tokens=8, eos_token_id=-1)
    finally:
        model.compile_decode(None)
        model.set_pruning(None)
    assert compiled.tolist() == eager.tolist()
    assert [row.tolist() for row in eager] == [a.tolist() for a in alone]


def test_compile_refuses_what_it_cannot_capture(loaded):
    _, model, _, _ = loaded
    model.set_attn_implementation("flash_attention_2")
    try:
        with pytest.raises(ValueError, match="sdpa or eager"):
            model.compile_decode()
    finally:
        model.set_attn_implementation("sdpa")
    model.model.layer_devices = (torch.device("cpu", 0), torch.device("cpu", 1))
    try:
        with pytest.raises(ValueError, match="one device"):
            model.compile_decode()
    finally:
        model.model.layer_devices = None
    assert model._compiled_step is None


def test_compile_flag_of_every_entry_point(tiny_llava):
    import argparse

    from llava.model_args import add_model_args, load_from_args

    parser = argparse.ArgumentParser()
    add_model_args(parser)
    _, model, _, _ = load_from_args(
        parser.parse_args(["--model-path", str(tiny_llava), "--device", "cpu", "--compile"])
    )
    assert model._compiled_step is not None
    _, model, _, _ = load_from_args(parser.parse_args(["--model-path", str(tiny_llava), "--device", "cpu"]))
    assert model._compiled_step is None
