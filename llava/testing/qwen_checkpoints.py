"""Tiny random Qwen2-VL / Qwen2.5-VL checkpoints written in the real Hub on-disk format, for tests and offline demos.

`write_tiny_qwen_vl` builds the model with transformers' own `Qwen2VLForConditionalGeneration` /
`Qwen2_5_VLForConditionalGeneration` from a tiny config and writes a folder laid out like `Qwen/Qwen2-VL-7B-Instruct`
and `Qwen/Qwen2.5-VL-7B-Instruct`: a flat `config.json` (text fields at the top level, `vision_config`,
`rope_scaling: {"type": "mrope", ...}`), two safetensors shards + `model.safetensors.index.json` under the legacy key
layout (`visual.*`, `model.*` for the text model, `lm_head.weight`), a byte-level BPE tokenizer (`Qwen2Tokenizer`)
with Qwen's special tokens placed right after a small vocabulary and Qwen2-VL-Instruct's chat template,
`preprocessor_config.json` for `Qwen2VLImageProcessor`, `chat_template.json` and `generation_config.json`.

Using such a folder with transformers 5 (no torchvision): `AutoImageProcessor.from_pretrained(folder)` gives
`Qwen2VLImageProcessorPil`; `AutoProcessor` cannot be built. Expand the one `<|image_pad|>` of the chat template to
`image_grid_thw.prod() // 4` copies and pass `mm_token_type_ids` (1 on image tokens, 2 on video tokens, else 0) with
`input_ids`: Qwen2-VL raises without it and Qwen2.5-VL silently falls back to 1D positions instead of M-RoPE.
`vocab_size` is padded to a multiple of 64 (the Hub's is padded too), so the model can emit ids the tokenizer lacks.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from llava.testing.checkpoints import _default_dtype, _save_shards

FAMILIES = ("qwen2_5_vl", "qwen2_vl")

# Special tokens in the Hub tokenizers' order (ids 151643.. there; `bpe_size`.. here).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen2.5's tokenizer adds these as ordinary (non-special) added tokens after the special ones.
QWEN2_5_ADDED_TOKENS = [
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]

# The Jinja chat template of Qwen2-VL-7B-Instruct / Qwen2.5-VL-7B-Instruct (tokenizer_config.json, chat_template.json).
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The pre-tokenization regex of Qwen2's tokenizer (tokenizer.json's Split pre-tokenizer).
_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Text the tiny byte-level BPE is learned from: the chat template's text and the words of typical questions.
_CORPUS = [
    "system\nYou are a helpful assistant.\nuser\nassistant\n",
    "Answer the question using a single word or phrase.",
    "Answer with the option's letter from the given choices directly.",
    "Is there a red circle in the image? Please answer yes or no. What color is the square? How many shapes are there?",
    "Which object is left of the triangle? What is written in the picture? Describe the image in detail.",
    "yes no Yes No red green blue yellow white black orange purple gray circle square triangle star left right above",
    "zero one two three four five six seven eight nine 0 1 2 3 4 5 6 7 8 9 A B C D",
    "the a an of in on is are what where which who how many there this that with and to for it What?",
    "Picture 1: Video 1: The image shows a small dog sitting next to a large table, under the window.",
    "Please describe this photo briefly. Read the text and count the objects from top to bottom.",
]

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def build_qwen_tokenizer(bpe_size: int = 512, family: str = "qwen2_5_vl") -> Tokenizer:
    """A byte-level BPE with Qwen2's pipeline (NFC, regex split + ByteLevel, ByteLevel decoder), learned on a tiny
    corpus; Qwen's special tokens get ids `bpe_size`, `bpe_size + 1`, ... in the Hub order."""

    def pipeline(tok: Tokenizer) -> Tokenizer:
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        return tok

    trainer_tok = pipeline(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    trainer_tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    learned = json.loads(trainer_tok.to_str())["model"]
    if len(learned["vocab"]) != bpe_size:
        raise ValueError(f"the corpus only yields {len(learned['vocab'])} BPE pieces, fewer than {bpe_size}")
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    tok = pipeline(
        Tokenizer(
            models.BPE(
                vocab=learned["vocab"],
                merges=merges,
                continuing_subword_prefix="",
                end_of_word_suffix="",
                fuse_unk=False,
                byte_fallback=False,
            )
        )
    )
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS])
    if family == "qwen2_5_vl":
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN2_5_ADDED_TOKENS])
    return tok


