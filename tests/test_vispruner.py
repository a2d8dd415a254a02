"""VisPruner: the spec's 2-D unit-vector example, r = 1 equals FasterVLM's top-T, the kept patches equal an
independent port of the official selection on transformers' eager CLIP (even-R bump, small diverse budgets), per
view on LLaVA-NeXT in FasterVLM's layout, per frame on Video-LLaVA, keep-everything = unpruned and batch = one by one
on the three families, flags and the refusal of towers without [CLS]."""

import argparse
import math
import types

import pytest
import torch

from llava.mm_utils import process_images
from llava.model.anyres import grid_shape
from llava.model.builder import load_pretrained_model
from llava.sparse.engine import PruningMethod
from llava.sparse.methods import add_pruning_args, pruning_from_args
from llava.sparse.pre_llm import FasterVLM
from llava.sparse.vispruner import VisPruner, diverse_tokens, vispruner_indices
from llava.testing.video_llava import write_tiny_video_llava

from .helpers import pixels, prompt_ids, random_image
from .test_visionzip import NEXT_SIZES, QUESTIONS, _eager, _eager_signals, _prefill, _video_prompt


def _unit(degrees: list[float]) -> torch.Tensor:
    return torch.tensor([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in degrees])


def test_the_specs_unit_vector_example():
    """Residual [u0..u5] at 0, 60, 120, 120, 200, 300 degrees, T_div = 5 so r' = 1: a = (u0, u2, u4) score 0.5,
    1.0, 0.17 against b = (u1, u3, u5); u2 goes, the survivors keep their descending-score order, then all b."""
    vectors = _unit([0, 60, 120, 120, 200, 300])[None]
    kept, _ = diverse_tokens(vectors, torch.arange(6)[None], 5)
    assert kept.tolist() == [[0, 4, 1, 3, 5]]
    kept, _ = diverse_tokens(vectors, torch.arange(6)[None], 3)  # r' = min(8, 3, |a| = 3): every a-token goes
    assert kept.tolist() == [[1, 3, 5]]


