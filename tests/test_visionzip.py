"""VisionZip: the spec's hand-computed example, the [CLS] row and keys against transformers' eager CLIP (image and
LanguageBind video towers), the whole block against an independent port of the official tensor arithmetic on
LLaVA-1.5 and in the official LLaVA-NeXT order, keep-everything = unpruned and batch = one by one on LLaVA-1.5,
LLaVA-NeXT and Video-LLaVA, budgets and flags; the Qwen-VL port by hand (its batches and budgets in
test_pruning_qwen)."""

import argparse
import copy

import pytest
import torch
from transformers import CLIPVisionModel

from llava.conversation import get_conv_template
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.anyres import MERGED, grid_shape
from llava.model.builder import load_pretrained_model
from llava.model.multimodal_encoder.languagebind import build_languagebind_vision_model
from llava.sparse.engine import PruningMethod
from llava.sparse.methods import add_pruning_args, pruning_from_args
from llava.sparse.visionzip import VisionZip, selected_layer_signals, visionzip_tokens
from llava.testing.video_llava import write_tiny_video_llava

from .helpers import pixels, prompt_ids, random_image

QUESTIONS = ["What is the color of the circle?", "How many shapes are there in the image? Answer briefly.", "Q"]
NEXT_SIZES = [(640, 480), (1008, 336), (300, 200)]


# -- the spec's example ---------------------------------------------------------------------------------------------


def _example(member_keys_of_second_target_to_first: bool = False):
    """1 [CLS] + 8 patches; patches 4 and 1 draw the most [CLS] attention, so rows 0, 2, 5 are dominant and rows
    1, 3, 4, 6, 7, 8 remain (R = 6, step 3: targets are rows 1 and 6)."""
    torch.manual_seed(0)
    hidden = torch.randn(1, 9, 5)
    cls_row = torch.tensor([[0.10, 0.50, 0.20, 0.05, 0.90, 0.30, 0.00, 0.15]])
    keys = torch.zeros(1, 9, 3)
    keys[0, [1, 3, 4]] = torch.tensor([1.0, 0.2, 0.0])  # remaining positions 0, 1, 2
    keys[0, [6, 7, 8]] = torch.tensor([0.0, 0.3, 1.0])  # remaining positions 3, 4, 5
    if member_keys_of_second_target_to_first:
        keys[0, [7, 8]] = keys[0, 1].clone()
    keys[0, [0, 2, 5]] = torch.randn(3, 3)  # dominant rows: their keys must not matter
    return hidden, cls_row, keys


def test_the_specs_hand_computed_example():
    hidden, cls_row, keys = _example()
    rows, merged = visionzip_tokens(hidden, cls_row, keys, dominant=3, contextual=2)
    assert rows.tolist() == [[0, 2, 5]]  # [CLS], then the top-2 patches in raster order
    h = hidden[0]
    torch.testing.assert_close(merged[0, 0], h[1] + (h[3] + h[4]) / 2)  # target + mean of its members
    torch.testing.assert_close(merged[0, 1], h[6] + (h[7] + h[8]) / 2)
    assert rows.shape[1] + merged.shape[1] == 5


def test_a_target_without_members_is_its_own_hidden_state():
    hidden, cls_row, keys = _example(member_keys_of_second_target_to_first=True)
    _, merged = visionzip_tokens(hidden, cls_row, keys, dominant=3, contextual=2)
    h = hidden[0]
    torch.testing.assert_close(merged[0, 0], h[1] + (h[3] + h[4] + h[7] + h[8]) / 4)
    torch.testing.assert_close(merged[0, 1], h[6])


# -- an independent port of the official arithmetic, on eager transformers outputs ----------------------------------


def _eager(model_or_tower, video: bool = False):
    """transformers' eager CLIP (LanguageBind layers for the video tower) with the tower's weights and layers."""
    tower = model_or_tower
    config = copy.deepcopy(tower.vision_tower.config)
    config._attn_implementation = "eager"
    eager = build_languagebind_vision_model(config, tower.num_frames) if video else CLIPVisionModel(config)
    eager.encoder.layers = eager.encoder.layers[: len(tower.vision_tower.encoder.layers)]
    eager.load_state_dict(tower.vision_tower.state_dict(), strict=False)
    return eager.eval()


