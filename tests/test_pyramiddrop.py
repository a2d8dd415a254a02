"""PyramidDrop against the spec (section 8): the cheap row against transformers' eager attention (LLaVA-1.5 and
Qwen2.5-VL's M-RoPE), the reference's stage counts, contiguous positions after a stage and the decode positions,
budgets as equal tokens, keep-everything and batches on LLaVA-1.5, LLaVA-NeXT, Qwen2.5-VL and Video-LLaVA."""

import argparse

import pytest
import torch

from llava.conversation import get_conv_template
from llava.mm_utils import tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.sparse.methods import add_pruning_args, pruning_from_args
from llava.sparse.pyramiddrop import PyramidDrop, PyramidDropPlan, equal_fraction, geometric_ratios

from .helpers import pixels, prompt_ids, random_image
from .test_dart import QUESTIONS, SIZES, _next_logits, qwen  # noqa: F401  (qwen: the tiny Qwen2.5-VL fixture)
from .test_engine import _hf_llama
from .test_pruning_qwen import _eager_attentions

EARLY = (1, 2, 3)  # stages for the 4-layer tiny models


class Spy(PyramidDrop):
    """PyramidDrop that records each stage's ranking row [B, L] and the sequences entering and leaving it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rows, self.rebuilds = {}, []

    def plan(self, layouts, model, inputs):
        plan = super().plan(layouts, model, inputs)
        last_row, rebuild = plan.last_row, plan.rebuild

        def row(layer_idx, state):
            self.rows[layer_idx + 1] = last_row(layer_idx, state)
            return self.rows[layer_idx + 1]

        def spy(state, keep, merged=None, renumber_positions=False, merged_positions=None):
            new = rebuild(state, keep, merged, renumber_positions, merged_positions)
            self.rebuilds.append((state, new))
            return new

        plan.last_row, plan.rebuild = row, spy
        return plan


@pytest.fixture(scope="module")
def samples32(loaded32):
    tokenizer, model, image_processor, _ = loaded32
    ids = [prompt_ids(tokenizer, q) for q in QUESTIONS]
    return ids, pixels(image_processor, model, *[random_image(50 + i) for i in range(3)])


def _prefill(model, method, ids, px, **kwargs):
    model.set_pruning(method)
    try:
        return model.prefill(ids, images=px, **kwargs)
    finally:
        model.set_pruning(None)


def test_cheap_row_is_the_last_row_of_eager_attention_and_stages_keep_288_144_72(loaded32, samples32):
    """Before the first drop, the row layer 8 ranks by is row -1 of transformers' eager attention of layer 8,
    head-averaged; the reference's schedule keeps int(576 * 0.5 / 0.25 / 0.125) for 8 layers each."""
    _, model, _, _ = loaded32
    ids, px = samples32
    method = Spy()
    prefill = _prefill(model, method, ids[0][None], px[:1], use_cache=False)
    inputs = prefill.inputs
    with torch.no_grad():
        attentions = _hf_llama(model)(inputs_embeds=inputs.inputs_embeds, output_attentions=True).attentions
    start, count = inputs.image_spans[0][0]
    torch.testing.assert_close(method.rows[8][0], attentions[8][0, :, -1].mean(dim=0), atol=1e-5, rtol=0)
    expected = torch.topk(attentions[8][0, :, -1, start : start + count].mean(dim=0), 288).indices.sort().values
    account = prefill.accounts[0]
    assert account.kept[7].tolist() == expected.tolist()
    assert account.visual_after_layer == [576] * 8 + [288] * 8 + [144] * 8 + [72] * 8
    assert account.equal_tokens() == 270
    assert "576 -> 288 -> 144 -> 72, equal tokens 270.00" in method.describe()


def test_positions_are_contiguous_after_each_stage_and_decoding_continues_at_t_minus_the_drops(loaded32, samples32):
    """After each stage the positions are 0..n-1 (the reference's re-indexing); the cache continues each stage's
    layers at step t - (tokens dropped so far); with the same kept tokens, every decode step's logits are those of a
    cache-free forward over prompt + generated tokens."""
    _, model, _, _ = loaded32
    ids, px = samples32
    method = Spy()
    prefill = _prefill(model, method, ids[1][None], px[1:2], max_new_tokens=3)
    for _, after in method.rebuilds:
        assert after.position_ids[0].tolist() == list(range(after.position_ids.shape[1]))
    full = prefill.inputs.lengths[0]
    drops = [0, 288, 288 + 144, 288 + 144 + 72]
    assert [int(s.next_position[0]) for s in prefill.cache.segments] == [full - d for d in drops]
    kept = {len(v): v for v in prefill.accounts[0].kept.values()}

    class Replay(PyramidDrop):  # the same tokens, whatever the (growing) prompt's last token prefers
        def plan(self, layouts, m, inputs):
            plan = PyramidDropPlan(self, layouts, m, inputs)
            plan.top_tokens = lambda b, scores, count: kept[count]
            return plan

    model.set_pruning(Replay())
    try:
        logits = model.lm_head(prefill.hidden_states[:, -1]).float()
        sequence = ids[1]
        for _ in range(3):
            token = int(logits.argmax(-1))
            sequence = torch.cat([sequence, torch.tensor([token])])
            logits = model.decode_step(torch.tensor([token]), prefill.cache)
            torch.testing.assert_close(logits, model(sequence[None], images=px[1:2])[:, -1], atol=1e-4, rtol=0)
    finally:
        model.set_pruning(None)


