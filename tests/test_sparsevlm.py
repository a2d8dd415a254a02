"""SparseVLM v1.0 / 1_0 (v1.5) / 2_0 (SparseVLM+) against the reference behaviour of the spec."""

import argparse
from fractions import Fraction

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from llava.model.language_model import score
from llava.sparse.methods import add_pruning_args, pruning_from_args, pruning_from_env
from llava.sparse.recycling import dpc_knn_clusters, recycle
from llava.sparse.sparsevlm import SparseVLM, SparseVLMPlan, gravity_table, rank_budget, select_raters

from .helpers import pixels, prompt_ids, random_image

# spec section 5: per-layer visual counts (576 tokens, 32 layers) and their equal-token values
REFERENCE = {
    ("1_0", 192): ([576, 309, 204, 113], (2, 4, 9, 17), "192.03"),
    ("1_0", 128): ([576, 312, 117, 39], (2, 4, 9, 17), "128.63"),
    ("1_0", 96): ([576, 249, 55, 27], (2, 4, 9, 17), "96.94"),
    ("1_0", 64): ([576, 82, 32, 18], (2, 4, 9, 17), "64.81"),
    ("2_0", 192): ([576, 300, 200, 118], (2, 4, 9, 17), "192.44"),
    ("2_0", 128): ([576, 238, 108, 60], (2, 4, 9, 17), "128.00"),
    ("2_0", 96): ([576, 246, 54, 28], (2, 4, 9, 17), "96.81"),
    ("2_0", 64): ([576, 66, 34, 20], (2, 4, 9, 17), "64.44"),
}


def _spec_value(counts, spans):
    return Fraction(sum(c * n for c, n in zip(counts, spans, strict=True)), 32)


@pytest.mark.parametrize("key", sorted(REFERENCE))
def test_listed_schedules_give_the_reference_equal_tokens(key):
    counts, spans, printed = REFERENCE[key]
    version, budget = key
    expected = _spec_value(counts, spans)
    assert abs(float(expected) - float(printed)) <= 0.005 + 1e-12  # the spec's own arithmetic
    per_layer = score.visual_counts(score.SCHEDULES[version][budget], 576, 32, recycling=version == "1_0")
    assert Fraction(sum(per_layer), 32) == expected


@pytest.fixture(scope="module")
def samples(loaded32):
    tokenizer, model, image_processor, _ = loaded32
    questions = ["What is the color of the circle?", "How many shapes are there in the image? Answer briefly.", "Q"]
    ids = [prompt_ids(tokenizer, q) for q in questions]
    return ids, pixels(image_processor, model, *[random_image(10 + i) for i in range(3)])


def _run(model, method, ids, px, **kwargs):
    model.set_pruning(method)
    try:
        out = model.generate(ids, images=px, max_new_tokens=kwargs.pop("max_new_tokens", 6), **kwargs)
    finally:
        model.set_pruning(None)
    return out, model.last_accounts


@pytest.mark.parametrize("key", sorted(REFERENCE))
def test_a_32_layer_model_reports_the_reference_equal_tokens(loaded32, samples, key):
    _, model, _, _ = loaded32
    ids, px = samples
    counts, spans, _ = REFERENCE[key]
    _, accounts = _run(model, SparseVLM(*key), ids[0][None], px[:1], max_new_tokens=1)
    account = accounts[0]
    assert account.visual_schedule() == counts
    assert Fraction(sum(account.visual_after_layer), 32) == _spec_value(counts, spans)
    inputs = [576] + account.visual_after_layer[:-1]
    assert account.equal_tokens("input") == sum(inputs) / 32


@pytest.mark.parametrize("version", ["1_0", "2_0"])
@pytest.mark.parametrize("budget", [50, 100, 150, 256, 400])
def test_unlisted_budgets_get_a_schedule_within_one_token(version, budget):
    schedule = score.schedule_for(budget, version)
    counts = score.visual_counts(schedule, 576, 32, recycling=version == "1_0")
    assert abs(sum(counts) / 32 - budget) <= 1
    assert list(schedule) == sorted(schedule, reverse=True)  # the layers never grow the budget back


def test_unlisted_budget_through_the_model(loaded32, samples):
    _, model, _, _ = loaded32
    ids, px = samples
    _, accounts = _run(model, SparseVLM("1_0", 150), ids[1][None], px[1:2], max_new_tokens=1)
    assert abs(accounts[0].equal_tokens() - 150) <= 1


@pytest.mark.parametrize("budget", [0, -3, 576, 1000, 20])
def test_budgets_that_cannot_be_met_raise(budget):
    with pytest.raises(ValueError, match="RETAIN_TOKN"):
        score.schedule_for(budget, "1_0")


def test_model_with_fewer_layers_than_the_pruning_layers_is_refused(loaded):
    _, model, _, _ = loaded  # 4 decoder layers
    with pytest.raises(ValueError, match="only 4 decoder layers"):
        model.set_pruning(SparseVLM("2_0", 128))
    with pytest.raises(ValueError, match="v1.0 prunes after layers"):
        model.set_pruning(SparseVLM("v1.0"))


