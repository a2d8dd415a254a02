"""DyCoke's token temporal merging: the spec's hand example (F = 8, 4 tokens a frame, k = 0.5), F = 4 and odd frame
counts handled, and the method on the tiny Video-LLaVA (keep-everything = unpruned, batch = one by one, per-frame
counts with the [CLS] tokens kept, budgets, images refused) and on Qwen2.5-VL video (kept tokens keep their 3-D ids)."""

import argparse
from types import SimpleNamespace

import pytest
import torch

from llava.model.builder import load_pretrained_model
from llava.sparse.budget import Budget
from llava.sparse.dycoke import DyCoke, ttm_kept_positions
from llava.sparse.methods import add_pruning_args, pruning_from_args
from llava.testing.video_llava import write_tiny_video_llava
from llava.testing.videos import synthetic_frames, write_video

from .test_video_llava import FRAMES, PATCHES, QUESTIONS, prompt


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def test_spec_example_eight_frames_of_four_tokens():
    """k = 0.5 keeps int(0.5 x 4) = 2 tokens of frames 1, 2, 3, 5, 7 and all 4 of frames 0, 4, 6 (the last group's
    third frame stays whole): 22 tokens. A pruned frame keeps its two lowest same-position cosines to its anchor
    (frame t-1 for odd t, t-2 for t = 2 mod 4), in ascending similarity."""
    features = torch.randn(8, 4, 6, generator=torch.Generator().manual_seed(0))
    kept = ttm_kept_positions(features, keep=int((1 - 0.5) * 4))
    assert [len(k) for k in kept] == [4, 2, 2, 2, 4, 2, 4, 2] and sum(len(k) for k in kept) == 22
    for frame in (0, 4, 6):
        assert kept[frame].tolist() == [0, 1, 2, 3]
    for frame, anchor in ((1, 0), (3, 2), (5, 4), (7, 6), (2, 0)):
        sims = cosine(features[anchor], features[frame])
        assert kept[frame].tolist() == sims.argsort()[:2].tolist()
        assert sims[kept[frame][0]] <= sims[kept[frame][1]]
    raster = ttm_kept_positions(features, keep=2, order="raster")
    assert all(r.tolist() == sorted(k.tolist()) for r, k in zip(raster, kept, strict=True))


def test_four_frames_and_odd_counts():
    """F = 4 prunes frames 1 and 3 only (the reference crashes); an odd count keeps its unpaired last frame whole
    (the reference drops it); one frame is left alone."""
    features = torch.randn(5, 4, 3, generator=torch.Generator().manual_seed(1))
    assert [len(k) for k in ttm_kept_positions(features[:4], keep=1)] == [4, 1, 4, 1]
    assert [len(k) for k in ttm_kept_positions(features, keep=1)] == [4, 1, 1, 1, 4]  # frame 2 against 0 again
    assert [len(k) for k in ttm_kept_positions(features[:3], keep=1)] == [4, 1, 4]
    assert [len(k) for k in ttm_kept_positions(features[:1], keep=1)] == [4]


def test_flags_and_budget_mapping():
    parser = argparse.ArgumentParser()
    add_pruning_args(parser)
    method = pruning_from_args(parser.parse_args(["--method", "dycoke"]), env={})
    assert isinstance(method, DyCoke) and method.k == 0.7 and method.order == "similarity"
    method = pruning_from_args(parser.parse_args(["--method", "dycoke", "--dycoke-k", "0.5"]), env={})
    assert method.k == 0.5 and method.budget is None
    method = pruning_from_args(parser.parse_args(["--method", "dycoke", "--retained-ratio", "0.5"]), env={})
    assert method.k is None and method.budget.ratio == 0.5
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        DyCoke(1.0)
    with pytest.raises(ValueError, match="video clips only"):
        DyCoke().validate(SimpleNamespace(config=SimpleNamespace(model_type="llava_llama")))


# -- the tiny Video-LLaVA -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video_llava(tmp_path_factory):
    root = tmp_path_factory.mktemp("dycoke")
    tokenizer, model, processor = load_pretrained_model(
        str(write_tiny_video_llava(root / "ckpt", seed=1)), device="cpu", pruning=None
    )[:3]
    paths = [
        write_video(root / "a.mp4", synthetic_frames(37, 96, 64)),
        write_video(root / "b.mkv", synthetic_frames(12, 64, 80)),
    ]
    return tokenizer, model, processor, [model.load_video(path, processor) for path in paths]


def run(model, method, ids, videos, new_tokens=4):
    model.set_pruning(method)
    try:
        return model.generate(ids, videos=videos, max_new_tokens=new_tokens, eos_token_id=-1), model.last_accounts
    finally:
        model.set_pruning(None)


