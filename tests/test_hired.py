"""HiRED on LLaVA-NeXT: the spec's budget and raster-chunk examples, the L0 / feature-layer [CLS] rows against
transformers' eager attention, the kept tokens and their packing against a step-by-step rerun of the reference on
eager attention maps, keep-everything (rate 1) = the unpruned model without newline tokens, batch = one by one,
budget mapping, flags, and refusals on the other families."""

import argparse
import copy
import types

import pytest
import torch
from transformers import CLIPVisionModel

from llava.mm_utils import process_images
from llava.model.anyres import merge_layout
from llava.sparse.budget import Budget
from llava.sparse.engine import PruningMethod
from llava.sparse.hired import HiRED, crop_budgets, hired_budgets
from llava.sparse.methods import add_pruning_args, pruning_from_args

from .helpers import prompt_ids, random_image

SIZES = [(640, 480), (1008, 336), (300, 200)]
QUESTIONS = ["What is the colour of the largest object?", "Is there a red circle?", "How many shapes?"]


# -- the spec's examples -----------------------------------------------------------------------------------------------
def test_budgets_of_a_five_view_image():
    assert hired_budgets(5, 576, 0.2, 0.5) == (576, 288, 288)
    assert hired_budgets(3, 576, 0.2, 0.5) == (345, 172, 173)
    assert hired_budgets(5, 576, 0.9, 0.5) == (2592, 576, 2016)  # the base view holds at most 576


def test_crop_budgets_follow_raster_chunks_not_quadrants():
    left_half = (torch.arange(576) % 24) < 12  # the top-288 L0 patches are exactly columns 0-11 of the base
    assert crop_budgets(left_half, (2, 2), 288, 576, "faithful") == [72, 72, 72, 72]  # each 6-row chunk holds 72
    assert crop_budgets(left_half, (2, 2), 288, 576, "spatial") == [144, 0, 144, 0]  # crops row-major
    top_rows = torch.arange(576) < 288  # rows 0-11: the spatial mapping gives the top crops everything
    assert crop_budgets(top_rows, (2, 1), 100, 576, "spatial") == [50, 50]
    assert crop_budgets(top_rows, (1, 2), 100, 576, "spatial") == [100, 0]
    assert crop_budgets(torch.zeros(576, dtype=torch.bool), (2, 2), 288, 576) == [72] * 4  # fixed: no 0 / 0
    # 5 crops: near-equal chunks of 116 / 115 patches (the reference's reshape fails); floors lose tokens, as there
    assert crop_budgets(left_half, (5, 1), 100, 576) == [20, 20, 20, 19, 19]


def test_flags_and_budget_mapping():
    parser = argparse.ArgumentParser()
    add_pruning_args(parser)

    def build(*argv):
        return pruning_from_args(parser.parse_args(["--method", "hired", *argv]), env={})

    default = build()
    assert (default.rate, default.alpha, default.partition) == (0.2, 0.5, "faithful")
    assert build("--hired-rate", "0.4", "--hired-alpha", "0.3", "--hired-partition", "spatial").alpha == 0.3
    mapped = build("--retained-tokens", "576")
    mapped.bind(2880)
    assert mapped.rate is None and mapped.total(5, 576) == 576 and mapped.total(3, 576) == 345
    assert "rate 0.2" in mapped.describe()
    assert build("--retained-ratio", "0.1").total(5, 576) == 288
    with pytest.raises(ValueError, match="not both"):
        build("--hired-rate", "0.2", "--retained-tokens", "576")


def test_patches_chosen_in_the_padding_are_dropped_by_the_unpadding():
    layout = merge_layout(5, 24, "spatial_unpad", (2, 2), (640, 480))  # the crop grid's rows 0-5 and 42-47 go
    top, bottom = torch.rand(5, 576), torch.rand(5, 576)
    bottom[1:, :144] += 1  # every crop prefers its first 6 rows: padding for the top crops, kept for the bottom ones
    method = HiRED()
    selection = method.select_tokens(layout, torch.randn(5, 576, 8), {"top": top, "bottom": bottom})
    mask = method.keep_mask(top, bottom, (2, 2))
    assert selection.tokens.per_view_counts() == [288, 0, 0, int(mask[3].sum()), int(mask[4].sum())]
    assert mask[1].sum() > 0 and selection.tokens.num_newlines == 0


# -- the [CLS] rows ----------------------------------------------------------------------------------------------------
def _eager(tower) -> CLIPVisionModel:
    """transformers' eager CLIP with the tower's (possibly truncated) layers and weights."""
    config = copy.deepcopy(tower.vision_tower.config)
    config._attn_implementation = "eager"
    eager = CLIPVisionModel(config).eval()
    eager.load_state_dict(tower.vision_tower.state_dict(), strict=False)
    eager.encoder.layers = eager.encoder.layers[: len(tower.vision_tower.encoder.layers)]
    return eager


def _eager_rows(tower, pixels):
    """The reference's scores from eager attention maps: [CLS] row over the patches summed over heads, at L0 and
    at the feature layer."""
    with torch.no_grad():
        attentions = _eager(tower)(pixel_values=pixels, output_attentions=True).attentions
    top = attentions[0][:, :, 0, 1:].sum(dim=1)
    bottom = attentions[tower.num_layers_used - 1][:, :, 0, 1:].sum(dim=1)
    return top, bottom


