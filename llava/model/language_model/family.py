"""Decoder families: which transformers modules a text config's layers, final norm and rotary table are.

The decoder loop (`decoder.DecoderLoop`) is shared; a family only names transformers' own classes. Mistral is a
Llama with grouped-query attention and an optional sliding window, which our loop does not apply: a prompt longer
than the window is refused (`check_sequence_length`) instead of being attended differently from the reference.
"""

from __future__ import annotations

import dataclasses

from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding
from transformers.models.mistral.modeling_mistral import (
    MistralDecoderLayer,
    MistralRMSNorm,
    MistralRotaryEmbedding,
)


@dataclasses.dataclass(frozen=True)
class DecoderFamily:
    layer: type
    norm: type
    rotary: type


FAMILIES = {
    "llama": DecoderFamily(LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding),
    "mistral": DecoderFamily(MistralDecoderLayer, MistralRMSNorm, MistralRotaryEmbedding),
}


def family_of(text_config) -> DecoderFamily:
    if text_config.model_type not in FAMILIES:
        raise ValueError(f"No decoder family for text model_type {text_config.model_type!r}; known: {list(FAMILIES)}")
    return FAMILIES[text_config.model_type]


def check_sequence_length(text_config, length: int) -> None:
    """Refuse a prompt the reference would attend through a sliding window (Mistral with a window set)."""
    window = getattr(text_config, "sliding_window", None)
    if window is not None and length > window:
        raise ValueError(
            f"The prompt has {length} tokens, more than the model's sliding_window {window}; this package attends "
            "to the whole prompt, so it would not match the reference. Shorten the prompt."
        )
