"""POPE scorer: parsing rule, confusion matrix on hand-made files, and the published LLaVA-1.5-13B figure."""

import json
from pathlib import Path

import pytest

from llava.eval import eval_pope
from llava.eval.eval_pope import parse_yes_no, pope_metrics, score_pope

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
SUFFIX = "\nAnswer the question using a single word or phrase."


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "text, expected",
    [
        ("No, there is not.", "no"),
        ("Yes", "yes"),
        ("There is no dog", "no"),
        ("No", "no"),
        ("no, it is not", "no"),
        ("The dog is not there", "no"),
        ("Yes. There is no dog.", "yes"),  # only the first sentence counts
        ("Yes, no doubt", "no"),  # commas dropped, then "no" is a word
        ("Nothing", "yes"),  # whole words only
        ("Not really", "yes"),  # "Not" (capital) is not one of No / not / no: LLaVA's rule as written
        ("", "yes"),
    ],
)
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) == expected


def test_pope_metrics_by_hand():
    # TP = 2 (1, 2), FN = 1 (3), TN = 2 (4, 6), FP = 1 (5)
    m = pope_metrics(["yes", "yes", "no", "no", "yes", "no"], ["yes", "yes", "yes", "no", "no", "no"])
    assert (m["TP"], m["FP"], m["TN"], m["FN"]) == (2, 1, 2, 1)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(3 / 6)


def test_pope_metrics_no_positive_predictions_gives_zero_not_an_error():
    m = pope_metrics(["no", "no"], ["yes", "no"])
    assert (m["precision"], m["recall"], m["f1"], m["yes_ratio"]) == (0.0, 0.0, 0.0, 0.0)


# Three splits; the question file interleaves them and the answer file is in another order, so the scorer must
# match answers by question_id and pair each split's questions with its label lines by position.
SPLIT_DATA = {
    # labels, answer texts
    "adversarial": (["yes", "yes", "yes", "no", "no", "no"], ["Yes", "Yes.", "No, there is none.", "No", "Yes", "no"]),
    "popular": (["yes", "yes", "no", "no"], ["Yes", "Yes", "There is no cat", "No"]),
    "random": (["yes", "no", "yes", "no"], ["No", "No", "not at all", "No"]),
}


def make_pope(root: Path, answer_overrides: dict | None = None) -> tuple[Path, Path, Path]:
    per_split, answers, qid = {}, [], 0
    labels = {}
    for split, (split_labels, texts) in SPLIT_DATA.items():
        labels[split] = []
        questions = per_split[split] = []
        for i, (label, text) in enumerate(zip(split_labels, texts, strict=True)):
            qid += 1
            image, obj = f"COCO_{split}_{i // 2}.jpg", f"thing{i}"
            questions.append(
                {
                    "question_id": qid,
                    "image": image,
                    "text": f"Is there a {obj} in the image?" + SUFFIX,
                    "category": split,
                }
            )
            labels[split].append(
                {"question_id": i + 1, "image": image, "text": f"Is there a {obj} in the image?", "label": label}
            )
            answers.append({"question_id": qid, "prompt": questions[-1]["text"], "text": text})
    # interleave the splits in the question file (round robin), keeping each split's own order
    queues = list(per_split.values())
    questions = [queue[i] for i in range(max(map(len, queues))) for queue in queues if i < len(queue)]
    for a in answers:
        a.update((answer_overrides or {}).get(a["question_id"], {}))
    answers = answers[::-1]
    for split, rows in labels.items():
        write_jsonl(root / "coco" / f"coco_pope_{split}.json", rows)
    return (
        root / "coco",
        write_jsonl(root / "llava_pope_test.jsonl", questions),
        write_jsonl(root / "answers.jsonl", answers),
    )


def run_main(coco: Path, questions: Path, answers: Path) -> dict:
    return eval_pope.main(
        ["--annotation-dir", str(coco), "--question-file", str(questions), "--result-file", str(answers)]
    )


