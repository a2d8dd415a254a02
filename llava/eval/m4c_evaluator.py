"""VQA answer normalisation as EvalAI applies it, and TextVQA's soft accuracy.

`EvalAIAnswerProcessor` reproduces the answer normaliser of the official VQA evaluation as run by EvalAI (and by the
m4c / pythia TextVQA evaluator that LLaVA's `eval_textvqa.py` uses): lower-case, strip, drop commas and question
marks, split off "'s", handle punctuation (with the official rule that a comma between digits, anywhere in the
answer, makes every punctuation mark vanish instead of becoming a space), strip periods not followed by a digit,
turn number words "none".."ten" into digits, drop articles, and restore apostrophes of known contractions.

The official code has two quirks that change results and are kept on purpose (the leaderboards are computed with
them): the period regex's look-behind is mistyped as a look-ahead, so a period after a digit is stripped too when no
digit follows ("5." -> "5"), and `re.UNICODE` is passed as the *count* argument of `sub`, so at most 32 periods
are stripped from one answer.

`TextVQAAccuracyEvaluator` scores a prediction against the 10 human answers: for each of the 10, left out in turn,
the prediction gets min(1, matches among the other 9 / 3); the question's score is the mean of the 10. The benchmark
score is the mean over questions (papers report it x100).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# Contractions written without an apostrophe (and some half-apostrophed forms) -> the canonical form. The keys with
# capitals ("Im", "Ive", "Id've", "I'dve") can never match, since answers are lower-cased first; they are kept
# because the official table has them.
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}

NUMBER_WORDS: dict[str, str] = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}

ARTICLES = frozenset({"a", "an", "the"})

# Marks that are removed (or turned into spaces); the period and the apostrophe are not among them.
PUNCTUATION: tuple[str, ...] = tuple(';/[]"{}()=+\\_-><@`,?!')

# The official pattern reads "(?!<=\d)": a mistyped look-behind that is really a look-ahead for the literal "<=" and
# a digit, so it never blocks a match. Kept as written: a period is stripped unless a digit follows it.
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
# One or more commas between two digits ("1,000").
COMMA_STRIP = re.compile(r"(?<=\d)(,)+(?=\d)")
# The official call is `PERIOD_STRIP.sub("", text, re.UNICODE)`: the flag lands in the `count` slot.
_PERIOD_STRIP_COUNT = int(re.UNICODE)


class EvalAIAnswerProcessor:
    """Normalises a VQA answer the way EvalAI does before comparing it with the human answers."""

    def word_tokenize(self, text: str) -> str:
        text = text.lower()
        text = text.replace(",", "").replace("?", "").replace("'s", " 's")
        return text.strip()

    def process_punctuation(self, text: str) -> str:
        # The test looks at the text as it came in, not at the partly processed one, and the comma-between-digits
        # condition applies to every punctuation mark: both as in the official code.
        has_digit_comma = COMMA_STRIP.search(text) is not None
        out = text
        for mark in PUNCTUATION:
            if mark + " " in text or " " + mark in text or has_digit_comma:
                out = out.replace(mark, "")
            else:
                out = out.replace(mark, " ")
        return PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)

    def process_digit_article(self, text: str) -> str:
        words = []
        for word in text.lower().split():
            word = NUMBER_WORDS.get(word, word)
            if word not in ARTICLES:
                words.append(word)
        return " ".join(CONTRACTIONS.get(word, word) for word in words)

    def __call__(self, answer: str) -> str:
        answer = self.word_tokenize(answer)
        answer = answer.replace("\n", " ").replace("\t", " ").strip()
        answer = self.process_punctuation(answer)
        return self.process_digit_article(answer)


class TextVQAAccuracyEvaluator:
    """TextVQA / VQA soft accuracy with leave-one-out averaging over the human answers."""

    def __init__(self, answer_processor: EvalAIAnswerProcessor | None = None) -> None:
        self.answer_processor = answer_processor or EvalAIAnswerProcessor()

    def answer_scores(self, gt_answers: Sequence[str]) -> dict[str, float]:
        """Score of every distinct (normalised) human answer; any other prediction scores 0."""
        if len(gt_answers) < 2:
            raise ValueError(f"soft accuracy needs several human answers (TextVQA has 10), got {len(gt_answers)}")
        answers = [self.answer_processor(a) for a in gt_answers]
        scores = {}
        for candidate in set(answers):
            total = 0.0
            for left_out in range(len(answers)):
                matches = sum(1 for i, a in enumerate(answers) if i != left_out and a == candidate)
                total += min(1.0, matches / 3)
            scores[candidate] = total / len(answers)
        return scores

    def score(self, prediction: str, gt_answers: Sequence[str]) -> float:
        """Soft accuracy of one prediction, in [0, 1]."""
        return self.answer_scores(gt_answers).get(self.answer_processor(prediction), 0.0)

    def eval_pred_list(self, pred_list: Iterable[dict]) -> float:
        """Mean soft accuracy over entries `{"pred_answer": str, "gt_answers": [str, ...]}`, in [0, 1]."""
        scores = [self.score(entry["pred_answer"], entry["gt_answers"]) for entry in pred_list]
        if not scores:
            raise ValueError("no predictions to score")
        return sum(scores) / len(scores)
