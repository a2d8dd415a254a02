import json

import pytest

from llava.eval import eval_seed


def question(qid, type_id, data_type, answer):
    return {"question_id": qid, "question_type_id": type_id, "data_type": data_type, "answer": answer,
            "question": "?", "choice_a": "a", "choice_b": "b", "choice_c": "c", "choice_d": "d"}  # fmt: skip


ANNOTATION = {
    "question_type": {"Scene Understanding": 1, "Instance Identity": 2, "Action Recognition": 10},
    "questions": [
        question("101", 1, "image", "A"),
        question("102", 1, "image", "B"),
        question("103", 2, "image", "C"),
        question("v1", 10, "video", "D"),
        question("v2", 10, "video", "A"),
    ],
}

ANSWERS = [
    {"question_id": 101, "prompt": "...", "text": "A"},  # right (ids compared as strings)
    {"question_id": 102, "prompt": "...", "text": "B."},  # wrong: exact match only
    {"question_id": "103", "prompt": "...", "text": "C"},  # right
    {"question_id": "v1", "prompt": "...", "text": "D"},  # right
    {"question_id": "v2", "prompt": "...", "text": "", "error": "frame missing"},  # failed: wrong
]
# total 3/5 = 60; image 2/3; video 1/2; types: 1 -> 1/2, 2 -> 1/1, 10 -> 1/2


@pytest.fixture
def seed_dir(tmp_path):
    seed = tmp_path / "seed_bench"
    (seed / "answers" / "exp").mkdir(parents=True)
    (seed / "SEED-Bench.json").write_text(json.dumps(ANNOTATION))
    with (seed / "answers" / "exp" / "merge.jsonl").open("w") as f:
        for r in ANSWERS:
            f.write(json.dumps(r) + "\n")
    return seed


def test_accuracy_per_type_total_image_video(seed_dir):
    metrics = eval_seed.evaluate(seed_dir / "SEED-Bench.json", seed_dir / "answers" / "exp" / "merge.jsonl")
    assert metrics["accuracy"] == pytest.approx(60.0)
    assert metrics["reported"] == pytest.approx(60.0)
    assert metrics["image"] == pytest.approx(200 / 3)
    assert metrics["video"] == pytest.approx(50.0)
    assert (metrics["image_total"], metrics["video_total"]) == (3, 2)
    assert list(metrics["types"]) == ["Scene Understanding", "Instance Identity", "Action Recognition"]
    assert metrics["types"]["Scene Understanding"]["accuracy"] == pytest.approx(50.0)
    assert metrics["types"]["Instance Identity"]["accuracy"] == pytest.approx(100.0)
    assert metrics["types"]["Action Recognition"]["accuracy"] == pytest.approx(50.0)
    assert metrics["failed"] == 1
    assert metrics["missing"] == 0


def test_type_ids_are_names_without_question_type_dict():
    annotation = {"questions": ANNOTATION["questions"]}
    metrics = eval_seed.score_seed(annotation, ANSWERS)
    assert list(metrics["types"]) == ["1", "2", "10"]


def test_upload_file(seed_dir, capsys):
    upload = seed_dir / "answers_upload" / "exp.jsonl"
    eval_seed.main(
        [
            "--annotation-file",
            str(seed_dir / "SEED-Bench.json"),
            "--result-file",
            str(seed_dir / "answers" / "exp" / "merge.jsonl"),
            "--result-upload-file",
            str(upload),
        ]
    )
    assert "Reported (SEED-Bench total accuracy): 60.00" in capsys.readouterr().out
    rows = [json.loads(line) for line in upload.read_text().splitlines()]
    assert rows == [
        {"question_id": "101", "prediction": "A"},
        {"question_id": "102", "prediction": "B."},
        {"question_id": "103", "prediction": "C"},
        {"question_id": "v1", "prediction": "D"},
        {"question_id": "v2", "prediction": ""},
    ]


def test_unanswered_questions_count_wrong_and_block_the_upload():
    answers = ANSWERS[:3]  # no video answers
    metrics = eval_seed.score_seed(ANNOTATION, answers)
    assert metrics["missing"] == 2
    assert metrics["accuracy"] == pytest.approx(40.0)
    assert metrics["video"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="2 questions have no answer"):
        eval_seed.upload_rows(ANNOTATION, answers)


def test_missing_annotation_points_to_eval_md(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="EVAL.md, section SEED-Bench"):
        eval_seed.evaluate(tmp_path / "SEED-Bench.json", tmp_path / "a.jsonl")
    with pytest.raises(SystemExit):
        eval_seed.main(["--annotation-file", str(tmp_path / "SEED-Bench.json"), "--result-file", "a.jsonl"])
    assert "SEED-Bench.json" in capsys.readouterr().err
