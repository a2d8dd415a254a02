"""The tiny-model training script end to end at toy size: it trains, and what it writes loads through the real
loader (original LLaVA format, tower beside the checkpoint) and answers."""

import pytest

from llava.model.builder import load_pretrained_model
from llava.synthetic import compare, scenes
from llava.train import train_tiny


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A toy-width model trained for two steps, grown from 2 to 20 layers after the first."""
    out = tmp_path_factory.mktemp("tiny")
    train_tiny.main(
        [
            "--out",
            str(out),
            "--steps",
            "2",
            "--batch",
            "2",
            "--turns",
            "2",
            "--hidden",
            "32",
            "--intermediate",
            "64",
            "--vision-hidden",
            "32",
            "--threads",
            "1",
            "--eval-every",
            "1",
            "--base-layers",
            "2",
            "--grow-at",
            "0.5",
        ]
    )
    return out


def test_two_steps_train_and_the_result_loads(trained):
    tmp_path = trained
    log = (tmp_path / "train_log.txt").read_text()
    assert "--steps 2" in log.splitlines()[0] and "done: 2 steps" in log
    assert "step 1 grow: 2 -> 20 layers" in log
    # the held-out accuracy line of each step: overall, then each question type asked, as percentages
    val_lines = [line.split() for line in log.splitlines() if " val " in line]
    assert [line[:3] for line in val_lines] == [["step", "1", "val"], ["step", "2", "val"]]
    for line in val_lines:
        assert 0 <= float(line[3]) <= 100
        kinds = dict(item.split("=") for item in line[4:])
        assert set(kinds) <= set(scenes.QUESTION_TYPES) and len(kinds) >= 2
        assert all(0 <= int(v) <= 100 for v in kinds.values())
    tokenizer, model, processor, _ = load_pretrained_model(
        str(tmp_path / train_tiny.MODEL_DIR), device="cpu", pruning=None
    )
    assert model.config.num_hidden_layers == 20 and model.get_vision_tower().num_patches == 576
    assert model.config.mm_vision_tower == "../" + train_tiny.TOWER_DIR
    words = tokenizer.convert_ids_to_tokens(tokenizer("triangle purple").input_ids[1:])
    assert len(words) <= 4  # the tokenizer learned the benchmark's words


def test_patch_labels_follow_the_drawing():
    import random

    import numpy as np

    scene = scenes.make_scene(random.Random(2))
    labels = scenes.patch_labels(scene)
    pixels = np.asarray(scenes.draw(scene))
    for index, label in enumerate(labels):
        y, x = 14 * (index // 24) + 7, 14 * (index % 24) + 7
        if 2 <= label < 2 + len(scenes.SHAPES) * len(scenes.COLORS):
            full = np.array(scenes.COLORS[list(scenes.COLORS)[(label - 2) % len(scenes.COLORS)]])
            assert tuple(pixels[y, x]) in {tuple(full), tuple((full + 255) // 2)}  # full colour or its tint
        elif label == scenes.BACKGROUND:
            assert tuple(pixels[y, x]) == scene.background


def test_patch_words_name_what_each_patch_shows(tmp_path):
    from llava.model.builder import load_tokenizer
    from llava.testing.tokenizer import save_tokenizer

    save_tokenizer(tmp_path, corpus=train_tiny.tokenizer_corpus())
    tokenizer = load_tokenizer(tmp_path)
    table = train_tiny.patch_words(tokenizer)
    color_id, shape_id = table[scenes.shape_label("triangle", "green")].tolist()
    # the first token of each word, i.e. the token an answer "green" / "triangle" starts with
    assert "green".startswith(tokenizer.decode([color_id]).strip())
    assert "triangle".startswith(tokenizer.decode([shape_id]).strip())
    assert [color_id, shape_id] == [tokenizer(w).input_ids[1] for w in ("green", "triangle")]
    # a number's two digits are the tokens an answer "47" is made of
    left, right = table[scenes.digit_label(0, "4"), 0], table[scenes.digit_label(1, "7"), 0]
    assert [left, right] == tokenizer("47").input_ids[1:]
    assert (table[[scenes.BACKGROUND, scenes.SIGN]] == -100).all()


def test_packed_questions_see_only_the_image_and_their_own_question(tmp_path):
    """Several questions about one image trained in one packed sequence give each answer exactly the logits the
    inference path gives that question asked alone (the evaluation prompt), with the model grown mid-way."""
    import argparse
    import random

    import torch

    from llava.model.builder import load_tokenizer
    from llava.model.multimodal_encoder.image_processor import CLIPImagePreprocessor
    from llava.testing.tokenizer import save_tokenizer

    torch.manual_seed(0)
    save_tokenizer(tmp_path, corpus=train_tiny.tokenizer_corpus())
    tokenizer = load_tokenizer(tmp_path)
    sizes = argparse.Namespace(vision_hidden=32, hidden=32, intermediate=64, layers=20, heads=4, rope_theta=1e6)
    model, _, _ = train_tiny.build_model(tokenizer, len(tokenizer), sizes, "unused")
    train_tiny.grow(model.model.layers, 3)  # layers 3.. copy layer 2's weights (their outputs are random here)
    model.eval()
    scene = scenes.make_scene(random.Random(3))
    qa = [(q, a) for _, q, a in scenes.questions_for(scene, random.Random(4))][:3]
    ids, labels, segments = train_tiny.conversation(tokenizer, qa)
    pixels = CLIPImagePreprocessor(size=336, crop_size=336).preprocess([scenes.draw(scene)])["pixel_values"]
    with torch.no_grad():
        out = train_tiny.forward_answers(
            model, pixels, [torch.tensor(ids)], [torch.tensor(labels)], [torch.tensor(segments)]
        )
    packed, targets = out.logits, out.targets
    # the pointing target of each answer token: the object words of its own question, nothing else
    with torch.no_grad():
        pointed = train_tiny.forward_answers(
            model,
            pixels,
            [torch.tensor(ids)],
            [torch.tensor(labels)],
            [torch.tensor(segments)],
            ground_layer=2,
            keyword_ids=train_tiny.object_word_ids(tokenizer),
        )
    text_at = ids[: ids.index(-200)] + [-1] * 576 + ids[ids.index(-200) + 1 :]
    answer_tokens = [(q, a) for q, a in qa for _ in tokenizer(a).input_ids]  # each answer's tokens and its </s>
    for row, (question, _) in zip(pointed.keywords, answer_tokens, strict=True):
        named = sorted(w for w in (*scenes.COLORS, *scenes.SHAPES) if w in question)
        marked = row.nonzero()[:, 0].tolist()
        spans = [[i] for i in marked[:1]]
        for i in marked[1:]:
            spans[-1].append(i) if i == spans[-1][-1] + 1 else spans.append([i])
        words = sorted(" ".join(tokenizer.decode([text_at[i] for i in span]) for span in spans).split())
        assert words == named
    assert pointed.pointing.shape == pointed.keywords.shape and pointed.grounding.shape[1] == 576
    alone, alone_targets = [], []
    for question, answer in qa:
        one_ids, one_labels, _ = train_tiny.conversation(tokenizer, [(question, answer)])
        n = sum(label != -100 for label in one_labels)
        logits = model(torch.tensor(one_ids), images=pixels)[0]
        alone.append(logits[-n - 1 : -1])
        alone_targets.append(torch.tensor(one_ids[-n:]))
    assert torch.equal(targets, torch.cat(alone_targets))
    torch.testing.assert_close(packed, torch.cat(alone), atol=2e-4, rtol=1e-4)


def test_compare_runs_methods_on_the_trained_model_and_tabulates(trained, tmp_path):
    """The comparison command end to end on a model of the bundled shape: a held-out split, one answer file per
    method, a results table whose token counts are each method's budget."""
    rows = compare.main(
        [
            "--model",
            str(trained / train_tiny.MODEL_DIR),
            "--out",
            str(tmp_path),
            "--questions",
            "6",
            "--budgets",
            "64",
            "--methods",
            "none",
            "sparsevlm-2_0",
            "random",
        ]
    )
    by_tag = {r["tag"]: r for r in rows}
    assert set(by_tag) == {"none", "sparsevlm-2_0-64", "random-64"}
    assert all(r["answers_count"] == 6 and r["failed"] == 0 and r["score"] is not None for r in rows)
    assert by_tag["none"]["equal_tokens"] == 576 and by_tag["random-64"]["equal_tokens"] == 64
    assert by_tag["sparsevlm-2_0-64"]["equal_tokens"] < 576
    assert (tmp_path / "results" / "results.md").is_file()
    with pytest.raises(SystemExit, match="holds a split of 6 questions"):
        compare.main(["--model", str(trained / train_tiny.MODEL_DIR), "--out", str(tmp_path), "--questions", "7"])