def test_a_budget_is_met_as_equal_tokens_by_scaling_the_pyramid(loaded32, samples32):
    _, model, _, _ = loaded32
    ids, px = samples32
    ratios = geometric_ratios(192 / 576, (8, 16, 24), 32)
    assert abs(equal_fraction(ratios, (8, 16, 24), 32) - 192 / 576) < 1e-9
    assert all(abs(ratios[s] - ratios[0] ** (s + 1)) < 1e-12 for s in range(3))
    prefill = _prefill(model, PyramidDrop(retained_tokens=192), ids[2][None], px[2:3], use_cache=False)
    assert 191 <= prefill.accounts[0].equal_tokens() <= 192  # int() truncation per stage
    with pytest.raises(ValueError, match="out of reach.*layers 0-7 see every token"):
        model.set_pruning(PyramidDrop(retained_tokens=128))  # 576 * 8 / 32 = 144 is the least
    assert type(model.pruning).__name__ == "PruningMethod"  # refused when set, the model stays unpruned


def test_a_model_shallower_than_the_stages_is_refused(loaded):
    _, model, _, _ = loaded  # 4 decoder layers
    with pytest.raises(ValueError, match="more than 24 decoder layers; the model has 4"):
        model.set_pruning(PyramidDrop())


def _generate(model, method, ids, **kwargs):
    model.set_pruning(method)
    try:
        return model.generate(ids, max_new_tokens=3, eos_token_id=-1, **kwargs), model.last_accounts
    finally:
        model.set_pruning(None)


@pytest.fixture(scope="module")
def samples(loaded):
    tokenizer, model, image_processor, _ = loaded
    ids = [prompt_ids(tokenizer, q) for q in QUESTIONS]
    return ids, pixels(image_processor, model, *[random_image(60 + i) for i in range(3)])


@pytest.mark.parametrize(
    "method", [PyramidDrop(EARLY), PyramidDrop(EARLY, retained_tokens=300)], ids=lambda m: m.describe()
)
def test_batch_equals_one_by_one(loaded, samples, method):
    _, model, _, _ = loaded
    ids, px = samples
    together, accounts = _generate(model, method, ids, images=px)
    for i in range(3):
        alone, one = _generate(model, method, ids[i][None], images=px[i : i + 1])
        assert together[i].tolist() == alone[0].tolist()
        assert {k: v.tolist() for k, v in accounts[i].kept.items()} == {k: v.tolist() for k, v in one[0].kept.items()}


@pytest.mark.parametrize("method", [PyramidDrop(EARLY, (1, 1, 1)), PyramidDrop(EARLY, retained_tokens=576)])
def test_keeping_everything_gives_the_unpruned_logits(loaded, samples, method):
    _, model, _, _ = loaded
    ids, px = samples
    unpruned = model(ids, images=px)
    model.set_pruning(method)
    try:
        torch.testing.assert_close(model(ids, images=px), unpruned, atol=1e-5, rtol=0)
    finally:
        model.set_pruning(None)


# -- LLaVA-NeXT: one ranking over the whole anyres block -------------------------------------------------------------


def test_next_batch_of_two_sizes_equals_one_by_one_and_keep_everything_is_unpruned(loaded_next):
    tokenizer, model, processor, _ = loaded_next
    ids = [prompt_ids(tokenizer, q) for q in QUESTIONS[:2]]
    images = [random_image(70 + i, size) for i, size in enumerate(SIZES[1:])]  # 2328 and 976 tokens
    method = PyramidDrop(EARLY, retained_tokens=1440)
    batched, out = _next_logits(model, method, ids, images, processor)
    for i in range(2):
        alone, one = _next_logits(model, method, [ids[i]], [images[i]], processor)
        torch.testing.assert_close(batched[i], alone[0], atol=1e-4, rtol=0)
        assert {k: v.tolist() for k, v in out.accounts[i].kept.items()} == {
            k: v.tolist() for k, v in one.accounts[0].kept.items()
        }
    for account in out.accounts:  # newline tokens stay; the others follow the schedule of their own count
        assert account.newlines_final == account.newlines_into_llm
        rankable = account.num_visual - account.newlines_into_llm
        ratios = method.schedule(rankable)
        assert account.visual_after_layer[1:] == [account.newlines_into_llm + int(rankable * r) for r in ratios]
    expected, _ = _next_logits(model, None, ids[:1], images[:1], processor)
    got, _ = _next_logits(model, PyramidDrop(EARLY, (1, 1, 1)), ids[:1], images[:1], processor)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


