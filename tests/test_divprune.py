"""DivPrune: the spec's hand-checked greedy order, the blocked computation against a literal full-matrix version of
the reference's loop, the budget on every family, and on LLaVA-1.5, LLaVA-NeXT (one global selection, newline
tokens included), Qwen2.5-VL images and clips (kept 3-D ids) and Video-LLaVA clips: the kept tokens are the greedy
picks of the unpruned block, keeping everything equals the unpruned model, and a batch equals one by one."""

import argparse
import math

import pytest
import torch

from llava.mm_utils import process_images
from llava.model.anyres import merge_layout, single_view_layout
from llava.model.builder import load_pretrained_model
from llava.model.language_model.qwen_vl import video_layout
from llava.sparse.divprune import DivPrune, divprune_flops, divprune_order

from .helpers import prompt_ids, random_image


def unit_vectors(degrees) -> torch.Tensor:
    angles = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([angles.cos(), angles.sin()], dim=1)


def reference_order(x: torch.Tensor, count: int) -> list[int]:
    """The reference's loop, literally: the full distance matrix, rows of the picked set, min over them."""
    normed = x / x.norm(dim=1, keepdim=True)
    distance = 1.0 - normed @ normed.T
    picks = []
    for i in range(count):
        if i == 0:
            scores = torch.topk(distance, 2, dim=0, largest=False).values[1, :]
        else:
            scores = torch.min(distance[torch.tensor(picks)], dim=0).values
        picks.append(int(torch.argmax(scores)))
    return picks


# -- the algorithm -------------------------------------------------------------------------------------------------


def test_spec_example_order():
    """Unit vectors at 0, 10, 90, 180, 105 degrees: nearest-neighbour distances 0.0152, 0.0152, 0.0341, 0.7412,
    0.0341, so 3 first; then 0, 2, 4, 1. Keeping 3 gives {0, 2, 3}."""
    x = unit_vectors([0, 10, 90, 180, 105])
    normed = x / x.norm(dim=1, keepdim=True)
    nearest = torch.topk(1 - normed @ normed.T, 2, dim=0, largest=False).values[1]
    torch.testing.assert_close(
        nearest, torch.tensor([0.0152, 0.0152, 0.0341, 0.7412, 0.0341], dtype=x.dtype), atol=1e-4, rtol=0
    )
    assert divprune_order(x, 5).tolist() == [3, 0, 2, 4, 1]
    assert sorted(divprune_order(x, 3).tolist()) == [0, 2, 3]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blocked_greedy_equals_the_full_matrix_loop(dtype):
    x = torch.randn(90, 16, generator=torch.Generator().manual_seed(0), dtype=dtype)
    expected = reference_order(x, 30)
    assert divprune_order(x, 30).tolist() == expected
    assert divprune_order(x, 30, block_entries=7 * 90).tolist() == expected  # 13 column blocks
    assert divprune_order(x, 30, block_entries=1).tolist() == expected  # one column at a time


def test_no_token_is_picked_twice():
    """Five directions, each twice: the five first picks cover every direction, and no index repeats."""
    x = unit_vectors([0, 70, 140, 210, 280] * 2)
    order = divprune_order(x, 10).tolist()
    assert sorted(order) == list(range(10))
    assert sorted(i % 5 for i in order[:5]) == [0, 1, 2, 3, 4]


def test_budget_is_t_over_nominal_of_each_block():
    llava = DivPrune(64)
    llava.bind(576)
    assert llava.keep_count(single_view_layout(24)) == 64
    assert DivPrune().keep_count(single_view_layout(24)) == 56  # the reference script's SUBSET_RATIO 0.098
    next_ = DivPrune(640)
    next_.bind(2880)
    block = merge_layout(5, 24, "spatial_unpad", (2, 2), (640, 480))  # 576 + 2 x 2 crops unpadded, with newlines
    assert len(block) == 576 + 36 * 49 and next_.keep_count(block) == round(640 / 2880 * len(block))
    qwen = DivPrune(5)  # Qwen-VL: no nominal count, T per image and per frame pair
    assert qwen.keep_count(video_layout(3, 4, 6)) == 15
    assert DivPrune(None, ratio=0.25).keep_count(video_layout(3, 4, 6)) == 18


def test_flags_build_the_method():
    from llava.sparse.methods import add_pruning_args, pruning_from_args

    parser = argparse.ArgumentParser()
    add_pruning_args(parser)
    default = pruning_from_args(parser.parse_args(["--method", "divprune"]), env={})
    assert isinstance(default, DivPrune) and default.budget.ratio == 0.098 and not default.fp32
    tokens = pruning_from_args(parser.parse_args(["--method", "divprune", "--retained-tokens", "64"]), env={})
    assert tokens.budget.tokens == 64 and tokens.budget.ratio is None
    ratio = pruning_from_args(
        parser.parse_args(["--method", "divprune", "--retained-ratio", "0.5", "--divprune-fp32"]), env={}
    )
    assert ratio.budget.ratio == 0.5 and ratio.fp32


