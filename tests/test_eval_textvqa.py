"""TextVQA scorer: EvalAI answer normalisation, leave-one-out soft accuracy, and a run over tiny files."""

import json
from pathlib import Path

import pytest

from llava.eval import eval_textvqa
from llava.eval.eval_textvqa import question_from_prompt, score_textvqa
from llava.eval.m4c_evaluator import EvalAIAnswerProcessor, TextVQAAccuracyEvaluator

SUFFIX = "\nAnswer the question using a single word or phrase."


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two", "2"),
        ("none", "0"),
        ("Ten dollars", "10 dollars"),
        ("the cat.", "cat"),
        ("A Dog!", "dog"),
        ("an apple", "apple"),
        ("dont", "don't"),  # contraction written without the apostrophe gets it back
        ("don't", "don't"),  # and the apostrophe is not punctuation
        ("1,000", "1000"),  # the number stays one token
        ("3.5", "3.5"),  # a period before a digit is kept
        ("5.", "5"),
        ("left-hand", "left hand"),  # punctuation inside a word becomes a space
        ("yes / no", "yes no"),  # punctuation next to a space is removed
        ("What?", "what"),
        ("  Coca\tCola\n", "coca cola"),
        ("man's", "man 's"),
    ],
)
def test_evalai_normaliser(raw, expected):
    assert EvalAIAnswerProcessor()(raw) == expected


def gts(match: str, n_match: int, other: str = "other") -> list[str]:
    return [match] * n_match + [other] * (10 - n_match)


@pytest.mark.parametrize(
    "n_match, expected",
    [
        (0, 0.0),
        # left out one of the matching answers (n times) -> (n-1)/3 of the rest match, else n/3, each capped at 1
        (1, (1 * 0 + 9 * (1 / 3)) / 10),  # 0.3
        (2, (2 * (1 / 3) + 8 * (2 / 3)) / 10),  # 0.6
        (3, (3 * (2 / 3) + 7 * 1) / 10),  # 0.9: exactly 3 matches is not full credit
        (4, 1.0),
        (10, 1.0),
    ],
)
def test_soft_accuracy_leave_one_out(n_match, expected):
    assert TextVQAAccuracyEvaluator().score("sign", gts("sign", n_match)) == pytest.approx(expected)


def test_soft_accuracy_normalises_both_sides():
    evaluator = TextVQAAccuracyEvaluator()
    assert evaluator.score("Two", gts("2", 4)) == pytest.approx(1.0)
    assert evaluator.score("2", gts("two", 4)) == pytest.approx(1.0)
    assert evaluator.score("The Stop Sign.", gts("stop sign", 1)) == pytest.approx(0.3)


def test_eval_pred_list_is_the_mean():
    pred_list = [{"pred_answer": "a1", "gt_answers": gts("a1", 4)}, {"pred_answer": "x", "gt_answers": gts("a1", 4)}]
    assert TextVQAAccuracyEvaluator().eval_pred_list(pred_list) == pytest.approx(0.5)


def test_question_from_prompt():
    prompt = "what brand is this?\nReference OCR token: coca, cola\nAnswer the question using a single word or phrase."
    assert question_from_prompt(prompt) == "what brand is this?"
    assert question_from_prompt("Reference OCR token: a, b\nwhat is it?" + SUFFIX) == "what is it?"
    assert question_from_prompt("what is it?" + SUFFIX) == "what is it?"


ANNOTATIONS = [
    # two questions share image img1: the answer file's question_id is the image id
    {
        "image_id": "img1",
        "question": "what brand is this?",
        "question_id": 1,
        "answers": ["coca cola"] * 4 + ["coke"] * 6,
    },
    {"image_id": "img1", "question": "what number is shown?", "question_id": 2, "answers": ["2"] + ["3"] * 9},
    {"image_id": "img2", "question": "what color is the sign?", "question_id": 3, "answers": ["red"] * 10},
    {"image_id": "img3", "question": "what is written?", "question_id": 4, "answers": ["stop"] * 10},
]


def answer(image_id: str, question: str, text: str, **extra) -> dict:
    prompt = f"{question}\nReference OCR token: x, y{SUFFIX}"
    return {"question_id": image_id, "prompt": prompt, "text": text, **extra}


def write_files(tmp_path: Path, results: list[dict]) -> tuple[Path, Path]:
    annotation_file = tmp_path / "TextVQA_0.5.1_val.json"
    annotation_file.write_text(json.dumps({"dataset_name": "textvqa", "data": ANNOTATIONS}))
    result_file = tmp_path / "answers.jsonl"
    result_file.write_text("".join(json.dumps(r) + "\n" for r in results))
    return annotation_file, result_file


RESULTS = [
    answer("img1", "What Brand is this?", "Coca Cola."),  # question matched case-insensitively; 4 matches -> 1.0
    answer("img1", "What number is shown?", "two"),  # 1 match -> 0.3
    answer("img2", "What color is the sign?", "", error="CUDA out of memory"),  # failed -> 0
]  # img3 unanswered


def test_end_to_end(tmp_path, capsys):
    annotation_file, result_file = write_files(tmp_path, RESULTS)
    metrics = eval_textvqa.main(["--annotation-file", str(annotation_file), "--result-file", str(result_file)])
    assert metrics["samples"] == 3
    assert metrics["failed"] == 1
    assert metrics["unanswered"] == 1
    assert metrics["reported"] == pytest.approx(100 * (1.0 + 0.3 + 0.0) / 3)
    assert "43.33" in capsys.readouterr().out


def test_failed_answer_scores_zero_even_if_its_text_would_match():
    results = [answer("img2", "what color is the sign?", "red", error="timeout")]
    assert score_textvqa(ANNOTATIONS, results)["reported"] == 0.0


def test_answer_matching_no_annotation_is_an_error():
    with pytest.raises(ValueError, match="matches no annotation"):
        score_textvqa(ANNOTATIONS, [answer("img2", "what brand is this?", "coke")])


def test_missing_annotation_file_names_path_and_section(tmp_path):
    _, result_file = write_files(tmp_path, RESULTS)
    missing = tmp_path / "nowhere" / "TextVQA_0.5.1_val.json"
    with pytest.raises(SystemExit, match=r"nowhere/TextVQA_0\.5\.1_val\.json.*EVAL\.md, section TextVQA"):
        eval_textvqa.main(["--annotation-file", str(missing), "--result-file", str(result_file)])
