"""The tiny-model training script end to end at toy size: it trains, and what it writes loads through the real
loader (original LLaVA format, tower beside the checkpoint) and answers."""

from llava.model.builder import load_pretrained_model
from llava.synthetic import scenes
from llava.train import train_tiny


def test_two_steps_train_and_the_result_loads(tmp_path):
    train_tiny.main(
        [
            "--out",
            str(tmp_path),
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
        ]
    )
    log = (tmp_path / "train_log.txt").read_text()
    assert "--steps 2" in log.splitlines()[0] and "done: 2 steps" in log
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