def test_keeping_everything_equals_unpruned(video_llava):
    """k = 0 in raster order lets every token through in its place: the logits are the unpruned ones."""
    tokenizer, model, _, clips = video_llava
    ids = prompt(tokenizer, QUESTIONS[1])[None]
    with torch.no_grad():
        unpruned = model(ids, videos=[clips[1]])
        model.set_pruning(DyCoke(0.0, order="raster"))
        try:
            pruned = model(ids, videos=[clips[1]])
        finally:
            model.set_pruning(None)
    assert torch.equal(unpruned, pruned)


def test_per_frame_counts_keep_the_cls_tokens(video_llava):
    """k = 0.5 on 8 frames of 16 patches: frames 0, 4, 6 whole (1 + 16), the others 1 + 8, [CLS] first in each."""
    tokenizer, model, _, clips = video_llava
    model.set_pruning(DyCoke(0.5))
    try:
        inputs = model.prepare_inputs(prompt(tokenizer, QUESTIONS[0])[None], videos=[clips[0]])
    finally:
        model.set_pruning(None)
    tokens = inputs.images[0].tokens
    assert tokens.per_view_counts() == [17, 9, 9, 9, 17, 9, 17, 9]
    starts = torch.cumsum(torch.tensor([0, 17, 9, 9, 9, 17, 9, 17]), 0)
    assert tokens.patch[starts].tolist() == [-1] * FRAMES and tokens.view[starts].tolist() == list(range(FRAMES))
    _, accounts = run(model, DyCoke(0.5), prompt(tokenizer, QUESTIONS[0])[None], [clips[0]], 1)
    meta = accounts[0].as_metadata()
    assert meta["visual_tokens"] == 96 and meta["visual_tokens_encoded"] == FRAMES * (PATCHES + 1)
    assert accounts[0].method_flops > 0


def test_batch_of_two_clips_equals_one_by_one(video_llava):
    tokenizer, model, _, clips = video_llava
    ids = [prompt(tokenizer, q) for q in QUESTIONS]
    together, accounts = run(model, DyCoke(0.7), ids, clips)
    for i in range(2):
        alone, account = run(model, DyCoke(0.7), ids[i][None], [clips[i]])
        assert together[i].tolist() == alone[0].tolist()
        assert accounts[i].visual_after_layer == account[0].visual_after_layer
        assert accounts[i].views_into_llm == account[0].views_into_llm
        assert accounts[i].method_flops == account[0].method_flops
    assert accounts[0].num_visual == 3 * 17 + 5 * (1 + int(0.3 * 16))


def test_budget_sets_the_per_frame_keep_count(video_llava):
    """A budget of 80 of 136 tokens: 3 whole frames (48) and 8 [CLS] leave 24 for 5 pruned frames: 4 each, 76."""
    tokenizer, model, _, clips = video_llava
    _, accounts = run(model, DyCoke(None, budget=Budget(80)), prompt(tokenizer, QUESTIONS[0])[None], [clips[0]], 1)
    assert accounts[0].num_visual == 76
    with pytest.raises(ValueError, match="below what TTM keeps"):
        run(model, DyCoke(None, budget=Budget(50)), prompt(tokenizer, QUESTIONS[0])[None], [clips[0]], 1)


def test_images_are_refused(video_llava):
    tokenizer, model, processor, _ = video_llava
    from llava.mm_utils import process_images

    from .helpers import random_image

    pixels = process_images([random_image(3, (90, 70))], processor, model.config)
    model.set_pruning(DyCoke())
    try:
        with pytest.raises(ValueError, match="video clips only"):
            model(prompt(tokenizer, "Describe it.", "<image>")[None], images=pixels)
    finally:
        model.set_pruning(None)


# -- Qwen2.5-VL video -----------------------------------------------------------------------------------------------


