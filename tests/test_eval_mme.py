import json

import pytest

from llava.eval import eval_mme
from llava.eval.eval_mme import MMERow, parse_yes_no, prompt_candidates

SUFFIX = "\nAnswer the question using a single word or phrase."
YN = " Please answer yes or no."

# category -> (nested images/ + questions_answers_YN/ layout?, {image: [(question, gt), (question, gt)]})
BENCHMARK = {
    "existence": (
        False,
        {
            "000001.jpg": [("Is there a dog in this image?" + YN, "Yes"), ("Is there a cat in this image?" + YN, "No")],
            # the second ground-truth line has the double space some MME files have
            "000002.jpg": [("Is there a car in this image?  Please answer yes or no.", "Yes"),
                           ("Is there a bus in this image?" + YN, "No")],
        },
    ),
    "artwork": (
        True,
        {
            "10002.jpg": [("Is this artwork created by Monet?" + YN, "Yes"), ("Is this artwork by Dali?" + YN, "No")],
            "10049.jpg": [("Is this artwork a portrait?" + YN, "Yes"), ("Is this artwork a sculpture?" + YN, "No")],
        },
    ),
    "code_reasoning": (
        False,
        {"0001.png": [("Is the output 3?" + YN, "Yes"), ("Is the output 4?" + YN, "No")]},
    ),
}  # fmt: skip

# (category, image, question index) -> model output, in question order
PREDICTIONS = [
    ("existence", "000001.jpg", 0, "Yes"),  # right
    ("existence", "000001.jpg", 1, "No"),  # right            -> image 1 both right
    ("existence", "000002.jpg", 0, "Yes, there is."),  # right (prefix rule)
    ("existence", "000002.jpg", 1, "yes"),  # wrong            -> existence acc 3/4, acc+ 1/2: 75 + 50 = 125
    ("artwork", "10002.jpg", 0, "No"),  # wrong
    ("artwork", "10002.jpg", 1, "No"),  # right
    ("artwork", "10049.jpg", 0, None),  # failed answer: wrong
    ("artwork", "10049.jpg", 1, "no"),  # right            -> artwork acc 2/4, acc+ 0: 50
    ("code_reasoning", "0001.png", 0, "Yes"),
    ("code_reasoning", "0001.png", 1, "NO"),  # both right      -> 100 + 100 = 200
]


def write_benchmark(root):
    bench = root / "MME_Benchmark_release_version"
    for category, (nested, images) in BENCHMARK.items():
        image_dir = bench / category / "images" if nested else bench / category
        qa_dir = bench / category / "questions_answers_YN" if nested else bench / category
        image_dir.mkdir(parents=True, exist_ok=True)
        qa_dir.mkdir(parents=True, exist_ok=True)
        for image, qas in images.items():
            (image_dir / image).write_bytes(b"not really an image")
            stem = image.rsplit(".", 1)[0]
            (qa_dir / f"{stem}.txt").write_text("".join(f"{q}\t{a}\n" for q, a in qas), encoding="utf-8")
    return bench


def llava_prompt(mme_question: str) -> str:
    """What llava_mme.jsonl holds: "Please answer yes or no." replaced by the short-answer suffix."""
    return mme_question.replace("  Please answer yes or no.", "").replace(YN, "") + SUFFIX


def answer_records(predictions=PREDICTIONS):
    records = []
    for category, image, index, text in predictions:
        nested = BENCHMARK[category][0]
        question_id = f"{category}/images/{image}" if nested else f"{category}/{image}"
        record = {"question_id": question_id, "prompt": llava_prompt(BENCHMARK[category][1][image][index][0])}
        record["text"] = "" if text is None else text
        if text is None:
            record["error"] = "image could not be read"
        records.append(record)
    return records


@pytest.fixture
def mme_dir(tmp_path):
    root = tmp_path / "MME"
    write_benchmark(root)
    (root / "answers").mkdir()
    with (root / "answers" / "exp.jsonl").open("w") as f:
        for record in answer_records():
            f.write(json.dumps(record) + "\n")
    return root


def test_prompt_candidates_remove_suffix_and_offer_double_space_fallback():
    assert prompt_candidates("Is there a dog in this image?" + SUFFIX) == [
        "Is there a dog in this image? Please answer yes or no.",
        "Is there a dog in this image?  Please answer yes or no.",
    ]
    # a prompt that still has the MME sentence is looked up as it is
    assert prompt_candidates("Is it red? Please answer yes or no.") == ["Is it red? Please answer yes or no."]


