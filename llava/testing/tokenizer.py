"""A tiny Llama-style tokenizer built with `tokenizers`, saved in the layout of a real LLaVA checkpoint.

It mirrors the LLaMA SentencePiece vocabulary layout (`<unk>`=0, `<s>`=1, `</s>`=2, then the 256 byte-fallback
tokens `<0x00>`..`<0xFF>`, then learned BPE pieces) and the transformers 5 `LlamaTokenizer` pipeline (Metaspace
with a prepended `▁`, byte fallback), so per-chunk tokenization behaves like the real one.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]

# Text the tiny vocabulary is learned from: LLaVA's prompt templates and the words of typical questions.
_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "USER: ASSISTANT: Answer the question using a single word or phrase.",
    "Answer with the option's letter from the given choices directly.",
    "Is there a red circle in the image? Please answer yes or no. What color is the square? How many shapes are there?",
    "Which object is left of the triangle? What is written in the picture? Describe the image in detail.",
    "yes no red green blue yellow white black orange purple gray circle square triangle star left right above below",
    "zero one two three four five six seven eight nine 0 1 2 3 4 5 6 7 8 9 A B C D",
    "the a an of in on is are what where which who how many there this that with and to for it",
]


def build_tokenizer(vocab_size: int = 512, corpus: list[str] | None = None) -> Tokenizer:
    """Train the tiny BPE deterministically on the built-in corpus, then lay the vocabulary out like LLaMA's."""
    alphabet = [chr(c) for c in range(32, 127)] + ["▁"]
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(BYTE_TOKENS),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    trainer_tok.train_from_iterator((_CORPUS + list(corpus or [])) * 4, trainer=trainer)
    learned = json.loads(trainer_tok.to_str())["model"]
    pieces = sorted((i, p) for p, i in learned["vocab"].items() if p not in SPECIAL_TOKENS)
    # Byte tokens are ordinary vocabulary entries (ids 3..258), as in LLaMA, so decoding keeps them.
    vocab = {p: i for i, p in enumerate(SPECIAL_TOKENS + BYTE_TOKENS + [p for _, p in pieces])}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]

    # Inference pipeline of transformers 5's LlamaTokenizer: no split, one leading "▁", BOS prepended.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return tok


def save_tokenizer(
    folder: str | Path,
    vocab_size: int = 512,
    extra_special_tokens: list[str] | None = None,
    corpus: list[str] | None = None,
) -> int:
    """Write `tokenizer.json` + `tokenizer_config.json` + `special_tokens_map.json`; return the vocabulary size."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(vocab_size, corpus)
    added = {}
    for token in extra_special_tokens or []:
        tok.add_special_tokens([token])
        added[str(tok.token_to_id(token))] = {
            "content": token,
            "special": True,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "single_word": False,
        }
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "model_max_length": 2048,
        "padding_side": "right",
    }
    if added:
        config["added_tokens_decoder"] = added
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2)
    )
    return tok.get_vocab_size()
