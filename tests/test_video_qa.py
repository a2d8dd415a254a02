"""Video-QA evaluation (Video-ChatGPT protocol) without a model or a network: reading and pairing the benchmark
files by question_id, the 1K subsets, finding videos, building the generator's questions, the GPT judge on replies
written here (parsing, aggregation, cache, retries), chunked answers merged out of order, the results summary, and
the run_qa / eval_qa scripts' command lines through a stub interpreter."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from llava.eval import eval_video_qa as judge
from llava.eval import model_video_qa, summarize_results
from llava.eval.answer_files import MalformedFileError, read_jsonl
from llava.eval.answering import chunk_path, get_chunk
from llava.eval.merge_chunks import merge_chunks
from llava.eval.video_qa import find_video, load_benchmark

ROOT = Path(__file__).resolve().parents[1]
V15 = ROOT / "scripts" / "v1_5" / "eval"
MODEL = "gpt-3.5-turbo-0125"


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _benchmark(folder: Path, n: int = 6, shuffle_answers: bool = True, videos: str = "videos", prefix: str = ""):
    """A benchmark folder: n questions on n // 2 videos (2 each), answers "answer-<id>" in shuffled order, and
    placeholder video files (never decoded here)."""
    questions = [{"video_name": f"vid{i // 2}", "question_id": f"q{i}", "question": f"what is {i}?"} for i in range(n)]
    answers = [{"answer": f"answer-q{i}", "type": 3, "question_id": f"q{i}"} for i in range(n)]
    if shuffle_answers:
        random.Random(0).shuffle(answers)
    _write(folder / "test_q.json", questions)
    _write(folder / "test_a.json", answers)
    (folder / videos).mkdir(parents=True, exist_ok=True)
    for k in range((n + 1) // 2):
        (folder / videos / f"{prefix}vid{k}.mp4").write_bytes(b"not decoded in these tests")
    return folder


# ---- reading and pairing ---------------------------------------------------------------------------------------


def test_pairs_by_question_id_not_by_position(tmp_path):
    folder = _benchmark(tmp_path / "MSVD_Zero_Shot_QA")
    order = [row["question_id"] for row in json.loads((folder / "test_a.json").read_text())]
    assert order != sorted(order, key=lambda q: int(q[1:]))  # the answer file really is out of order
    items, subset = load_benchmark(folder / "test_q.json", folder / "test_a.json")
    assert subset == "full"
    assert [i.question_id for i in items] == [f"q{i}" for i in range(6)]  # question-file order
    assert all(i.answer == f"answer-{i.question_id}" and i.type == 3 for i in items)
    assert items[3].record("full") == {
        "question_id": "q3",
        "video_name": "vid1",
        "question": "what is 3?",
        "answer": "answer-q3",
        "type": 3,
        "subset": "full",
    }


@pytest.mark.parametrize(
    "questions, answers, message",
    [
        (
            [
                {"video_name": "v", "question_id": "a", "question": "?"},
                {"video_name": "v", "question_id": "b", "question": "?"},
            ],
            [{"answer": "x", "type": 3, "question_id": "a"}],
            "1 question(s) of",  # ... have no answer in test_a.json: question_id 'b'
        ),
        (
            [{"video_name": "v", "question_id": "a", "question": "?"}] * 2,
            [{"answer": "x", "type": 3, "question_id": "a"}],
            "test_q.json: 1 duplicate question_id(s): 'a' (rows 0, 1)",
        ),
        (
            [{"video_name": "v", "question_id": "a", "question": "?"}],
            [{"answer": "x", "question_id": "a"}, {"answer": "y", "question_id": "a"}],
            "test_a.json: 1 duplicate question_id(s): 'a' (rows 0, 1)",
        ),
        ([{"video_name": "v", "question": "?"}], [], "test_q.json, row 0: missing field(s) question_id"),
        ([["v", "a", "?"]], [], "test_q.json, row 0: expected an object, got list"),
        ([{"video_name": "v", "question_id": "a", "question": 3}], [], "row 0: question must be str, got int"),
        ([{"video_name": "v", "question_id": True, "question": "?"}], [], "question_id must be a non-empty string"),
        ([{"video_name": "v", "question_id": "a", "question": "?"}], [{"type": 3, "question_id": "a"}], "answer"),
        ({"q": 1}, [], "test_q.json: expected a JSON list of rows, got dict"),
    ],
    ids=[
        "no-answer",
        "dup-question",
        "dup-answer",
        "no-id",
        "not-object",
        "bad-type",
        "bool-id",
        "no-answer-field",
        "not-list",
    ],
)
def test_malformed_files_give_clear_errors(tmp_path, questions, answers, message):
    q, a = _write(tmp_path / "test_q.json", questions), _write(tmp_path / "test_a.json", answers)
    with pytest.raises(MalformedFileError) as err:
        load_benchmark(q, a)
    assert message in str(err.value)
    if message.startswith("1 question(s)"):
        assert "test_a.json: question_id 'b'" in str(err.value)


def test_missing_files_name_the_eval_section(tmp_path):
    with pytest.raises(FileNotFoundError, match="See EVAL.md, section Video-QA"):
        load_benchmark(tmp_path / "test_q.json", tmp_path / "test_a.json")


def test_1k_subset_from_files_else_first_1000_rows(tmp_path):
    folder = tmp_path / "MSRVTT_Zero_Shot_QA"
    questions = [{"video_name": f"v{i}", "question_id": i, "question": f"q{i}?"} for i in range(1005)]
    answers = [{"answer": f"a{i}", "type": 3, "question_id": i} for i in reversed(range(1005))]
    q, a = _write(folder / "test_q.json", questions), _write(folder / "test_a.json", answers)

    items, subset = load_benchmark(q, a, "1k")  # no _1k files: the first 1000 rows, recorded as such
    assert subset == "1k-first1000" and [i.question_id for i in items] == list(range(1000))
    assert items[999].answer == "a999"
    assert len(load_benchmark(q, a, "full")[0]) == 1005

    _write(folder / "test_q_1k.json", questions[500:503])  # the subset file wins, paired with the full answers
    items, subset = load_benchmark(q, a, "1k")
    assert subset == "1k" and [(i.question_id, i.answer) for i in items] == [
        (500, "a500"),
        (501, "a501"),
        (502, "a502"),
    ]
    _write(folder / "test_a_1k.json", [{"answer": "own", "question_id": k} for k in (502, 501, 500)])
    items, _ = load_benchmark(q, a, "1k")
    assert [i.answer for i in items] == ["own"] * 3 and items[0].type is None  # type is optional
    assert load_benchmark(folder / "test_q_1k.json", folder / "test_a_1k.json", "1k")[1] == "1k"
    with pytest.raises(ValueError, match="is a 1K subset file; use subset 1k"):
        load_benchmark(folder / "test_q_1k.json", a, "full")


def test_find_video_extensions_and_activitynet_prefix(tmp_path):
    for name in ("a.avi", "b.mkv", "b.webm", "c.gif", "v_d.mp4", "e.txt"):
        (tmp_path / name).write_bytes(b"")
    assert find_video(tmp_path, "a") == tmp_path / "a.avi"
    assert find_video(tmp_path, "b") == tmp_path / "b.mkv"  # the first extension of the search order
    assert find_video(tmp_path, "c") == tmp_path / "c.gif"
    assert find_video(tmp_path, "d") == tmp_path / "v_d.mp4"  # ActivityNet: v_<video_name>.mp4
    assert find_video(tmp_path, "e") is None and find_video(tmp_path, "zzz") is None


def _generator_args(folder: Path, *extra: str, videos: str = "videos"):
    return model_video_qa.build_parser().parse_args(
        [
            "--model-path", "unused", "--answers-file", str(folder / "answers.jsonl"),
            "--video-folder", str(folder / videos), "--question-file", str(folder / "test_q.json"),
            "--answer-file", str(folder / "test_a.json"), *extra,
        ]
    )  # fmt: skip


def test_generator_builds_questions_with_videos_and_keeps_missing_ones(tmp_path, capsys):
    folder = _benchmark(tmp_path / "Activitynet_Zero_Shot_QA", videos="all_test", prefix="v_")
    (folder / "all_test" / "v_vid2.mp4").unlink()  # questions q4, q5 lose their video
    args = _generator_args(folder, "--subset", "1k", videos="all_test")
    assert (args.temperature, args.max_new_tokens, args.num_frames, args.repeat_short_videos) == (
        0.0,
        1024,
        None,
        False,
    )
    questions = model_video_qa.build_questions(args)
    assert len(questions) == 6  # nobody dropped
    assert [q.video for q in questions[:4]] == [folder / "all_test" / f"v_vid{i // 2}.mp4" for i in range(4)]
    assert questions[4].video == folder / "all_test" / "vid2.mp4" and not questions[4].video.exists()
    assert all(q.image is None and q.text == q.record["question"] for q in questions)
    assert [q.record["answer"] for q in questions] == [f"answer-q{i}" for i in range(6)]
    assert {q.record["subset"] for q in questions} == {"1k-first1000"}
    assert "1 video(s) not found" in capsys.readouterr().err


def test_generator_help_states_the_defaults():
    text = model_video_qa.build_parser().format_help()
    assert "greedy decoding (--temperature 0)" in text and "--max_new_tokens 1024" in text
    assert "--repeat-short-videos" in text and "--num-frames" in text and "--retained-tokens" in text


def test_generator_stops_on_missing_video_folder_before_loading_a_model(tmp_path):
    folder = _benchmark(tmp_path / "MSVD_Zero_Shot_QA")
    with pytest.raises(SystemExit, match="video folder not found: .*nope. See EVAL.md, section Video-QA"):
        model_video_qa.main(_argv_of(_generator_args(folder), folder / "nope"))


def _argv_of(args, video_folder):
    return ["--model-path", "unused", "--answers-file", args.answers_file, "--video-folder", str(video_folder),
            "--question-file", args.question_file, "--answer-file", args.answer_file]  # fmt: skip


# ---- the judge -------------------------------------------------------------------------------------------------


def _answers(n: int = 4, preds=None, failed=()) -> list[dict]:
    preds = preds or [f"pred{i}" for i in range(n)]
    records = []
    for i, pred in enumerate(preds):
        record = {
            "question_id": f"q{i}",
            "question": f"what is {i}?",
            "answer": f"gt{i}",
            "text": pred,
            "subset": "full",
        }
        if i in failed:
            record.update(text="", error="video could not be read: FileNotFoundError: vid.mp4")
        records.append(record)
    return records


class Recorded:
    """A judge that answers from a table keyed by prediction (the reply texts written in the tests), counting calls;
    a reply may be an exception to raise."""

    def __init__(self, replies: dict[str, object], default="{'pred': 'no', 'score': 1}"):
        self.replies, self.default, self.calls = replies, default, []

    def __call__(self, messages):
        assert messages[0]["role"] == "system" and messages[1]["role"] == "user"
        pred = messages[1]["content"].split("Predicted answer: ", 1)[1].split("\n", 1)[0]
        self.calls.append(pred)
        reply = self.replies.get(pred, self.default)
        if isinstance(reply, BaseException):
            raise reply
        return reply


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("{'pred': 'yes', 'score': 4}", ("yes", 4)),
        ("Sure! Here it is: {'pred': 'no', 'score': 2} Hope this helps.", ("no", 2)),  # text around the dict
        ('```json\n{"pred": "Yes", "score": "5"}\n```', ("yes", 5)),  # JSON, capitalised, score as text
        ("{'pred': 'yes', 'score': 4.8}", ("yes", 4)),  # non-integer score: int() as the reference
        ("{'pred': 'yes, mostly', 'score': 3}", ("yes", 3)),
        ("{'pred': 'no', 'score': 0}", ("no", 0)),
        ("{'pred': 'yes', 'score': true}{'pred': 'no', 'score': 1}", None),  # first {...} only; bool is no score
    ],
)
def test_parse_judgment_variants(reply, expected):
    if expected is None:
        with pytest.raises(ValueError):
            judge.parse_judgment(reply)
    else:
        assert judge.parse_judgment(reply) == expected


@pytest.mark.parametrize(
    "reply, reason",
    [
        ("The prediction is correct.", "no {...}"),
        ("{'pred': 'yes', 'score': 'high'}", "not a number"),
        ("{'pred': 'maybe', 'score': 3}", "neither yes nor no"),
        ("{'pred': 'yes'}", "lacks 'pred' or 'score'"),
        ("{'pred': 'yes', 'score': 7}", "outside 0..5"),
        ("{pred: yes, score: 4}", "neither a Python nor a JSON dict"),
        ("", "no {...}"),
    ],
)
def test_parse_judgment_garbage(reply, reason):
    with pytest.raises(ValueError, match=reason.replace("{", r"\{").replace(".", r"\.")):
        judge.parse_judgment(reply)


def test_prompt_carries_the_protocol():
    system, user = judge.judge_messages("what is it?", "a dog", "a puppy")
    assert "synonyms" in system["content"] and "correctness" in system["content"]
    for part in ("Question: what is it?", "Correct answer: a dog", "Predicted answer: a puppy", "'pred'", "'score'",
                 "integer score from 0 to 5", "ONLY with a Python dictionary string"):  # fmt: skip
        assert part in user["content"]


def test_aggregation_by_hand_with_failures(tmp_path):
    records = _answers(preds=["p0", "p1", "p2", "p3", "p4", "p5"], failed=(5,))
    client = Recorded(
        {
            "p0": "{'pred': 'yes', 'score': 5}",
            "p1": "Answer: {'pred': 'yes', 'score': 4.5}",  # counts 4
            "p2": '{"pred": "no", "score": 2}',
            "p3": "{'pred': 'no', 'score': 1}",
            "p4": "I cannot judge this.",  # unreadable: a judge failure, left out
        }
    )
    output = tmp_path / "results.json"
    results = judge.evaluate(_write_answers(tmp_path, records), MODEL, tmp_path / "cache.jsonl", output, client,
                             sleep=lambda s: None, workers=2)  # fmt: skip
    # judged: p0 yes 5, p1 yes 4, p2 no 2, p3 no 1, p5 failed generation -> no 0; p4 left out
    assert (results["n"], results["judged"], results["yes"], results["no"]) == (6, 5, 2, 3)
    assert results["accuracy"] == pytest.approx(100 * 2 / 5) and results["score"] == pytest.approx(
        (5 + 4 + 2 + 1 + 0) / 5
    )
    assert results["generation_failures"] == 1 and results["failures"] == 1
    assert (
        results["failed_items"][0]["question_id"] == "q4"
        and "after 3 attempt(s)" in results["failed_items"][0]["error"]
    )
    assert results["failed_items"][0]["reply"] == "I cannot judge this."
    assert client.calls.count("p4") == 3 and "" not in client.calls  # failed generation never sent to the judge
    assert json.loads(output.read_text()) == results and not list(tmp_path.glob("*.tmp"))
    assert (results["judge_model"], results["subset"], results["temperature"]) == (MODEL, "full", 0.0)
    assert "JUDGE FAILURES: 1" in judge.format_results(results)
    cached = read_jsonl(tmp_path / "cache.jsonl")
    assert sorted(e["pred"] for e in cached) == ["p0", "p1", "p2", "p3"]  # failures are not cached
    assert all(e["judge_model"] == MODEL and e["reply"] for e in cached)


def _write_answers(folder: Path, records: list[dict]) -> Path:
    path = folder / "MSVD_Zero_Shot_QA" / "answers" / "full" / "m" / "none.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_cache_reuse_and_invalidation(tmp_path):
    cache = tmp_path / "cache.jsonl"
    records = _answers(4)
    yes = Recorded({}, default="{'pred': 'yes', 'score': 5}")
    first = judge.aggregate(judge.judge_answers(records, MODEL, cache, yes))
    assert len(yes.calls) == 4 and first["accuracy"] == 100.0

    again = Recorded({})
    assert judge.aggregate(judge.judge_answers(records, MODEL, cache, again)) == first
    assert again.calls == []  # everything from the cache

    records[2]["text"] = "changed"  # a new prediction for one question: only that one is judged again
    changed = Recorded({})
    result = judge.aggregate(judge.judge_answers(records, MODEL, cache, changed))
    assert changed.calls == ["changed"] and result["yes"] == 3 and result["no"] == 1

    records[1]["answer"] = "another ground truth"  # a changed ground truth is a new judgment too
    gt = Recorded({})
    judge.judge_answers(records, MODEL, cache, gt)
    assert gt.calls == ["pred1"]

    other = Recorded({})  # another judge model: nothing of the first judge's is reused
    judge.judge_answers(records, "gpt-4o-2024-11-20", cache, other)
    assert sorted(other.calls) == ["changed", "pred0", "pred1", "pred3"]
    assert Recorded({}).calls == [] and len(read_jsonl(cache)) == 4 + 1 + 1 + 4


def test_cache_entries_of_another_prompt_or_a_tampered_file_are_not_reused(tmp_path):
    cache = tmp_path / "cache.jsonl"
    records = _answers(1)
    judge.judge_answers(records, MODEL, cache, Recorded({}, default="{'pred': 'yes', 'score': 5}"))
    entry = read_jsonl(cache)[0]
    stale = [{**entry, "prompt_id": "old-wording"}, {**entry, "pred": "something else"}]  # same key, other content
    cache.write_text("".join(json.dumps(e) + "\n" for e in stale) + '{"key": "half a li', encoding="utf-8")
    client = Recorded({})
    items = judge.judge_answers(records, MODEL, cache, client)
    assert client.calls == ["pred0"] and items[0]["verdict"] == "no"
    assert len(read_jsonl(cache)) == 3  # the partial last line was cut off, the new judgment appended


def test_retries_are_bounded_and_errors_recorded(tmp_path):
    sleeps = []
    client = Recorded({"pred0": ConnectionError("rate limited"), "pred1": "{'pred': 'yes', 'score': 3}"})
    items = judge.judge_answers(_answers(2), MODEL, tmp_path / "c.jsonl", client, attempts=4, sleep=sleeps.append)
    assert client.calls.count("pred0") == 4 and client.calls.count("pred1") == 1
    assert items[0]["error"] == "judge call failed: ConnectionError: rate limited (after 4 attempt(s))"
    assert sleeps == [2.0, 4.0, 8.0]  # backoff between the attempts, none before the first
    results = judge.aggregate(items)
    assert (results["failures"], results["judged"], results["accuracy"]) == (1, 1, 100.0)


class Flaky:
    """Fails its first call, then says yes."""

    def __init__(self):
        self.calls = 0

    def __call__(self, messages):
        self.calls += 1
        if self.calls == 1:
            raise TimeoutError("timed out")
        return "{'pred': 'yes', 'score': 4}"


def test_a_retry_that_succeeds_counts_once(tmp_path):
    flaky = Flaky()
    items = judge.judge_answers(_answers(1), MODEL, tmp_path / "c.jsonl", flaky, sleep=lambda s: None)
    assert flaky.calls == 2 and items[0]["verdict"] == "yes" and "error" not in items[0]


def test_judge_model_is_required_and_repeated_ids_refused(tmp_path):
    with pytest.raises(SystemExit):
        judge.build_parser().parse_args(["--answers-file", "a", "--cache", "c", "--output", "o"])
    with pytest.raises(ValueError, match="name the judge model"):
        judge.judge_answers(_answers(1), "", tmp_path / "c.jsonl", Recorded({}))
    with pytest.raises(ValueError, match="question_id 'q0' is answered more than once"):
        judge.judge_answers(_answers(1) * 2, MODEL, tmp_path / "c.jsonl", Recorded({}))


def test_default_client_explains_how_to_install_and_set_the_key(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)  # as if not installed
    answers = _write_answers(tmp_path, _answers(1))
    argv = ["--answers-file", str(answers), "--judge-model", MODEL, "--cache", str(tmp_path / "c.jsonl"),
            "--output", str(tmp_path / "r.json"), "--api-key-env", "MY_KEY"]  # fmt: skip
    with pytest.raises(SystemExit, match=r"pip install 'openai>=1', and put the API key in \$MY_KEY"):
        judge.main(argv)
    # everything cached: no client (and no openai package) is needed
    judge.judge_answers(_answers(1), MODEL, tmp_path / "c.jsonl", Recorded({}))
    results = judge.main(argv)
    assert results["judged"] == 1 and results["benchmark"] == "MSVD-QA"


# ---- chunks merged out of order keep their own ground truth ------------------------------------------------------


def test_chunked_answers_merged_out_of_order_keep_their_ground_truth(tmp_path):
    """Two shards answer their chunks, in an order of their own; the merged file is judged by a judge that says
    yes only when the prediction names the question's own ground truth. Positional pairing (the reference bug)
    would mis-pair the second chunk."""
    folder = _benchmark(tmp_path / "TGIF_Zero_Shot_QA", n=7)
    questions = model_video_qa.build_questions(_generator_args(folder))
    answers_file = tmp_path / "answers.jsonl"
    for k in (1, 0):  # the second shard finishes first
        chunk = get_chunk(questions, 2, k)
        path = chunk_path(answers_file, 2, k)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [{**q.record, "text": f"it is {q.record['answer']}"} for q in reversed(chunk)]  # answered backwards
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    merge_chunks(answers_file, 2)
    merged = read_jsonl(answers_file)
    truth = {row["question_id"]: row["answer"] for row in json.loads((folder / "test_a.json").read_text())}
    assert sorted(r["question_id"] for r in merged) == sorted(truth)
    assert all(r["answer"] == truth[r["question_id"]] for r in merged)

    def own_truth(messages):
        user = messages[1]["content"]
        gt = user.split("Correct answer: ", 1)[1].split("\n", 1)[0]
        pred = user.split("Predicted answer: ", 1)[1].split("\n", 1)[0]
        return "{'pred': 'yes', 'score': 5}" if pred == f"it is {gt}" else "{'pred': 'no', 'score': 0}"

    results = judge.evaluate(answers_file, MODEL, tmp_path / "c.jsonl", tmp_path / "r.json", own_truth,
                             benchmark="TGIF-QA")  # fmt: skip
    assert (results["accuracy"], results["score"], results["n"]) == (100.0, 5.0, 7)


# ---- results summary ---------------------------------------------------------------------------------------------


def test_summary_reports_accuracy_and_score_per_judge(tmp_path):
    eval_dir = tmp_path / "eval"
    bench = eval_dir / "GPT_Zero_Shot_QA" / "MSVD_Zero_Shot_QA"
    answers = bench / "answers" / "full" / "Video-LLaVA-7B" / "none.jsonl"
    answers.parent.mkdir(parents=True)
    meta = {"method": "none", "visual_tokens": 2056, "equal_tokens": 2056}
    answers.write_text("".join(json.dumps({**r, "metadata": meta}) + "\n" for r in _answers(2)), encoding="utf-8")
    unjudged = bench / "answers" / "1k" / "Video-LLaVA-7B" / "fastv-1024.jsonl"
    unjudged.parent.mkdir(parents=True)
    unjudged.write_text(json.dumps({**_answers(1)[0], "metadata": meta}) + "\n", encoding="utf-8")
    judge.evaluate(answers, MODEL, tmp_path / "c.jsonl", bench / "results" / "full" / "Video-LLaVA-7B" / "none" /
                   f"{MODEL}.json", Recorded({"pred0": "{'pred': 'yes', 'score': 4}"}))  # fmt: skip

    rows = summarize_results.summarize(eval_dir, tmp_path / "out")
    by_split = {r["split"]: r for r in rows}
    assert set(by_split) == {"full", "1k"} and {r["benchmark"] for r in rows} == {"MSVD_Zero_Shot_QA"}
    full = by_split["full"]
    assert (full["score"], full["gpt_score"], full["note"]) == (50.0, 2.5, f"judge {MODEL}")
    assert full["visual_tokens"] == 2056 and full["answers_count"] == 2
    assert by_split["1k"]["score"] is None and "eval_qa_msvd.sh" in by_split["1k"]["note"]
    assert "| Video-LLaVA-7B | none | 50.00 / 2.50 |" in (tmp_path / "out" / "results.md").read_text()


# ---- scripts: command lines through a stub interpreter (no model, no judge) --------------------------------------

SETTINGS = ("CKPT", "CKPT_NAME", "CONV_MODE", "METHOD", "RETAIN_TOKN", "RETAIN_RATIO", "USE_VERSION", "TAG")
SETTINGS += ("TAG_VARIANT", "SUBSET", "NUM_FRAMES", "REPEAT_SHORT_VIDEOS", "JUDGE_MODEL", "JUDGE_WORKERS")
SETS = {"msvd": "MSVD", "msrvtt": "MSRVTT", "tgif": "TGIF", "activitynet": "Activitynet"}


@pytest.fixture
def eval_dir(tmp_path):
    root = tmp_path / "eval" / "GPT_Zero_Shot_QA"
    for name, folder in SETS.items():
        _benchmark(root / f"{folder}_Zero_Shot_QA", n=2, videos="all_test" if name == "activitynet" else "videos")
    return tmp_path / "eval"


@pytest.fixture
def stub(tmp_path, eval_dir):
    log, python = tmp_path / "calls.log", tmp_path / "python"
    python.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> "{log}"\n')
    python.chmod(0o755)

    def run(script: str, **env):
        log.write_text("")
        full = {k: v for k, v in os.environ.items() if k not in SETTINGS}
        full.update(EVAL_DIR=str(eval_dir), NPROC="1", PYTHON=str(python), **{k: str(v) for k, v in env.items()})
        result = subprocess.run(["bash", str(V15 / script)], env=full, capture_output=True, text=True, cwd=ROOT)
        return result, [_flags(line) for line in log.read_text().splitlines()]

    return run


def _flags(line: str) -> dict:
    words, flags = line.split(), {"module": line.split()[1] if line.startswith("-m ") else None}
    for i, word in enumerate(words):
        if word.startswith("--"):
            flags[word] = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else True
    return flags


@pytest.mark.parametrize("name", list(SETS))
def test_run_script_defaults(stub, eval_dir, name):
    result, calls = stub(f"run_qa_{name}.sh")
    assert result.returncode == 0, result.stderr
    [flags] = calls
    folder = eval_dir / "GPT_Zero_Shot_QA" / f"{SETS[name]}_Zero_Shot_QA"
    assert flags["module"] == "llava.eval.model_video_qa"
    assert flags["--model-path"] == "LanguageBind/Video-LLaVA-7B" and flags["--conv-mode"] == "llava_v1"
    assert flags["--temperature"] == "0" and flags["--num-frames"] == "8" and flags["--subset"] == "full"
    assert flags["--repeat-short-videos"] is True
    assert flags["--video-folder"] == str(folder / ("all_test" if name == "activitynet" else "videos"))
    assert flags["--question-file"] == str(folder / "test_q.json")
    assert flags["--answer-file"] == str(folder / "test_a.json")
    assert flags["--answers-file"] == str(folder / "answers" / "full" / "Video-LLaVA-7B" / "none.jsonl")
    assert f"eval_qa_{name}.sh" in result.stderr


@pytest.mark.parametrize(
    "env, tag, subset_dir",
    [
        ({"METHOD": "fastv", "RETAIN_TOKN": "1024"}, "fastv-1024", "full"),
        ({"RETAIN_TOKN": "135", "SUBSET": "1k"}, "sparsevlm-1_0-135", "1k"),
        ({"NUM_FRAMES": "16", "METHOD": "random", "RETAIN_TOKN": "64"}, "random-f16-64", "full"),
        ({"REPEAT_SHORT_VIDEOS": "0"}, "none-norepeat", "full"),
        ({"TAG": "mine", "CKPT": "/ckpt/Video-LLaVA-7B-local"}, "mine", "full"),
    ],
)
def test_run_script_tags_and_subsets(stub, env, tag, subset_dir):
    result, [flags] = stub("run_qa_msvd.sh", **env)
    assert result.returncode == 0, result.stderr
    model = "Video-LLaVA-7B-local" if "CKPT" in env else "Video-LLaVA-7B"
    assert flags["--answers-file"].endswith(f"/MSVD_Zero_Shot_QA/answers/{subset_dir}/{model}/{tag}.jsonl")
    assert flags["--subset"] == env.get("SUBSET", "full") and flags["--num-frames"] == env.get("NUM_FRAMES", "8")
    assert ("--repeat-short-videos" in flags) == (env.get("REPEAT_SHORT_VIDEOS") != "0")


def test_run_script_uses_the_1k_files_when_present(stub, eval_dir):
    folder = eval_dir / "GPT_Zero_Shot_QA" / "TGIF_Zero_Shot_QA"
    _write(folder / "test_q_1k.json", []), _write(folder / "test_a_1k.json", [])
    _, [flags] = stub("run_qa_tgif.sh", SUBSET="1k")
    assert flags["--question-file"] == str(folder / "test_q_1k.json")
    assert flags["--answer-file"] == str(folder / "test_a_1k.json")


@pytest.mark.parametrize(
    "env, message",
    [
        ({"SUBSET": "2k"}, "SUBSET must be full or 1k"),
        ({"NUM_FRAMES": "eight"}, "NUM_FRAMES must be a positive whole number"),
        ({"REPEAT_SHORT_VIDEOS": "yes"}, "REPEAT_SHORT_VIDEOS must be 0 or 1"),
    ],
)
def test_bad_settings_stop_before_anything_runs(stub, env, message):
    result, calls = stub("run_qa_msrvtt.sh", **env)
    assert result.returncode == 2 and message in result.stderr and calls == []


def test_missing_data_stops_before_a_model_is_loaded(stub, eval_dir):
    (eval_dir / "GPT_Zero_Shot_QA" / "MSVD_Zero_Shot_QA" / "test_a.json").unlink()
    result, calls = stub("run_qa_msvd.sh")
    assert result.returncode == 1 and calls == []
    assert "MSVD_Zero_Shot_QA/test_a.json -- see EVAL.md, section Video-QA" in result.stderr


def test_eval_script_needs_a_judge_model_and_the_answers(stub, eval_dir):
    result, calls = stub("eval_qa_activitynet.sh")
    assert result.returncode == 2 and "Set JUDGE_MODEL" in result.stderr and calls == []
    result, calls = stub("eval_qa_activitynet.sh", JUDGE_MODEL=MODEL)
    assert result.returncode == 1 and "run_qa_activitynet.sh with the same settings" in result.stderr and calls == []

    folder = eval_dir / "GPT_Zero_Shot_QA" / "Activitynet_Zero_Shot_QA"
    answers = folder / "answers" / "1k" / "Video-LLaVA-7B" / "fastv-1024.jsonl"
    answers.parent.mkdir(parents=True)
    answers.write_text("")
    env = {"JUDGE_MODEL": MODEL, "SUBSET": "1k", "METHOD": "fastv", "RETAIN_TOKN": "1024", "JUDGE_WORKERS": "8"}
    result, [flags] = stub("eval_qa_activitynet.sh", **env)
    assert result.returncode == 0, result.stderr
    run = "1k/Video-LLaVA-7B/fastv-1024"
    assert flags["module"] == "llava.eval.eval_video_qa" and flags["--answers-file"] == str(answers)
    assert flags["--judge-model"] == MODEL and flags["--workers"] == "8" and flags["--api-key-env"] == "OPENAI_API_KEY"
    assert flags["--cache"] == str(folder / "reviews" / run / f"{MODEL}.jsonl")
    assert flags["--output"] == str(folder / "results" / run / f"{MODEL}.json")  # where the summary looks
