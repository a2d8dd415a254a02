"""lmms-eval task functions of this package, for task YAMLs to name with `!function llava.eval.lmms_tasks.<fn>`, and
`write_synthetic_task`, which turns a split of the synthetic benchmark (`llava.synthetic.benchmark`) into a local
lmms-eval task (jsonl data and a YAML, no Hub), scored exactly as `llava.synthetic.benchmark score` scores it:

    write_synthetic_task("tasks/", "playground/data/eval/synthetic")  # then:
    lmms-eval --model llava_sparse --model_args pretrained=<ckpt> --include_path tasks/ --tasks llava_synthetic ...
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

SYNTHETIC_TASK = "llava_synthetic"


def image_from_path(doc: dict) -> list[Image.Image]:
    """doc_to_visual: the image file named by the doc's `image_path` (none when it has no image)."""
    if not doc.get("image_path"):
        return []
    with Image.open(doc["image_path"]) as image:
        return [image.convert("RGB")]


def question_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """doc_to_text: the question exactly as our question file holds it (instruction suffix included)."""
    return doc["question"]


def synthetic_process_results(doc: dict, results: list[str]) -> dict:
    """process_results: accuracy x100 of one answer under the synthetic benchmark's own scorer."""
    from llava.synthetic.benchmark import score

    truth = {"question_id": doc["question_id"], "answer": doc["answer"], "category": doc["category"]}
    answer = {"question_id": doc["question_id"], "text": results[0]}
    return {"accuracy": score([truth], [answer])["reported"]}


def synthetic_task_yaml(task: str, data_file: Path, max_new_tokens: int) -> str:
    """The task YAML: local jsonl data, our functions for images, prompt and score, greedy generation."""
    return "\n".join(
        [
            f"task: {task}",
            "dataset_path: json",
            "dataset_kwargs:",
            "  data_files:",
            f"    test: {json.dumps(str(Path(data_file).resolve()))}",
            "test_split: test",
            "output_type: generate_until",
            "doc_to_visual: !function llava.eval.lmms_tasks.image_from_path",
            "doc_to_text: !function llava.eval.lmms_tasks.question_text",
            "doc_to_target: answer",
            "process_results: !function llava.eval.lmms_tasks.synthetic_process_results",
            f"generation_kwargs: {{max_new_tokens: {max_new_tokens}, do_sample: false}}",
            "metric_list:",
            "  - {metric: accuracy, aggregation: mean, higher_is_better: true}",
            "",
        ]
    )


def write_synthetic_task(
    out: str | Path, split: str | Path, task: str = SYNTHETIC_TASK, max_new_tokens: int = 8
) -> Path:
    """Write `<out>/<task>.jsonl` and `<out>/<task>.yaml` for the synthetic split in `split` (questions.jsonl,
    answers.jsonl, images/); returns the YAML. max_new_tokens: 8, as `llava.synthetic.compare` answers."""
    from llava.eval.answer_files import read_jsonl

    out, split = Path(out), Path(split).resolve()
    out.mkdir(parents=True, exist_ok=True)
    truth = {row["question_id"]: row for row in read_jsonl(split / "answers.jsonl")}
    lines = []
    for row in read_jsonl(split / "questions.jsonl"):
        answer = truth[row["question_id"]]
        doc = {
            "question_id": row["question_id"],
            "image_path": str(split / "images" / row["image"]),
            "question": row["text"],
            "answer": answer["answer"],
            "category": answer["category"],
        }
        lines.append(json.dumps(doc) + "\n")
    data_file = out / f"{task}.jsonl"
    data_file.write_text("".join(lines))
    yaml_file = out / f"{task}.yaml"
    yaml_file.write_text(synthetic_task_yaml(task, data_file, max_new_tokens))
    return yaml_file