def test_qwen_video_keeps_the_kept_tokens_3d_ids(tmp_path):
    """Frame pairs are DyCoke's frames: 4 pairs of 6 cells, k = 0.5 keeps 3 of pairs 1 and 3; every kept token keeps
    the M-RoPE ids of its cell, and generation runs."""
    from llava.testing.qwen_checkpoints import write_tiny_qwen_vl

    from .test_qwen_video import SMALL, frames
    from .test_qwen_video import prompt as qwen_prompt

    folder = write_tiny_qwen_vl(tmp_path / "qwen", seed=1)
    tokenizer, model, processor, _ = load_pretrained_model(str(folder), device="cpu", pruning=None)
    video = model.load_video(frames(10, 8, 56, 84), processor, fps=1.0, **SMALL)
    ids = qwen_prompt(tokenizer, model, "What?")
    full = model.prepare_inputs(ids[None], videos=[video])
    model.set_pruning(DyCoke(0.5))
    try:
        pruned = model.prepare_inputs(ids[None], videos=[video])
        out = model.generate(ids[None], videos=[video], max_new_tokens=3, eos_token_id=-1)
    finally:
        model.set_pruning(None)
    tokens = pruned.images[0].tokens
    assert tokens.per_view_counts() == [6, 3, 6, 3] and out.shape == (1, 3)
    (start, count), (full_start, full_count) = pruned.image_spans[0][0], full.image_spans[0][0]
    assert full_count == 24 and count == 18
    assert torch.equal(
        pruned.position_ids[0, start : start + count], full.position_ids[0, full_start + tokens.source()]
    )
    assert torch.equal(pruned.position_ids[0, start + count :], full.position_ids[0, full_start + full_count :])


# -- the decode-time KV selection -----------------------------------------------------------------------------------


def decode_with_plan(model, method, ids, videos, steps):
    """Greedy prefill + `steps` decode steps through the engine: (tokens [B, steps + 1], decode logits per step
    [B, V], the decode plan)."""
    model.set_pruning(method)
    try:
        prefill = model.prefill(ids, videos=videos, max_new_tokens=steps)
        token = model.lm_head(prefill.hidden_states[:, -1]).argmax(-1)
        tokens, logits = [token], []
        for _ in range(steps):
            logits.append(model.decode_step(token, prefill.cache))
            token = logits[-1].argmax(-1)
            tokens.append(token)
    finally:
        model.set_pruning(None)
    return torch.stack(tokens, 1), logits, prefill.cache.decode_plan


def brute_force(model, method, ids, videos, new_ids, layer, p, similar=0.9):
    """A cache-free eager forward of prompt + `new_ids` (one sample) where each generated token's query row at
    layers >= `layer` sees only its step's selected visual keys, re-derived here from transformers' eager attention
    weights of layer `layer` - 1 (head mean; top int(len (1 - p)) of the span [start, start + visual - 1) when the
    cosine to the previous step's row is < `similar`, all keys otherwise). Returns (logits of the generated rows,
    rows a, whether each step selected)."""
    model.set_pruning(method)
    try:
        inputs = model.prepare_inputs(ids, videos=videos)
    finally:
        model.set_pruning(None)
    text = model.model
    prompt_len, steps = inputs.inputs_embeds.shape[1], new_ids.shape[1]
    hidden = torch.cat([inputs.inputs_embeds, text.embed_tokens(new_ids)], dim=1)
    positions = inputs.position_ids
    last = positions.amax(dim=tuple(range(1, positions.dim()))) + 1
    offsets = torch.arange(steps)[None] + last[:, None]
    new_positions = offsets if positions.dim() == 2 else offsets[..., None].expand(-1, -1, positions.shape[-1])
    positions = torch.cat([positions, new_positions], dim=1)
    total = prompt_len + steps
    (start, count) = inputs.image_spans[0][0]
    span = count - 1  # the reference's off-by-one
    causal = torch.ones(total, total).tril().bool()
    rows, selected, restricted = [], [], causal.clone()
    previous = None
    captured = {}
    weights_layer = text.layers[layer - 1].self_attn
    handle = weights_layer.register_forward_hook(lambda mod, args, out: captured.update(w=out[1]))
    original = model.attn_implementation
    model.set_attn_implementation("eager")
    try:
        embeddings = text.rotary_emb(hidden, positions)
        h = hidden
        for idx, decoder_layer in enumerate(text.layers):
            if idx == layer:  # the rows a are known now (layers < l are not restricted)
                for i in range(steps):
                    q = prompt_len + i
                    a = captured["w"][0, :, q, start : start + span].mean(0)
                    rows.append(a)
                    similarity = None if previous is None else torch.nn.functional.cosine_similarity(a, previous, dim=0)
                    chosen = similarity is None or float(similarity) < similar
                    selected.append(chosen)
                    previous = a
                    if chosen:
                        top = torch.topk(a, int(span * (1 - p))).indices
                        restricted[q, start : start + span] = False
                        restricted[q, start + top] = True
            allowed = causal if idx < layer else restricted
            mask = torch.zeros(1, 1, total, total).masked_fill(~allowed, torch.finfo(torch.float32).min)
            h = decoder_layer(h, attention_mask=mask, position_ids=None, position_embeddings=embeddings)
    finally:
        handle.remove()
        model.set_attn_implementation(original)
    logits = model.lm_head(text.norm(h))[0, prompt_len:].float()
    return logits, rows, selected