@pytest.mark.parametrize("method", [SparseVLM("1_0", 64), SparseVLM("2_0", 128), SparseVLM("v1.0", scale=9, bias=6)])
def test_batch_of_three_equals_one_by_one(loaded32, samples, method):
    _, model, _, _ = loaded32
    ids, px = samples
    singles = [_run(model, method, x[None], px[i : i + 1]) for i, x in enumerate(ids)]
    batched, accounts = _run(model, method, ids, px)
    for i, (out, single_accounts) in enumerate(singles):
        assert batched[i, : out.shape[1]].tolist() == out[0].tolist()
        assert accounts[i].visual_after_layer == single_accounts[0].visual_after_layer
        for layer, kept in single_accounts[0].kept.items():
            assert accounts[i].kept[layer].tolist() == kept.tolist()


@pytest.mark.parametrize("method", [SparseVLM("1_0", 96), SparseVLM("2_0", 64)])
def test_eager_and_sdpa_keep_the_same_tokens_and_answer_the_same(loaded32, samples, method):
    _, model, _, _ = loaded32
    ids, px = samples
    sdpa, sdpa_accounts = _run(model, method, ids[1][None], px[1:2])
    model.set_attn_implementation("eager")
    try:
        eager, eager_accounts = _run(model, method, ids[1][None], px[1:2])
    finally:
        model.set_attn_implementation("sdpa")
    assert eager.tolist() == sdpa.tolist()
    for layer, kept in sdpa_accounts[0].kept.items():
        assert eager_accounts[0].kept[layer].tolist() == kept.tolist()


class ReplayRaters(SparseVLM):
    """The same method, with the raters fixed (so a longer prompt does not pick new ones)."""

    def __init__(self, base: SparseVLM, raters):
        self.__dict__.update(base.__dict__)
        self.raters = raters

    def plan(self, layouts, model, inputs):
        plan = SparseVLMPlan(self, layouts, model, inputs)
        plan.raters = self.raters
        return plan


@pytest.mark.parametrize("method", [SparseVLM("1_0", 128), SparseVLM("2_0", 96)])
def test_each_decode_step_equals_a_cache_free_forward_over_the_kept_tokens(loaded32, samples, method):
    """Decoding with the pruned per-layer cache (and each version's decode positions: per-layer cache length for
    1_0, original positions for 2_0) gives the logits of a cache-free prefill over prompt + generated tokens that
    prunes the same tokens (same raters; raters attend only to earlier keys, so their scores do not change)."""
    from llava.sparse.engine import layouts_from_spans

    _, model, _, _ = loaded32
    ids, px = samples
    inputs = model.prepare_inputs(ids[0][None], px[:1])
    layouts = layouts_from_spans(inputs.image_spans, inputs.lengths, inputs.inputs_embeds.shape[1])
    replay = ReplayRaters(method, method.plan(layouts, model, inputs).raters)
    model.set_pruning(replay)
    try:
        prefill = model.prefill(ids[0][None], images=px[:1])
        logits = model.lm_head(prefill.hidden_states[:, -1]).float()
        sequence = ids[0]
        for _ in range(4):
            token = int(logits.argmax(-1))
            sequence = torch.cat([sequence, torch.tensor([token])])
            logits = model.decode_step(torch.tensor([token]), prefill.cache)
            cache_free = model(sequence[None], images=px[:1])[:, -1]
            torch.testing.assert_close(logits, cache_free, atol=1e-4, rtol=0)
    finally:
        model.set_pruning(None)


def test_seeded_recycling_is_deterministic(loaded32, samples):
    _, model, _, _ = loaded32
    ids, px = samples
    a, _ = _run(model, SparseVLM("1_0", 64, seed=5), ids[2][None], px[2:3])
    b, _ = _run(model, SparseVLM("1_0", 64, seed=5), ids[2][None], px[2:3])
    assert a.tolist() == b.tolist()


def test_recycling_finds_known_clusters_and_averages_them():
    torch.manual_seed(0)
    centres = torch.tensor([[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0], [0.0, 10.0, 10.0, 0.0]])
    points = torch.cat([c + 0.1 * torch.randn(8, 4) for c in centres])
    assignment, centre_rows = dpc_knn_clusters(points, num_clusters=3, k=3, generator=torch.Generator().manual_seed(0))
    groups = [set(assignment[i * 8 : (i + 1) * 8].tolist()) for i in range(3)]
    assert all(len(g) == 1 for g in groups) and len(set.union(*groups)) == 3
    merged = recycle(points, 3, torch.Generator().manual_seed(0))
    expected = torch.stack([points[i * 8 : (i + 1) * 8].mean(0) for i in range(3)])
    order = [next(iter(g)) for g in groups]  # cluster id of each blob
    torch.testing.assert_close(merged[order], expected, atol=1e-5, rtol=1e-5)
    assert {int(assignment[c]) for c in centre_rows} == {0, 1, 2}  # each centre heads its own cluster


