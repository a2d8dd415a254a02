"""Sampled answers (temperature > 0) do not depend on how a run is split: each answer draws from a generator seeded
by (seed, question id, prompt), so a resumed, chunked or re-batched run equals one uninterrupted run."""

import json

import pytest

from llava.eval import model_vqa
from llava.eval.answer_files import read_jsonl
from llava.eval.answering import chunk_path, question_seed
from llava.eval.merge_chunks import merge_chunks

from .helpers import random_image

SAMPLED = ["--temperature", "0.2", "--max_new_tokens", "6", "--device", "cpu"]


@pytest.fixture(scope="module")
def questions(tmp_path_factory):
    root = tmp_path_factory.mktemp("sampled")
    (root / "images").mkdir()
    lines = []
    for i in range(6):
        random_image(i).save(root / "images" / f"{i}.png")
        lines.append(json.dumps({"question_id": i, "image": f"{i}.png", "text": f"Describe picture {i}."}) + "\n")
    (root / "questions.jsonl").write_text("".join(lines))
    return root


def _run(tiny_llava, questions, answers, *extra):
    argv = ["--model-path", str(tiny_llava), "--question-file", str(questions / "questions.jsonl")]
    argv += ["--image-folder", str(questions / "images"), "--answers-file", str(answers), *SAMPLED, *extra]
    model_vqa.main(argv)
    return [(r["question_id"], r["text"]) for r in read_jsonl(answers)]


def test_split_runs_sample_like_one_run(tiny_llava, questions, tmp_path):
    whole = _run(tiny_llava, questions, tmp_path / "whole.jsonl", "--batch-size", "1")
    assert len(whole) == 6
    # sampling matters here: another seed draws other answers, so the equalities below are not trivially true
    assert _run(tiny_llava, questions, tmp_path / "seed1.jsonl", "--batch-size", "1", "--seed", "1") != whole

    assert _run(tiny_llava, questions, tmp_path / "batched.jsonl", "--batch-size", "4") == whole

    resumed = tmp_path / "resumed.jsonl"  # a run killed after 2 answers, then resumed
    _run(tiny_llava, questions, resumed, "--batch-size", "4")
    resumed.write_text("".join(resumed.read_text().splitlines(keepends=True)[:2]))
    assert _run(tiny_llava, questions, resumed, "--batch-size", "4") == whole

    merged = tmp_path / "merged.jsonl"  # two chunks (as two torchrun processes write them), merged
    for idx in range(2):
        chunk = chunk_path(merged, 2, idx)
        _run(tiny_llava, questions, chunk, "--batch-size", "2", "--num-chunks", "2", "--chunk-idx", str(idx))
    merge_chunks(merged, 2)
    assert [(r["question_id"], r["text"]) for r in read_jsonl(merged)] == whole


def test_question_seed_depends_on_seed_id_and_prompt():
    base = question_seed(0, 7, "What is shown?")
    assert question_seed(0, 7, "What is shown?") == base
    assert 0 <= base < 2**63
    others = [question_seed(1, 7, "What is shown?"), question_seed(0, 8, "What is shown?"), question_seed(0, 7, "Why?")]
    assert all(other != base for other in others)
    assert len(set(others)) == 3
