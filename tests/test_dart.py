"""DART against the spec (section 7): the hand-computed example, the pivots' set order, the retained count, layer
K-1's post-RoPE keys and final-normed output against an eager transformers run, original positions, keep-everything
and batches on LLaVA-1.5, LLaVA-NeXT, Qwen2.5-VL and Video-LLaVA."""

import argparse
import math

import pytest
import torch
import transformers
from transformers.models.llama import modeling_llama

from llava.conversation import get_conv_template
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.sparse.dart import DART, DARTPlan, dart_keep, pivot_order
from llava.sparse.methods import add_pruning_args, pruning_from_args

from .helpers import pixels, prompt_ids, random_image
from .test_engine import _hf_llama

QUESTIONS = ["What is the color of the circle?", "How many shapes are there in the image? Answer briefly.", "Q"]


def _unit(degrees: float) -> torch.Tensor:
    return torch.tensor([math.cos(math.radians(degrees)), math.sin(math.radians(degrees))])


def test_spec_example_retains_pivot_and_its_picks():
    """Image block 0-5, text 6-8, one pivot of each kind, M = 4 (2 picks per pivot): pivot 0 (0 deg) picks the
    tokens at 180 and 170 deg (5, 2); text pivot 7 (85 deg) then picks 1 (10 deg) and 4 (70 deg); 7 is not kept."""
    key_l1 = torch.tensor([9.0, 1, 1, 1, 1, 1, 1, 5, 1])
    normed = torch.stack([_unit(a) for a in [0, 10, 170, 90, 70, 180, 30, 85, 200]])
    method = DART(max_tokens=4, image_pivots=1, text_pivots=1)
    assert method.per_pivot(6) == 2 and method.retained(6) == 5  # 1 + 2 * 2
    assert pivot_order([0], [7]) == [0, 7]
    kept = dart_keep(key_l1, normed, start=0, count=6, per_pivot=2, image_pivots=1, text_pivots=1)
    assert kept.tolist() == [0, 1, 2, 4, 5]


def test_pivots_are_visited_in_python_set_order():
    """The reference iterates set(image + text): slot order of CPython's table (index mod 32 for 8 pivots), not
    the list's. With the image block at 2-7 and text at 8-10, set([5, 10]) visits text pivot 10 (180 deg) first: it
    takes token 2 (315 deg), the first choice of both pivots, so image pivot 5 (90 deg) takes its second, 3 (200
    deg); visited the other way round, pivot 5 would take 2 and pivot 10 its second, 4 (60 deg)."""
    assert pivot_order([612, 40, 300, 35], [650, 660, 640, 645]) == [640, 35, 612, 645, 40, 650, 300, 660]
    assert pivot_order([5], [10]) == [10, 5]
    key_l1 = torch.tensor([0.0, 0, 1, 1, 1, 9, 1, 1, 1, 1, 5])
    angles = {2: 315, 3: 200, 4: 60, 5: 90, 6: 135, 7: 130, 10: 180}
    normed = torch.stack([_unit(angles.get(i, 45)) for i in range(11)])
    kept = dart_keep(key_l1, normed, start=2, count=6, per_pivot=1, image_pivots=1, text_pivots=1)
    assert (kept + 2).tolist() == [2, 3, 5]


