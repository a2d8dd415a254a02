"""PruMerge / PruMerge+: the spec's IQR example and merge property, the single-head attention of the layer after the
feature layer against hooks on transformers' own CLIP layer (and on LanguageBind's temporal layer), the reference's
token order and merged features against a loop written like the reference, fixed budgets, batch = one by one on
LLaVA-1.5 and Video-LLaVA, flags, and the refusals (truncated tower, LLaVA-NeXT, Qwen-VL)."""

import argparse
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionModel
from transformers.utils import logging as hf_logging

from llava.mm_utils import process_images
from llava.model.anyres import MERGED
from llava.model.builder import load_pretrained_model
from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower
from llava.sparse.budget import Budget
from llava.sparse.methods import add_pruning_args, pruning_from_args
from llava.sparse.prumerge import PruMerge, iqr_outlier_ratio, last_layer_signals, prune_merge, spatial_samples

from .helpers import prompt_ids, random_image

QUESTIONS = ["What is the colour of the largest object?", "How many shapes are there?"]


# -- the spec's examples -----------------------------------------------------------------------------------------------
def test_iqr_on_the_spec_example():
    scores = torch.tensor([1.0, 2, 3, 4, 5, 6, 7, 100])
    values = scores.numpy()
    assert np.percentile(values, 25) == 2.75 and np.percentile(values, 75) == 6.25  # upper bound 11.5
    assert iqr_outlier_ratio(scores) == 1 / 8


def test_merge_adds_attention_weighted_neighbours():
    x = torch.randn(5, 3)
    keys = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0.9, 0.1, 0], [0, 0, 1], [0, 0.5, 0.5]])
    kept = torch.tensor([0])
    only_kept = torch.tensor([0.6, 0, 0, 0, 0])  # every other patch has weight 0: the kept one is unchanged
    out = prune_merge(x, only_kept, keys, kept, neighbours=4)
    torch.testing.assert_close(out[0], x[0]) and torch.testing.assert_close(out[1], torch.zeros(3))
    w = 0.3  # one neighbour (patch 2, the most key-similar to patch 0) at weight w: x_0 + w x_2
    out = prune_merge(x, torch.tensor([0.5, 0.1, w, 0.05, 0.05]), keys, kept, neighbours=1)
    torch.testing.assert_close(out[0], x[0] + w * x[2])
    torch.testing.assert_close(out[1], 0.1 * x[1] + w * x[2] + 0.05 * x[3] + 0.05 * x[4])  # the extra token


def test_plus_spatial_samples():
    kept = torch.tensor([4, 0, 7])
    assert spatial_samples(1 / 8, 576, kept).tolist() == [x for x in range(0, 575, 2) if x not in (0, 4)]
    assert spatial_samples(0.4, 16, kept).tolist() == [x for x in range(15) if x not in (0, 4, 7)]  # stride 0 -> 1
    assert spatial_samples(0.0, 16, torch.tensor([], dtype=torch.long)).tolist() == [0]  # no outlier: the limit


def test_flags():
    parser = argparse.ArgumentParser()
    add_pruning_args(parser)

    def build(*argv):
        return pruning_from_args(parser.parse_args(list(argv)), env={})

    assert build("--method", "prumerge").budget is None and not build("--method", "prumerge").plus
    plus = build("--method", "prumerge+", "--retained-tokens", "64", "--prumerge-neighbours", "8")
    assert plus.plus and plus.budget == Budget(64) and plus.neighbours == 8
    assert build("--method", "prumerge+", "--prumerge-mode", "fixed").budget == Budget(192)
    with pytest.raises(ValueError, match="adaptive"):
        build("--method", "prumerge", "--prumerge-mode", "adaptive", "--retained-tokens", "64")