# -- families ------------------------------------------------------------------------------------------------------


def _prefill(model, method, ids, **kwargs):
    model.set_pruning(method)
    try:
        return model.prefill(ids, use_cache=False, **kwargs)
    finally:
        model.set_pruning(None)


def _assert_greedy_picks_of_the_unpruned_block(model, method, ids, **kwargs):
    """Per sample: the kept block is the sorted greedy picks of the unpruned block, and the accounting counts it."""
    full = model.prepare_inputs(ids, **kwargs)
    out = _prefill(model, method, ids, **kwargs)
    pruned = out.inputs
    for b, (whole, kept) in enumerate(zip(full.images, pruned.images, strict=True)):
        count = method.keep_count(whole.tokens)
        assert 0 < count < len(whole.tokens) and len(kept.tokens) == count
        expected = divprune_order(whole.features, count).sort().values
        assert torch.equal(kept.features, whole.features[expected])
        assert torch.equal(kept.tokens.view, whole.tokens.view[expected])
        assert torch.equal(kept.tokens.patch, whole.tokens.patch[expected])
        flops = divprune_flops(len(whole.tokens), count, whole.features.shape[-1])
        assert out.accounts[b].method_flops == flops and out.accounts[b].num_visual == count
    return full, pruned


def _assert_batch_equals_one_by_one(model, method, ids, split):
    """`split(i)` gives the keyword arguments of sample i alone; the batch's are split(None)."""
    model.set_pruning(method)
    try:
        together = model.prefill(ids, use_cache=False, **split(None))
        logits = model.lm_head(together.hidden_states[:, -1]).float()
        for i in range(len(ids)):
            alone = model.prefill([ids[i]], use_cache=False, **split(i))
            torch.testing.assert_close(
                logits[i], model.lm_head(alone.hidden_states[:, -1]).float()[0], atol=1e-4, rtol=0
            )
            assert together.accounts[i].num_visual == alone.accounts[0].num_visual
    finally:
        model.set_pruning(None)
    return together.accounts


def _assert_keep_everything_is_unpruned(model, method, ids, **kwargs):
    unpruned = model(ids, **kwargs)
    model.set_pruning(method)
    try:
        torch.testing.assert_close(model(ids, **kwargs), unpruned, atol=1e-5, rtol=0)
    finally:
        model.set_pruning(None)


def test_llava_15(loaded):
    tokenizer, model, processor, _ = loaded
    images = [random_image(1), random_image(2, (200, 300))]
    px = process_images(images, processor, model.config)
    ids = [prompt_ids(tokenizer, "What is in the image?"), prompt_ids(tokenizer, "Which colour is the square?")]
    _assert_greedy_picks_of_the_unpruned_block(model, DivPrune(64), ids, images=px)
    _assert_keep_everything_is_unpruned(model, DivPrune(576), ids, images=px)
    _assert_batch_equals_one_by_one(model, DivPrune(64), ids, lambda i: {"images": px if i is None else px[i : i + 1]})


def test_llava_next_one_global_selection_with_newlines(loaded_next):
    tokenizer, model, processor, _ = loaded_next
    images = [random_image(3, (640, 480)), random_image(4, (300, 200))]
    px = process_images(images, processor, model.config)
    sizes = [im.size for im in images]
    ids = [prompt_ids(tokenizer, q) for q in ("What is it?", "Is there a red circle?")]
    method = DivPrune(320)
    full, pruned = _assert_greedy_picks_of_the_unpruned_block(model, method, ids, images=px, image_sizes=sizes)
    first, kept = full.images[0].tokens, pruned.images[0].tokens
    assert first.num_newlines > 0 and len(kept) == round(320 / 2880 * len(first))  # newline tokens count in N
    assert 0 < kept.num_newlines < first.num_newlines  # ... and compete with the patches
    _assert_keep_everything_is_unpruned(model, DivPrune(2880), ids[:1], images=px[:1], image_sizes=sizes[:1])
    accounts = _assert_batch_equals_one_by_one(
        model,
        method,
        ids,
        lambda i: (
            {"images": px, "image_sizes": sizes}
            if i is None
            else {"images": px[i : i + 1], "image_sizes": sizes[i : i + 1]}
        ),
    )
    assert len({a.num_visual for a in accounts}) == 2  # two different counts in one batch


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    from llava.testing.qwen_checkpoints import write_tiny_qwen_vl

    folder = write_tiny_qwen_vl(tmp_path_factory.mktemp("divprune_qwen") / "qwen2_5_vl", seed=3)
    return load_pretrained_model(
        str(folder), device="cpu", pruning=None, min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 256
    )[:3]


def _prompt(tokenizer, conv_mode, question, media="<image>\n"):
    from llava.conversation import get_conv_template
    from llava.mm_utils import tokenizer_image_token

    conv = get_conv_template(conv_mode)
    conv.append_message(conv.roles[0], media + question)
    conv.append_message(conv.roles[1], None)
    return tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")


