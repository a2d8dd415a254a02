"""lmms-eval as a second front end (`--model llava_sparse`): the entry-point registration, the adapter on hand-made
requests, and lmms-eval's command line end to end (offline, in a subprocess) on the bundled tiny model and a local task
made from the synthetic benchmark, checked against our own generator and scorer on the same questions.

Skipped without lmms-eval (CI installs `.[test]` only; `pip install "lmms-eval==0.7.3" "filelock<4"` to run them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

from lmms_eval.api.instance import Instance  # noqa: E402

from llava.eval import model_vqa_loader  # noqa: E402
from llava.eval.lmms_tasks import SYNTHETIC_TASK, write_synthetic_task  # noqa: E402
from llava.synthetic.benchmark import score, write_split  # noqa: E402
from llava.synthetic.compare import BUNDLED  # noqa: E402

NUM_QUESTIONS = 16
SPARSE_ARGS = "method=sparsevlm,retained_tokens=192,sparse_version=2_0"
EFFICIENCY_KEYS = ("equal_tokens", "visual_tokens", "decoder_tflops", "prefill_ms", "kv_cache_mb")
# lmms-eval's runs: (name, --model_args besides pretrained, --batch_size); none_b1 names no method, so an exported
# METHOD would pick one if the adapter read the environment
RUNS = (("none_b1", "", 1), ("none_b4", "method=none", 4), ("sparse_b4", SPARSE_ARGS, 4))
# what a shell may have exported for our own generators: it must not reach lmms-eval runs
LEAKY_ENV = {"METHOD": "fastv", "RETAIN_TOKN": "64", "USE_VERSION": "2_0"}


def offline_env(tmp: Path) -> dict:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp / "hf"),
        "LMMS_EVAL_DATASETS_CACHE": str(tmp / "hf" / "datasets"),
    }


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, Path]:
    """(split folder, task folder): the held-out synthetic split and the lmms-eval task made from it."""
    tmp = tmp_path_factory.mktemp("lmms_synthetic")
    split = write_split(tmp / "split", seed=1, num_questions=NUM_QUESTIONS)
    return split, write_synthetic_task(tmp / "tasks", split).parent


@pytest.fixture(scope="module")
def lmms_runs(synthetic, tmp_path_factory) -> dict:
    """One lmms-eval process (`--config`, several evaluations) through our exit-status wrapper, with the leaky
    environment exported: {run name: (results.json, samples sorted by doc_id)}, plus "_process" (the finished run)."""
    _, tasks = synthetic
    tmp = tmp_path_factory.mktemp("lmms_runs")
    entries = [
        {
            "model": "llava_sparse",
            "model_args": ",".join(filter(None, [f"pretrained={BUNDLED}", args])),
            "tasks": SYNTHETIC_TASK,
            "batch_size": batch,
            "output_path": str(tmp / name),
        }
        for name, args, batch in RUNS
    ]
    entries.append({**entries[0], "model_args": f"pretrained={BUNDLED},bogus=1", "output_path": str(tmp / "bogus")})
    config = tmp / "runs.yaml"
    config.write_text(json.dumps(entries))  # JSON is YAML
    command = [sys.executable, "-m", "llava.eval.lmms_eval_run", "--config", str(config)]
    command += ["--include_path", str(tasks), "--log_samples"]
    process = subprocess.run(
        command, env={**offline_env(tmp), **LEAKY_ENV}, capture_output=True, text=True, timeout=900, cwd=tmp
    )
    runs = {"_process": process}
    for name, _, _ in RUNS:
        found = sorted((tmp / name).rglob("*_results.json"))
        assert len(found) == 1, f"{name}: no results\n{process.stdout[-3000:]}\n{process.stderr[-3000:]}"
        samples = [json.loads(line) for path in (tmp / name).rglob("*_samples_*.jsonl") for line in open(path)]
        runs[name] = (json.loads(found[0].read_text()), sorted(samples, key=lambda s: s["doc_id"]))
    return runs


def our_answers(split: Path, tmp: Path, flags: list[str], batch: int) -> list[dict]:
    """Our own generator on the bundled model and the same questions (greedy, vicuna_v1, the task's 8 new tokens)."""
    answers = tmp / f"answers-{'-'.join(flags)}-{batch}.jsonl"
    flags = ["--conv-mode", "vicuna_v1", "--batch-size", str(batch), *flags]
    return our_answers_for(BUNDLED, split / "questions.jsonl", split / "images", answers, flags)


def our_answers_for(checkpoint: Path, questions: Path, images: Path, answers: Path, flags: list[str]) -> list[dict]:
    """`python -m llava.eval.model_vqa_loader` (in process), greedy with 8 new tokens, and its answers."""
    argv = ["--model-path", str(checkpoint), "--question-file", str(questions), "--image-folder", str(images)]
    argv += ["--answers-file", str(answers), "--temperature", "0", "--max-new-tokens", "8", *flags]
    model_vqa_loader.main(argv)
    return [json.loads(line) for line in open(answers)]


def texts(samples: list[dict]) -> list[str]:
    return [s["filtered_resps"] if isinstance(s["filtered_resps"], str) else s["filtered_resps"][0] for s in samples]


def counts(sample: dict) -> dict:
    (entry,) = sample["token_counts"]
    return entry


def test_entry_point_registers_llava_sparse():
    from lmms_eval.models import get_model

    from llava.eval.lmms_eval_adapter import LlavaSparse

    assert get_model("llava_sparse") is LlavaSparse
    assert LlavaSparse.is_simple


@pytest.mark.parametrize("run, flags, batch", [("none_b1", ["--method", "none"], 1), ("sparse_b4", None, 4)])
def test_lmms_eval_matches_our_generator(lmms_runs, synthetic, tmp_path, run, flags, batch):
    """Same answers, question by question, and the same accuracy as our generator + the benchmark's scorer."""
    split, _ = synthetic
    if flags is None:  # SPARSE_ARGS as our command-line flags
        pairs = [pair.split("=") for pair in SPARSE_ARGS.split(",")]
        flags = [part for key, value in pairs for part in ("--" + key.replace("_", "-"), value)]
    ours = our_answers(split, tmp_path, flags, batch)
    results, samples = lmms_runs[run]
    assert [s["doc_id"] for s in samples] == list(range(NUM_QUESTIONS))
    assert texts(samples) == [a["text"] for a in ours]
    truth = [json.loads(line) for line in open(split / "answers.jsonl")]
    expected = score(truth, ours)
    assert expected["questions"] == NUM_QUESTIONS
    assert results["results"][SYNTHETIC_TASK]["accuracy,none"] == pytest.approx(expected["reported"])
    assert results["n-samples"][SYNTHETIC_TASK]["effective"] == NUM_QUESTIONS


def test_batch_size_does_not_change_answers(lmms_runs):
    assert texts(lmms_runs["none_b4"][1]) == texts(lmms_runs["none_b1"][1])


def test_samples_carry_efficiency_metadata(lmms_runs):
    for name, _, _ in RUNS:
        for sample in lmms_runs[name][1]:
            entry = counts(sample)
            assert all(isinstance(entry[key], (int, float)) for key in EFFICIENCY_KEYS), (name, entry)
            assert entry["input_tokens"] > entry["visual_tokens"] > 0
            assert entry["output_tokens"] >= 1
    sparse = [counts(s) for s in lmms_runs["sparse_b4"][1]]
    assert all(e["method"].startswith("sparsevlm 2_0") and e["retained_tokens"] == 192 for e in sparse)
    assert all(abs(e["equal_tokens"] - 192) < 2 and e["equal_tokens"] < e["visual_tokens"] for e in sparse)
    unpruned = counts(lmms_runs["none_b1"][1][0])
    assert all(e["decoder_tflops"] < unpruned["decoder_tflops"] for e in sparse)
    assert all(e["kv_cache_mb"] < unpruned["kv_cache_mb"] for e in sparse)


def test_environment_does_not_choose_the_method(lmms_runs):
    """METHOD=fastv, RETAIN_TOKN, USE_VERSION were exported: a run naming no method, and one with method=none, stay
    unpruned and say so."""
    for sample in lmms_runs["none_b1"][1] + lmms_runs["none_b4"][1]:
        entry = counts(sample)
        assert entry["method"] == "none"
        assert entry["equal_tokens"] == entry["visual_tokens"]
        assert set(entry["visual_tokens_per_layer"]) == {entry["visual_tokens"]}


def test_a_failed_evaluation_exits_nonzero(lmms_runs):
    """lmms-eval goes on after the failing evaluation (the other runs wrote results) and would exit 0; the wrapper
    exits 1 and names the cause."""
    process = lmms_runs["_process"]
    assert process.returncode == 1
    last = process.stderr.strip().splitlines()[-1]
    assert last.startswith("error: lmms-eval: 1 evaluation(s) failed: TypeError") and "'bogus'" in last


# -- the adapter on hand-made requests (in process) ------------------------------------------------------------------


def requests_for(task_dict: dict, gen_kwargs: dict) -> list[Instance]:
    """One generate_until request per doc of every task, tasks interleaved as one lmms-eval call mixes them."""
    from llava.eval.lmms_tasks import image_from_path, question_text

    out = []
    for doc_id in range(max(len(docs["test"]) for docs in task_dict.values())):
        for task, docs in task_dict.items():
            if doc_id < len(docs["test"]):
                ctx = question_text(docs["test"][doc_id])
                args = (ctx, dict(gen_kwargs), image_from_path, doc_id, task, "test")
                metadata = {"task": task, "doc_id": doc_id, "repeats": 1, "split": "test"}
                out.append(Instance("generate_until", args, len(out), metadata))
    return out


@pytest.fixture(scope="module")
def adapter():
    from llava.eval.lmms_eval_adapter import LlavaSparse

    return LlavaSparse.create_from_arg_string(f"pretrained={BUNDLED},{SPARSE_ARGS}", {"batch_size": "3"})


def test_adapter_batches_within_a_task(adapter, synthetic):
    """Two tasks sharing doc ids and gen_kwargs (plus keys we ignore), one text-only doc: answers come back in request
    order, each equal to the answer of its request sent alone (no doc read from the other task)."""
    split, _ = synthetic
    docs = [json.loads(line) for line in open(next(synthetic[1].glob("*.jsonl")))]
    task_dict = {
        "task_a": {"test": docs[:4] + [{**docs[4], "image_path": None, "question": "What is this?"}]},
        "task_b": {"test": docs[8:12]},
    }
    adapter.task_dict = task_dict
    gen_kwargs = {"max_new_tokens": 8, "do_sample": False, "temperature": 0.0, "until": ["\n\n"]}
    gen_kwargs["image_aspect_ratio"] = "original"
    requests = requests_for(task_dict, gen_kwargs)
    batched = adapter.generate_until(requests)
    alone = [adapter.generate_until([request])[0] for request in requests]
    assert [r.text for r in batched] == [r.text for r in alone]
    assert len(batched) == len(requests) == 9
    tasks = [r.args[4] for r in requests]
    assert tasks[:4] == ["task_a", "task_b", "task_a", "task_b"]  # interleaved, as promised above
    text_only = [r for r, q in zip(batched, requests, strict=True) if q.args[3] == 4]
    assert text_only[0].token_counts.to_dict()["visual_tokens"] == 0


def test_adapter_reads_model_args_as_our_flags(adapter, monkeypatch):
    """sparse_version=2_0 stays the string "2_0" (lmms-eval's own parsing makes it 20.0); unknown keys raise."""
    from llava.eval.lmms_eval_adapter import LlavaSparse, model_flags

    assert adapter.method.startswith("sparsevlm 2_0") and adapter.batch_size == 3
    model_args = {"method": "fastv", "fastv_k": "3", "prune_newlines": "true", "pruning_layers": "2 5 9"}
    flags = model_flags("ckpt", model_args)
    assert (flags.model_path, flags.method, flags.fastv_k) == ("ckpt", "fastv", 3)
    assert flags.prune_newlines is True and flags.pruning_layers == [2, 5, 9]
    monkeypatch.setenv("METHOD", "fastv")
    assert LlavaSparse.create_from_arg_string(f"pretrained={BUNDLED}").method == "none"
    with pytest.raises(TypeError, match="'bogus'"):
        LlavaSparse.create_from_arg_string(f"pretrained={BUNDLED},bogus=1")
    with pytest.raises(ValueError, match="retained_tokens|retained-tokens"):
        model_flags("ckpt", {"retained_tokens": "many"})
    with pytest.raises(NotImplementedError):
        adapter.loglikelihood([])
    with pytest.raises(NotImplementedError):
        adapter.generate_until_multi_round([])


def test_generation_settings_follow_the_task():
    """Greedy unless the task asks for sampling with a temperature (mmvet sends temperature 0.2 without do_sample);
    LLaVA's 128 new tokens by default; beams refused; stop strings applied only when asked (apply_until)."""
    from llava.eval.lmms_eval_adapter import cut_at_until, generation_settings

    greedy = generation_settings({"temperature": 0.2, "top_p": 0.9, "until": ["\n\n"]}, "vicuna_v1", 0, None)
    assert (greedy.temperature, greedy.top_p, greedy.max_new_tokens) == (0.0, None, 128)
    asked = {"do_sample": True, "temperature": 0.2, "top_p": 0.9, "max_new_tokens": 16}
    sampled = generation_settings(asked, "vicuna_v1", 7, None)
    assert (sampled.temperature, sampled.top_p, sampled.max_new_tokens, sampled.seed) == (0.2, 0.9, 16, 7)
    with pytest.raises(ValueError, match="num_beams"):
        generation_settings({"num_beams": 3}, "vicuna_v1", 0, None)
    assert cut_at_until("yes\n\nBecause", ["\n\n"]) == "yes"
    assert cut_at_until("yes. No", ".") == "yes"


def test_adapter_takes_one_of_several_images_only_when_told(adapter, synthetic):
    """A doc with three images fails by default; multi_image=middle answers as if the doc had only its middle one
    (the outer ones are an image on which the same question gets another answer)."""
    from llava.eval.lmms_tasks import image_from_path

    docs = [json.loads(line) for line in open(next(synthetic[1].glob("*.jsonl")))]
    images = sorted({doc["image_path"] for doc in docs})
    adapter.task_dict = {"multi": {"test": [{"image_path": path} for path in images]}}

    def request(question, doc_id, doc_to_visual):
        args = (question, {"max_new_tokens": 8}, doc_to_visual, doc_id, "multi", "test")
        return Instance("generate_until", args, 0, {"task": "multi", "doc_id": doc_id, "repeats": 1, "split": "test"})

    for question in [doc["question"] for doc in docs]:  # one whose answer differs between two images
        singles = [r.text for r in adapter.generate_until([request(question, i, image_from_path) for i in (0, 1)])]
        if singles[0] != singles[1]:
            break
    assert singles[0] != singles[1]

    def three_images(doc):  # image 0 between two copies of image 1
        outer = image_from_path({"image_path": images[1]})
        return outer + image_from_path(doc) + outer

    with pytest.raises(ValueError, match="multi_image"):
        adapter.generate_until([request(question, 0, three_images)])
    adapter.multi_image = "middle"
    try:
        (middle,) = adapter.generate_until([request(question, 0, three_images)])
    finally:
        adapter.multi_image = "error"
    assert middle.text == singles[0]


@pytest.fixture(scope="module")
def family_checkpoints(tmp_path_factory) -> dict:
    """Random tiny checkpoints of the other families the loader loads."""
    from llava.testing import write_tiny_clip, write_tiny_llava
    from llava.testing.qwen_checkpoints import write_tiny_qwen_vl
    from llava.testing.video_llava import write_tiny_video_llava

    tmp = tmp_path_factory.mktemp("families")
    return {
        "next": write_tiny_llava(tmp / "llava-v1.6-tiny", write_tiny_clip(tmp / "clip"), next=True, seed=2),
        "qwen2_5_vl": write_tiny_qwen_vl(tmp / "qwen2_5_vl"),
        "video_llava": write_tiny_video_llava(tmp / "video_llava"),
    }


@pytest.mark.parametrize("family", ["next", "qwen2_5_vl", "video_llava"])
def test_adapter_answers_as_our_generator_on_every_family(family, family_checkpoints, synthetic, tmp_path):
    """Random weights: any difference in prompt, pixels or pruning changes the answers."""
    from llava.eval.lmms_eval_adapter import LlavaSparse

    split, tasks = synthetic
    checkpoint = family_checkpoints[family]
    conv = [] if family == "qwen2_5_vl" else ["--conv-mode", "vicuna_v1"]  # Qwen: the checkpoint's own template
    adapter = LlavaSparse.create_from_arg_string(
        f"pretrained={checkpoint},method=fastv,retained_ratio=0.5", {"batch_size": "2", "device": "cpu"}
    )
    picked = (0, 6, 12, 7)  # three images, two questions on one of them
    docs = [json.loads(line) for line in open(next(tasks.glob("*.jsonl")))]
    docs = [docs[i] for i in picked]
    adapter.task_dict = {"t": {"test": docs}}
    answers = adapter.generate_until(requests_for(adapter.task_dict, {"max_new_tokens": 8}))
    rows = [json.loads(line) for line in open(split / "questions.jsonl")]
    rows = [rows[i] for i in picked]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    flags = ["--method", "fastv", "--retained-ratio", "0.5", "--batch-size", "2", "--device", "cpu", *conv]
    ours = our_answers_for(checkpoint, tmp_path / "q.jsonl", split / "images", tmp_path / "a.jsonl", flags)
    assert [a.text for a in answers] == [a["text"] for a in ours]
    assert [a.token_counts.to_dict()["equal_tokens"] for a in answers] == [a["metadata"]["equal_tokens"] for a in ours]


def test_adapter_answers_a_video_as_our_generator(family_checkpoints, tmp_path):
    """A doc_to_visual returning a video file (lmms-eval's video tasks) goes to Video-LLaVA as a clip."""
    from llava.eval.answering import Question, add_generation_args, generate_answers
    from llava.eval.lmms_eval_adapter import LlavaSparse
    from llava.testing.videos import synthetic_frames, write_video

    checkpoint = family_checkpoints["video_llava"]
    video = write_video(tmp_path / "clip.mp4", synthetic_frames(12, 64, 48))
    adapter = LlavaSparse.create_from_arg_string(f"pretrained={checkpoint}", {"device": "cpu"})
    adapter.task_dict = {"v": {"test": [{"video": str(video)}]}}
    args = ("What happens?", {"max_new_tokens": 8}, lambda doc: [doc["video"]], 0, "v", "test")
    (answer,) = adapter.generate_until([Instance("generate_until", args, 0, {"task": "v", "doc_id": 0, "repeats": 1})])
    entry = answer.token_counts.to_dict()
    assert "error" not in entry and entry["visual_tokens"] == adapter.model.nominal_visual_tokens

    parser = argparse.ArgumentParser()
    add_generation_args(parser, max_new_tokens=8)
    flags = ["--model-path", str(checkpoint), "--answers-file", str(tmp_path / "a.jsonl"), "--conv-mode", "vicuna_v1"]
    generator_args = parser.parse_args([*flags, "--temperature", "0", "--device", "cpu"])
    question = Question(text="What happens?", image=None, record={"question_id": 0}, video=video)
    ours = json.loads(generate_answers([question], generator_args).read_text())
    assert answer.text == ours["text"] and entry["equal_tokens"] == ours["metadata"]["equal_tokens"]


def test_each_run_ends_with_our_generators_summary_line(lmms_runs):
    """The closing `[Efficiency INFO]` line our generators print, once per successful evaluation, with its count."""
    lines = [line for line in lmms_runs["_process"].stderr.splitlines() if line.startswith("[Efficiency INFO]")]
    assert len(lines) == len(RUNS)
    for line, (name, _, _) in zip(lines, RUNS, strict=True):
        assert line.startswith(f"[Efficiency INFO] {len(lmms_runs[name][1])} answers (0 failed), mean Equal Tokens:")


def test_accelerate_launch_shards_questions_and_gathers_them(lmms_runs, synthetic, tmp_path):
    """`accelerate launch --num_processes 2` (CPU processes over gloo; one per GPU on a GPU machine, the same code):
    each process answers its share of 15 questions (so one pads its shard with a repeat), and the results equal the
    one-process run's: the same answers, accuracy over exactly those questions, and one summary line that counts
    each question once (the mean equal tokens recomputed from the one-process samples)."""
    split, tasks = synthetic
    limit = NUM_QUESTIONS - 1
    command = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    command += ["-m", "llava.eval.lmms_eval_run", "--model", "llava_sparse", "--tasks", SYNTHETIC_TASK]
    command += ["--model_args", f"pretrained={BUNDLED},{SPARSE_ARGS}", "--batch_size", "4", "--limit", str(limit)]
    command += ["--include_path", str(tasks), "--log_samples", "--output_path", str(tmp_path / "out")]
    env = {**offline_env(tmp_path), "OMP_NUM_THREADS": "1"}
    process = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert process.returncode == 0, process.stderr[-3000:]
    (found,) = (tmp_path / "out").rglob("*_results.json")
    samples = [json.loads(line) for path in (tmp_path / "out").rglob("*_samples_*.jsonl") for line in open(path)]
    samples = sorted(samples, key=lambda s: s["doc_id"])
    single = lmms_runs["sparse_b4"][1][:limit]
    assert [s["doc_id"] for s in samples] == list(range(limit))
    assert texts(samples) == texts(single)
    docs = [json.loads(line) for line in open(split / "questions.jsonl")][:limit]  # the task's docs, in order
    ours = [{"question_id": d["question_id"], "text": text} for d, text in zip(docs, texts(samples), strict=True)]
    asked = {d["question_id"] for d in docs}
    truth = [row for row in map(json.loads, open(split / "answers.jsonl")) if row["question_id"] in asked]
    accuracy = json.loads(found.read_text())["results"][SYNTHETIC_TASK]["accuracy,none"]
    assert accuracy == pytest.approx(score(truth, ours)["reported"])
    (line,) = [line for line in process.stderr.splitlines() if line.startswith("[Efficiency INFO]")]
    mean = sum(counts(s)["equal_tokens"] for s in single) / limit
    assert line.startswith(f"[Efficiency INFO] {limit} answers (0 failed), mean Equal Tokens: {mean:.2f},")


# -- an offline copy of lmms-eval's own MME task (`write_local_task`) ------------------------------------------------


def write_mme_snapshot(folder: Path, images: int) -> list[dict]:
    """A local snapshot shaped as the Hub's MME data set (a parquet file with its columns: question_id = the image's
    path, image, question ending in " Please answer yes or no.", answer Yes / No, category): two questions per synthetic
    scene from the benchmark's exist pair (one object it shows, one near miss), half the scenes in a perception task
    and half in a cognition one. Returns the rows (images as PIL)."""
    import random

    import datasets

    from llava.synthetic.scenes import draw, make_scene, questions_for

    rows = []
    for i in range(images):
        rng = random.Random(500 + i)
        scene = make_scene(rng)
        category = "existence" if i % 2 == 0 else "commonsense_reasoning"
        pairs = [(q, a) for kind, q, a in questions_for(scene, rng) if kind == "exist"]
        assert sorted(a for _, a in pairs) == ["no", "yes"]
        for question, answer in pairs:
            rows.append(
                {
                    "question_id": f"{category}/{i:04d}.png",
                    "image": draw(scene),
                    "question": f"{question} Please answer yes or no.",
                    "answer": answer.capitalize(),
                    "category": category,
                }
            )
    features = datasets.Features({key: datasets.Value("string") for key in rows[0]} | {"image": datasets.Image()})
    (folder / "data").mkdir(parents=True)
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(folder / "data" / "test-00000-of-00001.parquet"))
    return rows