def test_known_confusion_matrices_and_mean_f1(tmp_path, capsys):
    metrics = run_main(*make_pope(tmp_path))
    adv, pop, rnd = (metrics["splits"][s] for s in ("adversarial", "popular", "random"))
    assert (adv["TP"], adv["FP"], adv["TN"], adv["FN"]) == (2, 1, 2, 1)
    assert adv["f1"] == pytest.approx(2 / 3)
    assert (pop["TP"], pop["FP"], pop["TN"], pop["FN"]) == (2, 0, 2, 0)
    assert pop["f1"] == pytest.approx(1.0)
    assert (rnd["TP"], rnd["FP"], rnd["TN"], rnd["FN"]) == (0, 0, 2, 2)
    assert rnd["f1"] == 0.0 and rnd["accuracy"] == pytest.approx(0.5)
    assert metrics["reported"] == pytest.approx(100 * (2 / 3 + 1 + 0) / 3)
    assert metrics["failed"] == 0 and metrics["samples"] == 14
    out = capsys.readouterr().out
    assert "adversarial" in out and "55.56" in out


def test_failed_answers_count_as_wrong(tmp_path):
    # popular split: question 7 (label yes) and 9 (label no) fail; their text would otherwise be right
    failed = {7: {"text": "", "error": "image unreadable"}, 9: {"text": "", "error": "image unreadable"}}
    metrics = run_main(*make_pope(tmp_path, failed))
    pop = metrics["splits"]["popular"]
    assert (pop["TP"], pop["FP"], pop["TN"], pop["FN"]) == (1, 1, 1, 1)
    assert metrics["failed"] == 2


def test_labels_of_another_pope_version_are_refused(tmp_path):
    coco, questions, answers = make_pope(tmp_path)
    rows = [json.loads(line) for line in (coco / "coco_pope_random.json").read_text().splitlines()]
    write_jsonl(coco / "coco_pope_random.json", rows + rows[:1])
    with pytest.raises(SystemExit, match="e3e3926"):
        run_main(coco, questions, answers)


def test_pairing_is_checked_against_the_label_text(tmp_path):
    coco, questions, answers = make_pope(tmp_path)
    rows = [json.loads(line) for line in (coco / "coco_pope_popular.json").read_text().splitlines()]
    rows[0]["text"], rows[1]["text"] = rows[1]["text"], rows[0]["text"]
    write_jsonl(coco / "coco_pope_popular.json", rows)
    with pytest.raises(SystemExit, match="line 1"):
        run_main(coco, questions, answers)


def test_unanswered_questions_are_an_error(tmp_path):
    coco, questions, answers = make_pope(tmp_path)
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    write_jsonl(answers, rows[1:])
    with pytest.raises(SystemExit, match="no answer"):
        run_main(coco, questions, answers)


def test_missing_label_file_names_path_and_section(tmp_path):
    coco, questions, answers = make_pope(tmp_path)
    (coco / "coco_pope_random.json").unlink()
    with pytest.raises(SystemExit, match=r"coco_pope_random\.json.*EVAL\.md, section POPE"):
        run_main(coco, questions, answers)


def test_score_pope_pure_function():
    questions = [{"question_id": q, "text": "Q", "category": "random"} for q in ("a", "b")]
    answers = [{"question_id": "b", "text": "No"}, {"question_id": "a", "text": "Yes"}]
    metrics = score_pope(questions, answers, {"random": [{"label": "yes"}, {"label": "yes"}]})
    assert metrics["splits"]["random"]["TP"] == 1 and metrics["splits"]["random"]["FN"] == 1
    assert metrics["reported"] == pytest.approx(100 * 2 / 3)  # precision 1, recall 1/2


def test_published_llava_v15_13b_figure():
    pope = FIXTURES / "pope"
    if not (pope / "answers" / "llava-v1.5-13b.jsonl").is_file():
        pytest.skip(f"POPE fixtures not found under {pope}")
    metrics = run_main(pope / "coco", pope / "llava_pope_test.jsonl", pope / "answers" / "llava-v1.5-13b.jsonl")
    assert {s: m["n"] for s, m in metrics["splits"].items()} == {"adversarial": 3000, "popular": 3000, "random": 2910}
    assert metrics["failed"] == 0
    assert round(metrics["reported"], 1) == 85.9  # LLaVA model zoo, LLaVA-1.5-13B POPE
