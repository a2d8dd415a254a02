import json
import math

import pandas as pd
import pytest

from llava.eval import eval_mmbench
from llava.eval.answer_files import MalformedFileError
from llava.eval.eval_mmbench import option_letters, parse_letter, score_mmbench

COLUMNS = [
    "index",
    "question",
    "hint",
    "A",
    "B",
    "C",
    "D",
    "answer",
    "category",
    "source",
    "l2-category",
    "comment",
    "image",
]
# base 0: three circular copies; base 1: three options, two copies; base 2: two copies; base 3: one row
ROWS = [
    [0, "What animal?", "a hint", "cat", "dog", "cow", "pig", "A", "cat_x", "src", "l2_a", "", "aGVsbG8="],
    [1000000, "What animal?", "a hint", "dog", "cow", "cat", "pig", "B", "cat_x", "src", "l2_a", "", "aGVsbG8="],
    [2000000, "What animal?", "a hint", "cow", "pig", "cat", "dog", "C", "cat_x", "src", "l2_a", "", "aGVsbG8="],
    [1, "Which color?", "", "red", "blue", "green", "", "B", "cat_y", "src", "l2_b", "", "aGVsbG8="],
    [1000001, "Which color?", "", "blue", "green", "red", "", "C", "cat_y", "src", "l2_b", "", "aGVsbG8="],
    [2, "How many?", "", "1", "2", "3", "4", "D", "cat_y", "src", "l2_b", "", "aGVsbG8="],
    [1000002, "How many?", "", "4", "1", "2", "3", "A", "cat_y", "src", "l2_b", "", "aGVsbG8="],
    [3, "Where?", "", "here", "there", "None", "", "A", "cat_x", "src", "l2_a", "", "aGVsbG8="],
]
ANSWERS = [
    {"question_id": 0, "round_id": 0, "text": "A"},  # exact letter: right
    {"question_id": 1000000, "round_id": 0, "text": "B. dog"},  # leading "X.": right
    {"question_id": 2000000, "round_id": 0, "text": "The answer is C"},  # the one lone option letter: right
    {"question_id": 1, "round_id": 0, "text": "I think B"},  # "I" is no option letter here: B, right
    {"question_id": 1000001, "round_id": 0, "text": "A"},  # wrong: base 1 fails circular
    {"question_id": 2, "round_id": 0, "text": "D "},  # right
    {"question_id": 1000002, "round_id": 0, "text": "", "error": "image could not be read"},  # failed: wrong
    # index 3 unanswered: wrong
    {"question_id": 99, "round_id": 0, "text": "A"},  # not in the TSV
    {"question_id": 0, "round_id": 1, "text": "B"},  # another round: left out
]


def write_tsv(path, columns=COLUMNS, rows=ROWS):
    lines = ["\t".join(columns)] + ["\t".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),  # the exact letter
        (" C\n", "C"),
        ("B. A cat", "B"),  # a leading "X." wins over other lone letters
        ("D the dog", "D"),  # a leading "X "
        ("The answer is (C).", "C"),  # the one option letter standing alone
        ("答案是B", "B"),
        ("Either A or B", None),  # two lone option letters: unmatched
        ("A or B", "A"),  # but a leading "X " decides
        ("E", None),  # not one of the options
        ("Dog", None),  # a capital inside a word is no letter
        ("b", None),  # letters are upper case
        ("", None),
    ],
)
def test_parse_letter_branches(text, expected):
    assert parse_letter(text, ["A", "B", "C", "D"]) == expected


def test_leading_letter_must_be_an_option():
    # "D." is no option of a three-option question; the lone "B" later is
    assert parse_letter("D. or rather B", ["A", "B", "C"]) == "B"


def test_option_letters_stop_at_the_first_missing_option():
    assert option_letters({"A": "x", "B": "y", "C": float("nan"), "D": "z"}) == ["A", "B"]
    assert option_letters({"A": "x", "B": "None", "C": "z"}) == ["A"]
    assert option_letters({"A": "x", "B": "y", "C": "z", "D": "w"}) == ["A", "B", "C", "D"]


