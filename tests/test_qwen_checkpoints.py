"""write_tiny_qwen_vl: Hub-format Qwen2-VL / Qwen2.5-VL folders that transformers' own classes load and run."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

from llava.testing import write_tiny_qwen_vl

FAMILIES = ["qwen2_5_vl", "qwen2_vl"]
MODEL_CLASSES = {"qwen2_5_vl": Qwen2_5_VLForConditionalGeneration, "qwen2_vl": Qwen2VLForConditionalGeneration}
SPECIAL_IDS = {
    "<|endoftext|>": "bos_token_id",
    "<|im_end|>": "eos_token_id",
    "<|vision_start|>": "vision_start_token_id",
    "<|vision_end|>": "vision_end_token_id",
    "<|vision_pad|>": "vision_token_id",
    "<|image_pad|>": "image_token_id",
    "<|video_pad|>": "video_token_id",
}
PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>What?<|im_end|>\n<|im_start|>assistant\n"
)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def folder(family, tmp_path_factory):
    return write_tiny_qwen_vl(tmp_path_factory.mktemp(family) / f"tiny-{family}", family=family)


@pytest.fixture(scope="module")
def model(family, folder):
    return MODEL_CLASSES[family].from_pretrained(str(folder), dtype=torch.float32).eval()


def _config(folder):
    return json.loads((folder / "config.json").read_text())


def _keys(folder):
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    keys = set()
    for file in sorted(set(index["weight_map"].values())):
        with safe_open(str(folder / file), framework="pt") as f:
            keys.update(f.keys())
    assert keys == set(index["weight_map"])
    return keys, len(set(index["weight_map"].values()))


def _image_processor(folder):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(str(folder))


def _inputs(folder, image, question="What?"):
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    config = _config(folder)
    vision = _image_processor(folder)(image, return_tensors="pt")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    ids = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(ids, add_special_tokens=False).input_ids
    n = int(vision["image_grid_thw"][0].prod()) // 4
    at = ids.index(config["image_token_id"])
    ids = ids[:at] + [config["image_token_id"]] * n + ids[at + 1 :]
    input_ids = torch.tensor([ids])
    return dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        mm_token_type_ids=(input_ids == config["image_token_id"]).int(),
        pixel_values=vision["pixel_values"],
        image_grid_thw=vision["image_grid_thw"],
    )


def _image(seed, size=(252, 196)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_loads_with_transformers_without_missing_or_unexpected_keys(family, folder):
    model, info = MODEL_CLASSES[family].from_pretrained(str(folder), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert model.config.model_type == family
    assert model.config.text_config.rope_parameters["mrope_section"] == [2, 3, 3]
    # The weights round-trip, sharpened attention included (q_proj is 4x the 0.02 init scale, v_proj is not).
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    attention = model.model.language_model.layers[0].self_attn
    for name, loaded in [("q_proj", attention.q_proj.weight), ("v_proj", attention.v_proj.weight)]:
        key = f"model.layers.0.self_attn.{name}.weight"
        with safe_open(str(folder / weight_map[key]), framework="pt") as f:
            torch.testing.assert_close(loaded, f.get_tensor(key))
    assert 0.06 < attention.q_proj.weight.std() < 0.1 and 0.015 < attention.v_proj.weight.std() < 0.025


def test_hub_layout(family, folder):
    keys, shards = _keys(folder)
    assert shards == 2
    assert any(k.startswith("visual.blocks.0.") for k in keys)
    assert any(k.startswith("visual.merger.") for k in keys)
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= keys
    assert any(k.startswith("model.layers.3.") for k in keys)
    assert not any(k.startswith(("model.visual", "model.language_model", "language_model")) for k in keys)

    config = _config(folder)
    assert config["model_type"] == family and "text_config" not in config
    assert config["architectures"] == [MODEL_CLASSES[family].__name__]
    assert config["rope_scaling"] == {"type": "mrope", "mrope_section": [2, 3, 3]}
    assert config["hidden_size"] == 64 and config["num_key_value_heads"] == 2 and config["rope_theta"] == 1e6
    vision = config["vision_config"]
    if family == "qwen2_5_vl":
        assert vision["out_hidden_size"] == 64 and vision["window_size"] == 112 and vision["tokens_per_second"] == 2
        assert vision["fullatt_block_indexes"] == [1, 3]
    else:
        assert vision["hidden_size"] == 64 and vision["embed_dim"] == 32
    assert max(config[k] for k in SPECIAL_IDS.values()) < config["vocab_size"]

    generation = json.loads((folder / "generation_config.json").read_text())
    endoftext, im_end = config["bos_token_id"], config["eos_token_id"]
    assert generation["eos_token_id"] == [im_end, endoftext] and generation["pad_token_id"] == endoftext
    assert generation["top_k"] == 1 and generation["repetition_penalty"] == 1.05
    preprocessor = json.loads((folder / "preprocessor_config.json").read_text())
    assert preprocessor["image_processor_type"] == "Qwen2VLImageProcessor"
    assert (preprocessor["min_pixels"], preprocessor["max_pixels"]) == (3136, 12845056)


def test_tokenizer_special_tokens_and_chat_template(folder):
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    config = _config(folder)
    for token, field in SPECIAL_IDS.items():
        assert tokenizer.convert_tokens_to_ids(token) == config[field], token
        assert tokenizer.encode(token, add_special_tokens=False) == [config[field]], token
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") == config["eos_token_id"] - 1
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert len(tokenizer) <= config["vocab_size"]

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == PROMPT
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")  # no BOS
    assert ids.count(config["image_token_id"]) == 1
    assert tokenizer.decode(ids) == PROMPT
    assert tokenizer.decode(tokenizer("Is the dog red?").input_ids) == "Is the dog red?"


def test_image_processor_follows_smart_resize(folder):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    processor = _image_processor(folder)
    assert isinstance(processor, Qwen2VLImageProcessorPil)
    out = processor(Image.new("RGB", (100, 80), (200, 30, 30)), return_tensors="pt")
    h, w = round(80 / 28) * 28, round(100 / 28) * 28  # smart_resize with factor 28 (within the pixel bounds)
    assert out["image_grid_thw"].tolist() == [[1, h // 14, w // 14]]
    assert out["pixel_values"].shape == (h // 14 * w // 14, 3 * 2 * 14 * 14)


def test_pixel_bounds_are_overridable(tmp_path):
    folder = write_tiny_qwen_vl(tmp_path / "tiny", min_pixels=56 * 56, max_pixels=112 * 112)
    processor = _image_processor(folder)
    out = processor(Image.new("RGB", (400, 300)), return_tensors="pt")
    t, gh, gw = out["image_grid_thw"][0].tolist()
    assert t == 1 and gh * gw * 14 * 14 <= 112 * 112 and gh % 2 == 0 and gw % 2 == 0
    beta = math.sqrt(400 * 300 / (112 * 112))
    assert (gh * 14, gw * 14) == (math.floor(300 / beta / 28) * 28, math.floor(400 / beta / 28) * 28)


def test_forward_with_an_image_gives_finite_logits_that_depend_on_it(family, folder, model):
    inputs = _inputs(folder, _image(0))
    assert inputs["image_grid_thw"].tolist() == [[1, 14, 18]]  # several 112-pixel windows for Qwen2.5-VL
    with torch.no_grad():
        logits = model(**inputs).logits
        other = model(**{**inputs, **_inputs(folder, _image(1))}).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], _config(folder)["vocab_size"])
    assert torch.isfinite(logits).all()
    assert (logits[0, -1] - other[0, -1]).abs().max() > 1e-3

    # M-RoPE positions come from mm_token_type_ids (1 on image tokens): the 7x9 merged grid takes 9 positions.
    positions, deltas = model.model.get_rope_index(
        inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"]
    )
    first = inputs["mm_token_type_ids"][0].tolist().index(1)
    assert positions[:, 0, first].tolist() == [first] * 3
    assert positions[:, 0, first + 62].tolist() == [first, first + 6, first + 8]  # last of the 63 image tokens
    assert positions[:, 0, first + 63].tolist() == [first + 9] * 3
    assert deltas.item() == 9 - 63
    # Without mm_token_type_ids, Qwen2-VL refuses; Qwen2.5-VL silently falls back to 1D positions.
    flat = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    with torch.no_grad():
        if family == "qwen2_vl":
            with pytest.raises(ValueError, match="mm_token_type_ids"):
                model(**flat)
        else:
            assert (logits[0, -1] - model(**flat).logits[0, -1]).abs().max() > 1e-4


def test_tied_word_embeddings(family, tmp_path):
    folder = write_tiny_qwen_vl(tmp_path / "tied", family=family, tie_word_embeddings=True)
    keys, _ = _keys(folder)
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
    assert _config(folder)["tie_word_embeddings"] is True
    model, info = MODEL_CLASSES[family].from_pretrained(str(folder), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    inputs = _inputs(folder, _image(0, (100, 80)))
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()
