"""Test helpers: prompts, images and the bridge to transformers' own LlavaForConditionalGeneration."""

from __future__ import annotations

import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import get_conv_template
from llava.mm_utils import process_images, tokenizer_image_token
from llava.testing.images import random_image  # noqa: F401  (re-exported for the tests)


def prompt_ids(tokenizer, question: str, conv_mode: str = "vicuna_v1") -> torch.Tensor:
    conv = get_conv_template(conv_mode)
    conv.append_message(conv.roles[0], "<image>\n" + question)
    conv.append_message(conv.roles[1], None)
    return tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")


def pixels(image_processor, model, *images) -> torch.Tensor:
    return process_images(list(images), image_processor, model.config).to(model.dtype)


def hf_input_ids(ids: torch.Tensor, image_token_index: int, num_patches: int) -> torch.Tensor:
    """LLaVA's ids with the -200 placeholder expanded into the llava-hf image-token run."""
    k = int((ids == IMAGE_TOKEN_INDEX).nonzero()[0, 0])
    run = torch.full((num_patches,), image_token_index, dtype=ids.dtype)
    return torch.cat([ids[:k], run, ids[k + 1 :]])[None]


# --- Tiny benchmarks in the layout of EVAL.md (`playground/data/eval`), for the benchmark scripts' tests ---------

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
LETTER_ANSWER = "\nAnswer with the option's letter from the given choices directly."
BENCH_IMAGE_SIZE = (60, 40)