@pytest.mark.parametrize(
    "pred, label",
    [
        ("yes", "yes"),
        ("No", "no"),
        ("Yes, there is a dog.", "yes"),
        ("No.", "no"),
        ("Nope", "no"),  # "no" inside the first 4 characters
        ("There is no dog", "other"),  # "no" only after the first 4 characters
        ("I think yes", "other"),
        ("Y", "other"),
        ("", "other"),
        ("no, yes", "no"),
        ("yesno", "yes"),  # "yes" is checked first
    ],
)
def test_yes_no_parsing_follows_the_official_rule(pred, label):
    assert parse_yes_no(pred) == label


def test_ground_truth_reads_both_layouts(mme_dir):
    gt = eval_mme.load_ground_truth(mme_dir / "MME_Benchmark_release_version")
    assert gt[("existence", "000002.txt", "Is there a car in this image?  Please answer yes or no.")] == "Yes"
    assert gt[("artwork", "10049.txt", "Is this artwork a sculpture? Please answer yes or no.")] == "No"
    assert len(gt) == 10


def test_conversion_writes_official_rows_with_double_space_fallback(mme_dir):
    out = mme_dir / "eval_tool" / "answers" / "exp"
    eval_mme.evaluate(mme_dir, mme_dir / "answers" / "exp.jsonl", out)
    assert sorted(p.name for p in out.iterdir()) == ["artwork.txt", "code_reasoning.txt", "existence.txt"]
    lines = (out / "existence.txt").read_text().splitlines()
    assert lines[0] == "000001.txt\tIs there a dog in this image? Please answer yes or no.\tYes\tYes"
    assert lines[2] == "000002.txt\tIs there a car in this image?  Please answer yes or no.\tYes\tYes, there is."
    # the failed answer is written with an empty prediction
    assert (out / "artwork.txt").read_text().splitlines()[2] == (
        "10049.txt\tIs this artwork a portrait? Please answer yes or no.\tYes\t"
    )


def test_scores_acc_plus_and_perception_cognition_split(mme_dir):
    metrics = eval_mme.evaluate(mme_dir, mme_dir / "answers" / "exp.jsonl")
    existence, artwork, code = (metrics["tasks"][t] for t in ("existence", "artwork", "code_reasoning"))
    assert existence["acc"] == pytest.approx(75.0)
    assert existence["acc_plus"] == pytest.approx(50.0)
    assert existence["score"] == pytest.approx(125.0)
    assert artwork["score"] == pytest.approx(50.0)
    assert artwork["other"] == 1
    assert code["score"] == pytest.approx(200.0)
    assert metrics["perception"] == pytest.approx(175.0)
    assert metrics["cognition"] == pytest.approx(200.0)
    assert metrics["total"] == pytest.approx(375.0)
    assert metrics["reported"] == pytest.approx(175.0)
    assert metrics["failed"] == 1
    assert metrics["questions"] == 10
    assert "OCR" in metrics["missing_tasks"] and "existence" not in metrics["missing_tasks"]


def test_main_runs_both_steps_and_calculation_alone(mme_dir, capsys):
    metrics = eval_mme.main(["--data-dir", str(mme_dir), "--experiment", "exp"])
    assert metrics["reported"] == pytest.approx(175.0)
    assert (mme_dir / "eval_tool" / "answers" / "exp" / "existence.txt").is_file()
    printed = capsys.readouterr().out
    assert "Reported (MME Perception, as LLaVA-1.5): 175.00" in printed
    again = eval_mme.main(["--results-dir", str(mme_dir / "eval_tool" / "answers" / "exp")])
    assert again["perception"] == pytest.approx(175.0)
    assert again["cognition"] == pytest.approx(200.0)
    assert again["failed"] is None  # unknown from converted files


def test_answers_out_of_question_order_are_refused():
    rows = [
        MMERow("a.txt", "q1", "Yes", "yes"),
        MMERow("b.txt", "q2", "No", "no"),
        MMERow("a.txt", "q3", "No", "no"),
        MMERow("b.txt", "q4", "Yes", "yes"),
    ]
    with pytest.raises(ValueError, match="question order"):
        eval_mme.score_mme({"existence": rows})


def test_unknown_prompt_names_the_question(mme_dir):
    gt = eval_mme.load_ground_truth(mme_dir / "MME_Benchmark_release_version")
    record = {"question_id": "existence/000001.jpg", "prompt": "Is there a horse?" + SUFFIX, "text": "Yes"}
    with pytest.raises(ValueError, match="existence/000001.jpg"):
        eval_mme.convert_answers([record], gt)


def test_missing_benchmark_folder_points_to_eval_md(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="EVAL.md, section MME"):
        eval_mme.load_ground_truth(tmp_path / "nowhere")
    with pytest.raises(SystemExit):
        eval_mme.main(["--data-dir", str(tmp_path), "--experiment", "exp"])
    assert "MME_Benchmark_release_version" in capsys.readouterr().err
