"""The LLaVA-NeXT benchmark scripts (`scripts/v1_6/eval`) as users type them: `bash scripts/v1_6/eval/mme.sh 29`
(FasterVLM, 29 tokens per view), `RETAIN_TOKN=640 bash ...` (SparseVLM, 640 of the nominal 2,880 tokens),
`METHOD=fastv bash ... 640`. Every script runs end to end once on a tiny NeXT checkpoint through its scorer (half
with a positional budget, half with RETAIN_TOKN; GQA with both and the results summary); every script's command
line, with both budget forms, is checked against a stub interpreter, which costs no model run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llava.eval import summarize_results
from llava.eval.answer_files import read_jsonl

from .helpers import BENCHMARK_WRITERS, image_benchmark_script, write_benchmarks

ROOT = Path(__file__).resolve().parents[1]
V15, V16 = ROOT / "scripts" / "v1_5" / "eval", ROOT / "scripts" / "v1_6" / "eval"
SCRIPTS = sorted(p.stem for p in V16.glob("*.sh") if p.stem != "next")
CPU = "--device cpu --max_new_tokens 4"

# script -> (answers folder under EVAL_DIR, stdout or stderr line that shows the scorer / converter ran, its output
# file relative to the benchmark folder with {model} and {tag}, or None)
BENCHMARKS = {
    "vqav2": (
        "vqav2/answers/llava_vqav2_mscoco_test-dev2015",
        "Reported VQAv2",
        "answers_upload/llava_vqav2_mscoco_test-dev2015/{model}/{tag}.json",
    ),
    "gqa": ("gqa/answers/llava_gqa_testdev_balanced", "Reported (GQA accuracy)", None),
    "vizwiz": ("vizwiz/answers", "Reported VizWiz", "answers_upload/{model}/{tag}.json"),
    "sqa": ("scienceqa/answers", "Reported (ScienceQA IMG-accuracy)", None),
    "textvqa": ("textvqa/answers", "Reported TextVQA accuracy", None),
    "pope": ("pope/answers", "Reported POPE (mean F1", None),
    "mme": ("MME/answers", "Reported (MME Perception", "eval_tool/answers/{model}-{tag}/existence.txt"),
    "mmbench": (
        "mmbench/answers/mmbench_dev_20230712",
        "reported (circular accuracy",
        "answers_upload/mmbench_dev_20230712/{model}/{tag}.xlsx",
    ),
    "mmbench_cn": (
        "mmbench_cn/answers/mmbench_dev_cn_20231003",
        "reported (circular accuracy",
        "answers_upload/mmbench_dev_cn_20231003/{model}/{tag}.xlsx",
    ),
    "seed": ("seed_bench/answers", "Reported (SEED-Bench total accuracy)", "answers_upload/{model}/{tag}.jsonl"),
    "llavabench": ("llava-bench-in-the-wild/answers", "Judge them with GPT-4", None),
    "mmvet": ("mm-vet/answers", "MM-Vet: wrote", "results/{model}-{tag}.json"),
    "qbench": ("qbench/answers/dev", "reported (accuracy", None),
}
# questions per benchmark: one where the format allows it (MME pairs, MMBench circular copies, POPE's 3 splits,
# ScienceQA one image item and one text-only item)
QUESTIONS = {"sqa": 2, "mme": 2, "mmbench": 2, "mmbench_cn": 2, "pope": 3}


SETTINGS = ("CKPT", "CKPT_NAME", "CONV_MODE", "METHOD", "RETAIN_TOKN", "RETAIN_RATIO", "USE_VERSION", "TAG")
SETTINGS += ("TAG_VARIANT", "SPLIT", "BATCH_SIZE")


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


def run_script(name, eval_dir, *args, **env):
    return subprocess.run(
        ["bash", str(V16 / f"{name}.sh"), *args],
        env=_env(eval_dir, **env),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )


def _write(eval_dir, names):
    return write_benchmarks(eval_dir, names, QUESTIONS, default=1)


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    """playground/data/eval with every benchmark, a question or a few each."""
    return _write(tmp_path_factory.mktemp("next-eval") / "eval", BENCHMARK_WRITERS)


def test_one_thin_wrapper_per_v1_5_benchmark():
    assert SCRIPTS == sorted(p.stem for p in V15.glob("*.sh") if image_benchmark_script(p.stem)) == sorted(BENCHMARKS)
    for name in SCRIPTS:
        lines = (V16 / f"{name}.sh").read_text().splitlines()
        assert lines[-2:] == [
            'source "$(dirname "$0")/next.sh"',
            f'exec bash "$(dirname "$0")/../../v1_5/eval/{name}.sh"',
        ]
        assert len(lines) <= 6


# ---- command lines, through a stub interpreter that records what it is asked to run (no model) ----------------


@pytest.fixture
def stub(tmp_path):
    log = tmp_path / "calls.log"
    python = tmp_path / "python"
    python.write_text(
        '#!/usr/bin/env bash\nprintf "%s\\t%s\\t%s\\n" "${METHOD:-}" "${RETAIN_TOKN:-}" "$*" >> ' + f'"{log}"\n'
    )
    python.chmod(0o755)

    def calls(name, eval_dir, *args, **env):
        log.write_text("")
        result = run_script(name, eval_dir, *args, PYTHON=str(python), **env)
        rows = [line.split("\t") for line in log.read_text().splitlines()]
        generator = [r for r in rows if " -m llava.eval.model_vqa" in f" {r[2]}"]
        return result, generator, rows

    return calls


def _flags(argv: str) -> dict:
    words, flags = argv.split(), {}
    for i, word in enumerate(words):
        if word.startswith("--"):
            flags[word] = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else True
    return flags


@pytest.mark.parametrize("name", SCRIPTS)
def test_both_budget_forms_reach_the_generator(stub, bench_dir, name):
    default_model = "liuhaotian/llava-v1.6-vicuna-7b"
    forms = [
        ((), {}, "none", "none", ""),
        (("29",), {}, "fastervlm-view-29", "fastervlm", ""),  # FasterVLM's habit: tokens per view
        ((), {"RETAIN_TOKN": "640"}, "sparsevlm-1_0-640", "sparsevlm", "640"),
        (("640",), {"METHOD": "fastv"}, "fastv-640", "fastv", "640"),
    ]
    for args, env, tag, method, budget in forms:
        result, generator, rows = stub(name, bench_dir, *args, **env)
        assert result.returncode == 0, result.stderr
        assert len(generator) == 1, rows
        seen_method, seen_budget, argv = generator[0]
        flags = _flags(argv)
        assert flags["--model-path"] == default_model and flags["--conv-mode"] == "vicuna_v1"
        assert "--image-mode" not in flags  # the checkpoint's anyres preprocessing
        assert flags["--answers-file"].endswith(f"/{Path(default_model).name}/{tag}.jsonl")
        assert (seen_method, seen_budget) == (method, budget)  # what llava.sparse.methods reads
        assert flags.get("--visual-token-num") == ("29" if tag == "fastervlm-view-29" else None)
        assert f"tag={tag}" in result.stderr


@pytest.mark.parametrize(
    "env, tag",
    [
        ({"METHOD": "fastervlm", "RETAIN_TOKN": "640"}, "fastervlm-640"),  # FasterVLM with a total
        ({"METHOD": "fastv", "RETAIN_RATIO": "0.25"}, "fastv-ratio0.25"),
        ({"RETAIN_RATIO": "0.25"}, "sparsevlm-1_0-ratio0.25"),
        ({"USE_VERSION": "2_0", "RETAIN_TOKN": "320"}, "sparsevlm-2_0-320"),
        (
            {"METHOD": "fastervlm", "RETAIN_TOKN": "640", "EXTRA_ARGS": "--fastervlm-mode global"},
            "fastervlm-global-640",
        ),
        ({"METHOD": "fastv", "RETAIN_TOKN": "640", "EXTRA_ARGS": "--prune-newlines"}, "fastv-prunenl-640"),
        ({"EXTRA_ARGS": "--image-grid-pinpoints [[672,672]]"}, "none-fixed672"),  # FasterVLM's protocol, unpruned
        ({"RETAIN_TOKN": "640", "EXTRA_ARGS": "--image-grid-pinpoints [[336,672]]"}, "sparsevlm-1_0-pinpoints-640"),
        ({"METHOD": "random", "RETAIN_TOKN": "640", "EXTRA_ARGS": "--anyres-rule hf"}, "random-hfrule-640"),
        ({"RETAIN_TOKN": "640", "TAG": "mine"}, "mine"),
    ],
)
def test_tags_keep_runs_apart(stub, bench_dir, env, tag):
    result, generator, _ = stub("pope", bench_dir, **env)
    assert result.returncode == 0, result.stderr
    assert _flags(generator[0][2])["--answers-file"].endswith(f"/{tag}.jsonl")


@pytest.mark.parametrize(
    "args, env, tag",
    [
        (("29",), {"EXTRA_ARGS": "--fastervlm-mode global"}, "fastervlm-global-view-29"),
        (("29",), {"EXTRA_ARGS": "--image-grid-pinpoints [[672,672]]"}, "fastervlm-fixed672-view-29"),
        (("160",), {"USE_VERSION": "2_0"}, "sparsevlm-2_0-160"),  # USE_VERSION says SparseVLM: the number is a total
        (("29",), {"METHOD": "fastervlm", "TAG": "k29"}, "k29"),
    ],
)
def test_positional_budget_variants(stub, bench_dir, args, env, tag):
    result, generator, _ = stub("mme", bench_dir, *args, **env)
    assert result.returncode == 0, result.stderr
    assert _flags(generator[0][2])["--answers-file"].endswith(f"/{tag}.jsonl")


@pytest.mark.parametrize(
    "ckpt, conv",
    [("/ckpt/llava-v1.6-mistral-7b", "mistral_instruct"), ("/ckpt/llava-v1.6-34b", "chatml_direct")],
)
def test_conversation_template_follows_the_checkpoint(stub, bench_dir, ckpt, conv):
    result, generator, _ = stub("gqa", bench_dir, CKPT=ckpt)
    assert result.returncode == 0, result.stderr
    assert _flags(generator[0][2])["--conv-mode"] == conv
    result, generator, _ = stub("gqa", bench_dir, CKPT=ckpt, CONV_MODE="vicuna_v1")
    assert _flags(generator[0][2])["--conv-mode"] == "vicuna_v1"


@pytest.mark.parametrize(
    "args, env, message",
    [
        (("29", "30"), {}, "Got 2 arguments"),
        (("k29",), {}, "positive whole number"),
        (("0",), {}, "positive whole number"),
        (("29",), {"RETAIN_TOKN": "640"}, "Give the budget once"),
        (("29",), {"METHOD": "none"}, "takes no budget"),
    ],
)
def test_bad_budget_stops_before_anything_runs(stub, bench_dir, args, env, message):
    result, _, rows = stub("pope", bench_dir, *args, **env)
    assert result.returncode == 2 and message in result.stderr and "usage:" in result.stderr
    assert rows == []


def test_missing_data_is_reported_as_in_v1_5(tmp_path):
    result = run_script("textvqa", tmp_path / "eval", "29", CKPT="/no/such/model")
    assert result.returncode == 1
    assert "textvqa/llava_textvqa_val_v051_ocr.jsonl -- see EVAL.md, section TextVQA" in result.stderr


# ---- end to end on tiny NeXT checkpoints -----------------------------------------------------------------------

# script -> (positional arguments, environment, answer tag, 32-layer checkpoint needed (SparseVLM))
RUNS = {
    "vqav2": (("320",), {"USE_VERSION": "2_0"}, "sparsevlm-2_0-320", True),
    "vizwiz": ((), {"METHOD": "random", "RETAIN_TOKN": 640}, "random-640", False),
    "sqa": (("320",), {"METHOD": "fastv"}, "fastv-320", False),
    "textvqa": (  # FasterVLM's own protocol: every image at 672x672, k per view
        ("64",),
        {"EXTRA_ARGS": "--image-grid-pinpoints [[672,672]]"},
        "fastervlm-fixed672-view-64",
        False,
    ),
    "pope": ((), {"METHOD": "uniform", "RETAIN_TOKN": 320}, "uniform-320", False),
    "mme": (("29",), {}, "fastervlm-view-29", False),
    "mmbench": (("32",), {}, "fastervlm-view-32", False),
    "mmbench_cn": ((), {"METHOD": "fastervlm", "RETAIN_TOKN": 640}, "fastervlm-640", False),
    "seed": (("320",), {"METHOD": "random"}, "random-320", False),
    "llavabench": (
        (),
        {"METHOD": "fastervlm", "RETAIN_TOKN": 640, "EXTRA_ARGS": "--fastervlm-mode global"},
        "fastervlm-global-640",
        False,
    ),
    "mmvet": (("320",), {"METHOD": "fastv", "EXTRA_ARGS": "--prune-newlines"}, "fastv-prunenl-320", False),
    "qbench": ((), {"METHOD": "uniform", "RETAIN_TOKN": 160}, "uniform-160", False),
}  # gqa: test_gqa_budget_forms_name_runs_apart


def _check_run(result, eval_dir, name, model, tag) -> list[dict]:
    """The answers of a finished run, after checking that its scorer or converter ran and wrote its file."""
    assert result.returncode == 0, result.stderr[-3000:]
    folder, marker, output = BENCHMARKS[name]
    answers = eval_dir / folder / model / f"{tag}.jsonl"
    records = read_jsonl(answers)
    assert len(records) == QUESTIONS.get(name, 1) and not any("error" in r for r in records)
    assert marker in result.stdout + result.stderr
    if output:
        assert (eval_dir / folder.split("/")[0] / output.format(model=model, tag=tag)).is_file()
    return records


def _with_image(records):
    return [r["metadata"] for r in records if r["metadata"].get("visual_tokens_encoded")]


# The default run keeps one end-to-end run per distinct path (SparseVLM on 32 layers, text-only items, FasterVLM's
# fixed-672 protocol, per-view budgets, newline pruning, global FasterVLM); the others repeat those paths on other
# benchmarks, whose argument handling `test_both_budget_forms_reach_the_generator` and whose scorers their own unit
# tests check, so they run with `-m slow` (the suite must stay under 10 minutes on a cold machine).
REPEATS = {"vizwiz", "pope", "mmbench", "mmbench_cn", "seed", "qbench"}


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=pytest.mark.slow) if name in REPEATS else name for name in sorted(RUNS)]
)
def test_script_end_to_end_on_tiny_next(request, tmp_path, name):
    args, env, tag, deep = RUNS[name]
    ckpt = request.getfixturevalue("tiny_next_32" if deep else "tiny_next")
    eval_dir = _write(tmp_path / "eval", [name])
    result = run_script(name, eval_dir, *args, CKPT=ckpt, **env)
    records = _check_run(result, eval_dir, name, ckpt.name, tag)
    images = _with_image(records)
    assert images and (name != "sqa" or len(images) == 1)  # ScienceQA's text-only item runs without an image
    for meta in images:
        assert min(meta["visual_tokens_per_layer"]) < meta["visual_tokens_encoded"]  # pruned
        if tag.startswith("fastervlm-view-"):
            k = int(tag.rsplit("-", 1)[1])
            assert meta["visual_tokens_per_view_final"] == [k] * len(meta["visual_tokens_per_view"])
    if "fixed672" in tag:
        assert [meta["visual_tokens_per_view_final"] for meta in images] == [[64] * 5]  # base view + 2x2 crops
    assert all(len(meta.get("visual_tokens_per_view") or [None]) > 1 for meta in images)  # base view + crops


def test_gqa_budget_forms_name_runs_apart(tiny_next_32, tmp_path):
    """Both budget forms on one benchmark and one model: two answer files, then the results summary."""
    eval_dir = _write(tmp_path / "eval", ["gqa"])
    model = tiny_next_32.name
    view = run_script("gqa", eval_dir, "29", CKPT=tiny_next_32)
    (meta,) = _with_image(_check_run(view, eval_dir, "gqa", model, "fastervlm-view-29"))
    views = len(meta["visual_tokens_per_view"])
    assert views > 1 and meta["visual_tokens"] == 29 * views and meta["method"] == "fastervlm k=29/view"

    total = run_script("gqa", eval_dir, CKPT=tiny_next_32, RETAIN_TOKN=640)
    (meta,) = _with_image(_check_run(total, eval_dir, "gqa", model, "sparsevlm-1_0-640"))
    assert meta["method"] == "sparsevlm 1_0 RETAIN_TOKN=640"
    # 640 of the nominal 2,880, scaled to this image's own token count
    scaled = 640 / 2880 * meta["visual_tokens_encoded"]
    assert 0.5 * scaled < meta["equal_tokens"] < 1.5 * scaled

    predictions = eval_dir / "gqa" / "answers" / "llava_gqa_testdev_balanced" / model
    assert sorted(p.name for p in predictions.glob("*.predictions.json")) == [
        "fastervlm-view-29.predictions.json",
        "sparsevlm-1_0-640.predictions.json",
    ]
    rows = summarize_results.main(["--eval-dir", str(eval_dir), "--out", str(tmp_path / "results")])
    assert {r["tag"] for r in rows} == {"fastervlm-view-29", "sparsevlm-1_0-640"}
    assert all(r["score"] is not None and r["model"] == model for r in rows)
