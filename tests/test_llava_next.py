"""LLaVA-NeXT (1.6): anyres geometry against the spec's worked examples, loading both formats, and logits /
greedy ids against transformers' own LlavaNextForConditionalGeneration on the same weights."""

import json
import math

import numpy as np
import pytest
import torch
from transformers import LlavaNextForConditionalGeneration
from transformers.image_processing_utils import select_best_resolution as hf_select_best_resolution
from transformers.models.llava_next.modeling_llava_next import unpad_image as hf_unpad_image

from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import process_images
from llava.model.anyres import grid_shape, merge_layout, resize_and_pad, select_best_resolution
from llava.model.builder import load_pretrained_model
from llava.model.config import CheckpointConfigError

from .helpers import prompt_ids, random_image

PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
QUESTION = "What is the color of the largest object? Answer with one word."


def tokens(size, rule="llava", merge="spatial_unpad"):
    cols, rows = grid_shape(size, PINPOINTS, 336, rule)
    return len(merge_layout(1 + cols * rows, 24, merge, (cols, rows), size, rule))


def original_formula(width, height):
    """LLaVA's anyres token count written out independently: (width, height) pinpoints, most effective pixels
    then least waste, unpad with int(), a newline per kept row, plus the 576-token base view."""
    best = None
    for w, h in PINPOINTS:
        s = min(w / width, h / height)
        effective = min(int(width * s) * int(height * s), width * height)
        key = (effective, -(w * h - effective))
        if best is None or key > best[0]:
            best = (key, w, h)
    _, w, h = best
    grid_h, grid_w = h // 336 * 24, w // 336 * 24
    if width / height > grid_w / grid_h:
        kept = int(height * (grid_w / width))
        rows = grid_h - 2 * ((grid_h - kept) // 2)
        cols = grid_w
    else:
        kept = int(width * (grid_h / height))
        cols = grid_w - 2 * ((grid_w - kept) // 2)
        rows = grid_h
    return 576 + rows * (cols + 1)


# specs/llava_next.md 3.3 and 4: (W, H) -> tokens under the original rules and under transformers' rules
WORKED = {
    (704, 396): (1850, 1948),
    (200, 300): (1476, 984),
    (300, 200): (976, 1464),
    (300, 300): (1176, 1176),
    (336, 672): (1776, 1776),
    (672, 336): (1752, 1752),
    (672, 672): (2928, 2928),
    (1008, 336): (2328, 2328),
    (336, 1008): (2376, 2376),
    (640, 480): (2340, 2340),
    (480, 640): (2352, 2352),
    (640, 427): (2144, 2144),
    (1280, 720): (1948, 1948),
    (500, 333): (1464, 1464),
}


@pytest.mark.parametrize("size", list(WORKED))
def test_token_counts_of_the_spec_worked_examples(size):
    original, hf = WORKED[size]
    assert tokens(size, "llava") == original == original_formula(*size)
    assert tokens(size, "hf") == hf
    flat = 576 * (1 + math.prod(grid_shape(size, PINPOINTS, 336)))
    assert tokens(size, merge="spatial") == tokens(size, merge="flat") == flat


def test_hf_rule_matches_transformers_own_functions():
    for width, height in [(704, 396), (200, 300), (300, 200), (110, 352), (205, 984)]:
        h, w = hf_select_best_resolution((height, width), PINPOINTS)
        assert select_best_resolution((width, height), PINPOINTS, "hf") == (w, h)
        grid = torch.zeros(1, h // 14, w // 14)
        unpadded = hf_unpad_image(grid, (height, width))
        cols, rows = w // 336, h // 336
        layout = merge_layout(1 + cols * rows, 24, "spatial_unpad", (cols, rows), (width, height), "hf")
        assert len(layout) == 576 + unpadded.shape[1] * (unpadded.shape[2] + 1)


def test_fastervlm_grid_rule_differs_from_llava_on_a_16_9_image():
    assert grid_shape((704, 396), PINPOINTS, 336, "llava") == (2, 2)  # 5 views
    assert grid_shape((704, 396), PINPOINTS, 336, "fastervlm") == (2, 1)  # 3 views
    for size in [(672, 336), (336, 672), (500, 500), (200, 300), (1008, 336), (640, 480)]:
        assert grid_shape(size, PINPOINTS, 336, "fastervlm") == grid_shape(size, PINPOINTS, 336, "llava")


def test_resize_and_pad_centres_on_black_with_the_float_ceil_overshoot():
    image = random_image(0, (200, 300))
    padded = resize_and_pad(image, (672, 672))
    assert padded.size == (672, 672)
    pixels = np.asarray(padded).astype(int)
    # 200 * (672 / 300) = 448.00000000000006 -> ceil 449 columns (LLaVA's quirk), pasted at (672 - 449) // 2 = 111
    black = pixels.sum(axis=(0, 2)) == 0
    assert black[:111].all() and not black[111] and not black[559] and black[560:].all()


def test_process_images_returns_views_as_llava_does(loaded_next):
    _, model, processor, _ = loaded_next
    one = process_images([random_image(0, (640, 480))], processor, model.config)
    assert tuple(one.shape) == (1, 5, 3, 336, 336)  # [images, 1 + crops, C, H, W]
    mixed = process_images([random_image(0, (640, 480)), random_image(1, (1008, 336))], processor, model.config)
    assert isinstance(mixed, list) and [tuple(v.shape[:1]) for v in mixed] == [(5,), (4,)]
    # the base view is the whole image squashed to 336x336
    base = processor.preprocess(random_image(0, (640, 480)).resize((336, 336)), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(one[0, :1], base)


def _hf_ids(ids, count, image_token_index):
    k = int((ids == IMAGE_TOKEN_INDEX).nonzero()[0, 0])
    return torch.cat([ids[:k], torch.full((count,), image_token_index), ids[k + 1 :]])[None]


@pytest.fixture(scope="module")
def references(tiny_next_hf, tiny_next_mistral, tmp_path_factory):
    from llava.testing import convert_to_llava_hf

    mistral_hf = convert_to_llava_hf(tiny_next_mistral, tmp_path_factory.mktemp("mistral") / "hf")
    load = LlavaNextForConditionalGeneration.from_pretrained
    return {
        "llama": load(str(tiny_next_hf), dtype=torch.float32).eval(),
        "mistral": load(str(mistral_hf), dtype=torch.float32).eval(),
        "mistral_hf_folder": mistral_hf,
    }


@pytest.mark.parametrize(
    "fixture,family",
    [("tiny_next", "llama"), ("tiny_next_hf", "llama"), ("tiny_next_mistral", "mistral"), (None, "mistral")],
)
def test_logits_and_greedy_ids_match_transformers_llava_next(fixture, family, request, references):
    folder = request.getfixturevalue(fixture) if fixture else references["mistral_hf_folder"]
    reference = references[family]
    tokenizer, model, processor, _ = load_pretrained_model(str(folder), device="cpu", pruning=None)
    assert model.config.is_anyres and model.config.text_family == family
    ids = prompt_ids(tokenizer, QUESTION)
    text_rows = model.config.num_text_tokens
    # aspect ratios on which the original code and transformers agree (landscape, portrait, wide, square)
    for seed, size in enumerate([(640, 480), (480, 640), (1008, 336), (672, 672)]):
        image = random_image(seed, size)
        px = process_images([image], processor, model.config)
        ours = model(ids[None], images=px, image_sizes=[image.size])
        count = ours.shape[1] - (len(ids) - 1)
        assert count == original_formula(*size)
        hf_ids = _hf_ids(ids, count, reference.config.image_token_index)
        hf_sizes = torch.tensor([[size[1], size[0]]])
        with torch.no_grad():
            expected = reference(input_ids=hf_ids, pixel_values=px, image_sizes=hf_sizes).logits
        torch.testing.assert_close(ours[..., :text_rows], expected[..., :text_rows], atol=1e-4, rtol=0)
        if seed < 2:
            generated = model.generate(ids[None], images=px, image_sizes=[image.size], max_new_tokens=6)
            with torch.no_grad():
                hf_out = reference.generate(
                    input_ids=hf_ids,
                    pixel_values=px,
                    image_sizes=hf_sizes,
                    max_new_tokens=6,
                    do_sample=False,
                    suppress_tokens=list(range(text_rows, reference.config.text_config.vocab_size)),
                )
            assert generated[0].tolist() == hf_out[0, hf_ids.shape[1] :].tolist()


def test_disagreeing_image_uses_the_original_rules(loaded_next):
    tokenizer, model, processor, _ = loaded_next
    ids = prompt_ids(tokenizer, QUESTION)
    for size, hf_count in [((704, 396), 1948), ((200, 300), 984)]:
        image = random_image(5, size)
        out = model.prefill(ids[None], process_images([image], processor, model.config), image_sizes=[image.size])
        visual = out.accounts[0].num_visual
        assert visual == original_formula(*size) != hf_count
    model.config.anyres_rule = "hf"  # transformers' rules on request
    try:
        image = random_image(5, (704, 396))
        out = model.prefill(ids[None], process_images([image], processor, model.config), image_sizes=[image.size])
        assert out.accounts[0].num_visual == 1948
    finally:
        model.config.anyres_rule = "llava"


def test_llava_hf_next_folder_loads_as_next_not_as_1_5(tiny_next_hf):
    _, model, _, _ = load_pretrained_model(str(tiny_next_hf), device="cpu", pruning=None)
    assert model.config.image_aspect_ratio == "anyres" and model.config.mm_patch_merge_type == "spatial_unpad"
    assert model.model.image_newline is not None
    assert model.nominal_visual_tokens == 2880


def test_checkpoint_tower_is_the_fine_tuned_one(loaded_next, tiny_clip):
    from transformers import CLIPVisionModel

    _, model, _, _ = loaded_next
    openai = CLIPVisionModel.from_pretrained(str(tiny_clip))
    ours = model.get_vision_tower().vision_tower.state_dict()
    key = "embeddings.patch_embedding.weight"
    assert not torch.equal(ours[key], openai.state_dict()[key])


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


def test_next_config_without_pinpoints_is_refused(tiny_next, copy_of):
    folder = copy_of(tiny_next)
    _edit_config(folder, image_grid_pinpoints=None)
    with pytest.raises(CheckpointConfigError, match="image_grid_pinpoints"):
        load_pretrained_model(str(folder), device="cpu")


@pytest.mark.parametrize("model_type", ["qwen3_vl", "llava_onevision"])
def test_unsupported_model_types_say_what_is_supported(tiny_next_hf, copy_of, model_type):
    folder = copy_of(tiny_next_hf)
    _edit_config(folder, model_type=model_type)
    with pytest.raises(CheckpointConfigError, match=f"{model_type}.*not supported"):
        load_pretrained_model(str(folder), device="cpu")


def test_unknown_config_is_refused_before_any_weight_is_read(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_vl", "hidden_size": 64}))
    with pytest.raises(CheckpointConfigError, match="qwen3_vl"):
        load_pretrained_model(str(tmp_path), device="cpu")


def test_tower_that_does_not_match_its_config(tiny_next, copy_of, tmp_path):
    from llava.testing import write_tiny_clip

    folder = copy_of(tiny_next)
    other = write_tiny_clip(tmp_path / "other-clip", hidden_size=48)
    _edit_config(folder, mm_vision_tower=str(other))
    with pytest.raises(ValueError, match="does not match its config"):
        load_pretrained_model(str(folder), device="cpu")


def test_next_images_need_their_sizes(loaded_next):
    tokenizer, model, processor, _ = loaded_next
    px = process_images([random_image(0, (640, 480))], processor, model.config)
    with pytest.raises(ValueError, match="image_sizes"):
        model(prompt_ids(tokenizer, QUESTION)[None], images=px)


def test_batch_of_images_of_different_sizes_equals_one_by_one(loaded_next):
    tokenizer, model, processor, _ = loaded_next
    images = [random_image(i, size) for i, size in enumerate([(640, 480), (1008, 336), (300, 200)])]
    questions = [QUESTION, "Is there a red circle in the image?", "How many shapes are there?"]
    ids = [prompt_ids(tokenizer, q) for q in questions]
    px = process_images(images, processor, model.config)
    batched = model.generate(ids, images=px, image_sizes=[im.size for im in images], max_new_tokens=5)
    for i, image in enumerate(images):
        alone = model.generate(ids[i][None], images=px[i][None], image_sizes=[image.size], max_new_tokens=5)
        assert batched[i, : alone.shape[1]].tolist() == alone[0].tolist()


def test_generator_answers_next_images_of_different_sizes_alike_at_batch_1_and_2(tiny_next, tmp_path):
    from llava.eval import model_vqa_loader
    from llava.eval.answer_files import read_jsonl

    sizes = [(640, 480), (300, 200), (1008, 336)]
    questions = []
    for i, size in enumerate(sizes):
        random_image(20 + i, size).save(tmp_path / f"{i}.png")
        questions.append({"question_id": i, "image": f"{i}.png", "text": "What is the color of the square?"})
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    runs = []
    for batch in ("1", "2"):
        answers = tmp_path / f"a{batch}.jsonl"
        model_vqa_loader.main(
            ["--model-path", str(tiny_next), "--question-file", str(tmp_path / "q.jsonl")]
            + ["--image-folder", str(tmp_path), "--answers-file", str(answers), "--batch-size", batch]
            + ["--temperature", "0", "--max_new_tokens", "3", "--device", "cpu", "--visual-token-num", "29"]
        )
        runs.append(read_jsonl(answers))
    assert [r["text"] for r in runs[0]] == [r["text"] for r in runs[1]]
    # FasterVLM's reference mode: its own grid rule (300x200 -> 2x1 crops, 3 views), 29 tokens per view
    views = [r["metadata"]["visual_tokens_per_view"] for r in runs[1]]
    assert views == [[29] * 5, [29] * 3, [29] * 4]
    assert [r["metadata"]["visual_tokens"] for r in runs[1]] == [145, 87, 116]


@pytest.mark.parametrize("tower_prefix", ["model.vision_tower.vision_model.", "model.vision_tower."])
def test_llava_hf_runtime_key_layouts_load_alike(tiny_next_hf, copy_of, tower_prefix):
    """Checkpoints re-saved by transformers 5 carry runtime names; CLIP lost its `vision_model` wrapper in 5.6."""
    from safetensors.torch import load_file, save_file

    folder = copy_of(tiny_next_hf)
    renames = [
        ("language_model.model.", "model.language_model."),
        ("language_model.lm_head.", "lm_head."),
        ("multi_modal_projector.", "model.multi_modal_projector."),
        ("image_newline", "model.image_newline"),
        ("vision_tower.vision_model.", tower_prefix),
    ]
    state = {}
    for name, tensor in load_file(folder / "model.safetensors").items():
        for old, new in renames:
            if name.startswith(old):
                name = new + name[len(old) :]
                break
        state[name] = tensor
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    tokenizer, renamed, processor, _ = load_pretrained_model(str(folder), device="cpu", pruning=None)
    _, original, _, _ = load_pretrained_model(str(tiny_next_hf), device="cpu", pruning=None)
    image = random_image(0, (640, 480))
    px = process_images([image], processor, renamed.config)
    ids = prompt_ids(tokenizer, QUESTION)[None]
    torch.testing.assert_close(renamed(ids, px, image_sizes=[image.size]), original(ids, px, image_sizes=[image.size]))


@pytest.mark.parametrize("merge", ["flat", "spatial"])
def test_flat_and_spatial_merges_order_the_views_projected_features(loaded_next, merge):
    _, model, processor, _ = loaded_next
    image = random_image(0, (1008, 336))  # 3x1 crops
    px = process_images([image], processor, model.config)
    model.config.mm_patch_merge_type = merge
    try:
        block = model.encode_images(px, image_sizes=[image.size])[0].features
    finally:
        model.config.mm_patch_merge_type = "spatial_unpad"
    views = model.model.mm_projector(model.get_vision_tower()(px[0]))  # [4, 576, D]
    if merge == "flat":
        expected = views.flatten(0, 1)
    else:  # base, then the 24 x 72 raster across the three crops
        grid = views[1:].view(1, 3, 24, 24, -1).permute(0, 2, 1, 3, 4).reshape(-1, views.shape[-1])
        expected = torch.cat([views[0], grid])
    torch.testing.assert_close(block, expected)


def test_one_view_per_image_follows_llava_merge_rules(loaded_next):
    """A 4-D batch is one plain view per image (no merge); a one-view image given as views gets the newline."""
    _, model, processor, _ = loaded_next
    px = process_images([random_image(0, (640, 480))], processor, model.config)[:, :1]  # [1, 1, 3, H, W]
    assert len(model.encode_images(px[:, 0])[0].features) == 576
    assert len(model.encode_images(px, image_sizes=[(640, 480)])[0].features) == 577