def test_scores_with_circular_copies(tmp_path):
    tsv = write_tsv(tmp_path / "mmbench_dev.tsv")
    m = eval_mmbench.evaluate(tsv, write_jsonl(tmp_path / "answers.jsonl", ANSWERS))
    # rows right: 0, 1000000, 2000000, 1, 2 -> 5 of 8
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert (m["n_rows"], m["correct_rows"]) == (8, 5)
    # original questions 0, 1, 2, 3: 3 right
    assert m["single_pass_accuracy"] == pytest.approx(3 / 4)
    # bases: 0 all right; 1 one copy wrong; 2 one copy failed; 3 unanswered -> 1 of 4
    assert (m["n_circular"], m["correct_circular"]) == (4, 1)
    assert m["circular_accuracy"] == pytest.approx(0.25)
    assert m["reported"] == pytest.approx(25.0)
    assert (m["failed"], m["unmatched"], m["missing"], m["extra"], m["other_rounds"]) == (1, 0, 1, 1, 1)

    x, y = m["per_category"]["cat_x"], m["per_category"]["cat_y"]
    assert (x["n_rows"], x["accuracy"], x["n_circular"], x["circular_accuracy"]) == (4, 0.75, 2, 0.5)
    assert x["single_pass_accuracy"] == pytest.approx(1 / 2)
    assert (y["n_rows"], y["accuracy"], y["n_circular"], y["circular_accuracy"]) == (4, 0.5, 2, 0.0)
    assert y["single_pass_accuracy"] == 1.0


def test_unmatched_answers_count_as_wrong(tmp_path):
    table = eval_mmbench.read_tsv(write_tsv(tmp_path / "dev.tsv", rows=ROWS[:1]))
    m = score_mmbench(table, [{"question_id": "0", "text": "Either A or B"}])  # string ids are read as ints
    assert (m["unmatched"], m["correct_rows"], m["reported"]) == (1, 0, 0.0)


def test_copies_take_the_base_category(tmp_path):
    rows = [ROWS[0], [1000000, *ROWS[1][1:8], "other", *ROWS[1][9:]]]
    table = eval_mmbench.read_tsv(write_tsv(tmp_path / "dev.tsv", rows=rows))
    m = score_mmbench(table, [{"question_id": 0, "text": "A"}, {"question_id": 1000000, "text": "B"}])
    assert list(m["per_category"]) == ["cat_x"]
    assert m["per_category"]["cat_x"]["n_rows"] == 2


def test_answering_twice_is_an_error(tmp_path):
    tsv = write_tsv(tmp_path / "dev.tsv")
    answers = write_jsonl(tmp_path / "a.jsonl", [{"question_id": 0, "text": "A"}, {"question_id": 0, "text": "B"}])
    with pytest.raises(MalformedFileError, match=r"a\.jsonl: question_id 0 is answered more than once"):
        eval_mmbench.evaluate(tsv, answers)


def test_submission_xlsx_round_trip(tmp_path):
    tsv = write_tsv(tmp_path / "mmbench_dev.tsv")
    (tmp_path / "answers").mkdir()
    write_jsonl(tmp_path / "answers" / "exp.jsonl", ANSWERS)
    upload = tmp_path / "upload"
    path = eval_mmbench.write_submission(tsv, tmp_path / "answers" / "exp.jsonl", upload, "exp")
    assert path == upload / "exp.xlsx"
    assert sorted(p.name for p in upload.iterdir()) == ["exp.xlsx"]  # no temporary file left behind

    frame = pd.read_excel(path, engine="openpyxl")
    assert list(frame.columns) == ["index", "question", "A", "B", "C", "D", "prediction", "answer"]
    assert list(frame["index"]) == [0, 1000000, 2000000, 1, 1000001, 2, 1000002, 3]
    predictions = dict(zip(frame["index"], frame["prediction"], strict=True))
    assert predictions[0] == "A"
    assert predictions[1000000] == "B. dog"
    assert predictions[2000000] == "The answer is C"
    assert predictions[1] == "I think B"
    assert predictions[1000001] == "A"
    assert predictions[2] == "D "
    assert math.isnan(predictions[1000002])  # failed: its empty text is an empty cell
    assert math.isnan(predictions[3])  # unanswered
    assert list(frame["answer"]) == ["A", "B", "C", "B", "C", "D", "A", "A"]


