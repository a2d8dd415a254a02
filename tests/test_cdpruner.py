"""CDPruner: the spec's hand-checked DPP, its two properties (orthogonal features = relevance top-k, duplicates not
both chosen), the question read from the prompt ids, the CLIP joint-space relevance against transformers' own
`CLIPModel` on the same tiny weights, the kept tokens against an independent recomputation on LLaVA-1.5 and per view
on LLaVA-NeXT (reference layout), keep-everything = unpruned, batch = one by one, flags and refusals."""

import argparse
import json
import math
import shutil

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, CLIPModel

from llava.conversation import get_conv_template
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.sparse.cdpruner import CDPruner, cdpruner_flops, dpp_map, question_text
from llava.sparse.engine import PruningMethod

from .helpers import LETTER_ANSWER, SHORT_ANSWER, prompt_ids, random_image

CLIP_WORDS = (
    "what is the color colour of largest object ? is there a red circle in image how many shapes are . , which left "
    "right square triangle blue green yes no describe picture where it"
).split()
QUESTIONS = [
    "What is the color of the largest object?",
    "Is there a red circle in the image? How many shapes are there, and which is left of the blue square?",
]


def write_clip_tokenizer(folder) -> None:
    """A word-level tokenizer within the tiny CLIP's 64 ids, laid out as CLIP's config says (start 0, pad 1, end 2),
    with CLIP's framing <|startoftext|> ... <|endoftext|>. The tiny checkpoint writer saves no tokenizer."""
    specials = ["<|startoftext|>", "!", "<|endoftext|>", "[UNK]"]
    vocab = {word: i for i, word in enumerate(dict.fromkeys(specials + CLIP_WORDS))}
    assert len(vocab) <= 64
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 2)]
    )
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "[UNK]",
        "pad_token": "!",
        "model_max_length": 16,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def clip_folder(tiny_clip, tmp_path_factory):
    """The tiny CLIP the tiny LLaVA checkpoints were built from, with a tokenizer."""
    folder = shutil.copytree(tiny_clip, tmp_path_factory.mktemp("cdpruner") / "clip")
    write_clip_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def reference_clip(clip_folder):
    return CLIPModel.from_pretrained(str(clip_folder)).eval(), AutoTokenizer.from_pretrained(str(clip_folder))


def unit_vectors(degrees) -> torch.Tensor:
    angles = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([angles.cos(), angles.sin()], dim=1)


