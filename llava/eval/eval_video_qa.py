"""Judge video-QA answers with a GPT model and aggregate Accuracy and Score (Video-ChatGPT protocol):

    python -m llava.eval.eval_video_qa --answers-file answers.jsonl --judge-model gpt-3.5-turbo-0125 \\
        --cache judgments.jsonl --output results.json [--api-key-env OPENAI_API_KEY] [--workers 4]

The judge model must be named: there is no default, because the reference's unpinned alias `gpt-3.5-turbo` moved
under the published numbers (spec video.md section 3.4); use a dated snapshot and report it. Calls use temperature
0. The judge sees the question, the ground truth and the prediction and replies with a Python-dict string
{'pred': 'yes'|'no', 'score': 0..5}.

Cache: one judgment per (question, ground truth, prediction, judge model, prompt wording), stored with the raw
reply and the judge model, keyed by a hash of those; an entry is reused only when all of them match, so changing
the judge or an answer re-judges that item and a stale file is never merged in. Only readable judgments are cached.

Parsing is tolerant: the first {...} of the reply, read with ast.literal_eval, else as JSON. A verdict is "yes" if
`pred` contains "yes" (checked first), else "no" if it contains "no"; the score is int(score) (4.5 counts 4, as
the reference's int()), and must lie in 0..5. Each item gets at most --max-attempts calls (an API error or an
unreadable reply uses one); items still without a readable judgment are judge failures: listed in the results,
left out of both Accuracy and Score (not counted as "no"), and the command exits with status 1 so that a rerun
(which retries only them) is not forgotten.

Aggregation: Accuracy = 100 * #yes / (#yes + #no); Score = mean of the scores, over the same judged items.
Answers whose generation failed (an "error" field, e.g. a missing video) are not sent to the judge and count as
"no" with score 0, as the other scorers here count failed answers as wrong; their number is reported.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from llava.eval.answer_files import (
    AnswerWriter,
    is_failed,
    iter_jsonl,
    read_jsonl,
    require_file,
    write_json_atomic,
)
from llava.eval.video_qa import SECTION, benchmark_name

Client = Callable[[list[dict]], str]  # chat messages -> the judge's reply text

SYSTEM_PROMPT = (
    "You evaluate answers that an AI model gave to questions about videos. Compare the predicted answer with the "
    "correct answer and decide whether the prediction is correct in meaning.\n"
    "Rules:\n"
    "- Judge the meaning, not the wording: synonyms, paraphrases and equivalent expressions count as matches.\n"
    "- Decide whether the prediction agrees with the correct answer; what matters is correctness.\n"
    "- Give a verdict (yes or no) and a score for how well the prediction matches."
)
USER_PROMPT = (
    "Judge this question-answer pair.\n"
    "Question: {question}\n"
    "Correct answer: {answer}\n"
    "Predicted answer: {pred}\n"
    "Say 'yes' if the predicted answer matches the correct answer and 'no' otherwise, and give an integer score "
    "from 0 to 5, where 5 means the best match. Reply ONLY with a Python dictionary string with the keys 'pred' "
    "(the string 'yes' or 'no') and 'score' (an integer), for example {{'pred': 'yes', 'score': 4}}. Do not add "
    "any other text or explanation."
)
# part of every cache key: rewording the prompt re-judges instead of reusing judgments made with other words
PROMPT_ID = hashlib.sha256((SYSTEM_PROMPT + "\0" + USER_PROMPT).encode()).hexdigest()[:12]
TEMPERATURE = 0.0
DEFAULT_ATTEMPTS = 3


def judge_messages(question: str, answer: str, pred: str) -> list[dict]:
    user = USER_PROMPT.format(question=question, answer=answer, pred=pred)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def cache_key(question: str, answer: str, pred: str, judge_model: str) -> str:
    """The hash one judgment is stored under (with the prompt wording's id)."""
    fields = json.dumps([question, answer, pred, judge_model, PROMPT_ID], ensure_ascii=False)
    return hashlib.sha256(fields.encode()).hexdigest()


def parse_judgment(reply: str) -> tuple[str, int]:
    """("yes" | "no", score 0..5) from the judge's reply; ValueError saying what is wrong with it."""
    match = re.search(r"\{.*?\}", reply or "", re.DOTALL)
    if not match:
        raise ValueError("no {...} in the reply")
    try:
        value = ast.literal_eval(match.group(0))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        try:
            value = json.loads(match.group(0))
        except json.JSONDecodeError:
            raise ValueError("the {...} is neither a Python nor a JSON dict") from None
    if not isinstance(value, dict):
        raise ValueError("the {...} is not a dict")
    value = {str(k).strip().lower(): v for k, v in value.items()}
    if "pred" not in value or "score" not in value:
        raise ValueError("the dict lacks 'pred' or 'score'")
    pred = str(value["pred"]).lower()
    verdict = "yes" if "yes" in pred else "no" if "no" in pred else None
    if verdict is None:
        raise ValueError(f"pred {value['pred']!r} is neither yes nor no")
    score = value["score"]
    if isinstance(score, str):
        try:
            score = float(score.strip())
        except ValueError:
            raise ValueError(f"score {value['score']!r} is not a number") from None
    if isinstance(score, bool) or not isinstance(score, (int, float)) or score != score:
        raise ValueError(f"score {value['score']!r} is not a number")
    score = int(score)
    if not 0 <= score <= 5:
        raise ValueError(f"score {score} is outside 0..5")
    return verdict, score


def openai_client(judge_model: str, api_key_env: str = "OPENAI_API_KEY", base_url: str | None = None) -> Client:
    """The default client: OpenAI's chat completions (openai>=1, imported only when a judgment is needed)."""
    try:
        import openai
    except ImportError:
        raise RuntimeError(
            f"The GPT judge needs the openai package (>=1): pip install 'openai>=1', and put the API key in "
            f"${api_key_env}"
        ) from None
    if not hasattr(openai, "OpenAI"):
        raise RuntimeError("The GPT judge needs openai>=1 (found an older one): pip install -U 'openai>=1'")
    key = os.environ.get(api_key_env)
    if not key:
        raise RuntimeError(f"No API key: set ${api_key_env} (or name another variable with --api-key-env)")
    client = openai.OpenAI(api_key=key, base_url=base_url)

    def call(messages: list[dict]) -> str:
        response = client.chat.completions.create(model=judge_model, messages=messages, temperature=TEMPERATURE)
        return response.choices[0].message.content or ""

    return call


def _judge_one(client: Client, item: dict, attempts: int, sleep: Callable[[float], None]) -> dict:
    """Up to `attempts` calls for one item: {"reply", "verdict", "score"} or {"error", "reply"}."""
    reply, error = None, "not judged"
    for attempt in range(attempts):
        if attempt:
            sleep(min(2.0**attempt, 30.0))
        try:
            reply = client(judge_messages(item["question"], item["answer"], item["pred"]))
        except Exception as err:  # network, rate limit, server: retried, then recorded
            error = f"judge call failed: {type(err).__name__}: {err}"
            continue
        try:
            verdict, score = parse_judgment(reply)
        except ValueError as err:
            error = f"unreadable judgment: {err}"
            continue
        return {"reply": reply, "verdict": verdict, "score": score}
    return {"error": f"{error} (after {attempts} attempt(s))", "reply": reply}


def _read_cache(path: Path, judge_model: str) -> dict[str, dict]:
    """key -> cached entry, only entries of this judge model and prompt wording."""
    if not path.exists():
        return {}
    return {
        e["key"]: e
        for e in iter_jsonl(path, ("key", "judge_model", "question", "answer", "pred", "reply"))
        if e["judge_model"] == judge_model and e.get("prompt_id") == PROMPT_ID
    }


def _reuse(entry: dict | None, item: dict) -> dict | None:
    """The cached judgment of `item` if the entry is for the same question, ground truth and prediction and its
    reply is still readable; else None (judge again)."""
    if entry is None or any(entry[f] != item[f] for f in ("question", "answer", "pred")):
        return None
    try:
        verdict, score = parse_judgment(entry["reply"])
    except ValueError:
        return None
    return {"verdict": verdict, "score": score, "reply": entry["reply"], "cached": True}


def _items(records: Sequence[dict]) -> list[dict]:
    """The answer records as judge items; a repeated question_id is an error (it would be counted twice)."""
    items, seen = [], set()
    for record in records:
        qid = record["question_id"]
        if qid in seen:
            raise ValueError(f"question_id {qid!r} is answered more than once; merge or clean the answers file")
        seen.add(qid)
        items.append(
            {
                "question_id": qid,
                "question": str(record["question"]),
                "answer": str(record["answer"]),
                "pred": str(record.get("text") or ""),
                "failed": is_failed(record),
                "generation_error": record.get("error"),
                "subset": record.get("subset"),
            }
        )
    return items


def judge_answers(
    records: Sequence[dict],
    judge_model: str,
    cache: str | os.PathLike,
    client: Client | None = None,
    *,
    workers: int = 4,
    attempts: int = DEFAULT_ATTEMPTS,
    sleep: Callable[[float], None] = time.sleep,
    client_factory: Callable[[], Client] | None = None,
) -> list[dict]:
    """A judgment per answer record, cached in `cache`: each item with verdict / score, or error.

    `client` is called as client(messages) -> reply text; without one, `client_factory()` (default: OpenAI) is
    built only if some item is not in the cache."""
    if not judge_model:
        raise ValueError("name the judge model (e.g. gpt-3.5-turbo-0125); there is no default")
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    items = _items(records)
    cache = Path(cache)
    writer = AnswerWriter(cache, key_fields=("key",))  # appends flushed lines; cuts a partial last line
    with writer:
        cached = _read_cache(cache, judge_model)
        todo = []
        for item in items:
            if item["failed"]:
                item.update(verdict="no", score=0)
                continue
            key = cache_key(item["question"], item["answer"], item["pred"], judge_model)
            reused = _reuse(cached.get(key), item)
            if reused is not None:
                item.update(reused)
            else:
                item["key"] = key
                todo.append(item)
        if not todo:
            return items
        client = client or (client_factory or (lambda: openai_client(judge_model)))()
        print(f"judging {len(todo)} answer(s) with {judge_model} ({len(items) - len(todo)} cached)", file=sys.stderr)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = {pool.submit(_judge_one, client, item, attempts, sleep): item for item in todo}
            for future in as_completed(futures):
                item = futures[future]
                outcome = future.result()
                item.update(outcome)
                if "error" not in outcome:
                    writer.write(
                        {
                            "key": item["key"],
                            "judge_model": judge_model,
                            "prompt_id": PROMPT_ID,
                            "question_id": item["question_id"],
                            "question": item["question"],
                            "answer": item["answer"],
                            "pred": item["pred"],
                            "reply": outcome["reply"],
                        }
                    )
    return items


def aggregate(items: Sequence[dict]) -> dict:
    """Accuracy (percent) and Score over the judged items (generation failures included as no / 0); judge
    failures are counted apart."""
    judged = [i for i in items if "verdict" in i]
    failures = [i for i in items if "verdict" not in i]
    yes = sum(i["verdict"] == "yes" for i in judged)
    no = len(judged) - yes
    return {
        "n": len(items),
        "judged": len(judged),
        "yes": yes,
        "no": no,
        "accuracy": 100.0 * yes / len(judged) if judged else None,
        "score": sum(i["score"] for i in judged) / len(judged) if judged else None,
        "generation_failures": sum(bool(i["failed"]) for i in items),
        "failures": len(failures),
        "failed_items": [
            {"question_id": i["question_id"], "error": i["error"], "reply": i.get("reply")} for i in failures
        ],
    }


def _subset(items: Sequence[dict]) -> str | None:
    subsets = {i["subset"] for i in items}
    if len(subsets) > 1:
        raise ValueError(f"the answers mix subsets {sorted(map(str, subsets))}; judge one subset per file")
    return next(iter(subsets), None)


def evaluate(
    answers_file: str | os.PathLike,
    judge_model: str,
    cache: str | os.PathLike,
    output: str | os.PathLike,
    client: Client | None = None,
    *,
    benchmark: str | None = None,
    **judge_kwargs,
) -> dict:
    """Judge an answers file, write the results JSON (atomically) and return it."""
    answers_file = require_file(answers_file, "video-QA answers file", SECTION)
    records = read_jsonl(answers_file, ("question_id", "question", "answer"))
    if not records:
        raise ValueError(f"{answers_file} holds no answers")
    items = judge_answers(records, judge_model, cache, client, **judge_kwargs)
    results = {
        "benchmark": benchmark or benchmark_name(answers_file) or answers_file.stem,
        "subset": _subset(items),
        "judge_model": judge_model,
        "temperature": TEMPERATURE,
        "prompt_id": PROMPT_ID,
        **aggregate(items),
        "answers_file": str(answers_file),
        "cache": str(cache),
    }
    results["reported"] = results["accuracy"]
    write_json_atomic(output, results)
    return results


def format_results(results: dict) -> str:
    lines = [
        f"{results['benchmark']} ({results['subset']}), judge {results['judge_model']}: {results['n']} answers, "
        f"{results['judged']} judged ({results['yes']} yes, {results['no']} no; "
        f"{results['generation_failures']} failed generations counted as no / 0)",
        f"Accuracy {_fmt(results['accuracy'])}  Score {_fmt(results['score'])}",
    ]
    if results["failures"]:
        lines.append(
            f"JUDGE FAILURES: {results['failures']} answer(s) without a readable judgment, left out of Accuracy and "
            f"Score (first: {results['failed_items'][0]['error']}); rerun to retry them"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers-file", required=True, help="answers of llava.eval.model_video_qa (jsonl)")
    parser.add_argument(
        "--judge-model",
        required=True,
        help="a pinned model name, e.g. gpt-3.5-turbo-0125 (no default: an alias changes under you)",
    )
    parser.add_argument("--cache", required=True, help="judgments jsonl, reused only where everything matches")
    parser.add_argument("--output", required=True, help="results JSON")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
    parser.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (default: the openai package's)")
    parser.add_argument("--workers", type=int, default=4, help="judge calls in flight")
    parser.add_argument("--max-attempts", type=int, default=DEFAULT_ATTEMPTS, help="calls per answer at most")
    parser.add_argument("--benchmark", default=None, help="name in the results (default: from the answers path)")
    return parser


def main(argv: list[str] | None = None, client: Client | None = None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        results = evaluate(
            args.answers_file,
            args.judge_model,
            args.cache,
            args.output,
            client,
            benchmark=args.benchmark,
            workers=args.workers,
            attempts=args.max_attempts,
            client_factory=lambda: openai_client(args.judge_model, args.api_key_env, args.base_url),
        )
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise SystemExit(f"error: {err}") from None
    print(format_results(results))
    print(f"Reported (accuracy, score): {_fmt(results['accuracy'])}, {_fmt(results['score'])}  -> {args.output}")
    return results


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    from llava.cli import run_cli

    sys.exit(1 if run_cli(main)["failures"] else 0)
