"""The benchmark scripts end to end, as users type them (`RETAIN_TOKN=192 bash scripts/v1_5/eval/pope.sh`), on a
tiny POPE-format benchmark written here, then the results summary."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llava.eval import summarize_results
from llava.eval.answer_files import read_jsonl

from .helpers import random_image

ROOT = Path(__file__).resolve().parents[1]
SUFFIX = "\nAnswer the question using a single word or phrase."


@pytest.fixture
def eval_dir(tmp_path):
    """playground/data/eval with a 6-question POPE (2 per split)."""
    pope = tmp_path / "eval" / "pope"
    (pope / "val2014").mkdir(parents=True)
    (pope / "coco").mkdir()
    questions, qid = [], 0
    for split in ("adversarial", "popular", "random"):
        labels = []
        for obj, label in (("cat", "yes"), ("dog", "no")):
            qid += 1
            image = f"COCO_{qid}.jpg"
            random_image(qid, size=(60, 40)).save(pope / "val2014" / image)
            text = f"Is there a {obj} in the image?"
            questions.append({"question_id": qid, "image": image, "text": text + SUFFIX, "category": split})
            labels.append({"question_id": qid, "image": image, "text": text, "label": label})
        (pope / "coco" / f"coco_pope_{split}.json").write_text("".join(json.dumps(x) + "\n" for x in labels))
    (pope / "llava_pope_test.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    return tmp_path / "eval"


def _run_script(name, eval_dir, ckpt, **env):
    full = {
        **os.environ,
        "EVAL_DIR": str(eval_dir),
        "CKPT": str(ckpt),
        "NPROC": "1",
        "PYTHON": sys.executable,
        "EXTRA_ARGS": "--device cpu --max_new_tokens 4",
        **env,
    }
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "v1_5" / "eval" / name)],
        env=full,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )


def test_pope_script_generates_scores_and_names_runs_apart(eval_dir, tiny_llava_32, tmp_path):
    plain = _run_script("pope.sh", eval_dir, tiny_llava_32)
    assert plain.returncode == 0, plain.stderr
    pruned = _run_script("pope.sh", eval_dir, tiny_llava_32, RETAIN_TOKN="64", USE_VERSION="2_0")
    assert pruned.returncode == 0, pruned.stderr
    answers = eval_dir / "pope" / "answers" / "llava-v1.5-tiny-32"
    assert sorted(p.name for p in answers.glob("*.jsonl")) == ["none.jsonl", "sparsevlm-2_0-64.jsonl"]
    records = read_jsonl(answers / "sparsevlm-2_0-64.jsonl")
    assert len(records) == 6 and records[0]["metadata"]["method"] == "sparsevlm 2_0 RETAIN_TOKN=64"
    assert abs(records[0]["metadata"]["equal_tokens"] - 64.4375) < 1e-9
    assert "F1" in pruned.stdout  # the scorer ran and printed its table

    rows = summarize_results.main(["--eval-dir", str(eval_dir), "--out", str(tmp_path / "results")])
    by_tag = {r["tag"]: r for r in rows}
    assert set(by_tag) == {"none", "sparsevlm-2_0-64"} and all(r["score"] is not None for r in rows)
    assert by_tag["none"]["equal_tokens"] == 576 and abs(by_tag["sparsevlm-2_0-64"]["equal_tokens"] - 64.4375) < 1e-9
    assert by_tag["sparsevlm-2_0-64"]["decoder_tflops"] < by_tag["none"]["decoder_tflops"]
    for name in ("results.md", "results.csv", "score_vs_tokens.png", "score_vs_flops.png"):
        assert (tmp_path / "results" / name).stat().st_size > 0


def test_script_stops_on_missing_data_before_loading_a_model(eval_dir):
    (eval_dir / "pope" / "coco" / "coco_pope_random.json").unlink()
    (eval_dir / "pope" / "coco").rename(eval_dir / "pope" / "labels")
    result = _run_script("pope.sh", eval_dir, "/no/such/model")
    assert result.returncode != 0
    assert "pope/coco -- see EVAL.md, section POPE" in result.stderr and "Traceback" not in result.stderr
