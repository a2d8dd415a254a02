"""FasterVLM's attention analyses (llava.analysis): the shift profiles against a brute-force computation from
transformers' eager attention maps, the dispersion CDF / histogram by hand, and both CLIs end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration

from llava.analysis import analyze_attn_dispersion, analyze_attn_shift
from llava.analysis.attention import (
    DispersionAccumulator,
    ShiftAccumulator,
    attention_cdf,
    last_token_attention,
    max_normalised_histogram,
    shift_sample,
)

from .helpers import hf_input_ids, pixels, prompt_ids, random_image

QUESTION = "Which object is at the bottom of the picture? Answer briefly."


@pytest.fixture(scope="module")
def eager_reference(tiny_llava_hf):
    """transformers' LLaVA on the llava-hf conversion of the same weights, eager attention (full maps)."""
    return LlavaForConditionalGeneration.from_pretrained(
        str(tiny_llava_hf), dtype=torch.float32, attn_implementation="eager"
    ).eval()


@pytest.fixture(scope="module")
def reference_run(loaded, eager_reference):
    tokenizer, model, image_processor, _ = loaded
    ids = prompt_ids(tokenizer, QUESTION)
    px = pixels(image_processor, model, random_image(3))
    num_patches = model.get_vision_tower().num_patches
    hf_ids = hf_input_ids(ids, eager_reference.config.image_token_index, num_patches)
    with torch.no_grad():
        out = eager_reference(input_ids=hf_ids, pixel_values=px, output_attentions=True)
        tower = eager_reference.model.vision_tower(px, output_attentions=True)
    image_positions = (hf_ids[0] == eager_reference.config.image_token_index).nonzero().flatten()
    return ids, px, out.attentions, tower.attentions, int(image_positions[0]), num_patches


def brute_force_profiles(attention: torch.Tensor, start: int, visual: int) -> dict[str, torch.Tensor]:
    """The four profiles from one layer's full map [H, L, L], with the causal visibility counted query by query."""
    a = attention.double().mean(dim=0)
    length = a.shape[0]
    image_queries = range(start, start + visual)
    text_queries = range(start + visual, length)
    out = {kind: torch.zeros(visual, dtype=torch.float64) for kind in ("full", "image", "text", "last")}
    for j in range(visual):
        key = start + j
        # causal: query q sees key only if q >= key, so the image queries that see it are key..end of the image
        image_seen = a[key : image_queries.stop, key]
        text_seen = a[text_queries.start :, key]  # every text query comes after every image token
        out["full"][j] = (image_seen.sum() + text_seen.sum()) / (len(image_seen) + len(text_seen))
        out["image"][j] = image_seen.mean()
        out["text"][j] = a[start + visual : length - 1, key].mean()
        out["last"][j] = a[length - 1, key]
    return out


def test_shift_profiles_match_transformers_eager_attention(loaded, reference_run):
    _, model, _, _ = loaded
    ids, px, attentions, tower_attentions, start, visual = reference_run
    sample = shift_sample(model, ids[None], px)
    assert sample.visual == visual
    assert sorted(sample.profiles) == list(range(model.config.text_config.num_hidden_layers))
    for layer, reference in enumerate(attentions):
        expected = brute_force_profiles(reference[0], start, visual)
        for kind, values in expected.items():
            torch.testing.assert_close(sample.profiles[layer][kind], values, atol=1e-5, rtol=0, msg=f"{layer} {kind}")
    # the normalisation matters: the raw column sums are not the profile
    raw = attentions[0][0].double().mean(0)[start:, start : start + visual].sum(0)
    assert not torch.allclose(sample.profiles[0]["full"], raw / raw.shape[0], atol=1e-5)
    # [CLS] row of the tower's selected layer (-2), head-averaged, patch keys
    cls = tower_attentions[-2][0, :, 0, 1:].double().mean(0)
    torch.testing.assert_close(sample.cls[0], cls, atol=1e-5, rtol=0)


def test_shift_average_over_samples_and_selected_layers(loaded):
    tokenizer, model, image_processor, _ = loaded
    ids = prompt_ids(tokenizer, QUESTION)[None]
    samples = [shift_sample(model, ids, pixels(image_processor, model, random_image(s)), layers=[1, 3]) for s in (0, 1)]
    assert sorted(samples[0].profiles) == [1, 3]
    acc = ShiftAccumulator()
    for sample in samples:
        acc.add(sample)
    result = acc.result()
    assert result["num_samples"] == 2 and list(result["layers"]) == ["1", "3"]
    mean = (samples[0].profiles[3]["text"] + samples[1].profiles[3]["text"]) / 2
    np.testing.assert_allclose(result["layers"]["3"]["text"], mean.numpy(), atol=1e-12)
    np.testing.assert_allclose(result["cls"], ((samples[0].cls[0] + samples[1].cls[0]) / 2).numpy(), atol=1e-12)


