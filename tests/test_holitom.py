"""HoliTom: the spec's DP example, DPC-kNN merge and inner running-average arithmetic by hand, the outer merge on a
hand-made clip, the tower score against transformers' eager attention, and the method on the tiny Video-LLaVA
(keep-everything = unpruned, batch = one by one, the inner merge's ranking against transformers' eager attention)
and on Qwen2.5-VL video (kept tokens keep their 3-D ids)."""

import argparse
import math

import pytest
import torch
import transformers

from llava.model.anyres import frames_layout
from llava.model.builder import load_pretrained_model
from llava.sparse.engine import Selection
from llava.sparse.holitom import (
    HoliTom,
    cluster_merge,
    mean_attention_received,
    running_merge,
    static_counts,
    static_windows,
)
from llava.sparse.methods import add_pruning_args, pruning_from_args
from llava.testing.video_llava import convert_video_llava_to_hf, write_tiny_video_llava
from llava.testing.videos import synthetic_frames, write_video

from .test_video_llava import FRAMES, PATCHES, QUESTIONS, hf_inputs, prompt


def spec_similarity() -> torch.Tensor:
    """4 frames, 2 positions: position 0 static over pairs (0, 1) and (1, 2), not (2, 3); position 1 never."""
    return torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.1, 0.1]])


def test_spec_dp_example():
    count = static_counts(spec_similarity(), tau=0.5)
    assert (count[0, 1], count[1, 2], count[0, 2]) == (1, 1, 2)
    assert count[:, 3].tolist() == [0, 0, 0, 0] and count[3].tolist() == [0, 0, 0, 0]
    windows, saved = static_windows(spec_similarity(), tau=0.5)
    assert windows == [(0, 2), (3, 3)] and saved == 2
    assert static_windows(spec_similarity(), tau=0.5, max_window=2) == ([(0, 1), (2, 2), (3, 3)], 1)  # 1 then a tie


def test_dpc_knn_merge_by_hand():
    """Points 0, .1, .3, 2, 2.1, 4 (D = 1), 3 clusters so k = 3: densities exp(-mean of the squared distances to
    itself and its 2 nearest) = .967, .984, .958, .380, .339, .079; distance to the nearest denser point (the densest
    takes the largest distance, 4) times density: .097, 3.93, .19, .65, .034, .15 -> centres 0.1, 0.3, 2.0. 0 joins
    0.1; 2.1 and 4 join 2.0: 0.6 x 0.1 + 0.4 x 0 = 0.06; 0.3 alone; 0.6 x 2 + 0.4 x (2.1 + 4) / 2 = 2.42."""
    x = torch.tensor([0.0, 0.1, 0.3, 2.0, 2.1, 4.0])[:, None]
    centres, merged = cluster_merge(x, 3, generator=torch.Generator().manual_seed(0))
    assert centres.tolist() == [1, 2, 3]
    torch.testing.assert_close(merged[:, 0], torch.tensor([0.06, 0.3, 2.42]))


def test_inner_running_merge_by_hand_and_as_a_sequential_loop():
    """Keep the 2 of 4 most attended (0 and 2); 1 and 3 are both closest to 0 by cosine, and are averaged into it in
    index order: (([1, 0] + [1, .1]) / 2 + [2, .2]) / 2 = [1.5, .125]."""
    states = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [2.0, 0.2]])
    kept, merged = running_merge(states, torch.tensor([0.9, 0.1, 0.8, 0.2]), 2)
    assert kept.tolist() == [0, 2]
    torch.testing.assert_close(merged, torch.tensor([[1.5, 0.125], [0.0, 1.0]]))

    generator = torch.Generator().manual_seed(3)
    states, scores = torch.randn(40, 8, generator=generator), torch.rand(40, generator=generator)
    kept, merged = running_merge(states, scores, 6)
    top = torch.topk(scores, 6).indices
    expected = states.clone()
    for i in range(40):  # the reference's loop
        if i in top:
            continue
        sims = torch.nn.functional.cosine_similarity(states[i][None], states[top], dim=-1)
        target = top[sims.argmax()]
        expected[target] = (expected[target] + states[i]) / 2
    assert torch.equal(merged, expected[kept])