def official_vispruner(features, cls_rows, count, ratio):
    """The official `encode_images` selection (VisPruner llava_arch.py, d7da3a3) with LightCompress's even-R bump:
    features [B, N, C], [CLS] rows [B, heads, N] -> the bool mask of kept patches. Its argsorts are made stable:
    the tiny towers give exact score ties, which the official code leaves to the sort implementation."""
    batch, n, _ = features.shape
    important = int(count * ratio)
    if (n - important) % 2:
        important += 1
    diverse = count - important
    order = cls_rows.mean(dim=1).argsort(dim=-1, descending=True, stable=True)
    residual = order[:, important:]
    normed = features / features.norm(dim=-1, keepdim=True)
    rows = torch.arange(batch).unsqueeze(-1)
    while diverse > 0:
        size = residual.shape[1]
        r = min(8, size - diverse)
        if r <= 0:
            break
        tokens = normed[rows.expand(-1, size), residual]
        scores = (tokens[:, ::2] @ tokens[:, 1::2].transpose(-1, -2)).max(dim=-1).values
        distinct = scores.argsort(dim=-1, descending=True, stable=True)[:, r:]
        residual = torch.cat([residual[:, ::2][rows.expand(-1, size // 2 - r), distinct], residual[:, 1::2]], dim=-1)
    selected = torch.cat([order[:, :important], residual], dim=-1) if diverse > 0 else order[:, :important]
    return torch.zeros(batch, n, dtype=torch.bool).scatter_(1, selected, True)


def _encode(model, method, px, **kwargs):
    model.set_pruning(method)
    try:
        return model.encode_images(px, **kwargs)
    finally:
        model.set_pruning(None)


@pytest.mark.parametrize("count, ratio", [(450, 0.5), (300, 0.75), (500, 0.0)], ids=str)
def test_kept_patches_equal_the_official_selection_on_eager_clip(loaded, count, ratio):
    """450 x 0.5 and 300 x 0.75: T_imp = 225 leaves an odd residual, bumped to 226 (LightCompress); the block stays
    T tokens. (Large T: few diverse steps, a fast test.)"""
    _, model, processor, _ = loaded
    px = pixels(processor, model, random_image(count))
    tower = model.get_vision_tower()
    hidden, attentions, _ = _eager_signals(_eager(tower), px, tower.num_layers_used - 1)
    features, cls_rows = tower.forward_with_cls_attention(px)
    torch.testing.assert_close(cls_rows, attentions[:, :, 0, 1:].mean(dim=1), atol=1e-5, rtol=0)
    torch.testing.assert_close(features, hidden[:, 1:], atol=1e-5, rtol=0)
    mask = official_vispruner(features, cls_rows[:, None], count, ratio)
    for b, image in enumerate(_encode(model, VisPruner(count, important_ratio=ratio), px)):
        expected = torch.nonzero(mask[b]).flatten()
        assert image.tokens.patch.tolist() == expected.tolist()  # raster order
        with torch.no_grad():
            projected = model.model.mm_projector(features[b, expected])
        torch.testing.assert_close(image.features, projected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("count", [10, 6])
def test_small_diverse_budgets_keep_exactly_t(count):
    """T = 10, r = 0.5 (T_imp 5 -> 6, T_div 4): at R = 10 the official step asks for r' = 6 of 5 a-tokens and drops
    them all; capping r' at the a-tokens is the same. T = 6 (T_imp 3 -> 4, T_div 2): at R = 12 (r' = 8) the official
    code fails; capped, the view still keeps exactly T distinct patches, the top T_imp by attention first."""
    torch.manual_seed(0)
    features, attention = torch.randn(2, 576, 16), torch.rand(2, 576)
    kept, _ = vispruner_indices(features, attention, count, 0.5)
    assert kept.shape == (2, count) and all(len(set(row.tolist())) == count for row in kept)
    important = count // 2 + 1
    assert (kept[:, :important] == attention.argsort(dim=1, descending=True)[:, :important]).all()
    if count == 10:
        mask = official_vispruner(features, attention[:, None], count, 0.5)
        assert [sorted(row.tolist()) for row in kept] == [torch.nonzero(m).flatten().tolist() for m in mask]
    else:
        with pytest.raises(RuntimeError):
            official_vispruner(features, attention[:, None], count, 0.5)


def test_ratio_one_equals_fastervlm_top_t(loaded):
    _, model, processor, _ = loaded
    px = pixels(processor, model, random_image(3), random_image(4))
    ours = _encode(model, VisPruner(77, important_ratio=1.0), px)
    theirs = _encode(model, FasterVLM(77), px)
    for a, b in zip(ours, theirs, strict=True):
        assert a.tokens.patch.tolist() == b.tokens.patch.tolist()
        torch.testing.assert_close(a.features, b.features, atol=0, rtol=0)


def test_next_per_view_in_fastervlm_layout(loaded_next):
    """Every view keeps T of its patches; base view first, then the crop grid as one raster, no unpad, no
    newline; LLaVA's grid rule (640 x 480 -> 2 x 2 crops)."""
    tokenizer, model, processor, _ = loaded_next
    image, count = random_image(5, (640, 480)), 40
    model.set_pruning(VisPruner(None, count / 576))
    try:
        px = process_images([image], processor, model.config)
        encoded = model.encode_images(px, image_sizes=[image.size])[0]
    finally:
        model.set_pruning(None)
    tower = model.get_vision_tower()
    features, cls_rows = tower.forward_with_cls_attention(px[0])
    mask = official_vispruner(features, cls_rows[:, None], count, 0.5)
    cols, rows = grid_shape(image.size, model.config.image_grid_pinpoints, 336, "llava")
    side = tower.num_patches_per_side
    expected = [(0, int(p)) for p in torch.nonzero(mask[0]).flatten()]
    for r in range(rows * side):
        for c in range(cols * side):
            view, patch = 1 + (r // side) * cols + c // side, (r % side) * side + c % side
            if mask[view, patch]:
                expected.append((view, patch))
    assert list(zip(encoded.tokens.view.tolist(), encoded.tokens.patch.tolist(), strict=True)) == expected
    assert encoded.tokens.per_view_counts() == [count] * 5 and encoded.tokens.num_newlines == 0


def test_next_keep_everything_and_three_sizes_equal_one_by_one(loaded_next):
    tokenizer, model, processor, _ = loaded_next
    images = [random_image(10 + i, size) for i, size in enumerate(NEXT_SIZES)]
    ids = [prompt_ids(tokenizer, q) for q in QUESTIONS]

    def run(method, idx):
        model.set_pruning(method)  # before process_images: the method's grid rule
        px = process_images([images[i] for i in idx], processor, model.config)
        model.set_pruning(None)
        return _prefill(model, method, [ids[i] for i in idx], images=px, image_sizes=[images[i].size for i in idx])

    reference_layout = PruningMethod()
    reference_layout.grid_rule, reference_layout.merge_type = "llava", "spatial"
    unpruned, _ = run(reference_layout, [0])
    kept, _ = run(VisPruner(2880), [0])
    torch.testing.assert_close(kept, unpruned, atol=1e-5, rtol=0)
    batched, accounts = run(VisPruner(640), [0, 1, 2])
    for i in range(3):
        alone, account = run(VisPruner(640), [i])
        torch.testing.assert_close(batched[i], alone[0], atol=1e-4, rtol=0)
        assert accounts[i].method_flops == account[0].method_flops > 0
    assert [a.views_into_llm for a in accounts] == [[128] * 5, [128] * 4, [128] * 3]


def test_llava_keep_everything_and_batch_equal_one_by_one(loaded):
    tokenizer, model, processor, _ = loaded
    ids = [prompt_ids(tokenizer, q) for q in QUESTIONS]
    px = pixels(processor, model, *[random_image(20 + i) for i in range(3)])
    unpruned, _ = _prefill(model, None, ids[2][None], images=px[2:3])
    kept, _ = _prefill(model, VisPruner(576), ids[2][None], images=px[2:3])
    torch.testing.assert_close(kept, unpruned, atol=1e-5, rtol=0)
    batched, accounts = _prefill(model, VisPruner(128), ids, images=px)
    for i in range(3):
        alone, account = _prefill(model, VisPruner(128), ids[i][None], images=px[i : i + 1])
        torch.testing.assert_close(batched[i], alone[0], atol=1e-4, rtol=0)
        assert accounts[i].num_visual == 128 and accounts[i].method_flops == account[0].method_flops > 0


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    folder = write_tiny_video_llava(tmp_path_factory.mktemp("vispruner_video"), seed=1)
    tokenizer, model, _ = load_pretrained_model(str(folder), device="cpu", pruning=None)[:3]
    torch.manual_seed(5)
    return tokenizer, model, [torch.randn(3, 8, 56, 56), torch.randn(3, 8, 56, 56)]


def test_video_per_frame_keep_everything_and_batch_equal_one_by_one(video):
    """Per frame: T of its 16 patches, [CLS] dropped (a 64-token budget of the 136-token clip is 8 per frame),
    the important half by that frame's [CLS] row."""
    tokenizer, model, clips = video
    ids = [_video_prompt(tokenizer, q) for q in QUESTIONS[:2]]
    unpruned, _ = _prefill(model, None, ids[1][None], videos=[clips[1]])
    kept, _ = _prefill(model, VisPruner(136), ids[1][None], videos=[clips[1]])
    torch.testing.assert_close(kept, unpruned, atol=1e-5, rtol=0)
    batched, accounts = _prefill(model, VisPruner(64), ids, videos=clips)
    for i in range(2):
        alone, account = _prefill(model, VisPruner(64), ids[i][None], videos=[clips[i]])
        torch.testing.assert_close(batched[i], alone[0], atol=1e-4, rtol=0)
    assert accounts[0].views_into_llm == [8] * 8
    model.set_pruning(VisPruner(64))
    try:
        tokens = model.prepare_inputs(ids[0][None], videos=[clips[0]]).images[0].tokens
    finally:
        model.set_pruning(None)
    _, cls_rows = model.model.video_tower.forward_with_cls_attention(clips[0][None])
    for frame in range(8):
        kept_patches = tokens.patch[tokens.view == frame]
        assert kept_patches.tolist() == sorted(kept_patches.tolist()) and (kept_patches >= 0).all()
        assert set(torch.topk(cls_rows[0, frame], 4).indices.tolist()) <= set(kept_patches.tolist())


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_pruning_args(parser)
    return parser.parse_args(list(argv))


def test_flags_and_refusals(loaded):
    method = pruning_from_args(_args("--method", "vispruner", "--retained-tokens", "128"), {})
    assert isinstance(method, VisPruner) and method.describe() == "vispruner k=128 r=0.5"
    method = pruning_from_args(_args("--method", "vispruner", "--vispruner-important-ratio", "0.75"), {})
    assert method.important_ratio == 0.75 and method.budget.tokens == 192
    assert pruning_from_args(_args("--method", "vispruner", "--retained-ratio", "0.1"), {}).budget.ratio == 0.1
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        VisPruner(64, important_ratio=1.5)
    tower = types.SimpleNamespace()  # Qwen-VL's tower: no [CLS] token, no forward_with_cls_attention
    with pytest.raises(ValueError, match=r"no \[CLS\].*sparsevlm, fastv, random, uniform"):
        qwen = types.SimpleNamespace(image_aspect_ratio="qwen")
        VisPruner(64).validate(types.SimpleNamespace(get_vision_tower=lambda: tower, config=qwen))
    _, model, _, _ = loaded
    with pytest.raises(ValueError, match="1..576"):
        model.set_pruning(VisPruner(600))