def save_qwen_tokenizer(folder: str | Path, family: str = "qwen2_5_vl", bpe_size: int = 512) -> dict[str, int]:
    """Write `tokenizer.json`, `vocab.json`, `merges.txt` and `tokenizer_config.json` (with the chat template) as on
    the Hub; return the ids of the added tokens."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_qwen_tokenizer(bpe_size, family)
    tok.save(str(folder / "tokenizer.json"))
    model = json.loads(tok.to_str())["model"]
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")

    added = QWEN_SPECIAL_TOKENS + (QWEN2_5_ADDED_TOKENS if family == "qwen2_5_vl" else [])
    ids = {token: tok.token_to_id(token) for token in added}
    decoder = {
        str(ids[token]): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": token in QWEN_SPECIAL_TOKENS,
        }
        for token in added
    }
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": QWEN_SPECIAL_TOKENS[1:],
        "bos_token": None,
        "chat_template": QWEN_VL_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return ids


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim / 2 rotary frequencies over (t, h, w) like the Hub's [16, 24, 24] for head_dim 128."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def _hub_config(
    family: str,
    ids: dict[str, int],
    vocab_size: int,
    num_layers: int,
    hidden_size: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
    vision_depth: int,
    vision_hidden: int,
    vision_heads: int,
    dtype: torch.dtype,
    tie_word_embeddings: bool,
    vision_intermediate: int | None = None,
) -> dict:
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
    head_dim = hidden_size // num_heads
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"head_dim {head_dim} must be even and at least 6 for the 3-way mrope split")
    if family == "qwen2_5_vl":
        vision = {
            "depth": vision_depth,
            "hidden_act": "silu",
            "hidden_size": vision_hidden,
            "intermediate_size": vision_intermediate or 2 * vision_hidden,
            "num_heads": vision_heads,
            "in_chans": 3,
            "out_hidden_size": hidden_size,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "window_size": 112,
            # Full attention in every 8th block from the 8th, [7, 15, 23, 31] as in the real depth 32; every other
            # block below depth 8, so that tiny towers have both kinds.
            "fullatt_block_indexes": list(
                range(7, vision_depth, 8) if vision_depth >= 8 else range(1, vision_depth, 2)
            ),
            "tokens_per_second": 2,
            "temporal_patch_size": 2,
        }
    else:
        vision = {
            "depth": vision_depth,
            "embed_dim": vision_hidden,
            "mlp_ratio": 4,
            "num_heads": vision_heads,
            "in_chans": 3,
            "hidden_size": hidden_size,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "temporal_patch_size": 2,
        }
    return {
        "architectures": [
            "Qwen2_5_VLForConditionalGeneration" if family == "qwen2_5_vl" else "Qwen2VLForConditionalGeneration"
        ],
        "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": 128000 if family == "qwen2_5_vl" else 32768,
        "max_window_layers": num_layers,
        "model_type": family,
        "num_attention_heads": num_heads,
        "num_hidden_layers": num_layers,
        "num_key_value_heads": num_kv_heads,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": tie_word_embeddings,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "transformers_version": "4.41.2",
        "use_cache": True,
        "use_sliding_window": False,
        "vision_config": vision,
        "rope_scaling": {"type": "mrope", "mrope_section": _mrope_section(head_dim)},
        "vocab_size": vocab_size,
    }


def _legacy_name(name: str) -> str:
    """transformers-5 module name -> the Hub checkpoints' key (the reverse of its qwen2_vl conversion mapping)."""
    if name.startswith("model.visual."):
        return name.removeprefix("model.")
    if name.startswith("model.language_model."):
        return "model." + name.removeprefix("model.language_model.")
    return name


