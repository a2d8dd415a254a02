"""The Qwen2.5-VL benchmark scripts (`scripts/qwen2_5_vl/eval`) as users type them: `bash .../mme.sh`,
`METHOD=fastv RETAIN_TOKN=128 bash ...`, `MIN_PIXELS=200704 MAX_PIXELS=1605632 bash ...`. Every script's command line
is checked against a stub interpreter (no model): the Qwen defaults, no LLaVA-only preprocessing, the tags. Six
scripts run end to end on a tiny Qwen2.5-VL checkpoint in the Hub's format, through their scorers, in parallel."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llava.eval.answer_files import read_jsonl
from llava.testing.qwen_checkpoints import write_tiny_qwen_vl

from .helpers import image_benchmark_script, write_benchmarks

ROOT = Path(__file__).resolve().parents[1]
V15, QWEN = ROOT / "scripts" / "v1_5" / "eval", ROOT / "scripts" / "qwen2_5_vl" / "eval"
SCRIPTS = sorted(p.stem for p in QWEN.glob("*.sh") if p.stem != "qwen")
DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
CPU = "--device cpu --max_new_tokens 4"
SETTINGS = ("CKPT", "CKPT_NAME", "CONV_MODE", "METHOD", "RETAIN_TOKN", "RETAIN_RATIO", "USE_VERSION", "TAG")
SETTINGS += ("TAG_VARIANT", "SPLIT", "BATCH_SIZE", "MIN_PIXELS", "MAX_PIXELS")

# questions per benchmark: MME's yes / no pair, MMBench's circular copies, POPE's 3 splits; one elsewhere
QUESTIONS = {"mme": 2, "mmbench": 2, "pope": 3}


def _env(eval_dir, **env) -> dict:
    extra = env.pop("EXTRA_ARGS", "")
    return {
        **{k: v for k, v in os.environ.items() if k not in SETTINGS},  # the scripts' settings come from the test only
        "EVAL_DIR": str(eval_dir),
        "NPROC": "1",
        "PYTHON": sys.executable,
        "EXTRA_ARGS": f"{CPU} {extra}".strip(),
        **{k: str(v) for k, v in env.items()},
    }


def _command(name, *args):
    return ["bash", str(QWEN / f"{name}.sh"), *args]


def run_script(name, eval_dir, *args, **env):
    return subprocess.run(
        _command(name, *args), env=_env(eval_dir, **env), capture_output=True, text=True, timeout=600, cwd=ROOT
    )


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    """playground/data/eval with every benchmark, a question or a few each."""
    return write_benchmarks(tmp_path_factory.mktemp("qwen-eval") / "eval", None, QUESTIONS, default=1)


def test_one_thin_wrapper_per_v1_5_benchmark():
    assert SCRIPTS == sorted(p.stem for p in V15.glob("*.sh") if image_benchmark_script(p.stem))
    for name in SCRIPTS:
        lines = (QWEN / f"{name}.sh").read_text().splitlines()
        assert lines[-2:] == [
            'source "$(dirname "$0")/qwen.sh"',
            f'exec bash "$(dirname "$0")/../../v1_5/eval/{name}.sh"',
        ]
        assert len(lines) <= 6


# ---- command lines, through a stub interpreter that records what it is asked to run (no model) ----------------


@pytest.fixture
def stub(tmp_path):
    log = tmp_path / "calls.log"
    python = tmp_path / "python"
    python.write_text('#!/usr/bin/env bash\nprintf "%s\\t%s\\n" "${METHOD:-}" "$*" >> ' + f'"{log}"\n')
    python.chmod(0o755)

    def calls(name, eval_dir, *args, **env):
        log.write_text("")
        result = run_script(name, eval_dir, *args, PYTHON=str(python), **env)
        rows = [line.split("\t") for line in log.read_text().splitlines()]
        generator = [r for r in rows if " -m llava.eval.model_vqa" in f" {r[1]}"]
        return result, generator, rows

    return calls


def _flags(argv: str) -> dict:
    words, flags = argv.split(), {}
    for i, word in enumerate(words):
        if word.startswith("--"):
            flags[word] = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else True
    return flags


@pytest.mark.parametrize("name", SCRIPTS)
def test_qwen_defaults_reach_the_generator(stub, bench_dir, name):
    result, generator, rows = stub(name, bench_dir)
    assert result.returncode == 0, result.stderr
    assert len(generator) == 1, rows
    method, argv = generator[0]
    flags = _flags(argv)
    assert flags["--model-path"] == DEFAULT_MODEL
    assert flags["--conv-mode"] == "qwen2_vl"  # the checkpoint's template, Q-Bench included (not llava_v1)
    assert "--image-mode" not in flags  # Qwen's own resizing, never LLaVA's pad / crop
    assert "--min-pixels" not in flags and "--max-pixels" not in flags  # the checkpoint's bounds
    assert flags["--temperature"] == "0"  # greedy everywhere, LLaVA-Bench and MM-Vet too
    assert flags["--answers-file"].endswith("/Qwen2.5-VL-7B-Instruct/none.jsonl")
    assert method == "none" and "tag=none " in result.stderr


@pytest.mark.parametrize(
    "env, tag, pixel_flags",
    [
        ({"METHOD": "fastv", "RETAIN_TOKN": "128"}, "fastv-128", {}),
        ({"METHOD": "random", "RETAIN_RATIO": "0.25"}, "random-ratio0.25", {}),
        ({"RETAIN_TOKN": "64"}, "sparsevlm-1_0-64", {}),
        (
            {"MIN_PIXELS": "200704", "MAX_PIXELS": "1605632"},  # lmms-eval's bounds
            "none-px200704-1605632",
            {"--min-pixels": "200704", "--max-pixels": "1605632"},
        ),
        (
            {"METHOD": "fastv", "RETAIN_TOKN": "128", "MIN_PIXELS": "200704", "MAX_PIXELS": "1003520"},
            "fastv-px200704-1003520-128",
            {"--min-pixels": "200704", "--max-pixels": "1003520"},
        ),
        ({"MAX_PIXELS": "602112"}, "none-pxckpt-602112", {"--max-pixels": "602112"}),
        ({"MIN_PIXELS": "200704", "TAG": "mine"}, "mine", {"--min-pixels": "200704"}),
    ],
)
def test_tags_keep_runs_apart(stub, bench_dir, env, tag, pixel_flags):
    result, generator, _ = stub("pope", bench_dir, **env)
    assert result.returncode == 0, result.stderr
    flags = _flags(generator[0][1])
    assert flags["--answers-file"].endswith(f"/Qwen2.5-VL-7B-Instruct/{tag}.jsonl")
    assert {k: v for k, v in flags.items() if k.endswith("-pixels")} == pixel_flags
    assert flags["--device"] == "cpu"  # EXTRA_ARGS kept beside the pixel flags


def test_user_settings_win(stub, bench_dir):
    result, generator, _ = stub("qbench", bench_dir, CKPT="/ckpt/Qwen2-VL-7B-Instruct", CONV_MODE="chatml_direct")
    assert result.returncode == 0, result.stderr
    flags = _flags(generator[0][1])
    assert flags["--model-path"] == "/ckpt/Qwen2-VL-7B-Instruct" and flags["--conv-mode"] == "chatml_direct"
    assert flags["--answers-file"].endswith("/Qwen2-VL-7B-Instruct/none.jsonl")


@pytest.mark.parametrize(
    "args, env, message",
    [
        (("128",), {}, "No arguments"),
        ((), {"EXTRA_ARGS": "--image-mode pad"}, "--image-mode is LLaVA's"),
        ((), {"EXTRA_ARGS": "--max-pixels 1605632"}, "Set MIN_PIXELS / MAX_PIXELS instead"),
        ((), {"MIN_PIXELS": "256*28*28"}, "positive whole number"),
        ((), {"MIN_PIXELS": "1605632", "MAX_PIXELS": "200704"}, "is above MAX_PIXELS"),
    ],
)
def test_bad_settings_stop_before_anything_runs(stub, bench_dir, args, env, message):
    result, _, rows = stub("mme", bench_dir, *args, **env)
    assert result.returncode == 2 and message in result.stderr and "usage:" in result.stderr
    assert rows == []


def test_missing_data_is_reported_as_in_v1_5(tmp_path):
    result = run_script("textvqa", tmp_path / "eval", CKPT="/no/such/model")
    assert result.returncode == 1
    assert "textvqa/llava_textvqa_val_v051_ocr.jsonl -- see EVAL.md, section TextVQA" in result.stderr


# ---- end to end on a tiny Qwen2.5-VL checkpoint ----------------------------------------------------------------

# script -> (answers folder under EVAL_DIR, line that shows the scorer / converter ran)
BENCHMARKS = {
    "gqa": ("gqa/answers/llava_gqa_testdev_balanced", "Reported (GQA accuracy)"),
    "textvqa": ("textvqa/answers", "Reported TextVQA accuracy"),
    "pope": ("pope/answers", "Reported POPE (mean F1"),
    "mme": ("MME/answers", "Reported (MME Perception"),
    "mmbench": ("mmbench/answers/mmbench_dev_20230712", "reported (circular accuracy"),
    "llavabench": ("llava-bench-in-the-wild/answers", "Judge them with GPT-4"),  # the GPT-4 judge is external
}
# script -> (environment, answer tag, metadata "method", visual tokens per image encoded / after the last layer).
# The 60x40 test images: 2x3 = 6 tokens with the checkpoint's bounds (3136..12845056), 3x4 = 12 with MIN_PIXELS 6272.
# Pruned runs: a pre-LLM method (random), an in-LLM one (FastV at layer 2 of the checkpoint's 4) and SparseVLM.
RUNS = {
    "mme": ({}, "none", "none", 6, 6),
    "pope": ({"METHOD": "random", "RETAIN_TOKN": 4}, "random-4", "random k=4", 6, 4),
    "textvqa": ({"MIN_PIXELS": 6272, "MAX_PIXELS": 1605632}, "none-px6272-1605632", "none", 12, 12),
    "gqa": (
        {"METHOD": "fastv", "RETAIN_TOKN": 5, "MIN_PIXELS": 6272, "MAX_PIXELS": 1605632},
        "fastv-px6272-1605632-5",
        "fastv K=2 keep=5 score=last",
        12,
        5,
    ),
    "mmbench": ({"METHOD": "random", "RETAIN_RATIO": 0.5}, "random-ratio0.5", None, 6, 3),
    "llavabench": ({}, "none", "none", 6, 6),
}


@pytest.fixture(scope="module")
def qwen_runs(tmp_path_factory):
    """Every RUNS script on one tiny checkpoint and one benchmark folder, all at once (most of each run is Python
    start-up and imports; one torch thread each): script -> (result, eval_dir, model folder name)."""
    root = tmp_path_factory.mktemp("qwen-runs")
    ckpt = write_tiny_qwen_vl(root / "Qwen2.5-VL-tiny", family="qwen2_5_vl")
    eval_dir = write_benchmarks(root / "eval", sorted(RUNS), QUESTIONS, default=1)
    processes = {}
    for name, (env, *_) in RUNS.items():
        full = _env(eval_dir, CKPT=ckpt, OMP_NUM_THREADS=1, MKL_NUM_THREADS=1, **env)
        processes[name] = subprocess.Popen(
            _command(name), env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
        )
    results = {}
    for name, process in processes.items():
        try:
            stdout, stderr = process.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        results[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return results, eval_dir, ckpt.name


def _question_ids(eval_dir, name) -> set:
    if name == "mmbench":
        import pandas as pd

        return set(pd.read_csv(eval_dir / "mmbench" / "mmbench_dev_20230712.tsv", sep="\t")["index"])
    files = {
        "gqa": "gqa/llava_gqa_testdev_balanced.jsonl",
        "textvqa": "textvqa/llava_textvqa_val_v051_ocr.jsonl",
        "pope": "pope/llava_pope_test.jsonl",
        "mme": "MME/llava_mme.jsonl",
        "llavabench": "llava-bench-in-the-wild/questions.jsonl",
    }
    return {row["question_id"] for row in read_jsonl(eval_dir / files[name])}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_script_end_to_end_on_tiny_qwen(qwen_runs, name):
    results, eval_dir, model = qwen_runs
    env, tag, method, encoded, kept = RUNS[name]
    result = results[name]
    assert result.returncode == 0, result.stderr[-3000:]
    folder, marker = BENCHMARKS[name]
    assert f"tag={tag} " in result.stderr
    assert marker in result.stdout + result.stderr  # the scorer ran
    answers = eval_dir / folder / model
    assert sorted(p.name for p in answers.glob("*.jsonl")) == [f"{tag}.jsonl"]
    records = read_jsonl(answers / f"{tag}.jsonl")
    assert len(records) == QUESTIONS.get(name, 1) and not any("error" in r for r in records)
    if name != "mme":  # MME's question ids are its image paths, shared by the yes / no pair
        assert {r["question_id"] for r in records} == _question_ids(eval_dir, name)
    for record in records:
        meta = record["metadata"]
        assert record["model_id"] == model
        assert meta["method"] == method or (method is None and meta["method"].startswith("random"))
        assert (meta["visual_tokens_encoded"], meta["visual_tokens_per_layer"][-1]) == (encoded, kept)
        assert meta["repetition_penalty"] == 1.05  # the checkpoint's generation_config.json, as transformers applies
    if name == "mme":  # the official per-task files of the MME tool
        assert (eval_dir / "MME" / "eval_tool" / "answers" / f"{model}-{tag}" / "existence.txt").is_file()
    if name == "mmbench":
        assert (eval_dir / "mmbench" / "answers_upload" / "mmbench_dev_20230712" / model / f"{tag}.xlsx").is_file()