def test_last_token_row_matches_transformers(loaded, reference_run):
    _, model, _, _ = loaded
    ids, px, attentions, _, start, visual = reference_run
    row = last_token_attention(model, ids[None], px, layer=1)
    expected = attentions[1][0].double().mean(0)[-1, start : start + visual]
    torch.testing.assert_close(row, expected, atol=1e-5, rtol=0)


def test_dispersion_cdf_and_histogram_by_hand():
    attention = torch.tensor([1.0, 4.0, 2.0, 3.0])  # sorted: 4, 3, 2, 1 of 10
    torch.testing.assert_close(attention_cdf(attention), torch.tensor([0.4, 0.7, 0.9, 1.0], dtype=torch.float64))
    # max-normalised: 0.25, 1, 0.5, 0.75 in the bins [0, .25) [.25, .5) [.5, .75) [.75, 1]
    hist = max_normalised_histogram(attention, bins=4)
    assert hist.tolist() == [0.0, 1.0, 1.0, 2.0]
    acc = DispersionAccumulator(bins=4)
    acc.add("cls", attention)
    acc.add("cls", torch.tensor([1.0, 1.0, 1.0, 1.0]))  # uniform: 0.25, 0.5, 0.75, 1
    data = acc.result()["sources"]["cls"]
    np.testing.assert_allclose(data["cdf"], [0.325, 0.6, 0.825, 1.0])
    np.testing.assert_allclose(data["token_share"], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(data["histogram"], [0, 1 / 8, 1 / 8, 6 / 8])


def test_in_llm_pruning_is_refused(loaded):
    from llava.sparse.fastv import FastV

    tokenizer, model, image_processor, _ = loaded
    ids = prompt_ids(tokenizer, QUESTION)[None]
    model.set_pruning(FastV(k=2, retained_tokens=64))
    try:
        with pytest.raises(ValueError, match="prunes inside the LLM"):
            shift_sample(model, ids, pixels(image_processor, model, random_image(0)))
    finally:
        model.set_pruning(None)


@pytest.fixture
def question_set(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        random_image(i, size=(80, 60)).save(images / f"{i}.png")
    rows = [
        {"question_id": 0, "image": "0.png", "text": "What is at the bottom?"},
        {"question_id": 1, "text": "A text-only question is skipped."},
        {"question_id": 2, "image": "1.png", "text": "What colour dominates?"},
        {"question_id": 3, "image": "2.png", "text": "Not read: beyond --num-samples."},
    ]
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    conversations = tmp_path / "mix.json"
    conversations.write_text(
        json.dumps(
            [
                {
                    "id": "a",
                    "image": "2.png",
                    "conversations": [
                        {"from": "human", "value": "<image>\nDescribe the image."},
                        {"from": "gpt", "value": "noise"},
                    ],
                }
            ]
        )
    )
    return questions, conversations, images


def _assert_png(path, size):
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == size
        pixels_ = np.asarray(image.convert("RGB"), dtype=float)
    assert pixels_.std() > 5 and len(np.unique(pixels_.reshape(-1, 3), axis=0)) > 20  # not blank


def test_shift_cli_end_to_end(tiny_llava, question_set, tmp_path):
    questions, conversations, images = question_set
    out = tmp_path / "shift"
    argv = [
        "--model-path",
        str(tiny_llava),
        "--question-file",
        str(questions),
        "--image-folder",
        str(images),
        "--num-samples",
        "2",
        "--device",
        "cpu",
        "--layers",
        "0,3",
        "--out",
        str(out),
    ]
    analyze_attn_shift.main(argv)
    result = json.loads((out / "attn_shift.json").read_text())
    assert result["num_samples"] == 2 and result["num_visual_tokens"] == 576 and list(result["layers"]) == ["0", "3"]
    assert all(len(result["layers"]["3"][kind]) == 576 for kind in ("full", "image", "text", "last"))
    assert len(result["cls"]) == 576 and not list(out.glob("*.tmp"))
    # heat maps from the tokens' provenance: unpruned LLaVA-1.5, the 24 x 24 raster of the profile itself
    for kind in ("full", "last"):
        grid = np.array(result["maps"]["3"][kind]["image"], dtype=float)
        np.testing.assert_allclose(grid, np.reshape(result["layers"]["3"][kind], (24, 24)), atol=1e-12)
    _assert_png(out / "shift_layer_00.png", (1600, 700))
    _assert_png(out / "shift_layer_03.png", (1600, 700))
    _assert_png(out / "shift_cls.png", (500, 700))
    _assert_png(out / "attn_shift.png", (780, 260))
    # a conversation file (FasterVLM's mix1k layout), with a pre-LLM method: profiles over the kept tokens
    out2 = tmp_path / "shift2"
    analyze_attn_shift.main(
        [
            "--model-path",
            str(tiny_llava),
            "--question-file",
            str(conversations),
            "--image-folder",
            str(images),
            "--device",
            "cpu",
            "--layers",
            "1",
            "--out",
            str(out2),
            "--method",
            "fastervlm",
            "--visual-token-num",
            "64",
        ]
    )
    result = json.loads((out2 / "attn_shift.json").read_text())
    assert result["num_samples"] == 1 and result["num_visual_tokens"] == 64
    grid = np.array(result["maps"]["1"]["image"]["image"], dtype=float)  # kept patches where they were, others empty
    assert grid.shape == (24, 24) and np.isfinite(grid).sum() == 64
    np.testing.assert_allclose(np.sort(grid[np.isfinite(grid)]), np.sort(result["layers"]["1"]["image"]), atol=1e-12)
    _assert_png(out2 / "shift_layer_01.png", (1600, 700))


def test_shift_cli_on_llava_next(tiny_next, question_set, tmp_path):
    """LLaVA-NeXT (anyres, unpadded crop grid with newline tokens): profiles over every token that entered the LLM,
    heat maps of the base view and of the crop grid from the provenance; newline tokens sit on no cell."""
    questions, _, images = question_set
    out = tmp_path / "shift_next"
    analyze_attn_shift.main(
        [
            "--model-path",
            str(tiny_next),
            "--question-file",
            str(questions),
            "--image-folder",
            str(images),
            "--num-samples",
            "1",
            "--device",
            "cpu",
            "--layers",
            "0",
            "--out",
            str(out),
        ]
    )
    result = json.loads((out / "attn_shift.json").read_text())
    visual = result["num_visual_tokens"]
    maps = result["maps"]["0"]["full"]
    assert set(maps) == {"base", "crops"} and np.array(maps["base"], dtype=float).shape == (24, 24)
    crops = np.array(maps["crops"], dtype=float)
    cells = 576 + np.isfinite(crops).sum()
    assert 576 < cells < visual  # the rest are newline tokens
    assert len(result["layers"]["0"]["full"]) == visual
    _assert_png(out / "shift_layer_00.png", (1600, 700))


def test_dispersion_cli_end_to_end(tiny_llava, question_set, tmp_path):
    questions, _, images = question_set
    out = tmp_path / "dispersion"
    analyze_attn_dispersion.main(
        [
            "--model-path",
            str(tiny_llava),
            "--question-file",
            str(questions),
            "--image-folder",
            str(images),
            "--num-samples",
            "2",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    result = json.loads((out / "attn_dispersion.json").read_text())
    assert result["layer"] == 1 and result["bins"] == 200
    for source in ("cls", "last"):
        data = result["sources"][source]
        assert data["num_samples"] == 2 and data["num_tokens"] == 576
        assert abs(data["cdf"][-1] - 1) < 1e-9 and abs(sum(data["histogram"]) - 1) < 1e-9
        assert all(b >= a - 1e-12 for a, b in zip(data["cdf"], data["cdf"][1:], strict=False))
    _assert_png(out / "attn_dispersion.png", (1500, 420))


def test_cli_errors_are_clear(tiny_llava, tmp_path, capsys):
    with pytest.raises(SystemExit):
        analyze_attn_shift.main(
            [
                "--model-path",
                str(tiny_llava),
                "--question-file",
                str(tmp_path / "none.jsonl"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
    assert "no such file" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    from llava.testing.qwen_checkpoints import write_tiny_qwen_vl

    return write_tiny_qwen_vl(tmp_path_factory.mktemp("qwen") / "qwen2_5_vl")


def test_both_clis_on_qwen_vl(tiny_qwen, question_set, tmp_path):
    """Qwen2.5-VL (merged-patch grid, M-RoPE): profiles and maps on its merged grid; its tower has no [CLS], so
    there is no [CLS] profile and the dispersion holds the last token only."""
    questions, _, images = question_set
    common = ["--model-path", str(tiny_qwen), "--question-file", str(questions), "--image-folder", str(images)]
    common += ["--num-samples", "2", "--device", "cpu"]
    analyze_attn_shift.main([*common, "--layers", "0", "--out", str(tmp_path / "s")])
    result = json.loads((tmp_path / "s" / "attn_shift.json").read_text())
    grid = np.array(result["maps"]["0"]["full"]["image"], dtype=float)
    assert result["cls"] is None and grid.size == result["num_visual_tokens"] and np.isfinite(grid).all()
    _assert_png(tmp_path / "s" / "shift_layer_00.png", (1600, 700))
    analyze_attn_dispersion.main([*common, "--out", str(tmp_path / "d")])
    result = json.loads((tmp_path / "d" / "attn_dispersion.json").read_text())
    assert list(result["sources"]) == ["last"] and result["sources"]["last"]["num_samples"] == 2
    _assert_png(tmp_path / "d" / "attn_dispersion.png", (1000, 420))


def test_clis_on_video_llava_clips_and_the_qwen_cls_note(tmp_path, tiny_qwen):
    """Video questions on a tiny Video-LLaVA: profiles over the clip's 8 frames, its video tower's per-frame [CLS]
    rows; Qwen2.5-VL's JSON says why it has no [CLS] profile."""
    from llava.analysis.attention import NO_CLS_NOTE
    from llava.testing.video_llava import write_tiny_video_llava
    from llava.testing.videos import synthetic_frames, write_video

    checkpoint = write_tiny_video_llava(tmp_path / "video", seed=1)
    write_video(tmp_path / "a.mp4", synthetic_frames(16, 96, 64))
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 0, "video": "a.mp4", "text": "What moves?"}) + "\n")
    common = ["--question-file", str(questions), "--image-folder", str(tmp_path), "--device", "cpu"]
    analyze_attn_shift.main(["--model-path", str(checkpoint), *common, "--layers", "0", "--out", str(tmp_path / "s")])
    result = json.loads((tmp_path / "s" / "attn_shift.json").read_text())
    patches = len(result["cls"])
    assert result["num_visual_tokens"] == 8 * (patches + 1) and "cls_note" not in result  # 8 x ([CLS] + patches)
    assert all(len(result["layers"]["0"][kind]) == result["num_visual_tokens"] for kind in ("full", "last"))
    _assert_png(tmp_path / "s" / "shift_layer_00.png", (1600, 700))
    analyze_attn_dispersion.main(["--model-path", str(checkpoint), *common, "--out", str(tmp_path / "d")])
    result = json.loads((tmp_path / "d" / "attn_dispersion.json").read_text())
    assert result["sources"]["cls"]["num_samples"] == 8 and result["sources"]["last"]["num_samples"] == 1
    _assert_png(tmp_path / "d" / "attn_dispersion.png", (1500, 420))
    images = tmp_path / "images"
    images.mkdir()
    random_image(0, size=(80, 60)).save(images / "0.png")
    questions.write_text(json.dumps({"question_id": 0, "image": "0.png", "text": "What is it?"}) + "\n")
    qwen = ["--model-path", str(tiny_qwen), "--question-file", str(questions), "--image-folder", str(images)]
    analyze_attn_shift.main([*qwen, "--device", "cpu", "--layers", "0", "--out", str(tmp_path / "qs")])
    result = json.loads((tmp_path / "qs" / "attn_shift.json").read_text())
    assert result["cls"] is None and result["cls_note"] == NO_CLS_NOTE
    analyze_attn_dispersion.main([*qwen, "--device", "cpu", "--out", str(tmp_path / "qd")])
    result = json.loads((tmp_path / "qd" / "attn_dispersion.json").read_text())
    assert list(result["sources"]) == ["last"] and result["cls_note"] == NO_CLS_NOTE


def test_shift_profiles_match_transformers_eager_attention_on_llava_next(loaded_next, tiny_next_hf):
    """The same brute-force parity on LLaVA-NeXT (anyres views, unpadded crop grid, newline tokens)."""
    from transformers import LlavaNextForConditionalGeneration

    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.mm_utils import process_images

    reference = LlavaNextForConditionalGeneration.from_pretrained(
        str(tiny_next_hf), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    tokenizer, model, processor, _ = loaded_next
    ids = prompt_ids(tokenizer, QUESTION)
    image = random_image(4, (640, 480))
    px = process_images([image], processor, model.config)
    sample = shift_sample(model, ids[None], px, image_sizes=[image.size])
    start = int((ids == IMAGE_TOKEN_INDEX).nonzero()[0, 0])
    image_ids = torch.full((sample.visual,), reference.config.image_token_index)
    hf_ids = torch.cat([ids[:start], image_ids, ids[start + 1 :]])
    with torch.no_grad():
        out = reference(
            input_ids=hf_ids[None], pixel_values=px, image_sizes=torch.tensor([[480, 640]]), output_attentions=True
        )
    assert sample.visual > 576 and sample.tokens.num_newlines > 0  # base view, unpadded crops, newline tokens
    for layer, attention in enumerate(out.attentions):
        expected = brute_force_profiles(attention[0], start, sample.visual)
        for kind, values in expected.items():
            torch.testing.assert_close(sample.profiles[layer][kind], values, atol=1e-5, rtol=0, msg=f"{layer} {kind}")