def test_grounding_reads_the_attention_the_layer_computes():
    """`head_attention` is the first head's attention of the layer (transformers' eager attention, renormalised over
    the chosen keys), and the grounding loss is -log of its mass on the needed patches."""
    import argparse

    import torch

    torch.manual_seed(0)
    sizes = argparse.Namespace(vision_hidden=32, hidden=32, intermediate=64, layers=20, heads=4, rope_theta=1e6)
    model, _, _ = train_tiny.build_model(None, 64, sizes, "unused")
    layer = model.model.layers[3]
    hidden = torch.randn(2, 30, 32)
    positions = torch.arange(30)[None].expand(2, -1)
    rotary = model.model.rotary_emb(hidden, positions)
    queries = (torch.tensor([0, 1, 1]), torch.tensor([25, 22, 29]))
    keys = slice(4, 20)
    allowed = torch.zeros(3, 30, dtype=torch.bool)
    allowed[:, keys] = True
    ours = train_tiny.head_attention(layer, hidden, rotary, queries, allowed)
    assert ours[:, :4].isneginf().all() and ours[:, 20:].isneginf().all()
    ours = ours[:, keys]
    model.config.text_config._attn_implementation = "eager"
    with torch.no_grad():
        _, weights = layer.self_attn(layer.input_layernorm(hidden), position_embeddings=rotary, attention_mask=None)
    expected = weights[queries[0], 0, queries[1], keys]
    expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(ours.exp(), expected, atol=1e-5, rtol=1e-4)
    evidence = torch.zeros(3, 16, dtype=torch.bool)
    evidence[0, [2, 5]] = True
    evidence[2, 7] = True  # the second query needs nothing: skipped
    loss = train_tiny.grounding_loss(ours, evidence)
    want = -(torch.log(expected[0, 2] + expected[0, 5]) + torch.log(expected[2, 7])) / 2
    torch.testing.assert_close(loss, want, atol=1e-5, rtol=1e-4)