@pytest.mark.parametrize("budget", [64, 100, 128, 192, 7])
def test_retained_count_is_image_pivots_plus_eight_per_pivot_picks(budget):
    g = torch.Generator().manual_seed(budget)
    length, start, count = 620, 35, 576
    key_l1, normed = torch.rand(length, generator=g), torch.randn(length, 16, generator=g)
    method = DART(max_tokens=budget)
    kept = dart_keep(key_l1, normed, start, count, method.per_pivot(count))
    assert len(kept) == len(set(kept.tolist())) == 4 + 8 * (budget // 8) == method.retained(count)
    pivots = torch.topk(key_l1[start : start + count], 4).indices
    assert set(pivots.tolist()) <= set(kept.tolist())


@pytest.fixture(scope="module")
def samples(loaded):
    tokenizer, model, image_processor, _ = loaded
    ids = [prompt_ids(tokenizer, q) for q in QUESTIONS]
    return ids, pixels(image_processor, model, *[random_image(30 + i) for i in range(3)])


class Spy(DART):
    """DART that records the keys and normed states its plan computes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = {}

    def plan(self, layouts, model, inputs):
        plan = DARTPlan(self, layouts, model, inputs)
        keys, normed = plan.keys, plan.normed
        plan.keys = lambda state: self.seen.setdefault("keys", keys(state))
        plan.normed = lambda state, b, offset: self.seen.setdefault("normed", normed(state, b, offset))
        return plan


def test_keys_and_normed_states_equal_an_eager_transformers_run(loaded, samples, monkeypatch):
    """Layer 1's post-RoPE keys (as transformers' eager attention receives them) and layer 1's output through the
    final norm; the kept tokens are DART's choice on those eager values."""
    _, model, _, _ = loaded
    ids, px = samples
    method = Spy(max_tokens=64)
    model.set_pruning(method)
    try:
        prefill = model.prefill(ids[0][None], images=px[:1], use_cache=False)
    finally:
        model.set_pruning(None)
    captured = {}
    stock = modeling_llama.eager_attention_forward

    def capture(module, query, key, value, *args, **kwargs):
        captured.setdefault(module.layer_idx, key)
        return stock(module, query, key, value, *args, **kwargs)

    monkeypatch.setattr(modeling_llama, "eager_attention_forward", capture)
    inputs = prefill.inputs
    with torch.no_grad():
        hf = _hf_llama(model)
        out = hf(inputs_embeds=inputs.inputs_embeds, output_hidden_states=True, use_cache=False)
        normed = hf.norm(out.hidden_states[2][0])  # layer 1's output
    torch.testing.assert_close(method.seen["keys"], captured[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(method.seen["normed"], normed, atol=1e-5, rtol=0)
    start, count = inputs.image_spans[0][0]
    key_l1 = captured[1][0].transpose(0, 1).flatten(1).abs().sum(dim=-1)
    expected = dart_keep(key_l1, normed, start, count, 64 // 8)
    assert prefill.accounts[0].kept[1].tolist() == expected.tolist()
    assert prefill.accounts[0].visual_into_layer == [576, 576, 68, 68]


def test_128_keeps_132_tokens_with_their_original_positions(loaded, samples):
    _, model, _, _ = loaded
    ids, px = samples
    method = DART()  # M = 128 (the reference's default)
    model.set_pruning(method)
    try:
        prefill = model.prefill(ids[1][None], images=px[1:2], max_new_tokens=2)
    finally:
        model.set_pruning(None)
    assert "keeps 132 of 576" in method.describe()
    assert prefill.accounts[0].visual_after_layer == [576, 576, 132, 132]
    assert prefill.accounts[0].equal_tokens() == (2 * 576 + 2 * 132) / 4
    full = prefill.inputs.lengths[0]
    assert [int(s.next_position[0]) for s in prefill.cache.segments] == [full, full]  # ids kept, gaps and all


def _generate(model, method, ids, px, **kwargs):
    model.set_pruning(method)
    try:
        return model.generate(ids, images=px, max_new_tokens=4, eos_token_id=-1, **kwargs), model.last_accounts
    finally:
        model.set_pruning(None)


@pytest.mark.parametrize("method", [DART(retained_tokens=576), DART(max_tokens=1000)], ids=["budget", "max"])
def test_keeping_everything_gives_the_unpruned_logits(loaded, samples, method):
    _, model, _, _ = loaded
    ids, px = samples
    unpruned = model(ids[2][None], images=px[2:3])
    model.set_pruning(method)
    try:
        torch.testing.assert_close(model(ids[2][None], images=px[2:3]), unpruned, atol=1e-5, rtol=0)
    finally:
        model.set_pruning(None)


@pytest.mark.parametrize("method", [DART(max_tokens=64), DART(retained_tokens=200, k=3)], ids=lambda m: m.describe())
def test_batch_equals_one_by_one(loaded, samples, method):
    _, model, _, _ = loaded
    ids, px = samples
    together, accounts = _generate(model, method, ids, px)
    for i in range(3):
        alone, one = _generate(model, method, ids[i][None], px[i : i + 1])
        assert together[i].tolist() == alone[0].tolist()
        assert {k: v.tolist() for k, v in accounts[i].kept.items()} == {k: v.tolist() for k, v in one[0].kept.items()}


# -- LLaVA-NeXT: one ranking over the whole anyres block -------------------------------------------------------------

SIZES = [(640, 480), (1008, 336), (300, 200)]


def _next_logits(model, method, ids, images, processor):
    model.set_pruning(method)
    try:
        px = process_images(images, processor, model.config)
        out = model.prefill(ids, px, use_cache=False, image_sizes=[im.size for im in images])
        return model.lm_head(out.hidden_states[:, -1]).float(), out
    finally:
        model.set_pruning(None)


def _with_newlines(method):
    method.prune_newlines = True
    return method


@pytest.mark.parametrize(
    "method", [DART(retained_tokens=640), _with_newlines(DART(max_tokens=320))], ids=["protected", "reference"]
)
def test_next_batch_of_two_sizes_equals_one_by_one(loaded_next, method):
    tokenizer, model, processor, _ = loaded_next
    ids = [prompt_ids(tokenizer, q) for q in QUESTIONS[:2]]
    images = [random_image(10 + i, size) for i, size in enumerate(SIZES[1:])]  # 2328 and 976 tokens
    batched, out = _next_logits(model, method, ids, images, processor)
    for i in range(2):
        alone, one = _next_logits(model, method, [ids[i]], [images[i]], processor)
        torch.testing.assert_close(batched[i], alone[0], atol=1e-4, rtol=0)
        assert out.accounts[i].kept[1].tolist() == one.accounts[0].kept[1].tolist()
    for account in out.accounts:
        newlines = account.newlines_into_llm
        if method.prune_newlines:  # the reference: newline tokens are ordinary tokens, 4 + 8 * 40 kept
            assert account.visual_after_layer[-1] == 324
        else:  # kept on top of the budget, 640 of 2880 scaled to the image's own count of other tokens
            rankable = account.num_visual - newlines
            assert account.newlines_final == newlines
            assert account.visual_after_layer[-1] == newlines + method.retained(rankable)


def test_next_keeping_everything_gives_the_unpruned_logits(loaded_next):
    tokenizer, model, processor, _ = loaded_next
    ids, images = [prompt_ids(tokenizer, QUESTIONS[0])], [random_image(3, SIZES[0])]
    expected, _ = _next_logits(model, None, ids, images, processor)
    got, _ = _next_logits(model, DART(retained_tokens=2880), ids, images, processor)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


# -- Qwen2.5-VL: grouped-query keys, 3-D positions gathered ----------------------------------------------------------

QWEN_SIZES = [(560, 448), (336, 672), (448, 448)]  # 16x20, 24x12, 16x16 tokens


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    from llava.testing.qwen_checkpoints import write_tiny_qwen_vl

    folder = write_tiny_qwen_vl(tmp_path_factory.mktemp("dart_qwen") / "qwen2_5_vl", seed=5)
    tokenizer, model, processor, _ = load_pretrained_model(
        str(folder), device="cpu", pruning=None, min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 1024
    )
    conv_ids = []
    for question in QUESTIONS:
        conv = get_conv_template(model.config.conv_mode)
        conv.append_message(conv.roles[0], "<image>\n" + question)
        conv.append_message(conv.roles[1], None)
        conv_ids.append(tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt"))
    images = [random_image(40 + i, size) for i, size in enumerate(QWEN_SIZES)]
    return model, conv_ids, process_images(images, processor, model.config), [im.size for im in images], folder


def test_qwen_batch_equals_one_by_one_and_keeps_3d_ids(qwen):
    model, ids, px, sizes, _ = qwen
    seen = []

    class Positions(DART):
        def plan(self, layouts, m, inputs):
            plan = super().plan(layouts, m, inputs)
            rebuild = plan.rebuild

            def spy(state, keep, merged=None, renumber_positions=False, merged_positions=None):
                new = rebuild(state, keep, merged, renumber_positions, merged_positions)
                seen.append((state.position_ids, new.position_ids, new.token_mask, renumber_positions))
                return new

            plan.rebuild = spy
            return plan

    method = Positions(retained_tokens=40)
    together, accounts = _generate(model, method, ids, px, image_sizes=sizes)
    for i in range(3):
        alone, one = _generate(model, method, ids[i][None], px[i : i + 1], image_sizes=sizes[i : i + 1])
        assert together[i].tolist() == alone[0].tolist()
        assert accounts[i].visual_after_layer == one[0].visual_after_layer
        assert accounts[i].visual_after_layer[-1] == 4 + 8 * (40 // 8)
    before, after, mask, renumber = seen[0]
    assert not renumber and after.dim() == 3
    for b in range(3):  # every kept token carries one of the sample's original (t, h, w) ids
        assert set(map(tuple, after[b][mask[b]].tolist())) <= set(map(tuple, before[b].tolist()))


def test_qwen_grouped_query_keys_and_normed_states_equal_transformers(qwen, monkeypatch):
    """Under M-RoPE and grouped-query attention (2 key heads for 4 query heads): layer 1's keys as transformers'
    own Qwen2.5-VL hands them to its eager attention, and its layer-1 output through the final norm."""
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl

    model, ids, px, sizes, folder = qwen
    method = Spy(retained_tokens=40)
    model.set_pruning(method)
    try:
        model.prefill(ids[0][None], images=px[:1], image_sizes=sizes[:1], use_cache=False)
    finally:
        model.set_pruning(None)
    captured = {}
    stock = modeling_qwen2_5_vl.eager_attention_forward

    def capture(module, query, key, value, *args, **kwargs):
        if hasattr(module, "layer_idx"):  # the decoder's, not the vision tower's
            captured.setdefault(module.layer_idx, key)
        return stock(module, query, key, value, *args, **kwargs)

    monkeypatch.setattr(modeling_qwen2_5_vl, "eager_attention_forward", capture)
    reference = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(folder), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    rows, cols = model.image_grid(sizes[0])
    at = int((ids[0] == -200).nonzero()[0, 0])
    image_id = reference.config.image_token_id
    hf_ids = torch.cat([ids[0][:at], torch.full((rows * cols,), image_id), ids[0][at + 1 :]])[None]
    with torch.no_grad():
        out = reference(
            input_ids=hf_ids,
            pixel_values=px[0],
            image_grid_thw=torch.tensor([[1, rows * 2, cols * 2]]),
            mm_token_type_ids=(hf_ids == image_id).long(),
            output_hidden_states=True,
        )
        normed = reference.model.language_model.norm(out.hidden_states[2][0])
    assert captured[1].shape[1] == 2  # the key heads as they are
    torch.testing.assert_close(method.seen["keys"], captured[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(method.seen["normed"], normed, atol=1e-5, rtol=0)


def test_qwen_keeping_everything_gives_the_unpruned_logits(qwen):
    model, ids, px, sizes, _ = qwen
    unpruned = model(ids, images=px, image_sizes=sizes)
    model.set_pruning(DART(ratio=1.0))
    try:
        torch.testing.assert_close(model(ids, images=px, image_sizes=sizes), unpruned, atol=1e-5, rtol=0)
    finally:
        model.set_pruning(None)


# -- Video-LLaVA: the whole clip is one block ------------------------------------------------------------------------


def test_video_batch_equals_one_by_one_over_the_whole_clip(tmp_path_factory):
    from llava.testing.video_llava import write_tiny_video_llava
    from llava.testing.videos import synthetic_frames, write_video

    root = tmp_path_factory.mktemp("dart_video")
    tokenizer, model, processor = load_pretrained_model(
        str(write_tiny_video_llava(root / "v", seed=1)), device="cpu", pruning=None
    )[:3]
    clips = [
        model.load_video(write_video(root / "a.mp4", synthetic_frames(37, 96, 64)), processor),
        model.load_video(write_video(root / "b.mkv", synthetic_frames(12, 64, 80)), processor),
    ]
    ids = []
    for question in QUESTIONS[:2]:
        conv = get_conv_template("llava_v1")
        conv.append_message(conv.roles[0], "<video>\n" + question)
        conv.append_message(conv.roles[1], None)
        ids.append(tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt"))
    method = DART(max_tokens=40)
    model.set_pruning(method)
    try:
        together = model.generate(ids, videos=clips, max_new_tokens=3, eos_token_id=-1)
        accounts = model.last_accounts
        for i in range(2):
            alone = model.generate(ids[i][None], videos=[clips[i]], max_new_tokens=3, eos_token_id=-1)
            assert together[i].tolist() == alone[0].tolist()
            assert accounts[i].kept[1].tolist() == model.last_accounts[0].kept[1].tolist()
    finally:
        model.set_pruning(None)
    assert accounts[0].visual_after_layer == [136, 136, 44, 44]  # 8 frames x (1 + 16), one ranking, 4 + 8 * 5


# -- flags -----------------------------------------------------------------------------------------------------------


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_pruning_args(parser)
    return parser.parse_args(list(argv))


def test_flags_build_the_method_and_refuse_what_cannot_run(loaded):
    method = pruning_from_args(_args("--method", "dart"), {})
    assert isinstance(method, DART) and (method.k, method.retained(576)) == (2, 132)
    method = pruning_from_args(_args("--method", "dart", "--dart-max-tokens", "320", "--dart-k", "3"), {})
    assert (method.max_tokens, method.k, method.retained(2928)) == (320, 3, 324)
    assert pruning_from_args(_args("--method", "dart", "--retained-tokens", "64"), {}).retained(576) == 68
    with pytest.raises(ValueError, match="not both"):
        pruning_from_args(_args("--method", "dart", "--dart-max-tokens", "64", "--retained-tokens", "64"), {})
    _, model, _, _ = loaded  # 4 decoder layers
    with pytest.raises(ValueError, match="K=4 needs more than 4 decoder layers"):
        model.set_pruning(DART(k=4))
