"""Every pruning method on LLaVA-NeXT: keep-everything equals the unpruned model, a batch of images of different
sizes equals one by one, FasterVLM's reference mode equals an independent per-view top-k of an eager CLIP [CLS]
row in the reference's order, budgets scale with the image, newline tokens stay unless asked, cached decoding
equals a cache-free forward over the kept tokens, and the accounting reports per-view counts."""

import copy

import pytest
import torch
from transformers import CLIPVisionModel

from llava.mm_utils import process_images
from llava.model.anyres import grid_shape
from llava.sparse.engine import PruningMethod, inputs_layouts
from llava.sparse.fastv import FastV, FastVPlan
from llava.sparse.pre_llm import FasterVLM, FasterVLMGlobal, RandomPruning, UniformPruning
from llava.sparse.sparsevlm import SparseVLM

from .helpers import prompt_ids, random_image
from .test_sparsevlm import ReplayRaters

SIZES = [(640, 480), (1008, 336), (300, 200)]
QUESTIONS = ["What is the color of the largest object?", "Is there a red circle in the image?", "How many shapes?"]


class ReferenceLayout(PruningMethod):
    """No pruning, in the grid rule and merge of FasterVLM's reference (what its keep-everything run sees)."""

    grid_rule, merge_type = "fastervlm", "spatial"


def _inputs(model, tokenizer, processor, count=3):
    images = [random_image(10 + i, size) for i, size in enumerate(SIZES[:count])]
    ids = [prompt_ids(tokenizer, q) for q in QUESTIONS[:count]]
    return ids, images


def _logits(model, method, ids, images, processor):
    model.set_pruning(method)
    try:
        px = process_images(images, processor, model.config)  # after set_pruning: the method's grid rule
        out = model.prefill(ids, px, use_cache=False, image_sizes=[im.size for im in images])
        return model.lm_head(out.hidden_states[:, -1]).float(), out
    finally:
        model.set_pruning(None)


@pytest.mark.parametrize(
    "method,baseline",
    [
        (FastV(k=2, retained_tokens=2880), None),
        (FasterVLMGlobal(2880), None),
        (RandomPruning(2880), None),
        (UniformPruning(2880), None),
        (FasterVLM(None, view_tokens=576), ReferenceLayout()),
    ],
    ids=["fastv", "fastervlm-global", "random", "uniform", "fastervlm-view"],
)
def test_keep_everything_equals_the_unpruned_model(loaded_next, method, baseline):
    tokenizer, model, processor, _ = loaded_next
    ids, images = _inputs(model, tokenizer, processor, count=1)
    expected, _ = _logits(model, baseline, ids, images, processor)
    got, _ = _logits(model, method, ids, images, processor)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


BATCH_METHODS = [
    SparseVLM("1_0", 640),
    SparseVLM("2_0", 320),
    SparseVLM("v1.0", scale=2.0, bias=4.0),
    FastV(k=2, retained_tokens=640),
    FasterVLM(None, view_tokens=29),
    FasterVLMGlobal(320),
    RandomPruning(640),
    UniformPruning(320),
]


@pytest.mark.parametrize("method", BATCH_METHODS, ids=lambda m: m.describe())
def test_batch_of_three_sizes_equals_one_by_one(loaded_next32, method):
    tokenizer, model, processor, _ = loaded_next32
    ids, images = _inputs(model, tokenizer, processor)
    batched, out = _logits(model, method, ids, images, processor)
    for i in range(3):
        alone, one = _logits(model, method, [ids[i]], [images[i]], processor)
        torch.testing.assert_close(batched[i], alone[0], atol=1e-4, rtol=0)
        a, b = out.accounts[i], one.accounts[0]
        assert a.visual_after_layer == b.visual_after_layer and a.num_visual == b.num_visual
        assert a.views_into_llm == b.views_into_llm and a.views_final == b.views_final
        assert {k: v.tolist() for k, v in a.kept.items()} == {k: v.tolist() for k, v in b.kept.items()}
    assert len({a.num_encoded for a in out.accounts}) == 3  # three different token counts in one batch