def kernel(relevance: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    normed = features / features.norm(dim=-1, keepdim=True)
    return relevance[:, None] * (normed @ normed.T) * relevance[None, :]


# -- the DPP -------------------------------------------------------------------------------------------------------


def test_spec_example_picks_0_then_3():
    """r = [1, 0.95, 0.6, 0.9] at 0, 20, 90, 45 degrees: 0 first; residual gains then 0.1055, 0.36, 0.405, so 3.
    Relevance alone would keep {0, 1}."""
    r = torch.tensor([1.0, 0.95, 0.6, 0.9], dtype=torch.float64)
    x = unit_vectors([0, 20, 90, 45])
    gains = r**2 - (r[0] * r * torch.cos(torch.deg2rad(torch.tensor([0, 20, 90, 45.0], dtype=torch.float64)))) ** 2
    torch.testing.assert_close(gains[1:], torch.tensor([0.1055, 0.36, 0.405], dtype=torch.float64), atol=1e-4, rtol=0)
    assert dpp_map(kernel(r, x)[None], 2)[0].tolist() == [0, 3]
    assert torch.topk(r, 2).indices.tolist() == [0, 1]


def test_orthogonal_features_reduce_to_relevance_top_k():
    r = torch.rand(12, generator=torch.Generator().manual_seed(0)) + 0.1
    picks = dpp_map(kernel(r, torch.eye(12))[None], 5)[0]
    assert picks.tolist() == torch.topk(r, 5).indices.tolist()


def test_duplicates_are_not_both_chosen_and_an_exhausted_kernel_gives_no_nan():
    """Token 5 duplicates token 2: the five other directions all have positive residual, so the first five picks
    take one of the pair; the sixth pick (the twin, residual 0) stays finite thanks to the guarded square root."""
    features = torch.randn(6, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    features[5] = features[2]
    r = torch.tensor([0.9, 0.5, 1.0, 0.7, 0.8, 1.0], dtype=torch.float64)
    first = dpp_map(kernel(r, features)[None], 5)[0].tolist()
    assert len({2, 5} & set(first)) == 1
    every = dpp_map(kernel(r, features)[None], 6)[0].tolist()
    assert sorted(every) == list(range(6))
    x = unit_vectors([0, 90, 0, 90])  # rank 2: the last two picks divide by a zero residual without the guard
    assert sorted(dpp_map(kernel(torch.ones(4, dtype=torch.float64), x)[None], 4)[0].tolist()) == [0, 1, 2, 3]


# -- the question --------------------------------------------------------------------------------------------------


def _prompt(tokenizer, conv_mode: str, *turns: str) -> torch.Tensor:
    conv = get_conv_template(conv_mode)
    for i, turn in enumerate(turns):
        conv.append_message(conv.roles[i % 2], turn)
    conv.append_message(conv.roles[1], None)
    return tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")


def test_question_is_the_last_user_message_without_answer_suffixes(loaded):
    tokenizer = loaded[0]
    ocr = "what is written?\nReference OCR token: STOP, 12"
    cases = {
        ("vicuna_v1", "<image>\nIs there a dog?" + SHORT_ANSWER): "Is there a dog?",
        ("vicuna_v1", "<image>\n" + ocr + SHORT_ANSWER): ocr,  # TextVQA keeps its OCR tokens
        ("vicuna_v1", "<image>\nhint\nWhich one?\nA. cat\nB. dog" + LETTER_ANSWER): "hint\nWhich one?\nA. cat\nB. dog",
        ("vicuna_v1", "<image>\nWhich one?\n请直接回答选项字母。"): "Which one?",
        ("mistral_instruct", "<image>\nDescribe the image."): "Describe the image.",
        ("chatml_direct", "<image>\nWhere is the circle?"): "Where is the circle?",
        ("llava_v1", "<image>\nWhat is it?", "A square.", "And its colour?"): "And its colour?",
    }
    for (mode, *turns), expected in cases.items():
        assert question_text(tokenizer, _prompt(tokenizer, mode, *turns)) == expected, mode


# -- CLIP relevance ------------------------------------------------------------------------------------------------


def clip_patches(reference_clip, pixels: torch.Tensor) -> torch.Tensor:
    """Layer -2 patch features of transformers' CLIPModel (LLaVA's selected layer)."""
    with torch.no_grad():
        return reference_clip[0].vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]


def expected_relevance(reference_clip, patches: torch.Tensor, question: str, layernorm=None) -> torch.Tensor:
    """Raw relevance [views, 576] from transformers' CLIPModel: its projection of the post-layernormed patches
    against get_text_features of the question in 16-token segments (the tiny CLIP's 77). `layernorm`: the running
    tower's (a NeXT checkpoint's fine-tuned copy), CLIPModel's by default."""
    model, tokenizer = reference_clip
    layernorm = layernorm or model.vision_model.post_layernorm
    with torch.no_grad():
        image = model.visual_projection(layernorm(patches))
        encoded = tokenizer(question)
        ids, mask = torch.tensor(encoded["input_ids"]), torch.tensor(encoded["attention_mask"])
        pad = -len(ids) % 16
        ids, mask = (torch.cat([t, torch.zeros(pad, dtype=t.dtype)]).view(-1, 16) for t in (ids, mask))
        text = model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return -(image @ text.T).mean(dim=-1)


def test_relevance_is_clips_joint_space_of_transformers_clipmodel(loaded, clip_folder, reference_clip):
    """Both texts: one segment, and a question longer than the 16-token window (two segments)."""
    tokenizer, model, processor, _ = loaded
    images = [random_image(1), random_image(2, (200, 300))]
    px = process_images(images, processor, model.config)
    method = CDPruner(64, clip_path=str(clip_folder), tokenizer=tokenizer)
    method.prepare(model, [prompt_ids(tokenizer, q + SHORT_ANSWER) for q in QUESTIONS])
    features, joint = method.tower_outputs(model.get_vision_tower(), px)
    assert torch.equal(features, model.get_vision_tower()(px))
    for i in range(2):
        method.select_tokens(None, None, joint[i : i + 1])
        assert method.questions[i] == QUESTIONS[i]
        expected = expected_relevance(reference_clip, clip_patches(reference_clip, px[i : i + 1]), QUESTIONS[i])
        torch.testing.assert_close(method._relevance[i], expected, atol=1e-5, rtol=1e-5)
    assert [len(method._texts[i]) for i in range(2)] == [1, 2]
    clip_model, _ = reference_clip  # the loaded projection is get_image_features' (on the last layer's [CLS])
    with torch.no_grad():
        cls = clip_model.vision_model(pixel_values=px).pooler_output
        torch.testing.assert_close(
            method.clip.visual_projection(cls), clip_model.get_image_features(pixel_values=px).pooler_output
        )


# -- families ------------------------------------------------------------------------------------------------------


def expected_kept(block: torch.Tensor, relevance: torch.Tensor, count: int, low=None, high=None) -> torch.Tensor:
    """Sorted kept positions of one view: the reference's kernel on the projected tokens and normalised relevance."""
    low = relevance.min() if low is None else low
    high = relevance.max() if high is None else high
    r = (relevance - low + 1e-6) / (high - low)
    x = (block / block.norm(dim=-1, keepdim=True)).float()
    return dpp_map((r[:, None] * (x @ x.T) * r[None, :])[None], count)[0].sort().values


def _prefill(model, method, ids, px, **kwargs):
    model.set_pruning(method)
    try:
        return model.prefill(ids, px, use_cache=False, **kwargs)
    finally:
        model.set_pruning(None)


def test_llava_15_keeps_the_dpp_of_the_unpruned_block(loaded, clip_folder, reference_clip):
    tokenizer, model, processor, _ = loaded
    images = [random_image(3), random_image(4, (200, 300))]
    px = process_images(images, processor, model.config)
    ids = [prompt_ids(tokenizer, q + SHORT_ANSWER) for q in QUESTIONS]
    full = model.prepare_inputs(ids, px)
    relevance = [
        expected_relevance(reference_clip, clip_patches(reference_clip, px[i : i + 1]), QUESTIONS[i])[0]
        for i in range(2)
    ]
    for batch_norm in (False, True):
        out = _prefill(
            model, CDPruner(64, clip_path=str(clip_folder), tokenizer=tokenizer, batch_norm=batch_norm), ids, px
        )
        pool = torch.cat(relevance)
        for i in range(2):
            bounds = (pool.min(), pool.max()) if batch_norm else (None, None)
            kept = expected_kept(full.images[i].features, relevance[i], 64, *bounds)
            assert torch.equal(out.inputs.images[i].tokens.patch, kept)
            assert torch.equal(out.inputs.images[i].features, full.images[i].features[kept])
            assert out.accounts[i].num_visual == 64
    flops = cdpruner_flops(1, 576, 64, model.config.hidden_size, 32, 32, 1)
    assert out.accounts[0].method_flops > flops  # plus the text tower's work


def test_llava_15_keep_everything_and_batch_equal_one_by_one(loaded, clip_folder):
    tokenizer, model, processor, _ = loaded
    images = [random_image(5), random_image(6, (300, 200))]
    px = process_images(images, processor, model.config)
    ids = [prompt_ids(tokenizer, q) for q in QUESTIONS]
    method = CDPruner(576, clip_path=str(clip_folder), tokenizer=tokenizer)
    unpruned = model(ids, images=px)
    model.set_pruning(method)
    try:
        torch.testing.assert_close(model(ids, images=px), unpruned, atol=1e-5, rtol=0)
    finally:
        model.set_pruning(None)
    method = CDPruner(32, clip_path=str(clip_folder), tokenizer=tokenizer)
    together = _prefill(model, method, ids, px)
    for i in range(2):
        alone = _prefill(model, method, [ids[i]], px[i : i + 1])
        torch.testing.assert_close(together.hidden_states[i, -1], alone.hidden_states[0, -1], atol=1e-5, rtol=0)
        assert torch.equal(together.inputs.images[i].tokens.patch, alone.inputs.images[0].tokens.patch)


class SpatialLayout(PruningMethod):
    """No pruning, in CDPruner's LLaVA-NeXT layout (merge 'spatial': no unpadding, no newline tokens)."""

    merge_type = "spatial"


def test_llava_next_per_view_in_the_reference_layout(loaded_next, clip_folder, reference_clip):
    tokenizer, model, processor, _ = loaded_next
    images = [random_image(7, (640, 480)), random_image(8, (300, 200))]
    ids = [prompt_ids(tokenizer, q) for q in QUESTIONS]
    method = CDPruner(640, clip_path=str(clip_folder), tokenizer=tokenizer)  # 640 / 2880 of 576 = 128 per view
    model.set_pruning(SpatialLayout())
    try:
        px = process_images(images, processor, model.config)
        sizes = [im.size for im in images]
        full = model.prepare_inputs(ids, px, image_sizes=sizes)
        unpruned = model(ids[:1], images=px[:1], image_sizes=sizes[:1])
    finally:
        model.set_pruning(None)
    out = _prefill(model, method, ids, px, image_sizes=sizes)
    assert method.describe() == "cdpruner T=640 (128 per view)"
    for i in range(2):
        whole, kept = full.images[i].tokens, out.inputs.images[i].tokens
        views = whole.num_views
        assert whole.num_newlines == 0 and len(whole) == 576 * views
        assert out.accounts[i].views_into_llm == [128] * views and out.accounts[i].num_visual == 128 * views
        tower = model.get_vision_tower()
        patches = tower.feature_select(tower.encoder_hidden_states(px[i]))
        relevance = expected_relevance(reference_clip, patches, QUESTIONS[i], tower.vision_tower.post_layernorm)
        rows = []  # positions in the merged block: base view first, then the crop grid as one raster
        for v in range(views):
            at = torch.nonzero(whole.view == v).flatten()  # the view's tokens, in its raster order
            rows.append(
                at[expected_kept(full.images[i].features[at], relevance[v], 128, relevance.min(), relevance.max())]
            )
        expected = torch.cat(rows).sort().values
        assert torch.equal(kept.view, whole.view[expected]) and torch.equal(kept.patch, whole.patch[expected])
    assert out.accounts[0].num_visual != out.accounts[1].num_visual
    for i in range(2):
        alone = _prefill(model, method, [ids[i]], px[i : i + 1], image_sizes=sizes[i : i + 1])
        torch.testing.assert_close(out.hidden_states[i, -1], alone.hidden_states[0, -1], atol=1e-5, rtol=0)
    model.set_pruning(CDPruner(2880, clip_path=str(clip_folder), tokenizer=tokenizer))
    try:
        torch.testing.assert_close(model(ids[:1], images=px[:1], image_sizes=sizes[:1]), unpruned, atol=1e-5, rtol=0)
    finally:
        model.set_pruning(None)


# -- set-up and refusals -------------------------------------------------------------------------------------------


def test_flags_build_the_method():
    from llava.sparse.methods import add_pruning_args, pruning_from_args

    parser = argparse.ArgumentParser()
    add_pruning_args(parser)
    parser.add_argument("--model-path")
    parser.add_argument("--model-base")
    parser.add_argument("--vision-tower")
    default = pruning_from_args(parser.parse_args(["--method", "cdpruner", "--model-path", "ckpt"]), env={})
    assert isinstance(default, CDPruner) and default.budget.tokens == 192
    assert default.tokenizer_path == "ckpt" and default.clip_path is None and not default.batch_norm
    args = ["--method", "cdpruner", "--retained-tokens", "64", "--model-path", "ckpt", "--model-base", "base"]
    args += ["--vision-tower", "clip", "--cdpruner-batch-norm", "--cdpruner-theta", "0.5"]
    method = pruning_from_args(parser.parse_args(args), env={})
    assert (method.budget.tokens, method.tokenizer_path, method.clip_path) == (64, "base", "clip")
    assert method.batch_norm and method.theta == 0.5 and method.describe() == "cdpruner T=64 batch-norm theta=0.5"
    args = [
        "--method",
        "cdpruner",
        "--cdpruner-clip",
        "full-clip",
        "--cdpruner-tokenizer",
        "tok",
        "--vision-tower",
        "v",
    ]
    method = pruning_from_args(parser.parse_args(args), env={})
    assert (method.clip_path, method.tokenizer_path) == ("full-clip", "tok")


def test_method_env_alone_takes_the_checkpoints_tokenizer(tiny_llava, monkeypatch):
    """`METHOD=cdpruner` with no flags: the loader tells the method its checkpoint, as `--model-path` would."""
    monkeypatch.setenv("METHOD", "cdpruner")
    monkeypatch.setenv("RETAIN_TOKN", "64")
    model = load_pretrained_model(str(tiny_llava), device="cpu")[1]
    method = model.pruning
    assert isinstance(method, CDPruner) and method.tokenizer_path == str(tiny_llava)
    assert method._llm_tokenizer().decode([1]) == "<s>"


def test_missing_pieces_are_reported(loaded, tiny_llava):
    tokenizer, model, processor, _ = loaded
    px = process_images([random_image(9)], processor, model.config)
    ids = prompt_ids(tokenizer, QUESTIONS[0])[None]
    model.set_pruning(CDPruner(64))  # the default CLIP folder is mm_vision_tower's: the tiny CLIP has no tokenizer
    try:
        with pytest.raises(ValueError, match="No CLIP tokenizer"):
            model(ids, images=px)
    finally:
        model.set_pruning(None)
    assert CDPruner(64, tokenizer_path=str(tiny_llava))._llm_tokenizer().decode([1]) == "<s>"
    with pytest.raises(ValueError, match="--cdpruner-tokenizer"):
        CDPruner(64)._llm_tokenizer()


def test_qwen_and_video_llava_are_refused(tmp_path):
    from llava.testing.qwen_checkpoints import write_tiny_qwen_vl
    from llava.testing.video_llava import write_tiny_video_llava

    qwen = load_pretrained_model(str(write_tiny_qwen_vl(tmp_path / "qwen")), device="cpu", pruning=None)[1]
    with pytest.raises(ValueError, match="Qwen-VL has no CLIP text tower.*divprune"):
        qwen.set_pruning(CDPruner(64))
    video = load_pretrained_model(str(write_tiny_video_llava(tmp_path / "video")), device="cpu", pruning=None)[1]
    with pytest.raises(ValueError, match="Video-LLaVA.*divprune"):
        video.set_pruning(CDPruner(64))