def test_cls_loss_by_hand():
    """The [CLS] objective on a 4-patch picture with one object (label L on patches 1 and 2): a head that outputs 0
    costs log 2 per label (binary cross-entropy at p = 1/2), and a [CLS] row putting 0.5 on each content patch costs
    -log(1/2) against the uniform-over-content target; its mass on content is 1. A row on the background costs more."""
    import math

    import torch

    label = scenes.shape_label("circle", "red")
    patches = torch.tensor([[scenes.BACKGROUND, label, label, scenes.SIGN]])
    head = torch.nn.Linear(4, scenes.NUM_PATCH_LABELS - scenes.SIGN - 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    on_content = torch.tensor([[0.0, 0.5, 0.5, 0.0]])
    loss, mass = train_tiny.cls_loss(head, torch.ones(1, 4), on_content, patches)
    assert loss.item() == pytest.approx(math.log(2) + math.log(2), abs=1e-6) and mass.item() == pytest.approx(1.0)
    off_content = torch.tensor([[0.7, 0.1, 0.1, 0.1]])
    worse, mass = train_tiny.cls_loss(head, torch.ones(1, 4), off_content, patches)
    assert worse.item() == pytest.approx(math.log(2) - math.log(0.1), abs=1e-6) and mass.item() == pytest.approx(0.2)


TOY = ["--batch", "2", "--turns", "2", "--hidden", "32", "--intermediate", "64", "--vision-hidden", "32"]


def test_continued_run_starts_from_the_saved_weights_and_trains_on_pruned_blocks(trained, tmp_path):
    """`--init-from` loads the saved run (the same held-out answers before any step), and `--prune-augment 1` trains
    on randomly shortened visual blocks; what it writes loads."""
    import torch

    out = tmp_path / "continued"
    args = ["--init-from", str(trained), "--out", str(out), "--steps", "1", "--threads", "1", *TOY]
    train_tiny.main([*args, "--prune-augment", "1", "--prune-sizes", "8", "--lr", "0", "--eval-every", "100"])
    log = (out / "train_log.txt").read_text()
    assert "done: 1 steps" in log and " grow: " not in log  # all 20 layers from the start
    before = load_pretrained_model(str(trained / train_tiny.MODEL_DIR), device="cpu", pruning=None)[1]
    after = load_pretrained_model(str(out / train_tiny.MODEL_DIR), device="cpu", pruning=None)[1]
    for (name, a), b in zip(before.state_dict().items(), after.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # learning rate 0: the continued run saved exactly what it loaded
    assert (out / train_tiny.MODEL_DIR / "tokenizer.json").read_bytes() == (
        trained / train_tiny.MODEL_DIR / "tokenizer.json"
    ).read_bytes()


def test_keeping_every_patch_is_the_unpruned_forward(trained):
    """`kept` = all 576 patches in order gives the unpruned logits; a subset shortens the block the LLM sees."""
    import random

    import torch

    from llava.model.builder import load_tokenizer
    from llava.model.multimodal_encoder.image_processor import CLIPImagePreprocessor

    _, model, _, _ = load_pretrained_model(str(trained / train_tiny.MODEL_DIR), device="cpu", pruning=None)
    tokenizer = load_tokenizer(trained / train_tiny.MODEL_DIR)
    processor = CLIPImagePreprocessor(size=336, crop_size=336)
    batch = train_tiny.make_batch(random.Random(3), tokenizer, processor, 2, 2)
    pixels, ids, labels, segments = batch[:4]
    with torch.no_grad():
        plain = train_tiny.forward_answers(model, pixels, ids, labels, segments)
        every = train_tiny.forward_answers(model, pixels, ids, labels, segments, kept=torch.arange(576).expand(2, -1))
        kept = train_tiny.random_kept(random.Random(0), 2, 576, (16,))
        pruned = train_tiny.forward_answers(model, pixels, ids, labels, segments, kept=kept)
    torch.testing.assert_close(every.logits, plain.logits, rtol=0, atol=0)
    assert kept.shape == (2, 16) and bool((kept.diff(dim=1) > 0).all())  # sorted, distinct
    assert pruned.logits.shape == plain.logits.shape and not torch.allclose(pruned.logits, plain.logits)
    assert pruned.kept.shape == (len(plain.targets), 16)


def test_content_first_subsets_hold_the_content_patches_then_random_background():
    """`content_first_kept`: with room for them, every content patch of each picture (labels above the sign's face)
    plus random background up to k; with less room, k content patches only; sorted and distinct either way."""
    import random

    import torch

    labels = torch.zeros(3, 576, dtype=torch.long)
    labels[0, [5, 50, 500]] = train_tiny.SIGN + 1  # 3 content patches
    labels[1, 100:200] = train_tiny.SIGN + 2  # 100 content patches: more than k
    labels[2, 7] = train_tiny.SIGN  # the sign's plain face is background
    kept = train_tiny.content_first_kept(random.Random(0), labels, (16,))
    assert kept.shape == (3, 16) and bool((kept.diff(dim=1) > 0).all())
    assert {5, 50, 500} <= set(kept[0].tolist())
    assert all(100 <= i < 200 for i in kept[1].tolist())
    assert (labels[2, kept[2]] > train_tiny.SIGN).sum() == 0
    again = train_tiny.content_first_kept(random.Random(1), labels, (16,))
    assert not torch.equal(again[0], kept[0])  # the background part is drawn at random
