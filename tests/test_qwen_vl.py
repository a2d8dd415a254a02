"""Qwen2.5-VL / Qwen2-VL on our loop: loading the Hub format, logits and greedy ids against transformers' own
classes on the same weights and processor output, M-RoPE positions, prompts and batches."""

import pytest
import torch
import transformers

from llava.conversation import get_conv_template
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.model.language_model.qwen_vl import smart_resize

from .helpers import random_image

REFERENCE = {
    "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
    "qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
}


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen2_vl"])
def qwen(request, tmp_path_factory):
    from llava.testing.qwen_checkpoints import write_tiny_qwen_vl

    family = request.param
    folder = write_tiny_qwen_vl(tmp_path_factory.mktemp(family) / family, family=family)
    tokenizer, model, processor, _ = load_pretrained_model(str(folder), device="cpu", pruning=None)
    reference = REFERENCE[family].from_pretrained(str(folder), dtype=torch.float32).eval()
    return family, tokenizer, model, processor, reference


def prompt(tokenizer, model, question: str, image: bool = True) -> torch.Tensor:
    conv = get_conv_template(model.config.conv_mode)
    conv.append_message(conv.roles[0], ("<image>\n" if image else "") + question)
    conv.append_message(conv.roles[1], None)
    return tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")


def hf_inputs(reference, processor, ids, image=None) -> dict:
    """transformers' route: the processor's pixels and grid, `<|image_pad|>` repeated per merged token, token
    types (transformers 5.23 builds M-RoPE ids from them)."""
    if image is None:
        return {"input_ids": ids[None]}
    out = processor(images=[image], return_tensors="pt")
    count = int(out["image_grid_thw"].prod()) // 4
    at = int((ids == -200).nonzero()[0, 0])
    hf_ids = torch.cat([ids[:at], torch.full((count,), reference.config.image_token_id), ids[at + 1 :]])[None]
    types = (hf_ids == reference.config.image_token_id).long()
    return {
        "input_ids": hf_ids,
        "pixel_values": out["pixel_values"],
        "image_grid_thw": out["image_grid_thw"],
        "mm_token_type_ids": types,
    }


def test_prompt_is_the_chat_templates(qwen):
    _, tokenizer, model, _, _ = qwen
    ids = prompt(tokenizer, model, "What?")
    text = tokenizer.decode([t if t >= 0 else tokenizer.convert_tokens_to_ids("<|image_pad|>") for t in ids])
    message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}]
    assert text == tokenizer.apply_chat_template(message, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("size", [(100, 80), (60, 130), None])
def test_logits_and_greedy_ids_equal_transformers(qwen, size):
    family, tokenizer, model, processor, reference = qwen
    image = None if size is None else random_image(3, size)
    ids = prompt(tokenizer, model, "What is in the picture?", image is not None)
    images = None if image is None else process_images([image], processor, model.config)
    sizes = None if image is None else [image.size]
    ours = model(ids[None], images=images, image_sizes=sizes)
    inputs = hf_inputs(reference, processor, ids, image)
    with torch.no_grad():
        expected = reference(**inputs).logits
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)
    generated = model.generate(ids[None], images=images, image_sizes=sizes, max_new_tokens=6, repetition_penalty=1.0)
    with torch.no_grad():
        hf = reference.generate(**inputs, max_new_tokens=6, do_sample=False, repetition_penalty=1.0)
    assert generated[0].tolist() == hf[0, inputs["input_ids"].shape[1] :].tolist()


def test_generation_config_repetition_penalty_is_honoured_by_default(qwen):
    """Qwen's generation_config sets repetition_penalty 1.05: transformers' generate (and lmms-eval through it)
    applies it to greedy decoding, so ours does too unless told otherwise."""
    _, tokenizer, model, processor, reference = qwen
    assert model.config.repetition_penalty == 1.05
    image = random_image(4, (90, 90))
    ids = prompt(tokenizer, model, "Describe it.")
    images = process_images([image], processor, model.config)
    ours = model.generate(ids[None], images=images, image_sizes=[image.size], max_new_tokens=12)
    inputs = hf_inputs(reference, processor, ids, image)
    with torch.no_grad():
        hf = reference.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert ours[0].tolist() == hf[0, inputs["input_ids"].shape[1] :].tolist()


