"""The synthetic benchmark: deterministic, balanced, and every answer true of the picture it is asked about."""

import random

import numpy as np
import pytest

from llava.synthetic import benchmark
from llava.synthetic.scenes import COLORS, QUESTION_TYPES, SIZE, draw, make_scene, questions_for


def _scenes(n=40, seed=3):
    rng = random.Random(seed)
    for _ in range(n):
        scene = make_scene(rng)
        yield scene, questions_for(scene, rng)


def test_generation_is_deterministic_by_seed(tmp_path):
    a = benchmark.write_split(tmp_path / "a", seed=5, num_questions=60)
    b = benchmark.write_split(tmp_path / "b", seed=5, num_questions=60)
    assert (a / "questions.jsonl").read_text() == (b / "questions.jsonl").read_text()
    assert (a / "images" / "00003.png").read_bytes() == (b / "images" / "00003.png").read_bytes()
    c = benchmark.write_split(tmp_path / "c", seed=6, num_questions=60)
    assert (a / "questions.jsonl").read_text() != (c / "questions.jsonl").read_text()


def test_question_types_are_balanced_and_yes_no_is_even():
    chosen = [q for _, qs in benchmark.generate(seed=1, num_questions=600) for q in qs]
    counts = {t: sum(q[0] == t for q in chosen) for t in QUESTION_TYPES}
    assert counts == {t: 100 for t in QUESTION_TYPES}
    exist = [q[2] for q in chosen if q[0] == "exist"]
    assert 35 <= exist.count("yes") <= 65


def _palette_in_box(pixels, box):
    """How many pixels of each shape colour (full or half tint) lie inside `box`."""
    x0, y0, x1, y1 = box
    region = pixels[y0:y1, x0:x1].reshape(-1, 3)
    counts = {}
    for name, rgb in COLORS.items():
        full = np.array(rgb)
        tint = (full + 255) // 2
        counts[name] = (
            int((region == full).all(1).sum()),
            int((region == tint).all(1).sum()),
        )
    return counts


def test_colour_and_shape_answers_are_what_the_picture_shows():
    for scene, questions in _scenes():
        pixels = np.asarray(draw(scene)).astype(int)
        for qtype, question, answer in questions:
            if qtype == "color":
                shape = question.removeprefix("What color is the ").removesuffix("?")
                (target,) = [s for s in scene.shapes if s.shape == shape]
                counts = _palette_in_box(pixels, target.box)
                side = target.box[2] - target.box[0]
                assert sum(counts[answer]) > 0.3 * side * side  # the box is mostly this colour ...
                assert all(sum(c) == 0 for name, c in counts.items() if name != answer)  # ... and no other
            if qtype == "shape":
                color = question.removeprefix("What shape is the ").removesuffix(" object?")
                assert [s.shape for s in scene.shapes if s.color == color] == [answer]


def test_each_shape_kind_has_its_own_texture():
    """Squares are solid; circles (stripes) and triangles (checks) show about as much tint as full colour, and
    their tint is laid out by rows (circles) or alternates along rows too (triangles)."""
    for scene, _ in _scenes(n=20):
        pixels = np.asarray(draw(scene)).astype(int)
        for s in scene.shapes:
            full, tint = _palette_in_box(pixels, s.box)[s.color]
            if s.shape == "square":
                assert tint == 0 and full > 0
                continue
            assert 0.35 < tint / (full + tint) < 0.65
            x0, y0, x1, y1 = s.box
            cx, cy = (x0 + x1) // 2, (y0 + 3 * y1) // 4  # inside a triangle too
            row = pixels[cy, cx - 8 : cx + 8]
            is_full = (row == np.array(COLORS[s.color])).all(1)
            assert is_full.all() or not is_full.any() if s.shape == "circle" else 0 < is_full.sum() < len(row)


def test_the_sign_lies_on_the_patch_grid():
    for scene, _ in _scenes(n=20):
        assert scene.sign[0] % 14 == 0 and scene.sign[1] % 14 == 0


def test_position_count_and_existence_answers_follow_the_geometry():
    for scene, questions in _scenes():
        by_shape = {s.shape: s for s in scene.shapes}
        for qtype, question, answer in questions:
            if qtype == "position":
                a, b = question.split(", the ")[1].removesuffix("?").split(" or the ")
                axis = 0 if "left" in question else 1
                other = b if answer == a else a
                assert by_shape[answer].center[axis] < by_shape[other].center[axis]
            if qtype == "count" and "objects" in question:
                assert int(answer) == len(scene.shapes)
            if qtype == "exist":
                words = question.split()
                color, shape = words[3], words[4]
                assert (answer == "yes") == any((s.color, s.shape) == (color, shape) for s in scene.shapes)
            if qtype == "read":
                assert answer == scene.number and len(answer) == 2
        # objects never overlap each other or the sign
        boxes = [s.box for s in scene.shapes] + [scene.sign]
        for i, p in enumerate(boxes):
            assert 0 <= p[0] < p[2] <= SIZE and 0 <= p[1] < p[3] <= SIZE
            for q in boxes[i + 1 :]:
                assert p[2] <= q[0] or q[2] <= p[0] or p[3] <= q[1] or q[3] <= p[1]


def test_scorer_counts_per_type_and_normalises():
    truth = [
        {"question_id": i, "answer": a, "category": t}
        for i, (t, a) in enumerate([("color", "red"), ("color", "blue"), ("read", "42"), ("exist", "no")])
    ]
    answers = [
        {"question_id": 0, "text": "Red."},
        {"question_id": 1, "text": "green"},
        {"question_id": 2, "text": "", "error": "image could not be read"},
    ]
    metrics = benchmark.score(truth, answers)
    assert metrics["per_type"] == {"exist": 0.0, "color": 50.0, "read": 0.0}
    assert metrics["reported"] == pytest.approx(25.0) and metrics["failed"] == 1 and metrics["missing"] == 1


def test_evidence_patches_cover_what_each_question_is_about():
    from llava.synthetic.scenes import PATCH, evidence_patches

    def inside(index, box):
        x, y = PATCH * (index % 24) + PATCH // 2, PATCH * (index // 24) + PATCH // 2
        return box[0] <= x <= box[2] and box[1] <= y <= box[3]

    for scene, questions in _scenes(n=20):
        for qtype, question, answer in questions:
            evidence = evidence_patches(scene, question)
            if qtype == "read":
                assert len(evidence) == 2 and all(evidence) and all(inside(i, scene.sign) for e in evidence for i in e)
                assert max(i % 24 for i in evidence[0]) < min(i % 24 for i in evidence[1])  # left, then right
                continue
            (patches,) = evidence
            if qtype == "exist" and answer == "no" or qtype == "count" and answer == "0":
                assert patches == []
                continue
            boxes = [s.box for s in scene.shapes]
            if qtype == "color":
                boxes = [s.box for s in scene.shapes if s.shape in question]
            if qtype == "shape":
                boxes = [s.box for s in scene.shapes if s.color in question]
            assert patches and all(any(inside(i, box) for box in boxes) for i in patches)
