"""The answer generators, run as the evaluation scripts run them, on a tiny benchmark written here."""

import base64
import io
import json

import pandas as pd
import pytest

from llava.eval import merge_chunks, model_vqa_loader, model_vqa_mmbench, model_vqa_science
from llava.eval.answer_files import MalformedFileError, MissingDataError, read_jsonl

from .helpers import random_image


@pytest.fixture
def bench(tmp_path):
    """playground-like folder: pope/llava_pope_test.jsonl + pope/val2014 images (one of them corrupt)."""
    root = tmp_path / "pope"
    images = root / "val2014"
    images.mkdir(parents=True)
    rows = []
    for i in range(5):
        name = f"img{i}.png"
        random_image(i, size=(64 + 8 * i, 48)).save(images / name)
        rows.append({"question_id": i, "image": name, "text": f"Is there a cat {i} in the image?", "category": "x"})
    rows.append({"question_id": 5, "image": "img0.png", "text": "Same image, other question?", "category": "x"})
    (images / "broken.png").write_bytes(b"not a png")
    rows.insert(3, {"question_id": 99, "image": "broken.png", "text": "Broken?", "category": "x"})
    qfile = root / "llava_pope_test.jsonl"
    qfile.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, qfile, images


def _loader_args(tiny_llava, qfile, images, answers, *extra):
    return [
        "--model-path",
        str(tiny_llava),
        "--question-file",
        str(qfile),
        "--image-folder",
        str(images),
        "--answers-file",
        str(answers),
        "--temperature",
        "0",
        "--max_new_tokens",
        "4",
        "--device",
        "cpu",
        *extra,
    ]


def test_loader_answers_every_question_in_order_and_records_failures(tiny_llava, bench, tmp_path):
    _, qfile, images = bench
    answers = tmp_path / "a.jsonl"
    model_vqa_loader.main(_loader_args(tiny_llava, qfile, images, answers, "--batch-size", "3"))
    records = read_jsonl(answers)
    questions = read_jsonl(qfile)
    assert [r["question_id"] for r in records] == [q["question_id"] for q in questions]
    assert [r["prompt"] for r in records] == [q["text"] for q in questions]
    broken = next(r for r in records if r["question_id"] == 99)
    assert broken["text"] == "" and "image could not be read" in broken["error"]
    good = [r for r in records if "error" not in r]
    assert all(r["text"] and r["model_id"] == "llava-v1.5-tiny" for r in good)
    assert good[0]["metadata"]["equal_tokens"] == 576 and good[0]["metadata"]["method"] == "none"
    # batching changes nothing
    single = tmp_path / "single.jsonl"
    model_vqa_loader.main(_loader_args(tiny_llava, qfile, images, single))
    assert [r["text"] for r in read_jsonl(single)] == [r["text"] for r in records]


def test_rerun_resumes_after_an_interruption(tiny_llava, bench, tmp_path):
    _, qfile, images = bench
    answers = tmp_path / "a.jsonl"
    model_vqa_loader.main(_loader_args(tiny_llava, qfile, images, answers))
    complete = read_jsonl(answers)
    lines = answers.read_text().splitlines(keepends=True)
    answers.write_text("".join(lines[:3]) + lines[3][:20])  # killed while writing the 4th answer
    model_vqa_loader.main(_loader_args(tiny_llava, qfile, images, answers))
    resumed = read_jsonl(answers)
    assert [(r["question_id"], r["prompt"], r["text"]) for r in resumed] == [
        (r["question_id"], r["prompt"], r["text"]) for r in complete
    ]
    assert [r["answer_id"] for r in resumed[:3]] == [r["answer_id"] for r in complete[:3]]  # kept, not redone


def test_pruning_flags_reach_the_answers(tiny_llava, bench, tmp_path):
    _, qfile, images = bench
    answers = tmp_path / "a.jsonl"
    model_vqa_loader.main(
        _loader_args(tiny_llava, qfile, images, answers, "--method", "fastervlm", "--retained-tokens", "64")
    )
    record = read_jsonl(answers)[0]
    assert record["metadata"]["method"] == "fastervlm k=64"
    assert record["metadata"]["visual_tokens"] == 64 and record["metadata"]["visual_tokens_encoded"] == 576


def test_chunks_merge_to_the_single_run(tiny_llava, bench, tmp_path, monkeypatch):
    _, qfile, images = bench
    single = tmp_path / "single.jsonl"
    model_vqa_loader.main(_loader_args(tiny_llava, qfile, images, single))
    merged = tmp_path / "merged.jsonl"
    for rank in range(2):  # what torchrun --nproc_per_node 2 sets for each process
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        model_vqa_loader.main(_loader_args(tiny_llava, qfile, images, merged))
    monkeypatch.delenv("WORLD_SIZE")
    assert (tmp_path / "merged.chunks" / "2_1.jsonl").is_file()
    merge_chunks.main(["--answers-file", str(merged), "--num-chunks", "2"])
    keys = ("question_id", "prompt", "text")
    assert [[r[k] for k in keys] for r in read_jsonl(merged)] == [[r[k] for k in keys] for r in read_jsonl(single)]


