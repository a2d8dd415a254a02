import json

import pytest

from llava.eval import eval_gqa
from llava.eval.eval_gqa import gqa_prediction

QUESTIONS = {
    "201": {"answer": "yes", "isBalanced": True, "types": {"structural": "verify", "semantic": "attr"}},
    "202": {"answer": "red", "isBalanced": True, "types": {"structural": "query", "semantic": "attr"}},
    "203": {"answer": "left", "isBalanced": True, "types": {"structural": "query", "semantic": "rel"}},
    "204": {"answer": "no", "isBalanced": True, "types": {"structural": "verify", "semantic": "obj"}},
    "205": {"answer": "dog", "isBalanced": False},  # not part of the balanced score
}

ANSWERS = [
    {"question_id": "201", "prompt": "Is it red?", "text": "Yes."},  # -> "yes": right
    {"question_id": "202", "prompt": "What color?", "text": "Red"},  # -> "red": right
    {"question_id": "203", "prompt": "Where?", "text": "Left side"},  # wrong
    {"question_id": "204", "prompt": "Is it?", "text": "", "error": "image could not be read"},  # failed: wrong
    {"question_id": "205", "prompt": "What?", "text": "cat"},  # unbalanced: ignored
    {"question_id": "999", "prompt": "?", "text": "x"},  # not a testdev question
]


def write(tmp_path, questions=QUESTIONS, answers=ANSWERS):
    gqa = tmp_path / "gqa"
    (gqa / "data").mkdir(parents=True)
    (gqa / "answers").mkdir()
    (gqa / "data" / "testdev_balanced_questions.json").write_text(json.dumps(questions))
    with (gqa / "answers" / "merge.jsonl").open("w") as f:
        for record in answers:
            f.write(json.dumps(record) + "\n")
    return gqa


@pytest.mark.parametrize(
    "text, prediction",
    [("Yes.", "yes"), ("U.S..", "u.s"), ("Red", "red"), (" Left", " left"), ("two people", "two people")],
)
def test_prediction_normalisation_is_llavas(text, prediction):
    assert gqa_prediction(text) == prediction


def test_accuracy_is_exact_match_over_balanced_questions(tmp_path):
    gqa = write(tmp_path)
    metrics = eval_gqa.evaluate(gqa / "data" / "testdev_balanced_questions.json", gqa / "answers" / "merge.jsonl")
    assert metrics["correct"] == 2
    assert metrics["total"] == 4
    assert metrics["accuracy"] == pytest.approx(50.0)
    assert metrics["reported"] == pytest.approx(50.0)
    assert metrics["failed"] == 1
    assert metrics["unmatched"] == 1
    assert metrics["missing"] == 0
    assert metrics["by_type"]["structural"] == {"query": pytest.approx(50.0), "verify": pytest.approx(50.0)}
    assert metrics["by_type"]["semantic"]["attr"] == pytest.approx(100.0)


def test_writes_official_predictions_file(tmp_path):
    gqa = write(tmp_path)
    out = gqa / "data" / "testdev_balanced_predictions.json"
    eval_gqa.evaluate(gqa / "data" / "testdev_balanced_questions.json", gqa / "answers" / "merge.jsonl", out)
    assert json.loads(out.read_text()) == [
        {"questionId": "201", "prediction": "yes"},
        {"questionId": "202", "prediction": "red"},
        {"questionId": "203", "prediction": "left side"},
        {"questionId": "204", "prediction": ""},
        {"questionId": "205", "prediction": "cat"},
        {"questionId": "999", "prediction": "x"},
    ]


def test_missing_answers_are_refused_unless_allowed():
    answers = ANSWERS[:3]  # 204 unanswered
    with pytest.raises(ValueError, match="204"):
        eval_gqa.score_gqa(QUESTIONS, answers)
    metrics = eval_gqa.score_gqa(QUESTIONS, answers, allow_missing=True)
    assert metrics["missing"] == 1
    assert metrics["accuracy"] == pytest.approx(50.0)  # 2 of 4, the unanswered one counted wrong


def test_main_prints_the_reported_number(tmp_path, capsys):
    gqa = write(tmp_path)
    eval_gqa.main(
        [
            "--question-file",
            str(gqa / "data" / "testdev_balanced_questions.json"),
            "--result-file",
            str(gqa / "answers" / "merge.jsonl"),
        ]
    )
    assert "Reported (GQA accuracy): 50.00" in capsys.readouterr().out


def test_missing_questions_file_points_to_eval_md(tmp_path, capsys):
    gqa = write(tmp_path)
    with pytest.raises(FileNotFoundError, match="EVAL.md, section GQA"):
        eval_gqa.evaluate(tmp_path / "nope.json", gqa / "answers" / "merge.jsonl")
    with pytest.raises(SystemExit):
        eval_gqa.main(["--question-file", str(tmp_path / "nope.json"), "--result-file", "x.jsonl"])
    assert "nope.json" in capsys.readouterr().err
