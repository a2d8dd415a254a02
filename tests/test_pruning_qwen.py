"""Pruning methods on Qwen2.5-VL / Qwen2-VL: budgets per image, kept 3-D positions, batches, decoding, FastV against
transformers' eager attention, SparseVLM+'s gravity under M-RoPE against a brute-force rotation, and clear errors
for methods that need a [CLS] token."""

import pytest
import torch
import transformers
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import rotate_half

from llava.conversation import get_conv_template
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.sparse.engine import PruningMethod
from llava.sparse.fastv import FastV, FastVPlan
from llava.sparse.pre_llm import FasterVLM, RandomPruning, UniformPruning
from llava.sparse.sparsevlm import SparseVLM, mrope_gravity, select_raters
from llava.sparse.visionzip import VisionZip

from .helpers import random_image

SIZES = [(140, 112), (84, 168), (112, 112)]  # drawn at 4x: 560x448, 336x672, 448x448 -> 16x20, 24x12, 16x16 tokens


@pytest.fixture(scope="module")
def qwen16(tmp_path_factory):
    """A 16-layer tiny Qwen2.5-VL: deep enough for SparseVLM's pruning layers 2 / 6 / 15."""
    from llava.testing.qwen_checkpoints import write_tiny_qwen_vl

    folder = write_tiny_qwen_vl(tmp_path_factory.mktemp("q16") / "qwen2_5_vl", num_layers=16, seed=3)
    tokenizer, model, processor, _ = load_pretrained_model(
        str(folder), device="cpu", pruning=None, min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 1024
    )
    return folder, tokenizer, model, processor


def prompt(tokenizer, model, question):
    conv = get_conv_template(model.config.conv_mode)
    conv.append_message(conv.roles[0], "<image>\n" + question)
    conv.append_message(conv.roles[1], None)
    return tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")


@pytest.fixture(scope="module")
def batch(qwen16):
    _, tokenizer, model, processor = qwen16
    images = [random_image(10 + i, size).resize((size[0] * 4, size[1] * 4)) for i, size in enumerate(SIZES)]
    questions = ["What is the colour of the circle?", "How many shapes are there? Answer briefly.", "Where?"]
    ids = [prompt(tokenizer, model, q) for q in questions]
    return ids, process_images(images, processor, model.config), [im.size for im in images]


def _generate(model, method, ids, px, sizes, **kwargs):
    model.set_pruning(method)
    try:
        out = model.generate(ids, images=px, image_sizes=sizes, max_new_tokens=5, eos_token_id=-1, **kwargs)
        return out, model.last_accounts
    finally:
        model.set_pruning(None)


METHODS = [
    FastV(k=2, retained_tokens=40),
    SparseVLM("1_0", 100),  # 16 layers: layers 0-1 see every token, so 40 of ~300 is out of SparseVLM's reach
    SparseVLM("2_0", 100),
    SparseVLM("2_0", 100, pruning_layers=(2, 5, 13)),
    SparseVLM("v1.0", scale=2.0, pruning_layers=(2, 6, 10, 14)),  # rank-adaptive: counts differ per sample
    RandomPruning(40),
    UniformPruning(40),
    FastV(k=2, drop_ratio=0.5),
    VisionZip(40),  # LightCompress's port: 34 dominant + 6 contextual per image
]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.describe())
def test_batch_of_three_sizes_equals_one_by_one(qwen16, batch, method):
    _, _, model, _ = qwen16
    ids, px, sizes = batch
    together, accounts = _generate(model, method, ids, px, sizes)
    visual = [a.num_encoded for a in accounts]
    assert len(set(visual)) == 3  # three grids of different sizes
    for i in range(3):
        alone, alone_accounts = _generate(model, method, ids[i][None], px[i : i + 1], sizes[i : i + 1])
        assert together[i].tolist() == alone[0].tolist()
        assert accounts[i].visual_after_layer == alone_accounts[0].visual_after_layer


@pytest.mark.parametrize("method", METHODS[:4] + METHODS[5:6] + METHODS[-1:], ids=lambda m: m.describe())
def test_budget_is_an_absolute_count_per_image(qwen16, batch, method):
    _, _, model, _ = qwen16
    ids, px, sizes = batch
    _, accounts = _generate(model, method, ids, px, sizes)
    for account in accounts:
        if isinstance(method, SparseVLM):  # equal tokens: the 576-token schedule of the same share, scaled
            assert abs(account.equal_tokens() - 100) <= 0.03 * account.num_visual
        else:
            assert account.visual_after_layer[-1] == 40
        assert account.num_encoded > 40