def _write_jsonl(path, rows) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def _write_json(path, data) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _save_image(path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    random_image(seed, size=BENCH_IMAGE_SIZE).save(path)


def _short_answer_questions(folder, n: int, prefix: str = "", qid=lambda i: i) -> list[dict]:
    """n model_vqa_loader questions {question_id, image, text} with their images written into `folder`."""
    rows = []
    for i in range(n):
        image = f"{prefix}{i}.jpg"
        _save_image(folder / image, i)
        rows.append({"question_id": qid(i), "image": image, "text": f"What is in picture {i}?" + SHORT_ANSWER})
    return rows


def write_vqav2(eval_dir, n: int = 2) -> None:
    root = eval_dir / "vqav2"
    rows = _short_answer_questions(root / "test2015", n, "COCO_test2015_", qid=lambda i: 100 + i)
    _write_jsonl(root / "llava_vqav2_mscoco_test-dev2015.jsonl", rows)
    extra = {"question_id": 999, "image": "COCO_test2015_999.jpg", "text": "Not in test-dev?" + SHORT_ANSWER}
    _write_jsonl(root / "llava_vqav2_mscoco_test2015.jsonl", [*rows, extra])  # test-dev is a subset of test


def write_gqa(eval_dir, n: int = 2) -> None:
    root = eval_dir / "gqa"
    rows = _short_answer_questions(root / "data" / "images", n, "n", qid=lambda i: f"20{i}")
    _write_jsonl(root / "llava_gqa_testdev_balanced.jsonl", rows)
    types = {"structural": "query", "semantic": "attr"}
    _write_json(
        root / "data" / "testdev_balanced_questions.json",
        {row["question_id"]: {"answer": "red", "isBalanced": True, "types": types} for row in rows},
    )


def write_vizwiz(eval_dir, n: int = 2) -> None:
    root = eval_dir / "vizwiz"
    rows = _short_answer_questions(root / "test", n, "VizWiz_test_")
    _write_jsonl(root / "llava_test.jsonl", rows)


def write_textvqa(eval_dir, n: int = 2) -> None:
    """LLaVA's question file: question_id is the image id, the prompt carries the OCR tokens."""
    root = eval_dir / "textvqa"
    rows, annotations = [], []
    for i in range(n):
        image_id = f"img{i}"
        _save_image(root / "train_images" / f"{image_id}.jpg", i)
        question = f"what is written on sign {i}?"
        text = question + "\nReference OCR token: stop, here" + SHORT_ANSWER
        rows.append({"question_id": image_id, "image": f"{image_id}.jpg", "text": text})
        annotations.append({"image_id": image_id, "question": question, "question_id": i, "answers": ["stop"] * 10})
    _write_jsonl(root / "llava_textvqa_val_v051_ocr.jsonl", rows)
    _write_json(root / "TextVQA_0.5.1_val.json", {"dataset_name": "textvqa", "data": annotations})


def write_pope(eval_dir, n: int = 3) -> None:
    """n questions spread over the three COCO splits (at least one each), labels alternating yes / no."""
    root = eval_dir / "pope"
    splits = ("adversarial", "popular", "random")
    questions, labels = [], {split: [] for split in splits}
    for i in range(max(n, 3)):
        split, qid, image = splits[i % 3], i + 1, f"COCO_val2014_{i + 1}.jpg"
        _save_image(root / "val2014" / image, qid)
        text = f"Is there a {'cat' if i % 2 == 0 else 'dog'} in the image?"
        questions.append({"question_id": qid, "image": image, "text": text + SHORT_ANSWER, "category": split})
        labels[split].append({"question_id": qid, "image": image, "text": text, "label": "yes" if i % 2 else "no"})
    _write_jsonl(root / "llava_pope_test.jsonl", questions)
    for split in splits:
        _write_jsonl(root / "coco" / f"coco_pope_{split}.json", labels[split])


def write_mme(eval_dir, n: int = 2) -> None:
    """n // 2 `existence` images (flat layout), each with MME's yes / no question pair."""
    root = eval_dir / "MME"
    bench = root / "MME_Benchmark_release_version" / "existence"
    rows = []
    for i in range(max(1, n // 2)):
        image = f"00000{i}.jpg"
        _save_image(bench / image, i)
        pair = [
            (f"Is there a dog in image {i}? Please answer yes or no.", "Yes"),
            (f"Is there a cat in image {i}? Please answer yes or no.", "No"),
        ]
        (bench / f"00000{i}.txt").write_text("".join(f"{q}\t{a}\n" for q, a in pair), encoding="utf-8")
        for question, _ in pair:
            text = question.replace(" Please answer yes or no.", "") + SHORT_ANSWER
            rows.append({"question_id": f"existence/{image}", "image": f"existence/{image}", "text": text})
    _write_jsonl(root / "llava_mme.jsonl", rows)


def mmbench_tsv(path, n: int, question: str, hint=float("nan"), image_size=None) -> None:
    """An MMBench TSV of n rows: n // 2 questions, each with its circular copy (options shifted, index +
    1,000,000)."""
    import base64
    import io

    import pandas as pd

    rows = []
    for base in range(max(1, n // 2)):
        buffer = io.BytesIO()
        random_image(base, size=image_size or BENCH_IMAGE_SIZE).save(buffer, format="PNG")
        for shift in range(2):
            options = ["cat", "dog"] if shift == 0 else ["dog", "cat"]
            rows.append(
                {
                    "index": base + shift * 1_000_000,
                    "question": question.format(base),
                    "hint": hint,
                    "A": options[0],
                    "B": options[1],
                    "C": float("nan"),
                    "D": float("nan"),
                    "answer": "A" if shift == 0 else "B",
                    "category": "animals",
                    "l2-category": "x",
                    "source": "s",
                    "comment": "",
                    "image": base64.b64encode(buffer.getvalue()).decode(),
                }
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)


def write_mmbench(eval_dir, n: int = 2) -> None:
    mmbench_tsv(eval_dir / "mmbench" / "mmbench_dev_20230712.tsv", n, "Which animal is in picture {}?")


def write_mmbench_cn(eval_dir, n: int = 2) -> None:
    mmbench_tsv(eval_dir / "mmbench_cn" / "mmbench_dev_cn_20231003.tsv", n, "图{}中是哪种动物?")


def write_sqa(eval_dir, n: int = 2) -> None:
    """n ScienceQA test items, every other one with an image (the rest text-only, answered without one)."""
    root = eval_dir / "scienceqa"
    items, problems = [], {}
    for i in range(n):
        pid = str(100 + i)
        value = f"Question {i}?\nContext: none\nA. red\nB. blue"
        item = {"id": pid, "conversations": [{"from": "human", "value": value}, {"from": "gpt", "value": "A"}]}
        if i % 2 == 0:
            _save_image(root / "images" / "test" / pid / "image.png", i)
            item["image"] = f"{pid}/image.png"
            item["conversations"][0]["value"] = "<image>\n" + value
        items.append(item)
        problems[pid] = {"answer": 0, "choices": ["red", "blue"], "image": "image.png" if i % 2 == 0 else None}
    (root / "images" / "test").mkdir(parents=True, exist_ok=True)
    _write_json(root / "llava_test_CQM-A.json", items)
    _write_json(root / "problems.json", problems)
    _write_json(root / "pid_splits.json", {"test": list(problems)})


def write_seed(eval_dir, n: int = 2) -> None:
    """n SEED-Bench questions, the last one on a video's middle frame."""
    root = eval_dir / "seed_bench"
    rows, questions = [], []
    for i in range(n):
        video = i == n - 1 and n > 1
        image = f"SEED-Bench-video-image/v{i}.png" if video else f"SEED-Bench-image/{i}.jpg"
        _save_image(root / image, i)
        qid = f"v{i}" if video else str(100 + i)
        text = f"What is shown in picture {i}?\nA. a\nB. b\nC. c\nD. d" + LETTER_ANSWER
        rows.append({"question_id": qid, "image": image, "text": text})
        questions.append(
            {
                "question_id": qid,
                "question_type_id": 10 if video else 1,
                "data_type": "video" if video else "image",
                "answer": "A",
                "question": "?",
                "choice_a": "a",
                "choice_b": "b",
                "choice_c": "c",
                "choice_d": "d",
            }
        )
    _write_jsonl(root / "llava-seed-bench.jsonl", rows)
    types = {"Scene Understanding": 1, "Action Recognition": 10}
    _write_json(root / "SEED-Bench.json", {"question_type": types, "questions": questions})


def write_llavabench(eval_dir, n: int = 2) -> None:
    root = eval_dir / "llava-bench-in-the-wild"
    rows = []
    for i in range(n):
        _save_image(root / "images" / f"{i:03d}.jpg", i)
        rows.append({"question_id": i, "image": f"{i:03d}.jpg", "text": f"Describe picture {i}.", "category": "conv"})
    _write_jsonl(root / "questions.jsonl", rows)


def write_mmvet(eval_dir, n: int = 2) -> None:
    root = eval_dir / "mm-vet"
    rows = []
    for i in range(n):
        _save_image(root / "images" / f"v1_{i}.png", i)
        rows.append({"question_id": i, "image": f"v1_{i}.png", "text": f"What is in picture {i}?"})
    _write_jsonl(root / "llava-mm-vet.jsonl", rows)


def write_qbench(eval_dir, n: int = 2) -> None:
    root = eval_dir / "qbench"
    items = []
    for i in range(n):
        _save_image(root / "images_llvisionqa" / f"{i}.jpg", i)
        items.append(
            {
                "img_path": f"{i}.jpg",
                "question": f"Is image {i} blurry?",
                "candidates": ["Yes", "No"],
                "correct_ans": "No",
                "type": 0,
                "concern": 1,
            }
        )
    _write_json(root / "llvisionqa_dev.json", items)


# script name (scripts/v1_5/eval/<name>.sh, scripts/v1_6/eval/<name>.sh) -> writer of that benchmark's files
BENCHMARK_WRITERS = {
    "vqav2": write_vqav2,
    "gqa": write_gqa,
    "vizwiz": write_vizwiz,
    "sqa": write_sqa,
    "textvqa": write_textvqa,
    "pope": write_pope,
    "mme": write_mme,
    "mmbench": write_mmbench,
    "mmbench_cn": write_mmbench_cn,
    "seed": write_seed,
    "llavabench": write_llavabench,
    "mmvet": write_mmvet,
    "qbench": write_qbench,
}


def write_benchmarks(eval_dir, names=None, questions: dict | None = None, default: int = 2):
    """Every benchmark's tiny files (or those of `names`) under `eval_dir`, as the eval scripts expect them;
    `questions` maps a script name to its question count (`default` for the others)."""
    for name in names or BENCHMARK_WRITERS:
        BENCHMARK_WRITERS[name](eval_dir, (questions or {}).get(name, default))
    return eval_dir


def image_benchmark_script(stem: str) -> bool:
    """A v1_5 eval script of an image benchmark (not a shared helper, not a video-QA run_qa_* / eval_qa_* script)."""
    return stem != "common" and not stem.startswith(("run_qa_", "eval_qa_", "common_"))
