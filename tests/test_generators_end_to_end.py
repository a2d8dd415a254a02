"""Every generator end to end: a tiny benchmark in its real format (images drawn with PIL), answered by a tiny
model at batch size 1 and 2 (same answers), then scored by that benchmark's scorer."""

import json

import pandas as pd
import pytest

from llava.eval import (
    convert_mmvet_for_eval,
    eval_mmbench,
    eval_qbench,
    eval_science_qa,
    model_vqa,
    model_vqa_mmbench,
    model_vqa_qbench,
    model_vqa_science,
)
from llava.eval.answer_files import read_jsonl

from .helpers import mmbench_tsv, random_image, write_qbench

COMMON = ["--temperature", "0", "--max_new_tokens", "3", "--device", "cpu"]


def _answer(main, tiny_llava, tmp_path, argv):
    """Answers at batch size 1 and 2; asserts they agree and returns the batch-2 records."""
    runs = []
    for batch in ("1", "2"):
        answers = tmp_path / f"answers-b{batch}.jsonl"
        main(["--model-path", str(tiny_llava), "--answers-file", str(answers), "--batch-size", batch, *COMMON, *argv])
        runs.append(read_jsonl(answers))
    assert [(r["question_id"], r["text"]) for r in runs[0]] == [(r["question_id"], r["text"]) for r in runs[1]]
    return runs[1], tmp_path / "answers-b2.jsonl"


def test_science_qa(tiny_llava, tmp_path):
    root = tmp_path / "scienceqa"
    items, problems = [], {}
    for i in range(4):
        pid = str(100 + i)
        item = {
            "id": pid,
            "conversations": [
                {"from": "human", "value": f"Question {i}?\nA. red\nB. blue"},
                {"from": "gpt", "value": "A"},
            ],
        }
        if i % 2 == 0:  # half with an image
            (root / "images" / "test" / pid).mkdir(parents=True)
            random_image(i).save(root / "images" / "test" / pid / "image.png")
            item["image"] = f"{pid}/image.png"
            item["conversations"][0]["value"] = "<image>\n" + item["conversations"][0]["value"]
        items.append(item)
        problems[pid] = {"answer": 0, "choices": ["red", "blue"], "image": "image.png" if i % 2 == 0 else None}
    root.mkdir(exist_ok=True)
    (root / "llava_test_CQM-A.json").write_text(json.dumps(items))
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps({"test": list(problems)}))
    records, path = _answer(
        model_vqa_science.main,
        tiny_llava,
        tmp_path,
        [
            "--question-file",
            str(root / "llava_test_CQM-A.json"),
            "--image-folder",
            str(root / "images" / "test"),
            "--single-pred-prompt",
        ],
    )
    assert [r["prompt"].startswith("<image>\n") for r in records] == [True, False, True, False]
    metrics = eval_science_qa.main(["--base-dir", str(root), "--result-file", str(path)])
    assert metrics["failed"] == 0 and 0 <= metrics["reported"] <= 100


def test_mmbench(tiny_llava, tmp_path):
    tsv = tmp_path / "mmbench" / "mmbench_dev_20230712.tsv"
    mmbench_tsv(tsv, 4, "Which animal {}?", hint="A hint.", image_size=(320, 240))
    records, path = _answer(
        model_vqa_mmbench.main, tiny_llava, tmp_path, ["--question-file", str(tsv), "--single-pred-prompt"]
    )
    assert len(records) == 4
    metrics = eval_mmbench.main(
        [
            "--annotation-file",
            str(tsv),
            "--result-file",
            str(path),
            "--upload-dir",
            str(tmp_path / "upload"),
            "--experiment",
            "tiny",
        ]
    )
    assert metrics["failed"] == 0 and 0 <= metrics["reported"] <= 100
    expected = list(pd.read_csv(tsv, sep="\t")["index"])
    assert list(pd.read_excel(tmp_path / "upload" / "tiny.xlsx")["index"]) == expected


def test_model_vqa_for_mm_vet(tiny_llava, tmp_path):
    root = tmp_path / "mm-vet"
    (root / "images").mkdir(parents=True)
    questions = []
    for i in range(3):
        random_image(i).save(root / "images" / f"v1_{i}.png")
        questions.append({"question_id": i, "image": f"v1_{i}.png", "text": f"Describe picture {i}."})
    (root / "llava-mm-vet.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    records, path = _answer(
        model_vqa.main,
        tiny_llava,
        tmp_path,
        ["--question-file", str(root / "llava-mm-vet.jsonl"), "--image-folder", str(root / "images")],
    )
    convert_mmvet_for_eval.main(["--src", str(path), "--dst", str(root / "results" / "tiny.json")])
    results = json.loads((root / "results" / "tiny.json").read_text())
    assert results == {f"v1_{r['question_id']}": r["text"] for r in records}


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_qbench(tiny_llava, tmp_path, lang):
    write_qbench(tmp_path, n=3)
    root = tmp_path / "qbench"
    records, path = _answer(
        model_vqa_qbench.main,
        tiny_llava,
        tmp_path,
        [
            "--questions-file",
            str(root / "llvisionqa_dev.json"),
            "--image-folder",
            str(root / "images_llvisionqa"),
            "--lang",
            lang,
        ],
    )
    head = "\nChoose between one of the options as follows:\n" if lang == "en" else "\\在下列选项中选择一个:\n"
    assert records[0]["prompt"] == "Is image 0 blurry?" + head + "A. Yes\nB. No\n"
    metrics = eval_qbench.main(["--question-file", str(root / "llvisionqa_dev.json"), "--answers-file", str(path)])
    assert metrics["failed"] == 0 and 0 <= metrics["reported"] <= 100