def test_keep_everything_gives_the_unpruned_logits(qwen16, batch):
    _, _, model, _ = qwen16
    ids, px, sizes = batch
    unpruned = model(ids, images=px, image_sizes=sizes)
    for method in (
        FastV(k=2, retained_tokens=10_000),
        RandomPruning(10_000),
        UniformPruning(10_000),
        VisionZip(10_000),
    ):
        model.set_pruning(method)
        try:
            torch.testing.assert_close(model(ids, images=px, image_sizes=sizes), unpruned, atol=1e-5, rtol=0)
        finally:
            model.set_pruning(None)


def test_ratio_budget_keeps_that_fraction_of_each_image(qwen16, batch):
    _, _, model, _ = qwen16
    ids, px, sizes = batch
    _, accounts = _generate(model, FastV(k=2, drop_ratio=0.75), ids, px, sizes)
    for account in accounts:
        assert account.visual_after_layer[-1] == round(account.num_encoded * 0.25)


def _eager_attentions(folder, model, ids, px, size):
    """transformers' own Qwen2.5-VL in eager mode with output_attentions on the same weights and 3-D positions:
    (attention probabilities per layer [1, H, L, L], index of the first visual token, visual count)."""
    reference = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(folder), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    rows, cols = model.image_grid(size)
    count = rows * cols
    at = int((ids == -200).nonzero()[0, 0])
    hf_ids = torch.cat([ids[:at], torch.full((count,), reference.config.image_token_id), ids[at + 1 :]])[None]
    with torch.no_grad():
        out = reference(
            input_ids=hf_ids,
            pixel_values=px,
            image_grid_thw=torch.tensor([[1, rows * 2, cols * 2]]),
            mm_token_type_ids=(hf_ids == reference.config.image_token_id).long(),
            output_attentions=True,
        )
    return out.attentions, at, count


def test_fastv_keeps_the_top_of_transformers_eager_last_row(qwen16, batch):
    """FastV's kept tokens = top-k of the head-mean attention of the last prompt token at layer K-1."""
    folder, _, model, _ = qwen16
    ids, px, sizes = batch
    _, accounts = _generate(model, FastV(k=2, retained_tokens=12), ids[:1], px[:1], sizes[:1])
    attentions, at, count = _eager_attentions(folder, model, ids[0], px[0], sizes[0])
    last_row = attentions[1][0, :, -1, at : at + count].mean(dim=0)
    assert accounts[0].kept[1].tolist() == torch.topk(last_row, 12).indices.sort().values.tolist()


@pytest.mark.parametrize("version", ["1_0", "2_0"])
def test_sparsevlm_first_pruning_keeps_the_top_of_brute_force_scores(qwen16, batch, version):
    """At SparseVLM's first pruning layer (2, on the unpruned sequence) the kept tokens are the top of the raters'
    attention to the image, from transformers' eager probabilities: mean over raters and heads (v1.5); for v2.0
    divided first by the gravity of all-ones q and k rotated by transformers' M-RoPE at the tokens' 3-D ids, then
    averaged over the heads with the most corrected mass."""
    folder, _, model, _ = qwen16
    ids, px, sizes = batch
    model.set_pruning(SparseVLM(version, 100, priority_heads=2))
    try:
        prefill = model.prefill(ids[0][None], images=px[:1], image_sizes=sizes[:1])
    finally:
        model.set_pruning(None)
    kept = prefill.accounts[0].kept[2]
    attentions, at, count = _eager_attentions(folder, model, ids[0], px[0], sizes[0])
    embeds = prefill.inputs.inputs_embeds[0]
    rows = at + count + select_raters(embeds[at : at + count], embeds[at + count :])
    probs = attentions[2][0][:, rows, at : at + count]  # [H, raters, V]
    if version == "2_0":
        cos, sin = model.model.rotary_emb(torch.zeros(1), prefill.inputs.position_ids[:1])
        ones = torch.ones_like(cos[0])
        rotated = ones * cos[0] + rotate_half(ones) * sin[0]
        corrected = probs / (rotated[rows] @ rotated[at : at + count].T / rotated.shape[-1] ** 0.5)
        probs = corrected[torch.topk(corrected.sum(dim=(1, 2)), 2).indices]
    scores = probs.mean(dim=(0, 1))
    assert 0 < len(kept) < count
    assert kept.sort().values.tolist() == torch.topk(scores, len(kept)).indices.sort().values.tolist()


