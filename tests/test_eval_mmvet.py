import json

import pytest

from llava.eval import convert_mmvet_for_eval as mmvet
from llava.eval.answer_files import MalformedFileError


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


ANSWERS = [
    {"question_id": 0, "prompt": "What is it?", "text": "A cat.", "answer_id": "x", "model_id": "m"},
    {"question_id": 1, "prompt": "How many?", "text": "", "error": "image could not be read"},
    {"question_id": 17, "prompt": "Read it.", "text": "Hello\nworld"},
]


def test_writes_v1_keys_in_answer_order(tmp_path):
    dst = tmp_path / "results" / "exp.json"
    metrics = mmvet.convert_mmvet_for_eval(write_jsonl(tmp_path / "a.jsonl", ANSWERS), dst)
    assert json.loads(dst.read_text(encoding="utf-8")) == {"v1_0": "A cat.", "v1_1": "", "v1_17": "Hello\nworld"}
    assert list(json.loads(dst.read_text(encoding="utf-8"))) == ["v1_0", "v1_1", "v1_17"]
    assert (metrics["n"], metrics["failed"], metrics["reported"]) == (3, 1, None)
    assert sorted(p.name for p in dst.parent.iterdir()) == ["exp.json"]  # nothing temporary left


def test_main_prints_counts_and_the_external_grader(tmp_path, capsys):
    src = write_jsonl(tmp_path / "a.jsonl", ANSWERS)
    dst = tmp_path / "r.json"
    mmvet.main(["--src", str(src), "--dst", str(dst)])
    captured = capsys.readouterr()
    assert "wrote 3 answers (1 failed" in captured.out
    assert "MM-Vet GPT-4 grader" in captured.out
    assert "218 questions" in captured.err  # not the full benchmark
    assert json.loads(dst.read_text(encoding="utf-8"))["v1_0"] == "A cat."


def test_answering_twice_is_an_error(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [ANSWERS[0], {**ANSWERS[0], "text": "A dog."}])
    with pytest.raises(MalformedFileError, match=r"a\.jsonl: question_id 0 is answered more than once"):
        mmvet.convert_mmvet_for_eval(src, tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


def test_missing_answers_file_names_path_and_section(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl.*EVAL\.md, section MM-Vet"):
        mmvet.convert_mmvet_for_eval(tmp_path / "nope.jsonl", tmp_path / "r.json")
