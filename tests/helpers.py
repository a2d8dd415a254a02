"""Test helpers: prompts, images and the bridge to transformers' own LlavaForConditionalGeneration."""

from __future__ import annotations

import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import get_conv_template
from llava.mm_utils import process_images, tokenizer_image_token
from llava.testing.images import random_image  # noqa: F401  (re-exported for the tests)


def prompt_ids(tokenizer, question: str, conv_mode: str = "vicuna_v1") -> torch.Tensor:
    conv = get_conv_template(conv_mode)
    conv.append_message(conv.roles[0], "<image>\n" + question)
    conv.append_message(conv.roles[1], None)
    return tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")


def pixels(image_processor, model, *images) -> torch.Tensor:
    return process_images(list(images), image_processor, model.config).to(model.dtype)


def hf_input_ids(ids: torch.Tensor, image_token_index: int, num_patches: int) -> torch.Tensor:
    """LLaVA's ids with the -200 placeholder expanded into the llava-hf image-token run."""
    k = int((ids == IMAGE_TOKEN_INDEX).nonzero()[0, 0])
    run = torch.full((num_patches,), image_token_index, dtype=ids.dtype)
    return torch.cat([ids[:k], run, ids[k + 1 :]])[None]