def test_fastervlm_reference_mode_is_a_per_view_top_k_of_eager_clip_in_reference_order(loaded_next, tiny_next):
    tokenizer, model, processor, _ = loaded_next
    image, k = random_image(3, (704, 396)), 29
    method = FasterVLM(None, view_tokens=k)
    model.set_pruning(method)
    try:
        px = process_images([image], processor, model.config)
        assert tuple(px.shape[:2]) == (1, 3)  # FasterVLM's own grid rule: 2x1 crops (LLaVA's picks 2x2)
        encoded = model.encode_images(px, image_sizes=[image.size])[0]
    finally:
        model.set_pruning(None)
    tower = model.get_vision_tower().vision_tower
    config = copy.deepcopy(tower.config)
    config._attn_implementation = "eager"
    eager = CLIPVisionModel(config).eval()
    eager.load_state_dict(tower.state_dict(), strict=False)
    eager.encoder.layers = eager.encoder.layers[: len(tower.encoder.layers)]
    with torch.no_grad():
        attentions = eager(pixel_values=px[0], output_attentions=True).attentions
    cls_row = attentions[-1][:, :, 0, 1:].mean(dim=1)  # [views, 576], the layer producing the features
    kept = [set(torch.topk(cls_row[v], k).indices.tolist()) for v in range(3)]
    expected = [(0, p) for p in sorted(kept[0])]  # base view first, raster order
    for r in range(24):  # then the 1x2 crop grid as one 24 x 48 raster, no unpadding, no newline
        for c in range(48):
            view, patch = 1 + c // 24, r * 24 + c % 24
            if patch in kept[view]:
                expected.append((view, patch))
    assert list(zip(encoded.tokens.view.tolist(), encoded.tokens.patch.tolist(), strict=True)) == expected
    assert encoded.tokens.per_view_counts() == [k, k, k] and len(encoded.features) == 3 * k


def test_fastervlm_per_view_accounting_and_tokens_entering_the_llm(loaded_next):
    tokenizer, model, processor, _ = loaded_next
    ids, images = _inputs(model, tokenizer, processor, count=1)
    _, out = _logits(model, FasterVLM(None, view_tokens=29), ids, images, processor)
    account = out.accounts[0]
    assert account.views_into_llm == [29] * 5 and account.num_visual == 145 and account.newlines_into_llm == 0
    assert account.num_encoded == 2880  # the 'spatial' merge: five full views
    meta = account.as_metadata()
    assert meta["visual_tokens_per_view"] == [29] * 5 and meta["visual_tokens"] == 145


def test_sparsevlm_schedule_scales_with_the_image_and_keeps_newlines(loaded_next32):
    tokenizer, model, processor, _ = loaded_next32
    method = SparseVLM("1_0", 640)
    image = random_image(0, (672, 672))  # 2880 patches + 48 newline tokens
    model.set_pruning(method)
    try:
        assert method.schedule(2880, 32, 576) == (1515, 550, 180)  # specs/llava_next.md 5.6, ratio-preserving
        assert method.schedule(1440, 32, 576) == (758, 275, 90)
        px = process_images([image], processor, model.config)
        out = model.prefill(prompt_ids(tokenizer, QUESTIONS[0])[None], px, use_cache=False, image_sizes=[image.size])
    finally:
        model.set_pruning(None)
    account = out.accounts[0]
    assert account.num_visual == 2928 and account.newlines_into_llm == 48 and account.newlines_final == 48

    def clusters(pruned):  # recycled tokens added for `pruned` dropped ones (spec: 30 % + 1, one per 10, + 1)
        return int(0.1 * (int(0.3 * pruned) + 1)) + 1

    after2 = 1515 + clusters(2880 - 1515)  # merged tokens are rankable at the next stage; newlines never are
    assert account.visual_after_layer[2] == after2 + 48
    assert account.visual_after_layer[6] == 550 + clusters(after2 - 550) + 48


def test_prune_newlines_lets_methods_rank_them(loaded_next32):
    tokenizer, model, processor, _ = loaded_next32
    image = random_image(0, (672, 672))
    px = process_images([image], processor, model.config)
    ids = prompt_ids(tokenizer, QUESTIONS[0])[None]
    counts = {}
    for prune in (False, True):
        method = FastV(k=2, retained_tokens=160)
        method.prune_newlines = prune
        model.set_pruning(method)
        try:
            out = model.prefill(ids, px, use_cache=False, image_sizes=[image.size])
        finally:
            model.set_pruning(None)
        counts[prune] = out.accounts[0]
    kept, ranked = counts[False], counts[True]
    # the budget is 160 of 2880 nominal, scaled to the rankable tokens: 2880 patches, or 2928 with newlines
    assert kept.visual_into_layer[2] == 160 + 48 and kept.newlines_final == 48
    assert ranked.visual_into_layer[2] == round(160 / 2880 * 2928) and ranked.newlines_final < 48