def _sample_positions(inputs, b: int):
    """Sample b's unpadded position ids, and where its visual block starts in them and how long it is."""
    offset = inputs.position_ids.shape[1] - inputs.lengths[b]
    start, count = inputs.image_spans[b][0]
    return inputs.position_ids[b, offset:], start - offset, count


def _assert_kept_tokens_keep_their_ids(full, pruned):
    for b in range(len(pruned.lengths)):
        positions, start, count = _sample_positions(pruned, b)
        full_positions, full_start, full_count = _sample_positions(full, b)
        source = pruned.images[b].tokens.source()
        assert torch.equal(positions[:start], full_positions[:full_start])
        assert torch.equal(positions[start : start + count], full_positions[full_start + source])
        assert torch.equal(positions[start + count :], full_positions[full_start + full_count :])


def test_qwen_images(qwen):
    tokenizer, model, processor = qwen
    images = [random_image(6, (560, 448)), random_image(7, (336, 672))]
    px = process_images(images, processor, model.config)
    sizes = [im.size for im in images]
    ids = [_prompt(tokenizer, model.config.conv_mode, q) for q in ("What is it?", "Where is the circle?")]
    method = DivPrune(40)
    full, pruned = _assert_greedy_picks_of_the_unpruned_block(model, method, ids, images=px, image_sizes=sizes)
    _assert_kept_tokens_keep_their_ids(full, pruned)
    _assert_keep_everything_is_unpruned(model, DivPrune(10_000), ids, images=px, image_sizes=sizes)
    accounts = _assert_batch_equals_one_by_one(
        model,
        method,
        ids,
        lambda i: (
            {"images": px, "image_sizes": sizes}
            if i is None
            else {"images": px[i : i + 1], "image_sizes": sizes[i : i + 1]}
        ),
    )
    assert [a.num_visual for a in accounts] == [40, 40] and len({a.num_encoded for a in accounts}) == 2


def test_qwen_clips_one_selection_per_clip(qwen):
    from llava.testing.videos import synthetic_frames

    tokenizer, model, processor = qwen
    small = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 12}
    videos = [
        model.load_video(synthetic_frames(6, 84, 56), processor, fps=1.0, **small),
        model.load_video(synthetic_frames(4, 56, 112), processor, fps=1.0, **small),
    ]
    ids = [
        _prompt(tokenizer, model.config.conv_mode, q, "<video>\n")
        for q in ("What happens?", "Which colours are there?")
    ]
    method = DivPrune(4)  # per frame pair: 3 x 4 of 3 x 6 and 2 x 4 of 2 x 8 tokens, chosen over the whole clip
    full, pruned = _assert_greedy_picks_of_the_unpruned_block(model, method, ids, videos=videos)
    assert [len(v.tokens) for v in pruned.images] == [12, 8]
    # the greedy picks above are over the whole clip; these inputs tell that apart from a per-frame selection
    # (budget 3 came to keep 3 of every frame pair after a dependency update, so it no longer could)
    assert any(count != 4 for v in pruned.images for count in v.tokens.per_view_counts())
    _assert_kept_tokens_keep_their_ids(full, pruned)
    _assert_keep_everything_is_unpruned(model, DivPrune(10_000), ids, videos=videos)
    _assert_batch_equals_one_by_one(
        model, method, ids, lambda i: {"videos": videos if i is None else videos[i : i + 1]}
    )


@pytest.fixture(scope="module")
def video_llava(tmp_path_factory):
    from llava.testing.video_llava import write_tiny_video_llava

    folder = write_tiny_video_llava(tmp_path_factory.mktemp("divprune_video_llava"), seed=1)
    return load_pretrained_model(str(folder), device="cpu", pruning=None)[:3]


def test_video_llava_whole_clip(video_llava):
    import numpy as np

    from llava.testing.videos import synthetic_frames

    tokenizer, model, _ = video_llava
    clips = []
    for seed in (0, 1):
        noise = np.random.default_rng(seed).integers(0, 40, (8, 56, 56, 3))
        clips.append(model.video_processor.preprocess((synthetic_frames(8, 56, 56) * 0.8 + noise).astype(np.uint8)))
    ids = [_prompt(tokenizer, "llava_v1", q, "<video>\n") for q in ("What happens?", "What colour is the square?")]
    method = DivPrune(40)  # of 8 frames x (1 [CLS] + 16 patches) = 136, the nominal count: exactly 40
    _, pruned = _assert_greedy_picks_of_the_unpruned_block(model, method, ids, videos=clips)
    assert all(len(v.tokens) == 40 for v in pruned.images)
    _assert_keep_everything_is_unpruned(model, DivPrune(136), ids, videos=clips)
    _assert_batch_equals_one_by_one(model, method, ids, lambda i: {"videos": clips if i is None else clips[i : i + 1]})