def test_local_copy_of_lmms_evals_mme_scores_as_llavas_mme_tool(tmp_path):
    """`python -m llava.eval.lmms_tasks local mme DATA` + lmms-eval's CLI, offline, on an MME-shaped parquet snapshot:
    lmms-eval's own MME prompt, parsing and aggregation give the Perception and Cognition scores that LLaVA's MME tool
    (`llava.eval.eval_mme`) gives for our own generator's answers to the same prompts."""
    from llava.eval.eval_mme import MMERow, score_mme

    rows = write_mme_snapshot(tmp_path / "MME", images=6)
    made = subprocess.run(
        [sys.executable, "-m", "llava.eval.lmms_tasks", "local", "mme", str(tmp_path / "MME"), "--out", "tasks"],
        env=offline_env(tmp_path), capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]
    text = (tmp_path / "tasks" / "mme_local.yaml").read_text()
    assert "task: mme_local" in text and "!function lmms_eval.tasks.mme.utils.mme_process_results" in text
    assert "lmms-lab" not in text and "token:" not in text
    command = [sys.executable, "-m", "llava.eval.lmms_eval_run", "--model", "llava_sparse", "--tasks", "mme_local"]
    command += ["--model_args", f"pretrained={BUNDLED}", "--batch_size", "4", "--include_path", "tasks"]
    command += ["--log_samples", "--output_path", "out"]
    process = subprocess.run(command, env=offline_env(tmp_path), capture_output=True, text=True, cwd=tmp_path)
    assert process.returncode == 0, process.stderr[-3000:]
    (found,) = (tmp_path / "out").rglob("*_results.json")
    results = json.loads(found.read_text())["results"]["mme_local"]

    # our generator on the prompt lmms-eval's MME builds (the yes/no sentence off, the short-answer one on)
    (tmp_path / "images").mkdir()
    questions = []
    for index, row in enumerate(rows):
        row["image"].save(tmp_path / "images" / f"{index}.png")
        text = (
            row["question"].replace(" Please answer yes or no.", "")
            + "\nAnswer the question using a single word or phrase."
        )
        questions.append({"question_id": index, "image": f"{index}.png", "text": text})
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    flags = ["--conv-mode", "vicuna_v1", "--batch-size", "4", "--max-new-tokens", "16"]
    ours = our_answers_for(BUNDLED, tmp_path / "questions.jsonl", tmp_path / "images", tmp_path / "ours.jsonl", flags)
    by_task: dict[str, list[MMERow]] = {}
    for row, answer in zip(rows, ours, strict=True):
        by_task.setdefault(row["category"], []).append(MMERow(row["question_id"], "", row["answer"], answer["text"]))
    expected = score_mme(by_task)
    assert 0 < expected["perception"] and 0 < expected["cognition"]  # the bundled model gets some right
    assert results["mme_perception_score,none"] == pytest.approx(expected["perception"])
    assert results["mme_cognition_score,none"] == pytest.approx(expected["cognition"])