def check_against_brute_force(model, ids, videos, p, steps=4, layer=3, similar=0.9):
    tokens, logits, plan = decode_with_plan(model, DyCoke(0.5, p=p, layer=layer), ids, videos, steps)
    new_ids = tokens[:, :steps]
    expected, rows, selected = brute_force(model, DyCoke(0.5, p=None), ids, videos, new_ids, layer, p, similar)
    start, span = plan.starts[0], plan.spans[0]
    for step in range(steps):
        torch.testing.assert_close(plan.rows[step][0, start : start + span], rows[step], atol=1e-5, rtol=0)
        torch.testing.assert_close(logits[step][0], expected[step], atol=1e-4, rtol=1e-4)
    return selected


@pytest.mark.parametrize("similar", [0.9, -1.0])
@torch.no_grad()
def test_decode_selection_equals_brute_force_on_video_llava(video_llava, monkeypatch, similar):
    """p = 0.7: the engine's rows a equal transformers' eager head-mean weights of layer l - 1, and its decode logits
    equal a cache-free forward whose layers >= l see only each step's selected visual keys. With the reference's 0.9
    the tiny model's rows change enough that every step selects; a threshold of -1 makes every step after the first
    "similar", which must then attend to the full cache."""
    monkeypatch.setattr("llava.sparse.dycoke.SIMILAR", similar)
    tokenizer, model, _, clips = video_llava
    layer = min(3, model.config.text_config.num_hidden_layers - 1)
    ids = prompt(tokenizer, QUESTIONS[0])[None]
    selected = check_against_brute_force(model, ids, [clips[0]], 0.7, layer=layer, similar=similar)
    assert selected == ([True] * 4 if similar > 0 else [True, False, False, False])


@torch.no_grad()
def test_decode_selection_equals_brute_force_on_qwen(tmp_path):
    from llava.testing.qwen_checkpoints import write_tiny_qwen_vl

    from .test_qwen_video import SMALL, frames
    from .test_qwen_video import prompt as qwen_prompt

    folder = write_tiny_qwen_vl(tmp_path / "qwen", seed=1)
    tokenizer, model, processor, _ = load_pretrained_model(str(folder), device="cpu", pruning=None)
    video = model.load_video(frames(10, 8, 56, 84), processor, fps=1.0, **SMALL)
    layer = min(3, model.config.text_config.num_hidden_layers - 1)
    selected = check_against_brute_force(model, qwen_prompt(tokenizer, model, "What?")[None], [video], 0.5, layer=layer)
    assert selected[0]


def test_decode_keep_all_equals_ttm_only(video_llava):
    """p = 0 keeps every visual key: the same tokens as TTM alone (no decode plan)."""
    tokenizer, model, _, clips = video_llava
    ids = prompt(tokenizer, QUESTIONS[0])[None]
    ttm, _ = run(model, DyCoke(0.5, p=None), ids, [clips[0]], 6)
    keep_all, _ = run(model, DyCoke(0.5, p=0.0), ids, [clips[0]], 6)
    assert keep_all.tolist() == ttm.tolist()


def test_decode_flags():
    parser = argparse.ArgumentParser()
    add_pruning_args(parser)
    method = pruning_from_args(parser.parse_args(["--method", "dycoke"]), env={})
    assert method.p == 0.7 and method.layer == 3 and not method.full_span
    args = ["--method", "dycoke", "--dycoke-p", "0.8", "--dycoke-l", "2", "--dycoke-full-span"]
    method = pruning_from_args(parser.parse_args(args), env={})
    assert method.p == 0.8 and method.layer == 2 and method.full_span
    assert pruning_from_args(parser.parse_args(["--method", "dycoke", "--dycoke-no-decode"]), env={}).p is None
    with pytest.raises(ValueError, match="dycoke-p"):
        DyCoke(p=1.0)


def test_empty_decode_plan_changes_nothing(video_llava):
    """The engine's decode hook with a plan that asks for nothing gives the plain decode step's logits exactly."""
    from llava.sparse.engine import DecodePlan

    tokenizer, model, _, clips = video_llava
    ids = prompt(tokenizer, QUESTIONS[1])[None]
    _, plain, none = decode_with_plan(model, DyCoke(0.5, p=None), ids, [clips[1]], 4)
    hooked = DyCoke(0.5, p=None)
    hooked.decode_plan = lambda layouts, length: DecodePlan()
    _, with_plan, plan = decode_with_plan(model, hooked, ids, [clips[1]], 4)
    assert none is None and isinstance(plan, DecodePlan)
    assert all(torch.equal(a, b) for a, b in zip(with_plan, plain, strict=True))
