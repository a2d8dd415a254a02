"""Grid pooling (`--method pool`): the spec's ramp example, the budget -> grid convention, pooling after (and before)
the projector equal to torch's avg_pool2d of the unpruned block, keep-everything (stride 1) = unpruned and batch =
one by one on LLaVA-1.5, LLaVA-NeXT (per view), Video-LLaVA (per frame, [CLS] kept) and Qwen2.5-VL (top-left M-RoPE
ids), the accounting, flags, and the downsampling baseline's resize."""

import argparse

import pytest
import torch
import torch.nn.functional as F

from llava.mm_utils import process_images
from llava.model.anyres import MERGED
from llava.model.builder import load_pretrained_model
from llava.sparse.budget import Budget
from llava.sparse.engine import PruningMethod
from llava.sparse.methods import add_pruning_args, pruning_from_args
from llava.sparse.pooling import GridPooling, pool_2d, pool_grid

from .helpers import prompt_ids, random_image

QUESTIONS = ["What is the colour of the largest object?", "Is there a circle?", "How many shapes?"]


def _run(model, method, ids, **inputs):
    model.set_pruning(method)
    try:
        out = model.prefill(ids, use_cache=False, **inputs)
        return model.lm_head(out.hidden_states[:, -1]).float(), out
    finally:
        model.set_pruning(None)


def _encode(model, method, ids, **inputs):
    model.set_pruning(method)
    try:
        return model.prepare_inputs(ids, **inputs)
    finally:
        model.set_pruning(None)


def _batch_equals_one_by_one(model, method, ids, inputs_for):
    together, out = _run(model, method, ids, **inputs_for(slice(None)))
    for i in range(len(ids)):
        alone, one = _run(model, method, [ids[i]], **inputs_for(slice(i, i + 1)))
        torch.testing.assert_close(together[i], alone[0], atol=1e-4, rtol=0)
        assert out.accounts[i].num_visual == one.accounts[0].num_visual
        assert out.accounts[i].method_flops == one.accounts[0].method_flops > 0
    return out


# -- the spec's example and conventions ------------------------------------------------------------------------------
def test_ramp_stride_two_matches_the_spec_and_avg_pool2d():
    ramp = torch.arange(576.0).view(24, 24)  # x[i, j] = 24 i + j
    pooled, corner = pool_2d(ramp[..., None], stride=2)
    assert pooled.shape == (144, 1) and pooled[0, 0] == 12.5  # mean(0, 1, 24, 25)
    expected = F.avg_pool2d(ramp[None, None], 2).flatten()  # raster order
    assert torch.equal(pooled[:, 0], expected)
    assert corner[:3].tolist() == [0, 2, 4] and corner[12] == 48  # top-left cells
    assert pool_2d(ramp[..., None], stride=3)[0].shape[0] == 64


def test_budget_grid_convention():
    assert pool_grid(24, 24, 144) == (12, 12) and pool_grid(24, 24, 64) == (8, 8)
    assert pool_grid(24, 24, 128) == (16, 8) and pool_grid(24, 24, 192) == (16, 12)  # spec §13
    assert pool_grid(24, 24, 127) == (11, 11)  # no exact factorisation fits: the square scaled to the count
    assert pool_grid(16, 20, 80) == (8, 10)  # non-square (Qwen): the grid's aspect
    assert pool_grid(24, 24, 1000) == (24, 24)
    pooled, corner = pool_2d(torch.arange(576.0).view(24, 24, 1), shape=(16, 8))
    torch.testing.assert_close(
        pooled[:, 0], F.adaptive_avg_pool2d(torch.arange(576.0).view(1, 24, 24), (16, 8)).flatten()
    )
    assert corner[:2].tolist() == [0, 3] and corner[8] == 24  # row 1 starts at floor(24 / 16) = 1


def test_ceil_mode_keeps_partial_edge_windows():
    pooled, corner = pool_2d(torch.arange(9.0).view(3, 3, 1), stride=2, ceil=True)
    assert pooled[:, 0].tolist() == [2.0, 3.5, 6.5, 8.0] and corner.tolist() == [0, 2, 6, 8]