def test_local_copy_merges_what_the_stock_task_includes(tmp_path):
    """textvqa_val's YAML includes a template: the local copy holds both files' entries (its own win), loads with
    lmms-eval's YAML loader, and its functions are lmms-eval's own; the Hub data set and tags are gone."""
    from lmms_eval.tasks.textvqa import utils
    from lmms_eval.utils import load_yaml_config

    from llava.eval.lmms_tasks import write_local_task

    (tmp_path / "TextVQA" / "data").mkdir(parents=True)
    for name in ("train-00000.parquet", "validation-00000.parquet"):
        (tmp_path / "TextVQA" / "data" / name).write_bytes(b"")
    config = load_yaml_config(str(write_local_task("textvqa_val", tmp_path / "TextVQA", tmp_path / "tasks")))
    assert config["task"] == "textvqa_val_local" and config["test_split"] == "validation"
    assert config["dataset_path"] == "parquet" and "include" not in config and "tag" not in config
    assert config["dataset_kwargs"] == {
        "data_files": {"validation": [str(tmp_path / "TextVQA/data/validation-00000.parquet")]}
    }
    assert config["doc_to_visual"] is utils.textvqa_doc_to_visual and config["output_type"] == "generate_until"
    with pytest.raises(FileNotFoundError, match="No .parquet files"):
        write_local_task("mme", tmp_path / "empty", tmp_path / "tasks")
    with pytest.raises(ValueError, match="no task 'nonesuch'"):
        write_local_task("nonesuch", tmp_path / "TextVQA", tmp_path / "tasks")
