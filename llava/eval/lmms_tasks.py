"""lmms-eval task functions of this package, for task YAMLs to name with `!function llava.eval.lmms_tasks.<fn>`, and
`write_synthetic_task`, which turns a split of the synthetic benchmark (`llava.synthetic.benchmark`) into a local
lmms-eval task (jsonl data and a YAML, no Hub), scored exactly as `llava.synthetic.benchmark score` scores it:

    write_synthetic_task("tasks/", "playground/data/eval/synthetic")  # then:
    lmms-eval --model llava_sparse --model_args pretrained=<ckpt> --include_path tasks/ --tasks llava_synthetic ...

and `write_local_task`, which makes an offline copy of one of lmms-eval's own tasks (`<task>_local`) that reads a
local snapshot of its data set (the Hub repository's parquet files) instead of the Hub, with lmms-eval's own prompt,
scoring and aggregation functions (the spec's route B for machines without the Hub):

    python -m llava.eval.lmms_tasks local mme /data/MME --out tasks/   # then: --include_path tasks/ --tasks mme_local
"""

from __future__ import annotations

import argparse
import json
import re
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


# top-level keys of a stock task YAML that name the Hub data set (replaced by the local parquet files) or join it to
# stock groups (a local copy joins none)
DROPPED_KEYS = ("dataset_path", "dataset_name", "dataset_kwargs", "tag", "include")
FUNCTION_TAG = re.compile(r"!function (\w+)\.")


def stock_task_yaml(task: str) -> Path:
    """The YAML file of one of lmms-eval's own tasks (a single task, not a group)."""
    from lmms_eval.tasks import TaskManager

    entry = TaskManager().task_index.get(task)
    if entry is None:
        raise ValueError(f"lmms-eval has no task {task!r} (see `lmms-eval --tasks list`)")
    if entry.get("type") != "task" or not entry.get("yaml_path") or entry["yaml_path"] == -1:
        raise ValueError(f"lmms-eval's {task!r} is a group or a python task; make local copies of its tasks one by one")
    return Path(entry["yaml_path"])


def parquet_files(data: Path, split: str) -> list[Path]:
    """The parquet files of a data set snapshot (any depth); those named after `split` if the snapshot has several
    splits' files."""
    files = sorted(Path(data).rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(
            f"No .parquet files under {data}: download the task's data set repository there (for example "
            "`huggingface-cli download lmms-lab/MME --repo-type dataset --local-dir DATA` on a machine with the Hub)"
        )
    of_split = [path for path in files if path.name.startswith(split) or path.parent.name == split]
    return of_split or files


def yaml_blocks(path: Path) -> dict[str, list[str]]:
    """A task YAML's top-level entries as {key: its lines}, with the file it `include:`s merged under it (its own
    entries win, as lmms-eval merges them) and `!function name.fn` made importable from anywhere where name.py lies
    beside the file (`lmms_eval.tasks.<task>.name.fn`)."""
    import lmms_eval

    module = ".".join(("lmms_eval", *path.parent.relative_to(Path(lmms_eval.__file__).parent).parts))

    def importable(tag: re.Match) -> str:
        return f"!function {module}.{tag[1]}." if (path.parent / f"{tag[1]}.py").exists() else tag[0]

    blocks: dict[str, list[str]] = {}
    key = None
    for line in path.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith(("#", "-")):
            key = line.split(":", 1)[0].strip()
            blocks[key] = []
        if key is not None:
            blocks[key].append(FUNCTION_TAG.sub(importable, line))
    if "include" in blocks:
        included = blocks["include"][0].split(":", 1)[1].strip().strip("'\"")
        blocks = yaml_blocks(path.parent / included) | blocks
    return blocks


def local_task_yaml(stock: Path, task: str, data: Path) -> str:
    """The stock task's YAML (includes merged) renamed to `task`, reading the parquet files in `data`."""
    blocks = yaml_blocks(stock)
    if "test_split" not in blocks:
        raise ValueError(f"{stock} names no test_split")
    split = blocks["test_split"][0].split(":", 1)[1].strip().strip("'\"")
    lines = ["dataset_path: parquet", "dataset_kwargs:", "  data_files:", f"    {split}:"]
    lines += [f"      - {json.dumps(str(path.resolve()))}" for path in parquet_files(data, split)]
    lines.append(f"task: {task}")
    for key, block in blocks.items():
        if key not in (*DROPPED_KEYS, "task"):
            lines += block
    return "\n".join([*lines, ""])


def write_local_task(task: str, data: str | Path, out: str | Path) -> Path:
    """Write `<out>/<task>_local.yaml`: lmms-eval's task `task` on the parquet snapshot in `data`; returns it."""
    from llava.eval.answer_files import write_text_atomic

    path = Path(out) / f"{task}_local.yaml"
    write_text_atomic(path, local_task_yaml(stock_task_yaml(task), path.stem, Path(data)))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write lmms-eval task YAMLs that need no Hub")
    commands = parser.add_subparsers(dest="command", required=True)
    local = commands.add_parser("local", help="an offline copy of an lmms-eval task on a local parquet snapshot")
    local.add_argument("task", help="lmms-eval's task name (mme, pope, ...)")
    local.add_argument("data", type=Path, help="folder holding the task's data set repository (its parquet files)")
    local.add_argument(
        "--out", type=Path, required=True, help="folder for <task>_local.yaml (pass it to --include_path)"
    )
    synthetic = commands.add_parser("synthetic", help="a task from a split of the synthetic benchmark")
    synthetic.add_argument("split", type=Path, help="the split's folder (questions.jsonl, answers.jsonl, images/)")
    synthetic.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "local":
        path = write_local_task(args.task, args.data, args.out)
    else:
        path = write_synthetic_task(args.out, args.split)
    print(f"wrote {path}; run lmms-eval with --include_path {path.parent} --tasks {path.stem}")


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