# -- the single-head attention of the next layer -----------------------------------------------------------------------
def _clip(folder, **kwargs) -> CLIPVisionModel:
    """The whole (untruncated) vision tower of a CLIP folder, without the report on its unused text tower."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return CLIPVisionModel.from_pretrained(str(folder), **kwargs).eval()
    finally:
        hf_logging.set_verbosity(verbosity)


def _hooked_qk(layer):
    captured = {}
    handles = [
        layer.self_attn.q_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("q", o)),
        layer.self_attn.k_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("k", o)),
    ]
    return captured, handles


def test_next_layer_attention_equals_hooks_on_transformers_clip(tiny_clip):
    """As the reference: hooks on the last layer's q_proj / k_proj outputs in an eager transformers run, then
    softmax(q k^T / sqrt(C)) over all keys, the [CLS] row over the patches."""
    eager = _clip(tiny_clip, attn_implementation="eager")
    pixels = torch.randn(2, 3, 336, 336)
    captured, handles = _hooked_qk(eager.encoder.layers[-1])
    with torch.no_grad():
        out = eager(pixel_values=pixels, output_hidden_states=True)
    for handle in handles:
        handle.remove()
    q, k = captured["q"], captured["k"]
    expected = ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(dim=-1)[:, 0, 1:]
    tower = CLIPVisionTower(_clip(tiny_clip), -2, "patch")
    features, signals = last_layer_signals(tower, pixels)
    torch.testing.assert_close(signals["attention"], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(signals["keys"], k[:, 1:], atol=1e-5, rtol=0)
    torch.testing.assert_close(features, out.hidden_states[-2][:, 1:], atol=1e-5, rtol=0)


# -- LLaVA-1.5 ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llava(tiny_llava, tiny_clip):
    """The tiny LLaVA-1.5 loaded for PruMerge: the loader keeps its tower's last layer (`needs_full_tower`)."""
    tokenizer, model, processor, _ = load_pretrained_model(str(tiny_llava), device="cpu", pruning=PruMerge())
    model.set_pruning(None)
    tower = model.model.vision_tower
    assert len(tower.vision_tower.encoder.layers) == tower.config.num_hidden_layers > tower.num_layers_used
    truncated = CLIPVisionTower(_clip(tiny_clip), tower.select_layer, tower.select_feature)
    truncated.truncate_unused_layers()
    images = [random_image(1, (200, 150)), random_image(2, (120, 300))]  # 5 and 10 IQR outliers
    px = process_images(images, processor, model.config)
    torch.testing.assert_close(tower(px), truncated(px), atol=0, rtol=0)  # the same features
    return model, [prompt_ids(tokenizer, q) for q in QUESTIONS], px, processor


def _encode(model, method, ids, **inputs):
    model.set_pruning(method)
    try:
        return model.prepare_inputs(ids, **inputs)
    finally:
        model.set_pruning(None)


def _run(model, method, ids, **inputs):
    model.set_pruning(method)
    try:
        out = model.prefill(ids, use_cache=False, **inputs)
        return model.lm_head(out.hidden_states[:, -1]).float(), out
    finally:
        model.set_pruning(None)


def reference_merge(x, a, keys, idx, neighbours):
    """The reference's loop: for kept token i, the other kept tokens then the pruned ones (ascending) as candidates,
    the top `neighbours` by key cosine, x_i + sum a_j x_j; then the extra token over the pruned ones."""
    unit = F.normalize(keys, dim=-1)
    pruned = torch.tensor([j for j in range(len(x)) if j not in set(idx.tolist())], dtype=torch.long)
    out = []
    for i in range(len(idx)):
        rest = torch.cat([idx[:i], idx[i + 1 :], pruned])
        nearest = rest[(unit[idx[i]] @ unit[rest].T).topk(neighbours).indices]
        out.append(x[idx[i]] + (a[nearest, None] * x[nearest]).sum(0))
    return torch.stack(out + [(a[pruned, None] * x[pruned]).sum(0)])


def test_plus_tokens_come_in_reference_order_with_reference_features(llava):
    model, ids, px, _ = llava
    encoded = _encode(model, PruMerge(plus=True), ids[:1], images=px[:1]).images[0]
    features, signals = last_layer_signals(model.model.vision_tower, px[:1])
    a, keys = signals["attention"][0], signals["keys"][0]
    ratio = iqr_outlier_ratio(a)
    top = torch.topk(a, int(576 * ratio)).indices
    step = int(int(1 / ratio) / 3)
    samples = [p for p in range(0, 575, step) if p not in set(top.tolist())]
    tokens = encoded.tokens
    assert tokens.patch.tolist() == top.tolist() + samples + [MERGED]  # attention order, spatial, extra token
    assert len(top) > 0 and len(samples) > 0 and tokens.num_merged == 1
    idx = torch.cat([top, torch.tensor(samples, dtype=torch.long)])
    expected = model.model.mm_projector(reference_merge(features[0], a, keys, idx, 32))
    torch.testing.assert_close(encoded.features, expected, atol=1e-5, rtol=0)


def test_no_outlier_keeps_the_extra_token_and_plus_one_sample(llava):
    """The reference keeps only the extra token (PruMerge) or crashes on 1 / 0 (PruMerge+; we take the limit)."""
    model = llava[0]
    ids, px = llava[1][:1], process_images([random_image(3, (200, 150))], llava[3], model.config)
    _, signals = last_layer_signals(model.model.vision_tower, px)
    assert iqr_outlier_ratio(signals["attention"][0]) == 0
    assert _encode(model, PruMerge(), ids, images=px).images[0].tokens.patch.tolist() == [MERGED]
    assert _encode(model, PruMerge(plus=True), ids, images=px).images[0].tokens.patch.tolist() == [0, MERGED]