def _eager_signals(eager, frames: torch.Tensor, layer: int, video: bool = False):
    """Hidden states out of `layer` ([CLS] first), its attention probabilities and its head-mean keys, from an
    eager run (keys recomputed from the layer's input with its own modules)."""
    with torch.no_grad():
        out = eager(pixel_values=frames, output_attentions=True, output_hidden_states=True)
        module = eager.encoder.layers[layer]
        x = out.hidden_states[layer]
        if video:
            x = module.temporal_mix(x)
        k = module.self_attn.k_proj(module.layer_norm1(x))
    heads = module.self_attn.num_heads
    keys = k.view(*k.shape[:2], heads, -1).mean(dim=2)
    return out.hidden_states[layer + 1], out.attentions[layer], keys


def official_visionzip(hidden, attentions, keys, dominant, contextual):
    """The official tower's arithmetic (visionzip/clip_encoder.py), batched as there: masks, one-hot assignment,
    target + mean."""
    batch, tokens, width = hidden.shape
    top = attentions[:, :, 0, 1:].sum(dim=1).topk(dominant - 1, dim=1).indices + 1
    keep = torch.cat([torch.zeros_like(top[:, :1]), top], dim=1)
    rest = torch.ones(batch, tokens, dtype=torch.bool).scatter_(1, keep, False)
    dominant_tokens = hidden.masked_select(~rest[..., None]).view(batch, dominant, width)
    metric = keys[rest].view(batch, tokens - dominant, -1)
    states = hidden.masked_select(rest[..., None]).view(batch, tokens - dominant, width)
    metric = metric / metric.norm(dim=-1, keepdim=True)
    step = max(1, metric.shape[1] // contextual)
    targets = torch.arange(0, metric.shape[1], step)[:contextual]
    others = ~torch.isin(torch.arange(metric.shape[1]), targets)
    similarity = torch.bmm(metric[:, others], metric[:, targets].transpose(1, 2))
    one_hot = torch.zeros(batch, int(others.sum()), contextual).scatter_(2, similarity.argmax(dim=2)[..., None], 1)
    counts = one_hot.sum(dim=1).clamp(min=1)[..., None]
    merged = states[:, targets] + torch.bmm(one_hot.transpose(1, 2), states[:, others]) / counts
    return torch.cat([dominant_tokens, merged], dim=1), keep.sort(dim=1).values


def test_cls_row_and_keys_equal_an_eager_clip_run(loaded):
    tokenizer, model, processor, _ = loaded
    px = pixels(processor, model, random_image(1), random_image(2))
    tower = model.get_vision_tower()
    layer = tower.num_layers_used - 1
    hidden, attentions, keys = _eager_signals(_eager(tower), px, layer)
    ours_hidden, ours_cls, ours_keys = selected_layer_signals(tower, px)
    torch.testing.assert_close(ours_cls, attentions[:, :, 0, 1:].sum(dim=1), atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_keys, keys, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_hidden, hidden, atol=1e-5, rtol=0)


def test_the_block_is_the_official_arithmetic_projected(loaded):
    tokenizer, model, processor, _ = loaded
    px = pixels(processor, model, random_image(3), random_image(4))
    tower = model.get_vision_tower()
    hidden, attentions, keys = _eager_signals(_eager(tower), px, tower.num_layers_used - 1)
    expected, keep = official_visionzip(hidden, attentions, keys, dominant=54, contextual=10)
    model.set_pruning(VisionZip(64))
    try:
        encoded = model.encode_images(px)
    finally:
        model.set_pruning(None)
    for b, image in enumerate(encoded):
        assert image.tokens.patch.tolist() == [-1] + (keep[b, 1:] - 1).tolist() + [MERGED] * 10
        assert (image.tokens.view[:54] == 0).all() and (image.tokens.view[54:] == MERGED).all()
        with torch.no_grad():
            projected = model.model.mm_projector(expected[b])
        torch.testing.assert_close(image.features, projected, atol=1e-5, rtol=0)


def test_next_block_is_the_official_per_crop_layout(loaded_next):
    """Base [CLS, dominant, contextual]; the crops' dominant patches in raster order of the whole crop grid; the
    crops' [CLS]; the crops' contextual tokens (official `restore_image_features_sorted`); no unpad, no newline."""
    tokenizer, model, processor, _ = loaded_next
    image, dominant, contextual = random_image(5, (640, 480)), 27, 5
    model.set_pruning(VisionZip(160))
    try:
        px = process_images([image], processor, model.config)
        encoded = model.encode_images(px, image_sizes=[image.size])[0]
    finally:
        model.set_pruning(None)
    tower = model.get_vision_tower()
    hidden, attentions, keys = _eager_signals(_eager(tower), px[0], tower.num_layers_used - 1)
    per_view, keep = official_visionzip(hidden, attentions, keys, dominant, contextual)
    cols, rows = grid_shape(image.size, model.config.image_grid_pinpoints, 336, "llava")
    side = tower.num_patches_per_side
    assert len(px[0]) == 1 + cols * rows == 5
    grid = []  # (full-grid raster index, crop, position among the crop's dominant tokens)
    for crop in range(1, len(px[0])):
        for j, patch in enumerate((keep[crop, 1:] - 1).tolist()):
            r, c = (crop - 1) // cols * side + patch // side, (crop - 1) % cols * side + patch % side
            grid.append((r * cols * side + c, crop, j))
    grid.sort()
    expected = torch.cat(
        [
            per_view[0],
            torch.stack([per_view[crop, 1 + j] for _, crop, j in grid]),
            per_view[1:, 0],
            per_view[1:, dominant:].flatten(0, 1),
        ]
    )
    with torch.no_grad():
        torch.testing.assert_close(encoded.features, model.model.mm_projector(expected), atol=1e-5, rtol=0)
    provenance = list(zip(encoded.tokens.view.tolist(), encoded.tokens.patch.tolist(), strict=True))
    base = [(0, -1)] + [(0, p - 1) for p in keep[0, 1:].tolist()] + [(MERGED, MERGED)] * contextual
    crops = [(crop, int(keep[crop, 1 + j]) - 1) for _, crop, j in grid]
    tail = [(v, -1) for v in range(1, 5)] + [(MERGED, MERGED)] * (4 * contextual)
    assert provenance == base + crops + tail
    assert len(encoded.features) == 5 * (dominant + contextual) and encoded.tokens.num_newlines == 0


# -- budgets and flags ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget, split", [(64, (54, 10)), (128, (108, 20)), (192, (162, 30)), (32, (27, 5))])
def test_budgets_split_as_the_papers_settings(budget, split):
    method = VisionZip(budget)
    method.bind(576)
    assert method.split(576) == split


@pytest.mark.parametrize("budget, split", [(640, (108, 20)), (320, (54, 10)), (160, (27, 5))])
def test_next_budgets_are_per_view_shares_of_2880(budget, split):
    method = VisionZip(budget)
    method.bind(2880)
    assert method.split(576) == split


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_pruning_args(parser)
    return parser.parse_args(list(argv))


def test_flags_and_the_one_switch():
    method = pruning_from_args(_args("--method", "visionzip", "--retained-tokens", "64"), {})
    assert isinstance(method, VisionZip) and method.describe() == "visionzip k=64"
    method = pruning_from_args(
        _args("--method", "visionzip", "--visionzip-dominant", "54", "--visionzip-contextual", "10"), {}
    )
    assert (method.dominant, method.contextual) == (54, 10) and method.describe() == "visionzip 54+10/view"
    assert pruning_from_args(_args(), {"METHOD": "visionzip", "RETAIN_TOKN": "128"}).budget.tokens == 128
    with pytest.raises(ValueError, match="together"):
        pruning_from_args(_args("--method", "visionzip", "--visionzip-dominant", "54"), {})


def test_qwen_port_by_hand():
    """Qwen-VL (LightCompress's port), on 8 merged tokens: tokens 4, 1, 5 receive the most attention (D = 3); rows
    0, 2, 3, 6, 7 remain (R = 5, step 2: targets are rows 0 and 3); row 2 has row 0's key, rows 6 and 7 row 3's. The
    tokens stay in place, each contextual one at its target's cell: target + mean of its members' embeddings."""
    from llava.model.anyres import grid_layout

    torch.manual_seed(0)
    embeddings = torch.randn(8, 5)
    received = torch.tensor([[0.10, 0.50, 0.20, 0.05, 0.90, 0.30, 0.00, 0.15]])
    keys = torch.randn(1, 8, 3)
    keys[0, 2], keys[0, [6, 7]] = keys[0, 0].clone(), keys[0, 3].clone()
    chosen = VisionZip(dominant=3, contextual=2).select_projected(
        grid_layout(2, 4), embeddings, {"received": received, "keys": keys}
    )
    assert chosen.tokens.patch.tolist() == [0, 1, 3, 4, 5] and chosen.tokens.num_merged == 0
    expected = embeddings[[0, 1, 3, 4, 5]].clone()
    expected[0] = embeddings[0] + embeddings[2]
    expected[2] = embeddings[3] + (embeddings[6] + embeddings[7]) / 2
    torch.testing.assert_close(chosen.features, expected)
    assert VisionZip(8).select_projected(grid_layout(2, 4), embeddings, {"received": received, "keys": keys}) is None


def test_refused_budgets(loaded):
    _, model, _, _ = loaded
    with pytest.raises(ValueError, match="1..576"):
        model.set_pruning(VisionZip(577))


# -- keep-everything, batches, accounting on the three families -----------------------------------------------------


def _prefill(model, method, ids, **kwargs):
    model.set_pruning(method)
    try:
        out = model.prefill(ids, use_cache=False, **kwargs)
        return model.lm_head(out.hidden_states[:, -1]).float(), out.accounts
    finally:
        model.set_pruning(None)


@pytest.fixture(scope="module")
def samples(loaded):
    tokenizer, model, processor, _ = loaded
    ids = [prompt_ids(tokenizer, q) for q in QUESTIONS]
    return ids, pixels(processor, model, *[random_image(20 + i) for i in range(3)])


def test_llava_keep_everything_and_batch_equal_one_by_one(loaded, samples):
    _, model, _, _ = loaded
    ids, px = samples
    unpruned, _ = _prefill(model, None, ids[2][None], images=px[2:3])
    kept, _ = _prefill(model, VisionZip(576), ids[2][None], images=px[2:3])
    torch.testing.assert_close(kept, unpruned, atol=1e-5, rtol=0)
    method = VisionZip(dominant=40, contextual=7)
    batched, accounts = _prefill(model, method, ids, images=px)
    for i in range(3):
        alone, account = _prefill(model, method, ids[i][None], images=px[i : i + 1])
        torch.testing.assert_close(batched[i], alone[0], atol=1e-4, rtol=0)
        assert accounts[i].num_visual == account[0].num_visual == 47
        assert accounts[i].method_flops == account[0].method_flops > 0


def test_next_keep_everything_and_three_sizes_equal_one_by_one(loaded_next):
    tokenizer, model, processor, _ = loaded_next
    images = [random_image(10 + i, size) for i, size in enumerate(NEXT_SIZES)]
    ids = [prompt_ids(tokenizer, q) for q in QUESTIONS]

    def run(method, idx):
        model.set_pruning(method)  # before process_images: the method's grid rule
        px = process_images([images[i] for i in idx], processor, model.config)
        model.set_pruning(None)
        return _prefill(model, method, [ids[i] for i in idx], images=px, image_sizes=[images[i].size for i in idx])

    reference_layout = PruningMethod()
    reference_layout.grid_rule, reference_layout.merge_type = "llava", "spatial"
    unpruned, _ = run(reference_layout, [0])
    kept, _ = run(VisionZip(2880), [0])
    torch.testing.assert_close(kept, unpruned, atol=1e-5, rtol=0)
    batched, accounts = run(VisionZip(320), [0, 1, 2])
    for i in range(3):
        alone, account = run(VisionZip(320), [i])
        torch.testing.assert_close(batched[i], alone[0], atol=1e-4, rtol=0)
        assert accounts[i].views_into_llm == account[0].views_into_llm
    assert [a.num_visual for a in accounts] == [5 * 64, 4 * 64, 3 * 64]  # 54 + 10 per view, views 5 / 4 / 3
    assert accounts[0].views_into_llm == [54] * 5 and accounts[0].num_encoded == 2880


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    folder = write_tiny_video_llava(tmp_path_factory.mktemp("visionzip_video"), seed=1)
    tokenizer, model, _ = load_pretrained_model(str(folder), device="cpu", pruning=None)[:3]
    torch.manual_seed(5)
    return tokenizer, model, [torch.randn(3, 8, 56, 56), torch.randn(3, 8, 56, 56)]


def _video_prompt(tokenizer, question):
    conv = get_conv_template("llava_v1")
    conv.append_message(conv.roles[0], f"<video>\n{question}")
    conv.append_message(conv.roles[1], None)
    return tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")


def test_video_cls_row_and_keys_equal_an_eager_languagebind_run(video):
    _, model, clips = video
    tower = model.model.video_tower
    frames = tower.frames(clips[0][None])
    hidden, attentions, keys = _eager_signals(_eager(tower, video=True), frames, tower.num_layers_used - 1, True)
    ours_hidden, ours_cls, ours_keys = selected_layer_signals(tower, clips[0][None])
    torch.testing.assert_close(ours_cls[0], attentions[:, :, 0, 1:].sum(dim=1), atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_keys[0], keys, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_hidden[0], hidden, atol=1e-5, rtol=0)


def test_video_per_frame_keep_everything_and_batch_equal_one_by_one(video):
    tokenizer, model, clips = video
    ids = [_video_prompt(tokenizer, q) for q in QUESTIONS[:2]]
    unpruned, _ = _prefill(model, None, ids[1][None], videos=[clips[1]])
    kept, _ = _prefill(model, VisionZip(136), ids[1][None], videos=[clips[1]])
    torch.testing.assert_close(kept, unpruned, atol=1e-5, rtol=0)
    batched, accounts = _prefill(model, VisionZip(64), ids, videos=clips)  # 8 per frame: 7 + 1
    for i in range(2):
        alone, account = _prefill(model, VisionZip(64), ids[i][None], videos=[clips[i]])
        torch.testing.assert_close(batched[i], alone[0], atol=1e-4, rtol=0)
    assert accounts[0].num_visual == 64 and accounts[0].views_into_llm == [7] * 8  # [CLS] + 6 patches per frame
    model.set_pruning(VisionZip(64))
    try:
        tokens = model.prepare_inputs(ids[0][None], videos=[clips[0]]).images[0].tokens
    finally:
        model.set_pruning(None)
    assert tokens.view.tolist() == sum(([f] * 7 + [MERGED] for f in range(8)), [])  # per frame [CLS, dominant, ctx]
    assert tokens.patch.tolist()[::8] == [-1] * 8


def test_qwen_clip_is_one_set_and_keeps_its_cells_ids(tmp_path):
    """On a Qwen clip the port chooses among all its frame pairs' tokens at once (as LightCompress's, on the whole
    prompt), exactly the budget; every kept token, contextual ones included, keeps the M-RoPE ids of its cell."""
    from llava.testing.qwen_checkpoints import write_tiny_qwen_vl

    from .test_qwen_video import SMALL, frames
    from .test_qwen_video import prompt as qwen_prompt

    folder = write_tiny_qwen_vl(tmp_path / "qwen", seed=1)
    tokenizer, model, processor, _ = load_pretrained_model(str(folder), device="cpu", pruning=None)
    clip = model.load_video(frames(10, 8, 56, 84), processor, fps=1.0, **SMALL)
    ids = qwen_prompt(tokenizer, model, "What?")[None]
    full = model.prepare_inputs(ids, videos=[clip])
    model.set_pruning(VisionZip(10))
    try:
        pruned = model.prepare_inputs(ids, videos=[clip])
    finally:
        model.set_pruning(None)
    tokens = pruned.images[0].tokens
    (start, count), (full_start, full_count) = pruned.image_spans[0][0], full.image_spans[0][0]
    assert count == 10 and full_count == 24 and len(set(tokens.view.tolist())) > 1  # tokens from several frame pairs
    assert torch.equal(
        pruned.position_ids[0, start : start + count], full.position_ids[0, full_start + tokens.source()]
    )