def test_flags_and_budgets():
    parser = argparse.ArgumentParser()
    add_pruning_args(parser)

    def build(*argv):
        return pruning_from_args(parser.parse_args(["--method", "pool", *argv]), env={})

    assert build().stride == 2 and build().stage == "post_proj"
    assert build("--pool-stride", "3", "--pool-stage", "pre_proj").stride == 3
    assert build("--retained-tokens", "128").budget == Budget(128)
    assert build("--retained-ratio", "0.25").budget == Budget(ratio=0.25)
    with pytest.raises(ValueError, match="not both"):
        build("--pool-stride", "2", "--retained-tokens", "64")


# -- LLaVA-1.5 ---------------------------------------------------------------------------------------------------------
def _llava_inputs(loaded, count=2):
    tokenizer, model, processor, _ = loaded
    images = [random_image(5 + i, (200 + 40 * i, 150)) for i in range(count)]
    return [prompt_ids(tokenizer, q) for q in QUESTIONS[:count]], process_images(images, processor, model.config)


def test_post_projector_pooling_equals_avg_pool2d_of_the_unpruned_block(loaded):
    _, model, _, _ = loaded
    ids, px = _llava_inputs(loaded, 1)
    full = _encode(model, None, ids, images=px).images[0]
    pooled = _encode(model, GridPooling(2), ids, images=px).images[0]
    grid = full.features.T.reshape(1, -1, 24, 24)
    torch.testing.assert_close(pooled.features, F.avg_pool2d(grid, 2)[0].flatten(1).T, atol=1e-6, rtol=0)
    assert len(pooled.tokens) == 144 and pooled.tokens.num_merged == 144 and pooled.num_encoded == 576
    budget = _encode(model, GridPooling(budget=Budget(128)), ids, images=px).images[0]
    expected = F.adaptive_avg_pool2d(grid, (16, 8))[0].flatten(1).T
    torch.testing.assert_close(budget.features, expected, atol=1e-6, rtol=0)


def test_pre_projector_pooling_pools_the_tower_features(loaded):
    _, model, _, _ = loaded
    ids, px = _llava_inputs(loaded, 1)
    pooled = _encode(model, GridPooling(3, stage="pre_proj"), ids, images=px).images[0]
    features = model.get_vision_tower()(px)[0]
    grid = features.T.reshape(1, -1, 24, 24)
    expected = model.model.mm_projector(F.avg_pool2d(grid, 3)[0].flatten(1).T)
    torch.testing.assert_close(pooled.features, expected, atol=1e-5, rtol=0)
    assert len(pooled.tokens) == 64


def test_llava_keep_everything_and_batch(loaded):
    tokenizer, model, processor, _ = loaded
    ids, px = _llava_inputs(loaded, 2)
    unpruned, _ = _run(model, None, ids, images=px)
    kept, out = _run(model, GridPooling(1), ids, images=px)
    torch.testing.assert_close(kept, unpruned, atol=1e-5, rtol=0)
    assert out.accounts[0].num_visual == 576
    for method in (GridPooling(2), GridPooling(budget=Budget(128)), GridPooling(3, stage="pre_proj")):
        out = _batch_equals_one_by_one(model, method, ids, lambda s: {"images": px[s]})
    assert out.accounts[0].num_visual == 64 and out.accounts[0].method_flops == 576 * 32  # pre_proj: tower width


# -- LLaVA-NeXT --------------------------------------------------------------------------------------------------------
class FlatViews(PruningMethod):
    """No pruning, every view whole one after another, no newline tokens (what pooling at stride 1 sees)."""

    def select_tokens(self, tokens, features, signals):
        return GridPooling(1).select_tokens(tokens, features, signals)


def _next_inputs(loaded, sizes=((640, 480), (1008, 336), (300, 200))):
    tokenizer, model, processor, _ = loaded
    images = [random_image(10 + i, size) for i, size in enumerate(sizes)]
    ids = [prompt_ids(tokenizer, q) for q in QUESTIONS[: len(sizes)]]
    px = process_images(images, processor, model.config)
    return ids, px, [image.size for image in images]


