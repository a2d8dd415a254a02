"""FastV, FasterVLM, random and uniform pruning, against independent computations."""

import argparse

import pytest
import torch
from transformers import CLIPVisionModel

from llava.sparse.engine import layouts_from_spans
from llava.sparse.fastv import FastV, FastVPlan
from llava.sparse.methods import add_pruning_args, pruning_from_args
from llava.sparse.pre_llm import FasterVLM, RandomPruning, UniformPruning, uniform_grid

from .helpers import pixels, prompt_ids, random_image
from .test_engine import _hf_llama

QUESTIONS = ["What is the color of the circle?", "How many shapes are there in the image? Answer briefly.", "Q"]


@pytest.fixture(scope="module")
def samples(loaded):
    tokenizer, model, image_processor, _ = loaded
    ids = [prompt_ids(tokenizer, q) for q in QUESTIONS]
    return ids, pixels(image_processor, model, *[random_image(20 + i) for i in range(3)])


def _generate(model, method, ids, px, **kwargs):
    model.set_pruning(method)
    try:
        return model.generate(ids, images=px, max_new_tokens=kwargs.pop("max_new_tokens", 6), **kwargs)
    finally:
        model.set_pruning(None)


def test_fastervlm_keeps_the_top_cls_attention_patches_of_an_eager_clip_run(loaded, tiny_clip, samples):
    _, model, _, _ = loaded
    _, px = samples
    k = 100
    eager = CLIPVisionModel.from_pretrained(str(tiny_clip), attn_implementation="eager").eval()
    with torch.no_grad():
        out = eager(pixel_values=px, output_attentions=True, output_hidden_states=True)
    layer = len(out.attentions) - 2  # mm_vision_select_layer -2: the layer that produces hidden_states[-2]
    cls_row = out.attentions[layer][:, :, 0, 1:].mean(dim=1)
    expected = torch.topk(cls_row, k, dim=1).indices.sort(dim=1).values
    features, ours = model.get_vision_tower().forward_with_cls_attention(px)
    torch.testing.assert_close(ours, cls_row, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(features, out.hidden_states[-2][:, 1:])
    kept = FasterVLM(k).select_before_llm(features, ours)
    assert kept.tolist() == expected.tolist()
    # only the kept patches are projected, in raster order
    model.set_pruning(FasterVLM(k))
    try:
        projected = torch.stack([image.features for image in model.encode_images(px)])
    finally:
        model.set_pruning(None)
    full = model.model.mm_projector(features)
    torch.testing.assert_close(projected, full.gather(1, expected[:, :, None].expand(-1, -1, full.shape[-1])))


def test_fastv_keeps_the_top_last_row_of_layer_k_minus_1_of_an_eager_run(loaded, samples):
    _, model, _, _ = loaded
    ids, px = samples
    method = FastV(k=2, retained_tokens=150)
    model.set_pruning(method)
    try:
        prefill = model.prefill(ids[1][None], images=px[1:2], use_cache=False)
    finally:
        model.set_pruning(None)
    inputs = model.prepare_inputs(ids[1][None], px[1:2])
    with torch.no_grad():
        attentions = _hf_llama(model)(inputs_embeds=inputs.inputs_embeds, output_attentions=True).attentions
    start, count = inputs.image_spans[0][0]
    row = attentions[1][0, :, -1, start : start + count].mean(dim=0)  # layer K-1 = 1, last prompt token
    expected = torch.topk(row, 150).indices.sort().values
    assert prefill.accounts[0].kept[1].tolist() == expected.tolist()
    assert prefill.accounts[0].visual_into_layer[:3] == [576, 576, 150]


def test_fastv_decode_steps_match_a_cache_free_forward_over_the_kept_tokens(loaded, samples):
    _, model, _, _ = loaded
    ids, px = samples
    model.set_pruning(FastV(k=2, retained_tokens=100))
    try:
        prefill = model.prefill(ids[0][None], images=px[:1])
    finally:
        model.set_pruning(None)
    kept = prefill.accounts[0].kept[1]
    full = prefill.inputs.lengths[0]
    assert all(
        int(s.next_position[0]) == full for s in prefill.cache.segments
    )  # every layer continues at the full length

    class Replay(FastV):  # the same tokens, whatever the (growing) prompt's last token prefers
        def plan(self, layouts, m, inputs):
            plan = FastVPlan(self, layouts, m, inputs)
            plan.top_tokens = lambda b, scores, count: kept
            return plan

    model.set_pruning(Replay(k=2, retained_tokens=100))
    try:
        logits = model.lm_head(prefill.hidden_states[:, -1]).float()
        sequence = ids[0]
        for _ in range(4):
            token = int(logits.argmax(-1))
            sequence = torch.cat([sequence, torch.tensor([token])])
            logits = model.decode_step(torch.tensor([token]), prefill.cache)
            torch.testing.assert_close(logits, model(sequence[None], images=px[:1])[:, -1], atol=1e-4, rtol=0)
    finally:
        model.set_pruning(None)


ALL_KEPT = [FastV(k=2, retained_tokens=576), FasterVLM(576), RandomPruning(576), UniformPruning(576)]


@pytest.mark.parametrize("method", ALL_KEPT, ids=lambda m: m.name)
def test_keeping_every_token_gives_the_unpruned_logits(loaded, samples, method):
    _, model, _, _ = loaded
    ids, px = samples
    unpruned = model(ids[2][None], images=px[2:3])
    model.set_pruning(method)
    try:
        kept_all = model(ids[2][None], images=px[2:3])
    finally:
        model.set_pruning(None)
    torch.testing.assert_close(kept_all, unpruned, atol=1e-5, rtol=0)


BATCHED = [
    FastV(k=2, retained_tokens=64),
    FastV(k=3, drop_ratio=0.75, score="paper"),
    FasterVLM(64),
    RandomPruning(100, seed=3),
    UniformPruning(128),
]


@pytest.mark.parametrize("method", BATCHED, ids=lambda m: m.describe())
def test_batch_equals_one_by_one(loaded, samples, method):
    _, model, _, _ = loaded
    ids, px = samples
    singles = [_generate(model, method, x[None], px[i : i + 1])[0] for i, x in enumerate(ids)]
    batched = _generate(model, method, ids, px)
    for i, single in enumerate(singles):
        assert batched[i, : len(single)].tolist() == single.tolist()


@pytest.mark.parametrize("count,rows,cols", [(192, 12, 16), (128, 8, 16), (64, 8, 8), (576, 24, 24), (144, 12, 12)])
def test_uniform_grid_is_spatially_even(count, rows, cols):
    grid = uniform_grid(24, count)
    assert len(grid) == count == len(set(grid.tolist()))
    r, c = grid // 24, grid % 24
    assert sorted(set(r.tolist())) == sorted(set(((torch.arange(rows) + 0.5) * 24 / rows).long().tolist()))
    assert len(set(c.tolist())) == cols
    assert all((r == row).sum() == cols for row in set(r.tolist()))  # every covered row holds a full row of tokens
    gaps = torch.tensor(sorted(set(r.tolist()))).diff()
    assert int(gaps.max() - gaps.min()) <= 1  # evenly spaced rows
    margin_top, margin_bottom = int(r.min()), 23 - int(r.max())
    assert abs(margin_top - margin_bottom) <= 1  # centred


def test_uniform_grid_without_a_factorisation_is_still_spread_out():
    grid = uniform_grid(24, 97)  # prime
    assert len(set(grid.tolist())) == 97
    r = grid // 24
    assert int(r.min()) <= 2 and int(r.max()) >= 21


def test_random_pruning_is_reproducible_with_a_seed(loaded, samples):
    _, model, _, _ = loaded
    _, px = samples
    features = model.get_vision_tower()(px)
    a = RandomPruning(50, seed=1).select_before_llm(features, None)
    b = RandomPruning(50, seed=1).select_before_llm(features, None)
    c = RandomPruning(50, seed=2).select_before_llm(features, None)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert (a.diff(dim=1) > 0).all()  # raster order


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_pruning_args(parser)
    return parser.parse_args(list(argv))


def test_one_switch_builds_every_method():
    assert pruning_from_args(_args("--method", "fastv", "--fastv-k", "3", "--fastv-r", "0.5"), {}).describe() == (
        "fastv K=3 R=0.5 score=last"
    )
    assert pruning_from_args(_args(), {"METHOD": "fastervlm", "RETAIN_TOKN": "64"}).describe() == "fastervlm k=64"
    assert pruning_from_args(_args("--method", "random"), {}).retained_tokens == 192
    assert pruning_from_args(_args("--method", "uniform", "--retained-tokens", "128"), {}).name == "uniform"
    with pytest.raises(ValueError, match="none, sparsevlm, fastv, fastervlm, random, uniform, .*visionzip"):
        pruning_from_args(_args("--method", "tome"), {})
    assert pruning_from_args(_args("--method", "pdrop"), {}).name == "pdrop"  # the zoo's, registered
    with pytest.raises(ValueError, match="K must be >= 1"):
        pruning_from_args(_args("--method", "fastv", "--fastv-k", "0"), {})
    with pytest.raises(SystemExit):
        _args("--fastv-score", "mean")


@pytest.mark.parametrize("method", [FasterVLM(0), RandomPruning(577), FastV(k=2, retained_tokens=1000), FastV(k=4)])
def test_impossible_budgets_are_refused_when_set(loaded, method):
    _, model, _, _ = loaded
    with pytest.raises(ValueError):
        model.set_pruning(method)


def test_layouts_refuse_two_images_in_one_sample():
    with pytest.raises(ValueError, match="one image or video per sample"):
        layouts_from_spans([[(3, 10), (20, 10)]], [40], 40)