# -- Qwen2.5-VL: the cheap row under M-RoPE, 3-D ids kept ------------------------------------------------------------


def test_qwen_cheap_row_equals_transformers_eager_attention_under_mrope(qwen):  # noqa: F811
    model, ids, px, sizes, folder = qwen
    method = Spy(EARLY)
    prefill = _prefill(model, method, ids[0][None], px[:1], image_sizes=sizes[:1], use_cache=False)
    attentions, at, count = _eager_attentions(folder, model, ids[0], px[0], sizes[0])
    torch.testing.assert_close(method.rows[1][0], attentions[1][0, :, -1].mean(dim=0), atol=1e-5, rtol=0)
    assert prefill.accounts[0].visual_after_layer == [count] + [int(count * r) for r in (0.5, 0.25, 0.125)]
    state, new = method.rebuilds[0]  # 3-D ids kept, not renumbered
    assert new.position_ids.dim() == 3
    assert set(map(tuple, new.position_ids[0].tolist())) <= set(map(tuple, state.position_ids[0].tolist()))


def test_qwen_batch_equals_one_by_one_and_keep_everything_is_unpruned(qwen):  # noqa: F811
    model, ids, px, sizes, _ = qwen
    method = PyramidDrop(EARLY, retained_tokens=100)  # 100 of each image's own count
    together, accounts = _generate(model, method, ids, images=px, image_sizes=sizes)
    for i in range(3):
        alone, one = _generate(model, method, ids[i][None], images=px[i : i + 1], image_sizes=sizes[i : i + 1])
        assert together[i].tolist() == alone[0].tolist()
        assert accounts[i].visual_after_layer == one[0].visual_after_layer
        assert abs(accounts[i].equal_tokens() - 100) < 1
    unpruned = model(ids, images=px, image_sizes=sizes)
    model.set_pruning(PyramidDrop(EARLY, ratio=1.0))
    try:
        torch.testing.assert_close(model(ids, images=px, image_sizes=sizes), unpruned, atol=1e-5, rtol=0)
    finally:
        model.set_pruning(None)


# -- Video-LLaVA: the whole clip ranked at once ----------------------------------------------------------------------


def test_video_batch_equals_one_by_one_over_the_whole_clip(tmp_path_factory):
    from llava.testing.video_llava import write_tiny_video_llava
    from llava.testing.videos import synthetic_frames, write_video

    root = tmp_path_factory.mktemp("pdrop_video")
    tokenizer, model, processor = load_pretrained_model(
        str(write_tiny_video_llava(root / "v", seed=2)), device="cpu", pruning=None
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
    together, accounts = _generate(model, PyramidDrop(EARLY), ids, videos=clips)
    for i in range(2):
        alone, one = _generate(model, PyramidDrop(EARLY), ids[i][None], videos=[clips[i]])
        assert together[i].tolist() == alone[0].tolist()
        assert {k: v.tolist() for k, v in accounts[i].kept.items()} == {k: v.tolist() for k, v in one[0].kept.items()}
    assert accounts[0].visual_after_layer == [136, 68, 34, 17]  # 8 frames x (1 + 16), one ranking per stage


# -- flags -----------------------------------------------------------------------------------------------------------


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_pruning_args(parser)
    return parser.parse_args(list(argv))


def test_flags_build_the_method():
    method = pruning_from_args(_args("--method", "pdrop"), {})
    assert isinstance(method, PyramidDrop) and (method.layers, method.ratios) == ((8, 16, 24), (0.5, 0.25, 0.125))
    method = pruning_from_args(_args("--method", "pdrop", "--pdrop-layers", "2", "6", "--pdrop-ratios", ".4", ".1"), {})
    assert (method.layers, method.ratios) == ((2, 6), (0.4, 0.1))
    method = pruning_from_args(_args("--method", "pdrop", "--retained-tokens", "192"), {})
    assert method.ratios is None and method.retained_tokens == 192
    with pytest.raises(ValueError, match="either --pdrop-ratios or a budget"):
        pruning_from_args(_args("--method", "pdrop", "--pdrop-ratios", ".5", ".2", ".1", "--retained-tokens", "9"), {})
    with pytest.raises(ValueError, match="one ratio in"):
        pruning_from_args(_args("--method", "pdrop", "--pdrop-ratios", ".5"), {})
