import json

import pytest

from llava.eval import eval_science_qa
from llava.eval.eval_science_qa import choice_index, parse_answer

LETTER = "\nAnswer with the option's letter from the given choices directly."


def problem(answer: int, n_choices: int, image: bool) -> dict:
    return {
        "answer": answer,
        "choices": [f"choice {i}" for i in range(n_choices)],
        "image": "image.png" if image else None,
    }


PROBLEMS = {
    "1": problem(0, 2, True),
    "2": problem(1, 3, True),
    "3": problem(0, 2, True),
    "4": problem(1, 4, False),
    "5": problem(0, 2, False),
    "6": problem(0, 2, True),  # train split: not scored
    "7": problem(1, 2, True),
    "8": problem(0, 3, False),
}
SPLITS = {"train": ["6"], "test": ["1", "2", "3", "4", "5", "7", "8"]}


def record(pid: str, text: str, image: bool, **extra) -> dict:
    prompt = ("<image>\n" if image else "") + "Context: N/A\nWhich one?\nA. x\nB. y" + LETTER
    return {"question_id": pid, "prompt": prompt, "text": text, **extra}


ANSWERS = [
    record("1", "A", True),  # exact letter: right
    record("2", "The answer is B.", True),  # regex: right
    record("3", "C", True),  # C is not one of 2 choices: wrong
    record("4", "B. blue", False),  # "X. " prefix: right
    record("5", "", False, error="out of memory"),  # failed answer: wrong
    # "7" has no answer: wrong, and multimodal from problems.json
    record("8", "I think so. The answer is A. Done", False),  # regex: right
]
# total: 1, 2, 4, 8 right of 7 -> 57.14; IMG (1, 2, 3, 7): 1, 2 right of 4 -> 50.0


@pytest.mark.parametrize(
    "text, letter",
    [
        ("B", "B"),
        ("E", "E"),
        ("C. the cat", "C"),
        ("C.the cat", "FAILED"),
        ("Because of gravity. The answer is D.", "D"),
        ("The answer is A. The answer is B.", "FAILED"),  # more than one match
        ("The answer is AB", "A"),  # the "." of the pattern matches any character
        ("The answer is A", "FAILED"),  # ... but needs one
        ("b", "FAILED"),
        ("F", "FAILED"),
        ("F. something", "FAILED"),  # the prefix rule only knows A-E
        ("The answer is F.", "F"),  # the regex takes any capital; the choice check rejects it later
        ("", "FAILED"),
    ],
)
def test_parsing_branches(text, letter):
    assert parse_answer(text) == letter


def test_letters_are_valid_only_within_the_choices():
    assert choice_index("B", 2) == 1
    assert choice_index("C", 2) == -1
    assert choice_index("E", 5) == 4
    assert choice_index("F", 5) == -1
    assert choice_index("FAILED", 5) == -1


@pytest.fixture
def sqa_dir(tmp_path):
    base = tmp_path / "scienceqa"
    (base / "answers").mkdir(parents=True)
    (base / "pid_splits.json").write_text(json.dumps(SPLITS))
    (base / "problems.json").write_text(json.dumps(PROBLEMS))
    with (base / "answers" / "exp.jsonl").open("w") as f:
        for r in ANSWERS:
            f.write(json.dumps(r) + "\n")
    return base


def test_total_and_img_accuracy(sqa_dir):
    metrics = eval_science_qa.evaluate(sqa_dir, sqa_dir / "answers" / "exp.jsonl")
    assert (metrics["correct"], metrics["total"]) == (4, 7)
    assert metrics["accuracy"] == pytest.approx(400 / 7)
    assert (metrics["img_correct"], metrics["img_total"]) == (2, 4)
    assert metrics["img_accuracy"] == pytest.approx(50.0)
    assert metrics["reported"] == pytest.approx(50.0)
    assert metrics["failed"] == 1
    assert metrics["missing"] == 1
    assert metrics["unparsed"] == 2  # the failed answer and the missing one


def test_multimodal_comes_from_the_prompt():
    # an image problem whose prompt lacks "<image>" is scored as text-only, as the original does
    answers = [dict(ANSWERS[0], prompt="no image token here")]
    metrics = eval_science_qa.score_science_qa(PROBLEMS, ["1"], answers)
    assert (metrics["img_total"], metrics["correct"]) == (0, 1)


def test_output_files(sqa_dir, capsys):
    out, result = sqa_dir / "answers" / "exp_output.json", sqa_dir / "answers" / "exp_result.json"
    argv = ["--base-dir", str(sqa_dir), "--result-file", str(sqa_dir / "answers" / "exp.jsonl")]
    eval_science_qa.main(argv + ["--output-file", str(out), "--output-result", str(result)])
    assert "Reported (ScienceQA IMG-accuracy): 50.00" in capsys.readouterr().out
    analysis = json.loads(out.read_text())
    assert [a["question_id"] for a in analysis["correct"]] == ["1", "2", "4", "8"]
    assert [a["question_id"] for a in analysis["incorrect"]] == ["3", "5", "7"]
    summary = json.loads(result.read_text())
    assert summary["correct"] == 4 and summary["count"] == 7
    assert summary["acc"] == pytest.approx(400 / 7)
    assert summary["results"] == {"1": 0, "2": 1, "3": -1, "4": 1, "5": -1, "7": -1, "8": 0}


def test_missing_files_point_to_eval_md(tmp_path, sqa_dir):
    with pytest.raises(FileNotFoundError, match="EVAL.md, section ScienceQA"):
        eval_science_qa.evaluate(tmp_path / "nowhere", sqa_dir / "answers" / "exp.jsonl")
    (sqa_dir / "problems.json").unlink()
    with pytest.raises(FileNotFoundError, match="problems.json"):
        eval_science_qa.evaluate(sqa_dir, sqa_dir / "answers" / "exp.jsonl")