def write_tiny_qwen_vl(
    folder: str | Path,
    family: str = "qwen2_5_vl",
    seed: int = 0,
    num_layers: int = 4,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vision_depth: int = 4,
    vision_hidden: int = 32,
    vision_heads: int = 4,
    dtype: torch.dtype = torch.float32,
    tie_word_embeddings: bool = False,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    vocab_size: int | None = None,
    vision_intermediate: int | None = None,
    num_shards: int = 2,
) -> Path:
    """A random Qwen2.5-VL (`family="qwen2_5_vl"`) or Qwen2-VL (`"qwen2_vl"`) checkpoint folder in the Hub's format;
    returns the folder. It loads with transformers' `*ForConditionalGeneration.from_pretrained` (no missing or
    unexpected keys), `AutoTokenizer` and `Qwen2VLImageProcessorPil` / `AutoImageProcessor(..., use_fast=False)`.
    `vocab_size` (default: the tiny tokenizer's, rounded up to 64) and `vision_intermediate` give real-size shapes
    (152,064 and 3,420 for Qwen2.5-VL-7B) to benchmarks; the tokenizer stays the tiny one."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids = save_qwen_tokenizer(folder, family)
    minimal = -(-(max(ids.values()) + 1) // 64) * 64
    if vocab_size is not None and vocab_size < minimal:
        raise ValueError(f"vocab_size {vocab_size} is below the tokenizer's {minimal}")
    vocab_size = vocab_size or minimal
    config = _hub_config(
        family,
        ids,
        vocab_size,
        num_layers,
        hidden_size,
        num_heads,
        num_kv_heads,
        intermediate_size,
        vision_depth,
        vision_hidden,
        vision_heads,
        dtype,
        tie_word_embeddings,
        vision_intermediate,
    )
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig as Config
        from transformers import Qwen2_5_VLForConditionalGeneration as Model
    else:
        from transformers import Qwen2VLConfig as Config
        from transformers import Qwen2VLForConditionalGeneration as Model

    torch.manual_seed(seed)
    with _default_dtype(dtype):
        model = Model(Config(**json.loads(json.dumps(config))))
    with torch.no_grad():  # sharper attention, so that answers depend on the prompt and the image
        for layer in model.model.language_model.layers:
            layer.self_attn.q_proj.weight.mul_(4.0)
            layer.self_attn.k_proj.weight.mul_(4.0)
    state = {_legacy_name(k): v for k, v in model.state_dict().items()}
    if tie_word_embeddings:
        state.pop("lm_head.weight", None)
    _save_shards(state, folder, num_shards=num_shards, safetensors=True)

    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(
        json.dumps(
            {
                "bos_token_id": ids["<|endoftext|>"],
                "pad_token_id": ids["<|endoftext|>"],
                "do_sample": True,
                "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
                "repetition_penalty": 1.05,
                "temperature": 0.1,
                "top_p": 0.001,
                "top_k": 1,
                "transformers_version": "4.37.0",
            },
            indent=2,
        )
    )
    processor_class = "Qwen2_5_VLProcessor" if family == "qwen2_5_vl" else "Qwen2VLProcessor"
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "min_pixels": 3136 if min_pixels is None else min_pixels,
                "max_pixels": 12845056 if max_pixels is None else max_pixels,
                "patch_size": 14,
                "temporal_patch_size": 2,
                "merge_size": 2,
                "image_mean": OPENAI_CLIP_MEAN,
                "image_std": OPENAI_CLIP_STD,
                "image_processor_type": "Qwen2VLImageProcessor",
                "processor_class": processor_class,
            },
            indent=2,
        )
    )
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": QWEN_VL_CHAT_TEMPLATE}, indent=2))
    return folder