def test_outer_merge_on_a_hand_made_clip():
    """4 frames of [CLS] + 4 patches; position 0 is nearly the same in frames 0-2 (the DP example): windows (0, 2),
    (3, 3), 2 tokens saved, so rho' = 0.5 / (14 / 16) = 4 / 7. Window (0, 2): its one static position becomes
    round(4 / 7) = 1 token, the mean of its three frames (a lone centre); each frame keeps its [CLS] and the top
    ceil(3 x 4 / 7) = 2 of its 3 dynamic patches by score, in raster order. Frame 3 keeps ceil(4 x 4 / 7) = 3."""
    generator = torch.Generator().manual_seed(0)
    dim = 6
    patches = torch.randn(4, 4, dim, generator=generator)  # dynamic: independent random vectors
    patches[:3, 0] = torch.tensor([3.0, 0, 0, 0, 0, 0]) + 0.05 * torch.randn(3, dim, generator=generator)
    cls = torch.randn(4, 1, dim, generator=generator)
    embeddings = torch.cat([cls, patches], dim=1).reshape(-1, dim)  # frames_layout order
    scores = torch.tensor([[0, 1, 3, 2], [0, 3, 2, 1], [0, 2, 1, 3], [4, 1, 3, 2]], dtype=torch.float32)
    method = HoliTom(0.5, tau=0.9, k=0)
    method.prepare(None, torch.tensor([[1, 2]]))
    layout = frames_layout(4, 2, cls=True)
    chosen = method.select_projected(layout, embeddings, {"received": scores})
    assert isinstance(chosen, Selection)
    expected_rows = [
        patches[:3, 0].mean(dim=0),
        cls[0, 0], patches[0, 2], patches[0, 3],
        cls[1, 0], patches[1, 1], patches[1, 2],
        cls[2, 0], patches[2, 1], patches[2, 3],
        cls[3, 0], patches[3, 0], patches[3, 2], patches[3, 3],
    ]  # fmt: skip
    torch.testing.assert_close(chosen.features, torch.stack(expected_rows))
    assert chosen.tokens.view.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    assert chosen.tokens.patch.tolist() == [0, -1, 2, 3, -1, 1, 2, -1, 1, 3, -1, 0, 2, 3]
    assert method.take_flops() > 0
    # keep everything: ratio 1 and tau 1 (no static window) give the block back in order
    everything = HoliTom(1.0, tau=1.0, k=0)
    everything.prepare(None, torch.tensor([[1]]))
    same = everything.select_projected(layout, embeddings, {"received": scores})
    assert torch.equal(same.features, embeddings) and torch.equal(same.tokens.patch, layout.patch)


def test_flags():
    parser = argparse.ArgumentParser()
    add_pruning_args(parser)
    method = pruning_from_args(parser.parse_args(["--method", "holitom"]), env={})
    assert (method.ratio, method.tau, method.k, method.r, method.budget) == (0.1, None, 18, 0.5, None)
    method = pruning_from_args(parser.parse_args(["--method", "holitom"]), env={"RETAIN_RATIO": "0.25"})
    assert method.ratio is None and method.budget.ratio == 0.25
    args = ["--method", "holitom", "--holitom-ratio", "0.2", "--holitom-tau", "0.7", "--holitom-k", "0"]
    method = pruning_from_args(parser.parse_args(args), env={})
    assert (method.ratio, method.tau, method.k) == (0.2, 0.7, 0) and "w/o inner" in method.describe()


# -- the tiny Video-LLaVA -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("holitom")


