"""VQAv2 and VizWiz submission converters: normalised answers, filled-in ids, output layout."""

import json
from pathlib import Path

import pytest

from llava.eval import convert_vizwiz_for_submission, convert_vqav2_for_submission


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


SPLIT = "llava_vqav2_mscoco_test-dev2015"


def make_vqav2(root: Path, answers: list[dict]) -> None:
    # the full test2015 question file; test-dev (what was answered) is a subset of it
    questions = [{"question_id": qid, "image": f"COCO_test2015_{qid:012d}.jpg", "text": "Q"} for qid in (5, 1, 3, 2, 4)]
    write_jsonl(root / "llava_vqav2_mscoco_test2015.jsonl", questions)
    write_jsonl(root / "answers" / SPLIT / "ckpt-a" / "merge.jsonl", answers)


def test_vqav2_fills_missing_ids_and_normalises(tmp_path, capsys):
    root = tmp_path / "vqav2"
    make_vqav2(
        root,
        [
            {"question_id": 3, "prompt": "Q", "text": "The cat."},
            {"question_id": 1, "prompt": "Q", "text": "Two"},
            {"question_id": 4, "prompt": "Q", "text": "", "error": "image unreadable"},
        ],
    )
    result = convert_vqav2_for_submission.main(["--dir", str(root), "--split", SPLIT, "--ckpt", "ckpt-a"])
    dst = root / "answers_upload" / SPLIT / "ckpt-a.json"
    assert json.loads(dst.read_text()) == [
        {"question_id": 5, "answer": ""},
        {"question_id": 1, "answer": "2"},
        {"question_id": 3, "answer": "cat"},
        {"question_id": 2, "answer": ""},
        {"question_id": 4, "answer": ""},
    ]
    assert (result["total"], result["answered"], result["filled"], result["failed"]) == (5, 3, 2, 1)
    assert result["reported"] is None
    assert not list(dst.parent.glob("*.tmp"))
    assert "EvalAI" in capsys.readouterr().out


def test_vqav2_result_file_layout_of_our_scripts(tmp_path):
    root = tmp_path / "vqav2"
    make_vqav2(root, [{"question_id": 2, "prompt": "Q", "text": "Yes."}])
    answers = write_jsonl(
        root / "answers" / SPLIT / "llava-v1.5-7b" / "fastv-144.jsonl",
        [{"question_id": 2, "prompt": "Q", "text": "Yes."}],
    )
    upload = root / "answers_upload" / SPLIT / "llava-v1.5-7b" / "fastv-144.json"
    argv = ["--dir", str(root), "--split", SPLIT, "--result-file", str(answers), "--result-upload-file", str(upload)]
    convert_vqav2_for_submission.main(argv)
    assert json.loads(upload.read_text())[3] == {"question_id": 2, "answer": "yes"}
    with pytest.raises(SystemExit, match="--ckpt"):
        convert_vqav2_for_submission.main(["--dir", str(root), "--split", SPLIT])


def test_vqav2_answers_for_no_test_question_are_refused(tmp_path):
    root = tmp_path / "vqav2"
    make_vqav2(root, [{"question_id": 99, "text": "yes"}])
    with pytest.raises(SystemExit, match="none of the 1 answers"):
        convert_vqav2_for_submission.main(["--dir", str(root), "--split", SPLIT, "--ckpt", "ckpt-a"])


def test_vqav2_missing_answers_names_path_and_section(tmp_path):
    with pytest.raises(SystemExit, match=r"ckpt-b/merge\.jsonl.*EVAL\.md, section VQAv2"):
        convert_vqav2_for_submission.main(["--dir", str(tmp_path), "--split", SPLIT, "--ckpt", "ckpt-b"])


def make_vizwiz(tmp_path: Path, answers: list[dict]) -> tuple[Path, Path]:
    questions = [
        {"question_id": 0, "image": "VizWiz_test_00000000.jpg", "text": "Q"},
        {"question_id": 1, "image": "VizWiz_test_00000001.jpg", "text": "Q"},
        {"question_id": 2, "image": "VizWiz_test_00000002.jpg", "text": "Q"},
    ]
    return write_jsonl(tmp_path / "llava_test.jsonl", questions), write_jsonl(tmp_path / "answers.jsonl", answers)


def test_vizwiz_writes_image_and_normalised_answer(tmp_path):
    question_file, result_file = make_vizwiz(
        tmp_path,
        [
            {"question_id": 2, "text": "Unanswerable"},
            {"question_id": 0, "text": "A can of Coke."},
            {"question_id": 1, "text": "", "error": "timeout"},
        ],
    )
    upload = tmp_path / "answers_upload" / "run.json"
    args = ["--annotation-file", str(question_file), "--result-file", str(result_file)]
    result = convert_vizwiz_for_submission.main(args + ["--result-upload-file", str(upload)])
    assert json.loads(upload.read_text()) == [
        {"image": "VizWiz_test_00000000.jpg", "answer": "can of coke"},
        {"image": "VizWiz_test_00000001.jpg", "answer": ""},
        {"image": "VizWiz_test_00000002.jpg", "answer": "unanswerable"},
    ]
    assert (result["total"], result["failed"], result["reported"]) == (3, 1, None)


def test_vizwiz_unanswered_question_is_an_error(tmp_path):
    question_file, result_file = make_vizwiz(tmp_path, [{"question_id": 0, "text": "yes"}])
    upload = tmp_path / "out.json"
    args = ["--annotation-file", str(question_file), "--result-file", str(result_file)]
    with pytest.raises(SystemExit, match="2 of 3 questions have no answer"):
        convert_vizwiz_for_submission.main(args + ["--result-upload-file", str(upload)])
    assert not upload.exists()


def test_vizwiz_missing_question_file_names_path_and_section(tmp_path):
    args = ["--annotation-file", str(tmp_path / "llava_test.jsonl"), "--result-file", str(tmp_path / "a.jsonl")]
    with pytest.raises(SystemExit, match=r"llava_test\.jsonl.*EVAL\.md, section VizWiz"):
        convert_vizwiz_for_submission.main(args + ["--result-upload-file", str(tmp_path / "out.json")])