@pytest.mark.parametrize("method", [SparseVLM("1_0", 640), SparseVLM("2_0", 320), FastV(k=2, retained_tokens=320)])
def test_cached_decode_equals_a_cache_free_forward_over_the_kept_tokens(loaded_next32, method):
    tokenizer, model, processor, _ = loaded_next32
    image = random_image(1, (640, 480))
    ids = prompt_ids(tokenizer, QUESTIONS[0])
    px = process_images([image], processor, model.config)
    sizes = [image.size]
    model.set_pruning(method)
    try:
        inputs = model.prepare_inputs(ids[None], px, image_sizes=sizes)
        prefill = model.prefill(ids[None], px, image_sizes=sizes)
    finally:
        model.set_pruning(None)
    if isinstance(method, SparseVLM):
        replay = ReplayRaters(method, method.plan(inputs_layouts(inputs), model, inputs).raters)
    else:
        kept = prefill.accounts[0].kept[1]

        class Replay(FastV):
            def plan(self, layouts, m, inputs):
                plan = FastVPlan(self, layouts, m, inputs)
                plan.top_tokens = lambda b, scores, count: kept
                return plan

        replay = Replay(k=2, retained_tokens=320)
    model.set_pruning(replay)
    try:
        prefill = model.prefill(ids[None], px, image_sizes=sizes)
        logits = model.lm_head(prefill.hidden_states[:, -1]).float()
        sequence = ids
        for _ in range(3):
            token = int(logits.argmax(-1))
            sequence = torch.cat([sequence, torch.tensor([token])])
            logits = model.decode_step(torch.tensor([token]), prefill.cache)
            cache_free = model(sequence[None], images=px, image_sizes=sizes)[:, -1]
            torch.testing.assert_close(logits, cache_free, atol=1e-4, rtol=0)
    finally:
        model.set_pruning(None)


def test_budget_forms_on_next(loaded_next):
    _, model, _, _ = loaded_next
    assert model.nominal_visual_tokens == 2880
    method = RandomPruning(None, ratio=0.25)
    model.set_pruning(method)
    try:
        assert method.view_count(576) == 144
    finally:
        model.set_pruning(None)
    with pytest.raises(ValueError, match="1..2880"):
        model.set_pruning(FastV(k=2, retained_tokens=3000))
    assert grid_shape((640, 480), model.config.image_grid_pinpoints, 336) == (2, 2)


def _parse(*argv):
    import argparse

    from llava.sparse.methods import add_pruning_args, pruning_from_args

    parser = argparse.ArgumentParser()
    add_pruning_args(parser)
    return lambda env=None: pruning_from_args(parser.parse_args(list(argv)), env or {})


def test_next_budget_flags():
    assert _parse("--visual-token-num", "29")().describe() == "fastervlm k=29/view"
    assert _parse("--method", "fastervlm", "--fastervlm-mode", "global")({"RETAIN_TOKN": "640"}).name == (
        "fastervlm-global"
    )
    assert _parse("--method", "random", "--retained-ratio", "0.25")().describe() == "random k=ratio 0.25"
    assert _parse("--method", "fastv", "--retained-ratio", "0.25")().drop_ratio == 0.75
    sparse = _parse("--retained-ratio", "0.2")()  # a ratio alone selects SparseVLM, like RETAIN_TOKN
    sparse.bind(2880)
    assert sparse.name == "sparsevlm" and sparse.retained_tokens == 576
    assert _parse("--method", "uniform", "--prune-newlines")().prune_newlines
    with pytest.raises(ValueError, match="FasterVLM's per-view budget"):
        _parse("--method", "fastv", "--visual-token-num", "29")()
    with pytest.raises(ValueError, match="not both"):
        _parse("--retained-tokens", "64", "--retained-ratio", "0.1")()
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        _parse("--method", "random", "--retained-ratio", "1.5")()


def test_fixed_672_pinpoints_give_every_image_five_views(tiny_next):
    """FasterVLM's authors ran NeXT at a fixed 672x672 (their issue #8): --image-grid-pinpoints '[[672,672]]'."""
    from llava.model.builder import load_pretrained_model

    tokenizer, model, processor, _ = load_pretrained_model(
        str(tiny_next), device="cpu", pruning=FasterVLM(None, view_tokens=29), image_grid_pinpoints="[[672,672]]"
    )
    for size in [(1008, 336), (300, 200), (640, 480)]:
        image = random_image(0, size)
        px = process_images([image], processor, model.config)
        out = model.prefill(prompt_ids(tokenizer, QUESTIONS[0])[None], px, image_sizes=[image.size], use_cache=False)
        assert tuple(px.shape[:2]) == (1, 5) and out.accounts[0].num_visual == 145
    with pytest.raises(ValueError, match="anyres"):
        load_pretrained_model(str(tiny_next), device="cpu", pruning=None, anyres_rule="fastervlm")


def test_unreachable_next_budget_says_it_in_the_users_units(loaded_next32):
    _, model, _, _ = loaded_next32
    with pytest.raises(ValueError, match=r"RETAIN_TOKN=160 of 2880 .* 32 per 576-token view"):
        model.set_pruning(SparseVLM("1_0", 160))