@pytest.fixture(scope="module")
def parity(root):
    """Temporal parts zeroed (so transformers' VideoLlava computes the same), ours and transformers' on its -hf
    conversion, and two clips."""
    folder = write_tiny_video_llava(root / "zero", seed=2, zero_temporal=True)
    tokenizer, model, processor = load_pretrained_model(str(folder), device="cpu", pruning=None)[:3]
    hf = convert_video_llava_to_hf(folder, root / "zero-hf")
    reference = transformers.VideoLlavaForConditionalGeneration.from_pretrained(
        str(hf), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    paths = [
        write_video(root / "a.mp4", synthetic_frames(37, 96, 64)),
        write_video(root / "b.mkv", synthetic_frames(12, 64, 80)),
    ]
    return tokenizer, model, reference, [model.load_video(path, processor) for path in paths]


def run(model, method, ids, videos, new_tokens=4):
    model.set_pruning(method)
    try:
        return model.generate(ids, videos=videos, max_new_tokens=new_tokens, eos_token_id=-1), model.last_accounts
    finally:
        model.set_pruning(None)


def test_tower_score_equals_eager_attention(root, parity):
    """The temporal tower (attention across frames on): per frame, the selected layer's attention averaged over heads
    and queries, at the patch keys, as transformers' eager CLIP attention gives it."""
    _, _, _, clips = parity
    _, model, _ = load_pretrained_model(str(write_tiny_video_llava(root / "temporal", seed=1)), device="cpu")[:3]
    tower = model.model.video_tower
    features, scores = mean_attention_received(tower, clips[0][None])
    assert torch.equal(features, tower(clips[0][None]))
    vision = tower.vision_tower
    previous = vision.config._attn_implementation
    vision.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            attentions = vision(pixel_values=tower.frames(clips[0][None]), output_attentions=True).attentions
    finally:
        vision.config._attn_implementation = previous
    expected = attentions[tower.num_layers_used - 1].mean(dim=1).mean(dim=1)[:, 1:]
    assert scores.shape == (1, FRAMES, PATCHES)
    torch.testing.assert_close(scores[0], expected, atol=1e-5, rtol=0)


def test_keeping_everything_equals_unpruned(parity):
    tokenizer, model, _, clips = parity
    ids = prompt(tokenizer, QUESTIONS[1])[None]
    with torch.no_grad():
        unpruned = model(ids, videos=[clips[1]])
        model.set_pruning(HoliTom(1.0, tau=1.0, k=0))
        try:
            pruned = model(ids, videos=[clips[1]])
        finally:
            model.set_pruning(None)
    assert torch.equal(unpruned, pruned)


def test_batch_of_two_clips_equals_one_by_one(parity):
    """Static windows at tau 0.65 on these clips, clustering, and the inner merge after layer 1."""
    tokenizer, model, _, clips = parity
    ids = [prompt(tokenizer, q) for q in QUESTIONS]

    def method():
        return HoliTom(0.3, tau=0.65, k=2, r=0.5)

    together, accounts = run(model, method(), ids, clips)
    for i in range(2):
        alone, account = run(model, method(), ids[i][None], [clips[i]])
        assert together[i].tolist() == alone[0].tolist()
        assert accounts[i].visual_after_layer == account[0].visual_after_layer
        assert accounts[i].method_flops == account[0].method_flops
    for account in accounts:
        encoded, outer, inner = account.visual_schedule()
        assert encoded == FRAMES * (PATCHES + 1) and outer < encoded and inner == round(outer * 0.5)


def test_inner_merge_ranks_by_transformers_attention(parity):
    """Outer merge off (ratio 1, tau 1): after layer k-1 = 1 the kept tokens are the top round(136 x 0.5) = 68 of the
    last prompt token's head-mean attention row in transformers' eager layer 1, and keep their original positions."""
    tokenizer, model, reference, clips = parity
    ids = prompt(tokenizer, QUESTIONS[0])
    inputs = hf_inputs(reference, ids, clips[0])
    with torch.no_grad():
        attentions = reference(**inputs, output_attentions=True).attentions
    start = int((inputs["input_ids"][0] == reference.config.video_token_index).nonzero()[0, 0])
    count = FRAMES * (PATCHES + 1)
    row = attentions[1][0].mean(dim=0)[-1, start : start + count]
    expected = torch.topk(row, 68).indices.sort().values
    _, accounts = run(model, HoliTom(1.0, tau=1.0, k=2, r=0.5), ids[None], [clips[0]], 1)
    assert accounts[0].kept[1].tolist() == expected.tolist()
    assert accounts[0].visual_schedule() == [count, 68]


def test_images_and_short_models_are_refused(parity):
    tokenizer, model, _, _ = parity
    with pytest.raises(ValueError, match="decoder layer after k-1"):
        model.set_pruning(HoliTom(k=18))
    model.set_pruning(HoliTom(k=0))
    try:
        with pytest.raises(ValueError, match="video clips only"):
            model(prompt(tokenizer, "Describe it.", "<image>")[None], images=torch.zeros(1, 3, 56, 56))
    finally:
        model.set_pruning(None)


# -- Qwen2.5-VL video -----------------------------------------------------------------------------------------------


def test_qwen_video_keeps_the_kept_tokens_3d_ids(tmp_path):
    """Frame pairs are HoliTom's frames, scored by the attention their patches receive in the tower; every
    token (a static one: its window's first frame at its centre's cell) has the M-RoPE ids of its cell; the inner
    merge runs after layer 1 and a batch of two equals one by one."""
    from llava.testing.qwen_checkpoints import write_tiny_qwen_vl

    from .test_qwen_video import SMALL, frames
    from .test_qwen_video import prompt as qwen_prompt

    folder = write_tiny_qwen_vl(tmp_path / "qwen", seed=1)
    tokenizer, model, processor, _ = load_pretrained_model(str(folder), device="cpu", pruning=None)
    videos = [
        model.load_video(frames(10, 8, 56, 84), processor, fps=1.0, **SMALL),
        model.load_video(frames(11, 6, 84, 56), processor, fps=1.0, **SMALL),
    ]
    ids = [qwen_prompt(tokenizer, model, "What?"), qwen_prompt(tokenizer, model, "Which colours are in it?")]
    full = model.prepare_inputs(ids[0][None], videos=videos[:1])
    model.set_pruning(HoliTom(0.5, tau=0.5, k=0))
    try:
        pruned = model.prepare_inputs(ids[0][None], videos=videos[:1])
    finally:
        model.set_pruning(None)
    tokens = pruned.images[0].tokens
    (start, count), (full_start, full_count) = pruned.image_spans[0][0], full.image_spans[0][0]
    assert full_count == 24 and math.ceil(24 * 0.5) <= count < full_count
    assert torch.equal(
        pruned.position_ids[0, start : start + count], full.position_ids[0, full_start + tokens.source()]
    )
    assert torch.equal(pruned.position_ids[0, start + count :], full.position_ids[0, full_start + full_count :])

    together, accounts = run(model, HoliTom(0.5, tau=0.5, k=2), ids, videos, 3)
    for i in range(2):
        alone, _ = run(model, HoliTom(0.5, tau=0.5, k=2), ids[i][None], videos[i : i + 1], 3)
        assert together[i].tolist() == alone[0].tolist()
    assert all(len(account.visual_schedule()) == 3 for account in accounts)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl"])
def test_qwen_tower_score_equals_eager_attention(tmp_path, family):
    """Qwen-VL's tower signals: at the tower's last full-attention block, each frame pair's attention (transformers'
    eager attention, weights captured) averaged over heads and queries per patch, and the head-mean keys after the
    rotary embedding, both averaged over each merged token's 2 x 2 patches, in the merged tokens' order; that order
    is the one transformers gives the merger's output."""
    import importlib

    from transformers import AttentionInterface

    from llava.model.language_model.qwen_vl import in_merged_order, run_with_attention_received
    from llava.testing.qwen_checkpoints import write_tiny_qwen_vl

    from .test_qwen_video import frames

    folder = write_tiny_qwen_vl(tmp_path / family, family=family, seed=4)
    _, model, processor, _ = load_pretrained_model(str(folder), device="cpu", pruning=None)
    sizes = {"min_pixels": 28 * 28 * 40, "max_pixels": 28 * 28 * 48}  # 8 x 6 merged tokens: 2 x 2 windows of 4 x 4
    clips = [model.load_video(frames(9, 4, 224, 168), processor, fps=1.0, **sizes)]
    clips.append(model.load_video(frames(5, 4, 168, 224), processor, fps=1.0, **sizes))
    visual = model.model.visual
    pixels = torch.cat([clip.pixels for clip in clips]).to(visual.dtype)
    thw = torch.tensor([[int(x) for x in clip.grid_thw] for clip in clips])
    full_blocks = getattr(visual, "fullatt_block_indexes", None) or [len(visual.blocks) - 1]
    scored = visual.blocks[max(full_blocks)].attn
    eager = importlib.import_module(type(scored).__module__).eager_attention_forward
    weights, key_states, merger_input = [], [], []

    def capture(module, query, key, value, *args, **kwargs):
        output, attention = eager(module, query, key, value, *args, **kwargs)
        if module is scored:
            weights.append(attention[0])  # [heads, S, S]: one frame pair
            key_states.append(key[0].mean(dim=0))  # [S, head_dim]: after the rotary embedding, head-mean
        return output, attention

    AttentionInterface.register("holitom_capture", capture)
    previous = visual.config._attn_implementation
    visual.config._attn_implementation = "holitom_capture"
    handle = visual.merger.register_forward_pre_hook(lambda module, args: merger_input.append(args[0]))
    try:
        with torch.no_grad():
            reference = visual(pixels, grid_thw=thw).pooler_output
    finally:
        visual.config._attn_implementation = previous
        handle.remove()
    with torch.no_grad():
        merged, scores, keys = run_with_attention_received(visual, pixels, thw)
        # the ordering, checked on the merger: our order applied to its rows gives transformers' output
        assert torch.equal(in_merged_order(visual, visual.merger(merger_input[0]), thw), reference)
        if family == "qwen2_5_vl":  # and the blocks' order is not the merged one there
            assert not torch.equal(visual.merger(merger_input[0]), reference)
    torch.testing.assert_close(merged, reference, atol=1e-5, rtol=0)
    per_patch = torch.cat([w.mean(dim=0).mean(dim=0) for w in weights])  # the blocks' order
    assert len(weights) == int(thw[:, 0].sum()) and len(per_patch) == len(pixels)
    expected = in_merged_order(visual, per_patch.view(-1, 4).mean(dim=1), thw)
    torch.testing.assert_close(scores, expected.float(), atol=1e-5, rtol=0)
    expected_keys = in_merged_order(visual, torch.cat(key_states).view(len(scores), 4, -1).mean(dim=1), thw)
    torch.testing.assert_close(keys, expected_keys.float(), atol=1e-5, rtol=0)
    assert not torch.allclose(scores, torch.full_like(scores, float(scores.mean())))  # not uniform