def test_next_pools_every_view_on_its_own(loaded_next):
    _, model, _, _ = loaded_next
    ids, px, sizes = _next_inputs(loaded_next, sizes=((640, 480),))
    flat = _encode(model, FlatViews(), ids, images=px, image_sizes=sizes).images[0]
    pooled = _encode(model, GridPooling(2), ids, images=px, image_sizes=sizes).images[0]
    views = flat.tokens.num_views
    assert flat.tokens.num_newlines == 0 and len(flat.tokens) == views * 576
    grid = flat.features.view(views, 24, 24, -1).permute(0, 3, 1, 2)
    expected = F.avg_pool2d(grid, 2).flatten(2).transpose(1, 2).reshape(-1, grid.shape[1])
    torch.testing.assert_close(pooled.features, expected, atol=1e-6, rtol=0)
    assert len(pooled.tokens) == views * 144 and pooled.tokens.num_newlines == 0
    # a budget is the image's total against the nominal 2,880 tokens (five views), shared by the views
    budget = _encode(model, GridPooling(budget=Budget(720)), ids, images=px, image_sizes=sizes).images[0]
    assert len(budget.tokens) == views * 144


def test_next_keep_everything_and_batch(loaded_next):
    _, model, _, _ = loaded_next
    ids, px, sizes = _next_inputs(loaded_next, sizes=((640, 480), (1008, 336)))

    def inputs(s):
        return {"images": px[s], "image_sizes": sizes[s]}

    flat, _ = _run(model, FlatViews(), ids, **inputs(slice(None)))
    kept, _ = _run(model, GridPooling(1), ids, **inputs(slice(None)))
    torch.testing.assert_close(kept, flat, atol=1e-5, rtol=0)
    for method in (GridPooling(2), GridPooling(budget=Budget(320))):
        out = _batch_equals_one_by_one(model, method, ids, inputs)
    assert len({a.num_visual for a in out.accounts}) > 1  # images of different view counts keep different counts


# -- Video-LLaVA -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def video(tmp_path_factory):
    from llava.testing.video_llava import write_tiny_video_llava
    from llava.testing.videos import synthetic_frames, write_video

    root = tmp_path_factory.mktemp("pool_video")
    tokenizer, model, processor, _ = load_pretrained_model(str(write_tiny_video_llava(root, seed=1)), device="cpu")
    model.set_pruning(None)
    paths = [
        write_video(root / "a.mp4", synthetic_frames(37, 96, 64)),
        write_video(root / "b.mp4", synthetic_frames(12, 64, 80)),
    ]
    return tokenizer, model, [model.load_video(path, processor) for path in paths]


def _video_ids(tokenizer, question):
    from llava.conversation import get_conv_template
    from llava.mm_utils import tokenizer_image_token

    conv = get_conv_template("llava_v1")
    conv.append_message(conv.roles[0], f"<video>\n{question}")
    conv.append_message(conv.roles[1], None)
    return tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")


def test_video_pools_each_frame_and_keeps_its_cls(video):
    tokenizer, model, clips = video
    ids = [_video_ids(tokenizer, q) for q in QUESTIONS[:2]]
    unpruned, _ = _run(model, None, ids, videos=clips)
    kept, _ = _run(model, GridPooling(1), ids, videos=clips)
    torch.testing.assert_close(kept, unpruned, atol=1e-5, rtol=0)
    full = _encode(model, None, ids[:1], videos=clips[:1]).images[0]
    pooled = _encode(model, GridPooling(2), ids[:1], videos=clips[:1]).images[0]
    frames = full.features.view(8, 17, -1)
    grid = frames[:, 1:].reshape(8, 4, 4, -1).permute(0, 3, 1, 2)
    expected = torch.cat([frames[:, :1], F.avg_pool2d(grid, 2).flatten(2).transpose(1, 2)], dim=1).reshape(
        -1, grid.shape[1]
    )
    torch.testing.assert_close(pooled.features, expected, atol=1e-6, rtol=0)
    assert pooled.tokens.patch.view(8, 5)[:, 0].tolist() == [-1] * 8  # each frame: its [CLS], then 2 x 2 pooled
    assert pooled.tokens.view.view(8, 5)[:, 0].tolist() == list(range(8))
    assert (pooled.tokens.view.view(8, 5)[:, 1:] == MERGED).all()
    # a budget counts the clip's tokens, [CLS] included: 40 of 136 -> 5 per frame -> [CLS] + 2 x 2
    assert len(_encode(model, GridPooling(budget=Budget(40)), ids[:1], videos=clips[:1]).images[0].tokens) == 40
    _batch_equals_one_by_one(model, GridPooling(2), ids, lambda s: {"videos": clips[s]})


