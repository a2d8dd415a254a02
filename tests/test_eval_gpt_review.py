import json

import pytest

from llava.eval import summarize_gpt_review as review
from llava.eval.summarize_gpt_review import parse_score_pair, review_scores

RUN1 = [
    {"question_id": 0, "category": "llava_bench_conv", "content": "ignored", "tuple": [8, 6]},
    {"question_id": 1, "category": "llava_bench_conv", "tuple": [10.0, 7.0]},
    {"question_id": 2, "category": "llava_bench_detail", "scores": [6, 3]},
    {"question_id": 3, "category": "llava_bench_detail", "content": "8, 6\nAssistant 1 is more detailed."},
    {"question_id": 4, "category": "llava_bench_complex", "content": "7 7\nBoth fine."},
    {"question_id": 5, "category": "llava_bench_complex", "content": "error", "tuple": [-1, -1]},  # unparsed
    {"question_id": 6, "category": "llava_bench_complex", "error": "rate limited"},  # failed judge call
]
RUN2 = [
    {"question_id": 0, "category": "llava_bench_conv", "tuple": [10, 10]},
    {"question_id": 1, "category": "llava_bench_conv", "tuple": [10, 5]},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("8 7", (8.0, 7.0)),
        ("8,7\nbecause", (8.0, 7.0)),
        ("9.5  6\n", (9.5, 6.0)),
        ("8 7 6", None),
        ("Score: 8", None),
        ("", None),
    ],
)
def test_parse_score_pair(content, expected):
    assert parse_score_pair(content) == expected


def test_review_scores_prefers_tuple_then_scores_then_content():
    assert review_scores({"tuple": [1, 2], "scores": [3, 4], "content": "5 6"}) == (1.0, 2.0)
    assert review_scores({"scores": [3, 4], "content": "5 6"}) == (3.0, 4.0)
    assert review_scores({"content": "5 6"}) == (5.0, 6.0)
    assert review_scores({"tuple": [-1, -1]}) is None
    assert review_scores({"tuple": "87"}) is None


def test_relative_score_by_hand():
    s = review.summarize_reviews(RUN1)
    conv, detail, complex_ = (s["categories"][f"llava_bench_{c}"] for c in ("conv", "detail", "complex"))
    # conv: gpt4 (8 + 10) / 2 = 9, model (6 + 7) / 2 = 6.5
    assert (conv["gpt4_mean"], conv["model_mean"], conv["n"]) == (9.0, 6.5, 2)
    assert conv["relative"] == pytest.approx(650 / 9)
    # detail: gpt4 (6 + 8) / 2 = 7, model (3 + 6) / 2 = 4.5
    assert detail["relative"] == pytest.approx(450 / 7)
    # complex: only "7 7" is readable
    assert (complex_["relative"], complex_["n"]) == (pytest.approx(100.0), 1)
    # overall pools the reviews: gpt4 39 / 5 = 7.8, model 29 / 5 = 5.8
    assert s["overall"]["gpt4_mean"] == pytest.approx(7.8)
    assert s["overall"]["model_mean"] == pytest.approx(5.8)
    assert s["reported"] == pytest.approx(580 / 7.8)  # 74.36
    assert s["failed"] == 2


def test_mean_over_judge_runs(tmp_path):
    f1, f2 = write_jsonl(tmp_path / "run1.jsonl", RUN1), write_jsonl(tmp_path / "run2.jsonl", RUN2)
    result = review.summarize_files([f1, f2])
    # run 2: gpt4 10, model 7.5 -> 75
    assert result["runs"][1]["reported"] == pytest.approx(75.0)
    assert result["reported"] == pytest.approx((580 / 7.8 + 75.0) / 2)  # 74.68
    assert result["mean"]["llava_bench_conv"] == pytest.approx((650 / 9 + 75.0) / 2)
    assert result["mean"]["llava_bench_detail"] == pytest.approx(450 / 7)  # only run 1 has it
    assert result["failed"] == 2


def test_main_with_files_and_with_a_folder(tmp_path, capsys):
    folder = tmp_path / "reviews"
    folder.mkdir()
    write_jsonl(folder / "run1.jsonl", RUN1)
    write_jsonl(folder / "run2.jsonl", RUN2)
    result = review.main(["-f", str(folder / "run1.jsonl"), str(folder / "run2.jsonl")])
    out = capsys.readouterr().out
    assert "mean over 2 runs" in out
    assert "reported (overall relative score, mean over 2 run(s)): 74.7" in out
    assert review.main(["-d", str(folder)])["reported"] == pytest.approx(result["reported"])


def test_missing_review_file_names_path_and_section(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl.*EVAL\.md, section LLaVA-Bench"):
        review.summarize_files([tmp_path / "nope.jsonl"])


def test_no_readable_review_is_an_error():
    with pytest.raises(ValueError, match="no review with readable scores"):
        review.summarize_reviews([{"category": "c", "content": "I cannot judge."}])
