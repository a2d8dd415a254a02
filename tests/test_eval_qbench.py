import json

import pytest

from llava.eval import eval_qbench
from llava.eval.answer_files import MalformedFileError
from llava.eval.eval_qbench import is_correct, score_qbench

ITEMS = [
    {
        "img_path": "0.jpg",
        "question": "Is this image blurry?",
        "candidates": ["Yes", "No"],
        "correct_ans": "No",
        "type": 0,
        "concern": 0,
    },
    {
        "img_path": "1.jpg",
        "question": "What distortion is it?",
        "candidates": ["Noise", "Motion blur", "Overexposure"],
        "correct_ans": "Motion blur",
        "type": 1,
        "concern": 0,
    },
    {
        "img_path": "2.jpg",
        "question": "Main color?",
        "candidates": ["Red", "Green", "Blue", "Yellow"],
        "correct_ans": "Blue",
        "type": 1,
        "concern": 1,
    },
    {
        "img_path": "3.jpg",
        "question": "How is the clarity?",
        "candidates": ["Low", "Medium", "High"],
        "correct_ans": "High",
        "type": 2,
        "concern": 1,
    },
    {
        "img_path": "4.jpg",
        "question": "Is it dark?",
        "candidates": ["Yes", "No"],
        "correct_ans": "Yes",
        "type": 0,
        "concern": 2,
    },
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("response", "candidates", "correct", "expected"),
    [
        ("B", ["Yes", "No"], "No", True),  # the correct letter
        ("B.", ["Yes", "No"], "No", True),
        ("(B)", ["Yes", "No"], "No", True),
        ("A", ["Yes", "No"], "No", False),  # another letter
        ("A. Yes, there is no noise", ["Yes", "No"], "No", False),  # a leading letter decides
        ("No, it is sharp.", ["Yes", "No"], "No", True),  # the correct text
        ("Not at all", ["Yes", "No"], "No", False),  # "No" only as a whole word
        ("A slight motion BLUR", ["Noise", "Motion blur"], "Motion blur", True),  # "A " is an article
        ("It is overexposed", ["Noise", "Motion blur"], "Motion blur", False),
        ("是的，很清晰", ["是", "否"], "是", True),  # CJK text: a plain substring
        ("", ["Yes", "No"], "No", False),
    ],
)
def test_is_correct(response, candidates, correct, expected):
    assert is_correct(response, candidates, correct) is expected


def test_answers_jsonl_by_position(tmp_path):
    dev = tmp_path / "llvisionqa_dev.json"
    dev.write_text(json.dumps(ITEMS), encoding="utf-8")
    answers = write_jsonl(
        tmp_path / "a.jsonl",
        [
            {"question_id": 0, "text": "B"},  # right
            {"question_id": 1, "text": "A slight motion blur"},  # right
            {"question_id": 2, "text": "A. Red"},  # wrong
            {"question_id": 3, "text": "", "error": "image could not be read"},  # failed: wrong
            # 4 unanswered: wrong
            {"question_id": 9, "text": "A"},  # no such question
        ],
    )
    m = eval_qbench.evaluate(dev, answers)
    assert (m["n"], m["correct"]) == (5, 2)
    assert m["reported"] == pytest.approx(40.0)
    assert (m["failed"], m["missing"], m["extra"]) == (1, 1, 1)
    assert {k: (v["correct"], v["n"]) for k, v in m["per_type"].items()} == {"0": (1, 2), "1": (1, 2), "2": (0, 1)}
    assert {k: (v["correct"], v["n"]) for k, v in m["per_concern"].items()} == {"0": (2, 2), "1": (0, 2), "2": (0, 1)}


def test_llava_back_to_back_dump_with_responses(tmp_path, capsys):
    responses = ["No", "(B)", "Blue.", "Medium", "Yes, it is dark"]
    dump = tmp_path / "llvisionqa_dev_answers.json"
    # model_vqa_qbench json.dumps each item after the other, with no separator
    dump.write_text("".join(json.dumps({**item, "response": r}) for item, r in zip(ITEMS, responses, strict=True)))
    metrics = eval_qbench.main(["--question-file", str(dump)])
    assert (metrics["correct"], metrics["reported"]) == (4, pytest.approx(80.0))
    assert "reported (accuracy x100): 80.00" in capsys.readouterr().out


def test_items_with_ids_and_image_paths(tmp_path):
    items = [{**item, "id": f"q{i}"} for i, item in enumerate(ITEMS[:2])]
    assert score_qbench(items, [{"question_id": "q1", "text": "Motion blur"}])["correct"] == 1
    by_path = score_qbench(ITEMS, [{"question_id": "3.jpg", "text": "C"}, {"question_id": "4.jpg", "text": "no"}])
    assert (by_path["correct"], by_path["extra"]) == (1, 0)


def test_jsonl_question_file(tmp_path):
    path = write_jsonl(tmp_path / "dev.jsonl", [{**ITEMS[0], "response": "No"}, {**ITEMS[4], "response": "No"}])
    assert len(eval_qbench.read_items(path)) == 2
    assert eval_qbench.evaluate(path)["reported"] == pytest.approx(50.0)


def test_our_answers_file_scores_on_its_own(tmp_path):
    # model_vqa_qbench keeps each item's fields in its answer record, with the answer in "text"
    records = [
        {**item, "question_id": i, "prompt": "...", "text": t}
        for i, (item, t) in enumerate(zip(ITEMS[:3], ["B", "Noise", "C"], strict=True))
    ]
    m = eval_qbench.main(["--question-file", str(write_jsonl(tmp_path / "answers.jsonl", records))])
    assert (m["n"], m["correct"]) == (3, 2)


def test_answering_twice_is_an_error(tmp_path):
    dev = tmp_path / "dev.json"
    dev.write_text(json.dumps(ITEMS), encoding="utf-8")
    answers = write_jsonl(tmp_path / "a.jsonl", [{"question_id": 0, "text": "B"}, {"question_id": 0, "text": "A"}])
    with pytest.raises(MalformedFileError, match=r"a\.jsonl: question_id 0 is answered more than once"):
        eval_qbench.evaluate(dev, answers)


def test_test_split_has_no_local_score():
    with pytest.raises(ValueError, match="test split"):
        score_qbench([{k: v for k, v in ITEMS[0].items() if k != "correct_ans"}])


def test_malformed_and_missing_files(tmp_path):
    bad = tmp_path / "dev.json"
    bad.write_text('[{"question": "x"},\n{"oops"', encoding="utf-8")
    with pytest.raises(MalformedFileError, match=r"dev\.json, line 2"):
        eval_qbench.read_items(bad)
    with pytest.raises(FileNotFoundError, match=r"llvisionqa_dev\.json.*EVAL\.md, section Q-Bench"):
        eval_qbench.read_items(tmp_path / "llvisionqa_dev.json")