def test_missing_data_is_reported_before_the_model_loads(bench, tmp_path):
    _, qfile, images = bench
    with pytest.raises(MissingDataError, match="EVAL.md, section POPE"):
        model_vqa_loader.main(_loader_args("/no/model", qfile.parent / "nope.jsonl", images, tmp_path / "a.jsonl"))
    with pytest.raises(MissingDataError, match="image folder not found.*val2015"):
        model_vqa_loader.main(_loader_args("/no/model", qfile, images.parent / "val2015", tmp_path / "a.jsonl"))


def test_malformed_question_line_names_file_and_line(bench, tmp_path):
    _, qfile, images = bench
    qfile.write_text(qfile.read_text() + '{"question_id": 7, "image": "img1.png"}\n{oops\n')
    with pytest.raises(MalformedFileError, match=r"llava_pope_test.jsonl, line 8: missing field\(s\) text"):
        model_vqa_loader.main(_loader_args("/no/model", qfile, images, tmp_path / "a.jsonl"))


def test_science_generator_prompts_and_text_only_items(tiny_llava, tmp_path):
    folder = tmp_path / "scienceqa"
    (folder / "images" / "test" / "11").mkdir(parents=True)
    random_image(3).save(folder / "images" / "test" / "11" / "image.png")
    items = [
        {
            "id": "11",
            "image": "11/image.png",
            "conversations": [
                {"from": "human", "value": "<image>\nContext: x\nWhich?\nA. a\nB. b"},
                {"from": "gpt", "value": "A"},
            ],
        },
        {
            "id": "12",
            "conversations": [{"from": "human", "value": "Which one?\nA. a\nB. b"}, {"from": "gpt", "value": "B"}],
        },
    ]
    qfile = folder / "llava_test_CQM-A.json"
    qfile.write_text(json.dumps(items))
    answers = tmp_path / "sqa.jsonl"
    model_vqa_science.main(
        [
            "--model-path",
            str(tiny_llava),
            "--question-file",
            str(qfile),
            "--image-folder",
            str(folder / "images" / "test"),
            "--answers-file",
            str(answers),
            "--single-pred-prompt",
            "--temperature",
            "0",
            "--max_new_tokens",
            "3",
            "--device",
            "cpu",
            "--batch-size",
            "2",
        ]
    )
    records = read_jsonl(answers)
    letter = "\nAnswer with the option's letter from the given choices directly."
    assert records[0]["prompt"] == "<image>\nContext: x\nWhich?\nA. a\nB. b" + letter
    assert records[1]["prompt"] == "Which one?\nA. a\nB. b" + letter
    assert records[1]["metadata"]["visual_tokens"] == 0 and "error" not in records[1]


def test_mmbench_generator_reads_the_tsv(tiny_llava, tmp_path):
    buffer = io.BytesIO()
    random_image(4).save(buffer, format="PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    table = pd.DataFrame(
        [
            {
                "index": 5,
                "question": "What?",
                "hint": "A hint.",
                "A": "x",
                "B": "y",
                "C": float("nan"),
                "D": float("nan"),
                "answer": "A",
                "category": "c",
                "image": image,
            },
            {
                "index": 1000005,
                "question": "What?",
                "hint": float("nan"),
                "A": "y",
                "B": "x",
                "C": "z",
                "D": "none",
                "answer": "B",
                "category": "c",
                "image": image,
            },
        ]
    )
    folder = tmp_path / "mmbench"
    folder.mkdir()
    table.to_csv(folder / "mmbench_dev_20230712.tsv", sep="\t", index=False)
    answers = tmp_path / "mmb.jsonl"
    model_vqa_mmbench.main(
        [
            "--model-path",
            str(tiny_llava),
            "--question-file",
            str(folder / "mmbench_dev_20230712.tsv"),
            "--answers-file",
            str(answers),
            "--single-pred-prompt",
            "--temperature",
            "0",
            "--max_new_tokens",
            "3",
            "--device",
            "cpu",
        ]
    )
    first, second = read_jsonl(answers)
    assert first["prompt"] == "A hint.\nWhat?\nA. x\nB. y" and first["options"] == ["x", "y"]
    assert second["prompt"] == "What?\nA. y\nB. x\nC. z" and second["option_char"] == ["A", "B", "C"]
    assert (first["question_id"], first["round_id"]) == (5, 0)


def test_run_ends_with_a_summary_of_its_answers(tiny_llava, bench, tmp_path, capsys):
    """The closing line counts this run's answers and failures and averages their metadata, as read back from the
    answers file."""
    import re

    _, qfile, images = bench
    answers = tmp_path / "a.jsonl"
    model_vqa_loader.main(
        _loader_args(tiny_llava, qfile, images, answers, "--method", "fastervlm", "--retained-tokens", "64")
    )
    line = capsys.readouterr().err.strip().splitlines()[-1]
    records = read_jsonl(answers)
    good = [r["metadata"] for r in records if "error" not in r]
    assert line.startswith(f"[Efficiency INFO] {len(good)} answers ({len(records) - len(good)} failed)")
    printed = dict(re.findall(r"(Equal Tokens|Prefill Time \(ms\)|KV Cache \(MB\)): ([0-9.]+)", line))
    for label, key in (
        ("Equal Tokens", "equal_tokens"),
        ("Prefill Time (ms)", "prefill_ms"),
        ("KV Cache (MB)", "kv_cache_mb"),
    ):
        assert float(printed[label]) == pytest.approx(sum(m[key] for m in good) / len(good), abs=0.006)