@pytest.mark.parametrize("rank", [1, 3, 7])
def test_v1_rank_budget_on_blocks_of_known_rank(rank):
    g = torch.Generator().manual_seed(rank)
    relation = torch.rand(12, rank, generator=g) @ torch.rand(rank, 40, generator=g)
    assert int(torch.linalg.matrix_rank(relation)) == rank
    assert rank_budget(relation, 40, scale=2.5, bias=1) == min(int(rank * 2.5 + 1), 39)
    assert rank_budget(relation, 40, scale=100, bias=0) == 39  # capped at V - 1
    square = torch.rand(6, 6, generator=g) + torch.eye(6)
    assert rank_budget(square, 6, scale=1, bias=0) is None  # rank == V: no pruning


def test_gravity_table_equals_the_brute_force_rope_product():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=256, num_attention_heads=2, head_dim=128)
    rotary = LlamaRotaryEmbedding(config)
    length = 700
    ones = torch.ones(1, 1, length, 128, dtype=torch.float64)
    cos, sin = rotary(ones.float(), torch.arange(length)[None])
    q, k = apply_rotary_pos_emb(ones, ones, cos.double(), sin.double())
    brute = (q[0, 0] @ k[0, 0].T) / 128**0.5  # [L, L], what the reference builds per head
    table = gravity_table(rotary.inv_freq, length - 1).double()
    distance = (torch.arange(length)[:, None] - torch.arange(length)[None, :]).abs()
    torch.testing.assert_close(table[distance], brute, atol=1e-4, rtol=1e-5)
    assert abs(float(table[0]) - 11.31) < 0.01 and abs(float(table[10]) - 7.57) < 0.01  # spec's values


def test_raters_are_the_text_tokens_the_image_relates_to():
    text = torch.eye(6) * 4  # six orthogonal text tokens
    visual = torch.stack([text[1], text[4], text[1] + text[4], text[4]])  # the image talks about tokens 1 and 4
    assert select_raters(visual, text).tolist() == [1, 4]


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_pruning_args(parser)
    return parser.parse_args(list(argv))


def test_environment_and_flags_select_the_reference_settings():
    m = pruning_from_env({"RETAIN_TOKN": "128", "USE_VERSION": "2_0"})
    assert isinstance(m, SparseVLM) and (m.version, m.retained_tokens) == ("2_0", 128)
    assert pruning_from_env({}).name == "none"
    assert pruning_from_env({"RETAIN_TOKN": "64", "METHOD": "none"}).name == "none"
    v1 = pruning_from_args(_args("--sparse", "--scale", "9", "--bias", "6"), {})
    assert (v1.version, v1.scale, v1.bias) == ("v1.0", 9.0, 6.0)
    flag = pruning_from_args(_args("--retained-tokens", "96"), {"RETAIN_TOKN": "64"})
    assert (flag.version, flag.retained_tokens) == ("1_0", 96)
    with pytest.raises(ValueError, match="RETAIN_TOKN='abc'"):
        pruning_from_env({"RETAIN_TOKN": "abc"})
    with pytest.raises(ValueError, match="choose one of"):
        pruning_from_env({"METHOD": "tome"})


def test_environment_is_read_when_the_model_is_built(tiny_llava_32, monkeypatch):
    from llava.model.builder import load_pretrained_model

    monkeypatch.setenv("RETAIN_TOKN", "96")
    monkeypatch.setenv("USE_VERSION", "2_0")
    _, model, _, _ = load_pretrained_model(str(tiny_llava_32), device="cpu")
    assert (model.pruning.version, model.pruning.retained_tokens) == ("2_0", 96)
    monkeypatch.setenv("RETAIN_TOKN", "20")
    with pytest.raises(ValueError, match="cannot be met"):
        load_pretrained_model(str(tiny_llava_32), device="cpu")


@pytest.mark.parametrize("version", ["1_0", "2_0"])
def test_decode_positions_follow_each_versions_position_policy(loaded32, samples, version):
    """1_0 renumbers the kept tokens 0..n-1 (so a layer's next position is its cache length); 2_0 keeps the
    original ids (so every layer continues from the full prompt length)."""
    _, model, _, _ = loaded32
    ids, px = samples
    model.set_pruning(SparseVLM(version, 64))
    try:
        prefill = model.prefill(ids[0][None], images=px[:1])
    finally:
        model.set_pruning(None)
    cache, full = prefill.cache, prefill.inputs.lengths[0]
    for layer in range(model.config.num_hidden_layers):
        expected = cache.layer_length(layer) if version == "1_0" else full
        assert int(cache.next_position(layer)[0]) == expected
    assert cache.layer_length(0) == full and cache.layer_length(31) < full - 500