def test_control_characters_in_answers_do_not_break_the_xlsx(tmp_path):
    tsv = write_tsv(tmp_path / "mmbench_dev.tsv")
    answers = write_jsonl(tmp_path / "exp.jsonl", [{"question_id": 0, "text": "B\x07\x1b dog"}])
    path = eval_mmbench.write_submission(tsv, answers, tmp_path / "upload", "exp")
    frame = pd.read_excel(path, engine="openpyxl")
    assert frame.loc[frame["index"] == 0, "prediction"].item() == "B dog"


def test_interrupted_xlsx_write_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch):
    target = tmp_path / "upload" / "exp.xlsx"
    target.parent.mkdir()
    target.write_bytes(b"previous submission")

    def broken_to_excel(self, path, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half an xlsx")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_excel", broken_to_excel)
    with pytest.raises(OSError, match="disk full"):
        eval_mmbench.write_xlsx_atomic(pd.DataFrame({"index": [0]}), target)
    assert [p.name for p in target.parent.iterdir()] == ["exp.xlsx"]
    assert target.read_bytes() == b"previous submission"


def test_main_scores_and_writes_the_submission(tmp_path, capsys):
    tsv = write_tsv(tmp_path / "mmbench_dev.tsv")
    (tmp_path / "answers").mkdir()
    write_jsonl(tmp_path / "answers" / "exp.jsonl", ANSWERS)
    argv = [
        "--annotation-file",
        str(tsv),
        "--result-dir",
        str(tmp_path / "answers"),
        "--upload-dir",
        str(tmp_path / "upload"),
        "--experiment",
        "exp",
    ]
    metrics = eval_mmbench.main(argv)
    out = capsys.readouterr().out
    assert metrics["reported"] == pytest.approx(25.0)
    assert "reported (circular accuracy x100): 25.00" in out
    assert "cat_x" in out and "overall" in out
    assert (tmp_path / "upload" / "exp.xlsx").is_file()


def test_test_split_is_submission_only(tmp_path, capsys):
    columns = [c for c in COLUMNS if c != "answer"]
    rows = [[v for c, v in zip(COLUMNS, row, strict=True) if c != "answer"] for row in ROWS]
    tsv = write_tsv(tmp_path / "mmbench_test.tsv", columns, rows)
    answers = write_jsonl(tmp_path / "exp.jsonl", ANSWERS)
    with pytest.raises(ValueError, match="test split"):
        eval_mmbench.evaluate(tsv, answers)
    argv = ["--annotation-file", str(tsv), "--result-file", str(answers), "--upload-dir", str(tmp_path / "up")]
    assert eval_mmbench.main(argv) is None
    frame = pd.read_excel(tmp_path / "up" / "exp.xlsx", engine="openpyxl")
    assert list(frame.columns) == ["index", "question", "A", "B", "C", "D", "prediction"]


def test_missing_files_name_the_path_and_the_eval_section(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.tsv.*EVAL\.md, section MMBench\b"):
        eval_mmbench.read_tsv(tmp_path / "nope.tsv")
    with pytest.raises(FileNotFoundError, match="EVAL.md, section MMBench-CN"):
        eval_mmbench.read_tsv(tmp_path / "mmbench_cn" / "mmbench_dev_cn_20231003.tsv")
    tsv = write_tsv(tmp_path / "dev.tsv")
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl.*EVAL\.md"):
        eval_mmbench.evaluate(tsv, tmp_path / "missing.jsonl")