def test_fastv_decode_steps_equal_a_cache_free_forward_over_the_kept_tokens(qwen16, batch):
    """Kept tokens keep their 3-D ids, and every generated token continues at max(prompt ids) + 1."""
    _, _, model, _ = qwen16
    ids, px, sizes = batch
    model.set_pruning(FastV(k=2, retained_tokens=12))
    try:
        prefill = model.prefill(ids[0][None], images=px[:1], image_sizes=sizes[:1])
    finally:
        model.set_pruning(None)
    kept = prefill.accounts[0].kept[1]
    largest = int(prefill.inputs.position_ids[0].max())
    assert all(int(s.next_position[0]) == largest + 1 for s in prefill.cache.segments)

    class Replay(FastV):
        def plan(self, layouts, m, inputs):
            plan = FastVPlan(self, layouts, m, inputs)
            plan.top_tokens = lambda b, scores, count: kept
            return plan

    model.set_pruning(Replay(k=2, retained_tokens=12))
    try:
        logits = model.lm_head(prefill.hidden_states[:, -1]).float()
        sequence = ids[0]
        for _ in range(3):
            token = int(logits.argmax(-1))
            sequence = torch.cat([sequence, torch.tensor([token])])
            logits = model.decode_step(torch.tensor([token]), prefill.cache)
            cache_free = model(sequence[None], images=px[:1], image_sizes=sizes[:1])[:, -1]
            torch.testing.assert_close(logits, cache_free, atol=1e-4, rtol=0)
    finally:
        model.set_pruning(None)


def test_sparsevlm_keeps_3d_positions_and_merged_tokens_take_their_centres(qwen16, batch):
    """No renumbering under M-RoPE: after each pruning layer the kept visual tokens carry their original (t, h, w)
    ids, and v1.5's recycled tokens carry the ids of a pruned token (their cluster centre)."""
    _, _, model, _ = qwen16
    ids, px, sizes = batch
    seen = []

    class Spy(SparseVLM):
        def plan(self, layouts, m, inputs):
            plan = super().plan(layouts, m, inputs)
            original = plan.rebuild

            def rebuild(state, keep, merged=None, renumber=False, merged_positions=None, **kwargs):
                new = original(state, keep, merged, renumber, merged_positions, **kwargs)
                seen.append((state.position_ids.clone(), keep, merged_positions, new.position_ids.clone(), renumber))
                return new

            plan.rebuild = rebuild
            return plan

    _generate(model, Spy("1_0", 100), ids[:1], px[:1], sizes[:1])
    assert len(seen) == 3
    for before, _keep, merged_positions, after, renumber in seen:
        assert not renumber and after.dim() == 3
        original = set(map(tuple, before[0].tolist()))
        assert set(map(tuple, after[0].tolist())) <= original  # every id an original one
        if merged_positions[0] is not None:
            assert all(tuple(p) in original for p in merged_positions[0].tolist())


def test_mrope_gravity_equals_all_ones_vectors_rotated_by_transformers_rope(qwen16):
    _, _, model, _ = qwen16
    rotary = model.model.rotary_emb
    positions = torch.tensor([[[0, 0, 0], [7, 7, 7], [7, 8, 9], [7, 12, 7], [30, 31, 32]]])  # [1, 5, 3]
    cos, sin = rotary(torch.zeros(1, dtype=torch.float32), positions)  # [1, 5, d]
    ones = torch.ones_like(cos[0])
    rotated = ones * cos[0] + rotate_half(ones) * sin[0]
    expected = rotated[[4, 3]] @ rotated[:3].T / rotated.shape[-1] ** 0.5
    got = mrope_gravity(rotary.inv_freq, rotary.mrope_section, positions[0, [4, 3]], positions[0, :3])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_cls_methods_say_which_methods_apply(qwen16):
    _, _, model, _ = qwen16
    with pytest.raises(ValueError, match=r"no \[CLS\].*sparsevlm, fastv, random, uniform"):
        model.set_pruning(FasterVLM(64))
    with pytest.raises(ValueError, match="per view"):
        model.set_pruning(RandomPruning(None, view_tokens=8))
    assert type(model.pruning) is PruningMethod


def test_pruning_layers_flag_reaches_sparsevlm():
    import argparse

    from llava.sparse.methods import add_pruning_args, pruning_from_args

    parser = argparse.ArgumentParser()
    add_pruning_args(parser)
    method = pruning_from_args(parser.parse_args(["--method", "sparsevlm", "--pruning-layers", "2", "5", "13"]), {})
    assert method.layers == (2, 5, 13) and "layers=2,5,13" in method.describe()