def test_fixed_budgets_keep_that_many_tokens(llava):
    model, ids, px, _ = llava
    _, signals = last_layer_signals(model.model.vision_tower, px[:1])
    plain = _encode(model, PruMerge(budget=Budget(64)), ids[:1], images=px[:1]).images[0].tokens
    assert len(plain) == 64 and plain.patch[:63].tolist() == torch.topk(signals["attention"][0], 63).indices.tolist()
    plus = _encode(model, PruMerge(plus=True, budget=Budget(64)), ids[:1], images=px[:1]).images[0].tokens
    assert len(plus) == 64 and plus.patch[-1] == MERGED
    assert plus.patch[:16].tolist() == torch.topk(signals["attention"][0], 16).indices.tolist()  # 1/4 by attention
    spread = plus.patch[16:63]
    assert spread.tolist() == sorted(spread.tolist()) and spread.max() - spread.min() > 500  # evenly over the rest


@pytest.mark.parametrize(
    "method",
    [PruMerge(), PruMerge(plus=True), PruMerge(plus=True, budget=Budget(ratio=0.1))],
    ids=lambda m: m.describe(),
)
def test_llava_batch_equals_one_by_one(llava, method):
    model, ids, px, _ = llava
    together, out = _run(model, method, ids, images=px)
    for i in range(2):
        alone, one = _run(model, method, [ids[i]], images=px[i : i + 1])
        torch.testing.assert_close(together[i], alone[0], atol=1e-4, rtol=0)
        assert out.accounts[i].num_visual == one.accounts[0].num_visual
        assert out.accounts[i].method_flops == one.accounts[0].method_flops > 0


def test_refusals(llava, loaded, loaded_next):
    with pytest.raises(ValueError, match="truncated"):
        loaded[1].set_pruning(PruMerge())  # the loader's tower lacks the last layer
    with pytest.raises(ValueError, match="LLaVA-NeXT"):
        loaded_next[1].set_pruning(PruMerge(plus=True))
    qwen = types.SimpleNamespace(config=types.SimpleNamespace(image_aspect_ratio="qwen"))
    with pytest.raises(ValueError, match="no \\[CLS\\]"):
        PruMerge().validate(qwen)
    llava[0].set_pruning(PruMerge())  # a tower that keeps it is accepted
    llava[0].set_pruning(None)


# -- Video-LLaVA -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def video(tmp_path_factory):
    from llava.conversation import get_conv_template
    from llava.mm_utils import tokenizer_image_token
    from llava.testing.video_llava import write_tiny_video_llava
    from llava.testing.videos import synthetic_frames, write_video

    root = tmp_path_factory.mktemp("prumerge_video")
    folder = write_tiny_video_llava(root, seed=1)
    tokenizer, model, _, _ = load_pretrained_model(str(folder), device="cpu", pruning=PruMerge())
    model.set_pruning(None)
    for tower in (model.model.video_tower, model.model.vision_tower):  # both keep their last layer
        assert len(tower.vision_tower.encoder.layers) == tower.config.num_hidden_layers
    clips = [
        model.load_video(write_video(root / "a.mp4", synthetic_frames(37, 96, 64))),
        model.load_video(write_video(root / "b.mp4", synthetic_frames(12, 64, 80))),
    ]
    ids = []
    for question in QUESTIONS:
        conv = get_conv_template("llava_v1")
        conv.append_message(conv.roles[0], f"<video>\n{question}")
        conv.append_message(conv.roles[1], None)
        ids.append(tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt"))
    return model, ids, clips


def test_video_signals_equal_hooks_on_the_temporal_layer(video):
    """LanguageBind's layer mixes frames before its q/k: the signals equal hooks on the full tower's last layer."""
    model, _, clips = video
    tower = model.model.video_tower
    frames = tower.frames(clips[0][None])
    captured, handles = _hooked_qk(tower.vision_tower.encoder.layers[-1])
    with torch.no_grad():
        tower.vision_tower(pixel_values=frames)
    for handle in handles:
        handle.remove()
    q, k = captured["q"], captured["k"]
    expected = ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(dim=-1)[:, 0, 1:]
    features, signals = last_layer_signals(tower, clips[0][None])
    assert features.shape == (1, 8, 17, 32)
    torch.testing.assert_close(signals["attention"][0], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(signals["keys"][0], k[:, 1:], atol=1e-5, rtol=0)


def test_video_frames_and_batch(video):
    model, ids, clips = video
    fixed = PruMerge(budget=Budget(40), neighbours=4)  # 40 of 136 tokens: 5 per frame, 4 patches + the extra token
    tokens = _encode(model, fixed, ids[:1], videos=clips[:1]).images[0].tokens
    assert tokens.per_view_counts() == [4] * 8 and tokens.num_merged == 8 and len(tokens) == 40
    assert (tokens.patch >= -2).all() and not (tokens.patch == -1).any()  # the frames' [CLS] tokens are dropped
    for method in (PruMerge(plus=True, neighbours=4), fixed):
        together, out = _run(model, method, ids, videos=clips)
        for i in range(2):
            alone, one = _run(model, method, [ids[i]], videos=clips[i : i + 1])
            torch.testing.assert_close(together[i], alone[0], atol=1e-4, rtol=0)
            assert out.accounts[i].num_visual == one.accounts[0].num_visual < 136