def test_cls_rows_equal_transformers_eager_attention(loaded_next):
    _, model, processor, _ = loaded_next
    tower = model.get_vision_tower()
    pixels = process_images([random_image(1, SIZES[0])], processor, model.config)[0]
    features, signals = HiRED().tower_outputs(tower, pixels)
    top, bottom = _eager_rows(tower, pixels)
    torch.testing.assert_close(signals["top"], top, atol=1e-5, rtol=0)
    torch.testing.assert_close(signals["bottom"], bottom, atol=1e-5, rtol=0)
    torch.testing.assert_close(features, tower(pixels), atol=0, rtol=0)


# -- LLaVA-NeXT end to end ---------------------------------------------------------------------------------------------
def _inputs(loaded, count=3):
    tokenizer, model, processor, _ = loaded
    images = [random_image(10 + i, size) for i, size in enumerate(SIZES[:count])]
    px = process_images(images, processor, model.config)
    return [prompt_ids(tokenizer, q) for q in QUESTIONS[:count]], px, [image.size for image in images]


def _encode(model, method, ids, px, sizes):
    model.set_pruning(method)
    try:
        return model.prepare_inputs(ids, px, image_sizes=sizes).images
    finally:
        model.set_pruning(None)


def _run(model, method, ids, px, sizes):
    model.set_pruning(method)
    try:
        out = model.prefill(ids, px, use_cache=False, image_sizes=sizes)
        return model.lm_head(out.hidden_states[:, -1]).float(), out
    finally:
        model.set_pruning(None)


def reference_mask(top, bottom, grid, rate=0.2, alpha=0.5):
    """`HiRED_token_selection` step by step (its reshape of the raster L0 mask into crop cells included)."""
    views, n = bottom.shape
    total = int(views * n * rate)
    full = min(int(total * alpha), n)
    sub = min(total - full, (views - 1) * n)
    mask = torch.zeros(views, n, dtype=torch.bool)
    mask[0, bottom[0].topk(full).indices] = True
    chosen = torch.zeros(n, dtype=torch.bool)
    chosen[top[0].topk(int(n * (1 - alpha))).indices] = True
    cols, rows = grid
    counts = chosen.reshape(rows, cols, -1).sum(-1).reshape(-1)
    for i, budget in enumerate((counts / counts.sum() * sub).int().clamp(max=n).tolist()):
        mask[i + 1, bottom[i + 1].topk(budget).indices] = True
    return mask


def test_kept_tokens_and_packing_match_the_reference(loaded_next):
    tokenizer, model, processor, _ = loaded_next
    ids, px, sizes = _inputs(loaded_next, 1)
    full = _encode(model, None, ids, px, sizes)[0].tokens  # the checkpoint's merge: unpadded, with newlines
    kept = _encode(model, HiRED(), ids, px, sizes)[0]
    top, bottom = _eager_rows(model.get_vision_tower(), px[0])
    mask = reference_mask(top, bottom, full.grid)
    expected = [
        (v, p) for v, p in zip(full.view.tolist(), full.patch.tolist(), strict=True) if v >= 0 and mask[v, p]
    ]  # base in raster order, then the crops in the full grid's raster order after unpadding; no newline tokens
    assert list(zip(kept.tokens.view.tolist(), kept.tokens.patch.tolist(), strict=True)) == expected
    assert kept.tokens.num_newlines == 0 and kept.tokens.per_view_counts()[0] == 288
    unpruned = _encode(model, None, ids, px, sizes)[0]
    rows = [
        i
        for i, (v, p) in enumerate(zip(full.view.tolist(), full.patch.tolist(), strict=True))
        if (v, p) in set(expected)
    ]
    torch.testing.assert_close(kept.features, unpruned.features[rows], atol=1e-6, rtol=0)


class WithoutNewlines(PruningMethod):
    """No pruning, the checkpoint's merge without its newline tokens (HiRED's packing of every token)."""

    def select_tokens(self, tokens, features, signals):
        return torch.nonzero(~tokens.is_newline).flatten()


def test_rate_one_keeps_every_token_without_newlines(loaded_next):
    _, model, _, _ = loaded_next
    ids, px, sizes = _inputs(loaded_next, 1)
    expected, _ = _run(model, WithoutNewlines(), ids, px, sizes)
    for method in (HiRED(rate=1.0), HiRED(rate=None, budget=Budget(2880))):
        got, out = _run(model, method, ids, px, sizes)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        assert out.accounts[0].newlines_into_llm == 0
        assert out.accounts[0].num_visual == sum(out.accounts[0].views_into_llm) == out.accounts[0].num_encoded - 36


@pytest.mark.parametrize(
    "method",
    [HiRED(), HiRED(partition="spatial"), HiRED(rate=None, budget=Budget(640))],
    ids=lambda m: m.describe(),
)
def test_batch_of_three_sizes_equals_one_by_one(loaded_next, method):
    _, model, _, _ = loaded_next
    ids, px, sizes = _inputs(loaded_next)
    together, out = _run(model, method, ids, px, sizes)
    for i in range(3):
        alone, one = _run(model, method, [ids[i]], px[i : i + 1], sizes[i : i + 1])
        torch.testing.assert_close(together[i], alone[0], atol=1e-4, rtol=0)
        a, b = out.accounts[i], one.accounts[0]
        assert a.num_visual == b.num_visual and a.views_into_llm == b.views_into_llm
        assert a.method_flops == b.method_flops > 0
    assert len({a.num_visual for a in out.accounts}) == 3


def test_other_families_are_refused(loaded):
    with pytest.raises(ValueError, match="LLaVA-NeXT"):
        loaded[1].set_pruning(HiRED())
    qwen = types.SimpleNamespace(config=types.SimpleNamespace(image_aspect_ratio="qwen", is_anyres=False))
    with pytest.raises(ValueError, match="Qwen-VL"):
        HiRED().validate(qwen)
