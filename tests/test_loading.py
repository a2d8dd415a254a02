"""load_pretrained_model on both checkpoint formats, against transformers' LlavaForConditionalGeneration."""

import json
import shutil

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from llava.model.builder import VisionTowerNotFoundError, load_pretrained_model
from llava.model.checkpoint import MissingWeightsError
from llava.model.config import CheckpointConfigError

from .helpers import hf_input_ids, pixels, prompt_ids, random_image

QUESTION = "What is the color of the largest object? Answer with one word."


@pytest.fixture(scope="module")
def hf_reference(tiny_llava_hf):
    return LlavaForConditionalGeneration.from_pretrained(str(tiny_llava_hf), dtype=torch.float32).eval()


@pytest.mark.parametrize("fixture", ["tiny_llava", "tiny_llava_bin", "tiny_llava_hf"])
def test_logits_and_greedy_continuation_match_transformers(fixture, request, hf_reference):
    tokenizer, model, image_processor, context_len = load_pretrained_model(
        str(request.getfixturevalue(fixture)), device="cpu"
    )
    assert context_len == 2048 and model.dtype == torch.float32
    ids = prompt_ids(tokenizer, QUESTION)
    px = pixels(image_processor, model, random_image(0))
    hf_ids = hf_input_ids(ids, hf_reference.config.image_token_index, model.get_vision_tower().num_patches)

    ours = model(ids[None], images=px)
    with torch.no_grad():
        reference = hf_reference(input_ids=hf_ids, pixel_values=px).logits
    assert ours.shape[1] == reference.shape[1]
    text_rows = model.config.num_text_tokens
    torch.testing.assert_close(ours[..., :text_rows], reference[..., :text_rows], atol=1e-4, rtol=0)

    generated = model.generate(ids[None], images=px, max_new_tokens=8)
    with torch.no_grad():
        hf_out = hf_reference.generate(
            input_ids=hf_ids,
            pixel_values=px,
            max_new_tokens=8,
            do_sample=False,
            suppress_tokens=list(range(text_rows, hf_reference.config.text_config.vocab_size)),
        )
    assert generated[0].tolist() == hf_out[0, hf_ids.shape[1] :].tolist()


def test_vision_tower_override_and_fp16_tower(tiny_llava, tiny_clip, copy_of, tmp_path):
    folder = copy_of(tiny_llava)
    moved = shutil.copytree(tiny_clip, tmp_path / "elsewhere" / "clip")
    config = json.loads((folder / "config.json").read_text())
    config["mm_vision_tower"] = str(tmp_path / "gone")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(VisionTowerNotFoundError, match="--vision-tower"):
        load_pretrained_model(str(folder), device="cpu")
    _, model, _, _ = load_pretrained_model(str(folder), device="cpu", vision_tower=str(moved), vision_dtype="float16")
    assert model.get_vision_tower().dtype == torch.float16


def test_vision_tower_hub_id_offline_says_what_to_do(tiny_llava, copy_of, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    folder = copy_of(tiny_llava)
    config = json.loads((folder / "config.json").read_text())
    config["mm_vision_tower"] = "openai/clip-vit-large-patch14-336"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(VisionTowerNotFoundError, match="HF_HUB_OFFLINE"):
        load_pretrained_model(str(folder), device="cpu")


def test_missing_model_path():
    with pytest.raises(FileNotFoundError, match="--model-path"):
        load_pretrained_model("/nonexistent/llava-v1.5-7b", device="cpu")


def test_missing_config(tiny_llava, copy_of):
    folder = copy_of(tiny_llava)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointConfigError, match="No config.json"):
        load_pretrained_model(str(folder), device="cpu")


def test_config_of_neither_format(tiny_llava, copy_of):
    folder = copy_of(tiny_llava)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(CheckpointConfigError, match="neither"):
        load_pretrained_model(str(folder), device="cpu")


def test_missing_weight_files(tiny_llava, copy_of):
    folder = copy_of(tiny_llava)
    for shard in folder.glob("model-*.safetensors"):
        shard.unlink()
    with pytest.raises(MissingWeightsError, match="incomplete"):
        load_pretrained_model(str(folder), device="cpu")
    (folder / "model.safetensors.index.json").unlink()
    with pytest.raises(MissingWeightsError, match="No weights"):
        load_pretrained_model(str(folder), device="cpu")


def test_checkpoint_missing_tensors(tiny_llava, copy_of):
    folder = copy_of(tiny_llava)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    last = sorted(set(index["weight_map"].values()))[-1]
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != last}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / last).unlink()
    with pytest.raises(ValueError, match="missing"):
        load_pretrained_model(str(folder), device="cpu")


def test_missing_tokenizer(tiny_llava, copy_of):
    folder = copy_of(tiny_llava)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="No tokenizer"):
        load_pretrained_model(str(folder), device="cpu")


def test_unknown_projector_type(tiny_llava, copy_of):
    folder = copy_of(tiny_llava)
    config = json.loads((folder / "config.json").read_text())
    config["mm_projector_type"] = "mlp2x_relu"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="Unknown projector type 'mlp2x_relu'"):
        load_pretrained_model(str(folder), device="cpu")


def test_flash_attention_needs_flash_attn_and_cuda(tiny_llava):
    with pytest.raises((ImportError, ValueError), match="flash"):
        load_pretrained_model(str(tiny_llava), device="cpu", attn_implementation="flash_attention_2")


def test_quantized_loading_is_refused(tiny_llava):
    with pytest.raises(ValueError, match="8-bit"):
        load_pretrained_model(str(tiny_llava), None, "llava", load_8bit=True, device="cpu")


def test_full_feature_strategy_keeps_the_cls_token_like_transformers(tiny_llava_hf, copy_of):
    """llava-hf `vision_feature_select_strategy: "full"` (LLaVA's `cls_patch`): [CLS] and the patches all enter
    the LLM."""
    folder = copy_of(tiny_llava_hf)
    config = json.loads((folder / "config.json").read_text())
    config["vision_feature_select_strategy"] = "full"
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer, model, image_processor, _ = load_pretrained_model(str(folder), device="cpu", pruning=None)
    reference = LlavaForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32).eval()
    ids = prompt_ids(tokenizer, QUESTION)
    px = pixels(image_processor, model, random_image(0))
    count = model.get_vision_tower().num_patches + 1
    ours = model(ids[None], images=px)
    with torch.no_grad():
        expected = reference(input_ids=hf_input_ids(ids, reference.config.image_token_index, count), pixel_values=px)
    rows = model.config.num_text_tokens
    assert ours.shape[1] == expected.logits.shape[1]
    torch.testing.assert_close(ours[..., :rows], expected.logits[..., :rows], atol=1e-4, rtol=0)


def test_vocabulary_padding_of_half_precision_weights_matches_float32():
    """The llava-hf converters' padding rows for a float16 checkpoint (the GPU benchmark's transformers row): the
    float32 draw cast to float16, the original rows untouched."""
    from llava.testing.checkpoints import _pad_rows

    weight = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    padded32 = _pad_rows(weight, 64, torch.Generator().manual_seed(1))
    padded16 = _pad_rows(weight.half(), 64, torch.Generator().manual_seed(1))
    assert padded16.dtype == torch.float16 and padded16.shape == (64, 8)
    assert torch.equal(padded16[:40], weight.half())
    assert torch.allclose(padded16[40:].float(), padded32[40:], atol=1e-2)