def test_batch_of_three_sizes_equals_one_by_one(qwen):
    _, tokenizer, model, processor, _ = qwen
    images = [random_image(5, (100, 80)), random_image(6, (56, 140)), random_image(7, (84, 84))]
    questions = ["What?", "How many shapes are there in the image?", "Colour of the largest one?"]
    ids = [prompt(tokenizer, model, q) for q in questions]
    pixels = process_images(images, processor, model.config)
    sizes = [im.size for im in images]
    batch = model.generate(ids, images=pixels, image_sizes=sizes, max_new_tokens=5, eos_token_id=-1)
    for i in range(3):
        alone = model.generate(ids[i][None], images=pixels[i : i + 1], image_sizes=sizes[i : i + 1], max_new_tokens=5)
        assert batch[i, : alone.shape[1]].tolist() == alone[0].tolist()


def test_mrope_positions_follow_get_rope_index(qwen):
    _, tokenizer, model, processor, reference = qwen
    image = random_image(8, (100, 80))
    ids = prompt(tokenizer, model, "What?")
    inputs = model.prepare_inputs(ids[None], process_images([image], processor, model.config), None, [image.size])
    hf = hf_inputs(reference, processor, ids, image)
    expected, _ = reference.model.get_rope_index(
        hf["input_ids"], hf["mm_token_type_ids"], image_grid_thw=hf["image_grid_thw"]
    )
    assert inputs.position_ids.permute(2, 0, 1).tolist() == expected.tolist()


def test_smart_resize_worked_values():
    """The spec's worked values at the checkpoints' defaults and lmms-eval's bounds (W x H -> W' x H')."""
    ckpt, lmms = (3136, 12845056), (200704, 1605632)
    assert smart_resize(480, 640, *ckpt) == (476, 644)
    assert smart_resize(375, 500, *ckpt) == (364, 504)
    assert smart_resize(375, 500, *lmms) == (392, 532)
    assert smart_resize(224, 224, *lmms) == (448, 448)
    assert smart_resize(1080, 1920, *lmms) == (924, 1680)
    assert smart_resize(2200, 1700, *lmms) == (1428, 1092)


def test_min_max_pixels_reach_the_processor_and_the_model(tmp_path):
    from llava.testing.qwen_checkpoints import write_tiny_qwen_vl

    folder = write_tiny_qwen_vl(tmp_path / "q", family="qwen2_5_vl")
    _, model, processor, _ = load_pretrained_model(
        str(folder), device="cpu", pruning=None, min_pixels=28 * 28 * 16, max_pixels=28 * 28 * 64
    )
    assert (model.config.min_pixels, model.config.max_pixels) == (28 * 28 * 16, 28 * 28 * 64)
    image = random_image(0, (400, 300))
    pixels = process_images([image], processor, model.config)[0]
    rows, cols = model.image_grid(image.size)
    assert rows * cols <= 64 and pixels.shape[0] == rows * cols * 4


def test_decoder_flops_count_grouped_query_projections(qwen):
    """FLOPs (multiply-accumulates) of a prefill = per layer, n x (weights of every projection) + 2n^2d attention:
    the Qwen layers' key / value projections are narrower than the hidden size (grouped-query attention)."""
    _, tokenizer, model, processor, reference = qwen
    image = random_image(9, (100, 80))
    ids = prompt(tokenizer, model, "What?")
    model.generate(ids[None], images=process_images([image], processor, model.config), image_sizes=[image.size])
    account = model.last_accounts[0]
    text = reference.config.text_config
    layer = reference.model.language_model.layers[0]
    weights = sum(
        m.weight.numel() for m in [*layer.self_attn.children(), *layer.mlp.children()] if hasattr(m, "weight")
    )
    n = account.tokens_into_layer[0]
    assert n == ids.numel() - 1 + account.num_visual
    assert layer.self_attn.k_proj.weight.shape[0] < text.hidden_size
    assert account.decoder_flops == text.num_hidden_layers * (n * weights + 2 * n * n * text.hidden_size)