# -- Qwen2.5-VL --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    from llava.testing.qwen_checkpoints import write_tiny_qwen_vl

    folder = write_tiny_qwen_vl(tmp_path_factory.mktemp("pool_qwen") / "qwen2_5_vl", seed=3)
    tokenizer, model, processor, _ = load_pretrained_model(
        str(folder), device="cpu", pruning=None, min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 1024
    )
    sizes = [(140, 112), (84, 168), (140, 77)]  # drawn at 4x: 16 x 20, 24 x 12 and 11 x 20 tokens (rows x cols)
    images = [random_image(10 + i, s).resize((s[0] * 4, s[1] * 4)) for i, s in enumerate(sizes)]
    from llava.conversation import get_conv_template
    from llava.mm_utils import tokenizer_image_token

    ids = []
    for question in QUESTIONS:
        conv = get_conv_template(model.config.conv_mode)
        conv.append_message(conv.roles[0], "<image>\n" + question)
        conv.append_message(conv.roles[1], None)
        ids.append(tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt"))
    px = process_images(images, processor, model.config)
    return model, ids, px, [image.size for image in images]


def test_qwen_pools_the_merged_grid_with_top_left_positions(qwen):
    model, ids, px, sizes = qwen
    with pytest.raises(ValueError, match="post_proj"):
        model.set_pruning(GridPooling(2, stage="pre_proj"))
    one = {"images": px[2:], "image_sizes": sizes[2:]}
    full = _encode(model, None, ids[2:], **one)
    pooled = _encode(model, GridPooling(2), ids[2:], **one)
    rows, cols = full.images[0].tokens.grid_hw
    grid = full.images[0].features.T.reshape(1, -1, rows, cols)
    expected = F.avg_pool2d(grid, 2, ceil_mode=True)[0].flatten(1).T
    torch.testing.assert_close(pooled.images[0].features, expected, atol=1e-6, rtol=0)
    tokens = pooled.images[0].tokens
    r, c = torch.arange(0, rows, 2), torch.arange(0, cols, 2)
    assert (
        tokens.row.tolist() == r.repeat_interleave(len(c)).tolist() and tokens.col.tolist() == c.repeat(len(r)).tolist()
    )
    # each pooled token carries the M-RoPE ids its top-left cell has in the unpruned sequence
    (start, count), (full_start, _) = pooled.image_spans[0][0], full.image_spans[0][0]
    corner = (tokens.row * cols + tokens.col).to(full.position_ids.device)
    torch.testing.assert_close(pooled.position_ids[0, start : start + count], full.position_ids[0, full_start + corner])
    assert rows % 2 == 1 and torch.equal(pooled.position_ids[0, -1], full.position_ids[0, -1])  # text after: same ids


def test_qwen_keep_everything_and_batch(qwen):
    model, ids, px, sizes = qwen

    def inputs(s):
        return {"images": px[s], "image_sizes": sizes[s]}

    unpruned, _ = _run(model, None, ids, **inputs(slice(None)))
    kept, _ = _run(model, GridPooling(1), ids, **inputs(slice(None)))
    torch.testing.assert_close(kept, unpruned, atol=1e-5, rtol=0)
    ids, px, sizes = ids[1:], px[1:], sizes[1:]  # 24 x 12 and 11 x 20 tokens
    for method in (GridPooling(2), GridPooling(budget=Budget(ratio=0.25))):
        out = _batch_equals_one_by_one(model, method, ids, inputs)
        assert len({a.num_visual for a in out.accounts}) == 2
