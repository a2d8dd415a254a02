"""Conversation templates, reproducing LLaVA's `conversation.py` prompt strings byte for byte.

Only the templates LLaVA-1.5/1.6 inference uses are defined:

- `vicuna_v1` (alias `v1`, `default`; every 1.5 eval script) and `llava_v1` (the eval scripts' argparse default,
  Q-Bench, and what `run_llava`/`cli` pick for Vicuna checkpoints): separator style TWO;
- `plain` (pre-training): PLAIN;
- `mistral_instruct` (LLaVA-1.6 Mistral-7B): LLAMA_2, `[INST] {q} [/INST]`;
- `chatml_direct` (alias `mistral_direct`; LLaVA-1.6 34B): MPT, ChatML with the system "Answer the questions.".

Besides the templates: `stop_strings` and `stop_token_ids` (what a serving front end strips from / stops
generation on), and `conv_mode_for_model` / `resolve_conv_mode` (the template `run_llava` and `serve.cli`
choose from the checkpoint name, as LLaVA's scripts do).
"""

from __future__ import annotations

import dataclasses
import sys
from enum import Enum, auto


class SeparatorStyle(Enum):
    TWO = auto()
    MPT = auto()
    PLAIN = auto()
    LLAMA_2 = auto()


@dataclasses.dataclass
class Conversation:
    """A multi-turn prompt; `messages` holds [role, text-or-None] pairs, None meaning 'the model speaks next'."""

    system: str
    roles: tuple[str, str]
    messages: list[list]
    offset: int
    sep_style: SeparatorStyle = SeparatorStyle.TWO
    sep: str = "###"
    sep2: str | None = None
    version: str = "Unknown"
    # how an image stands in a message, for templates whose model wraps it (Qwen-VL: vision start / end tokens
    # around the image, no newline before the text): "<image>\n" and "<image>" become this (and a "<video>" the
    # same with "<video>" inside)
    image_format: str | None = None

    def get_prompt(self) -> str:
        """The prompt string; a None (or empty) message renders only what precedes the speaker's text."""
        if self.image_format is not None:
            return self._with_image_format()
        seps = [self.sep, self.sep2]
        if self.sep_style == SeparatorStyle.TWO:
            # system + sep, then `role: message` closed by sep (user) or sep2 (assistant); `role:` for None.
            ret = self.system + seps[0]
            for i, (role, message) in enumerate(self.messages):
                ret += role + ": " + message + seps[i % 2] if message else role + ":"
            return ret
        if self.sep_style == SeparatorStyle.MPT:
            # ChatML: system + sep, then role (which carries its own `<|im_start|>...\n`) + message + sep.
            ret = self.system + self.sep
            for role, message in self.messages:
                ret += role + message + self.sep if message else role
            return ret
        if self.sep_style == SeparatorStyle.LLAMA_2:
            return self._llama_2_prompt()
        if self.sep_style == SeparatorStyle.PLAIN:
            ret = self.system
            for i, (_, message) in enumerate(self.messages):
                ret += message + seps[i % 2] if message else ""
            return ret
        raise ValueError(f"Unsupported separator style: {self.sep_style}")

    def _with_image_format(self) -> str:
        image = self.image_format
        video = image.replace("<image>", "<video>")
        messages = [
            [
                role,
                message.replace("<image>\n", "\0")
                .replace("<image>", "\0")
                .replace("\0", image)
                .replace("<video>\n", "\1")
                .replace("<video>", "\1")
                .replace("\1", video)
                if message
                else message,
            ]
            for role, message in self.messages
        ]
        return dataclasses.replace(self, messages=messages, image_format=None).get_prompt()

    def _llama_2_prompt(self) -> str:
        """LLaMA-2 chat layout: user turns `[INST] {text} [/INST]`, each but the first preceded by `sep`; an
        assistant turn is ` {text} ` + sep2. A non-empty system goes inside the first [INST] as
        `<<SYS>>\n{system}\n<</SYS>>\n\n`; an empty one adds nothing. LLaVA prefixes every user turn with sep and
        then left-strips sep's characters from the whole prompt, which equals not prefixing the first one for any
        sep without `[` (all templates here)."""
        if not self.messages or not self.messages[0][1]:
            raise ValueError("LLAMA_2 prompt: the first message must not be empty")
        if self.messages[0][0] != self.roles[0]:
            raise ValueError("LLAMA_2 prompt: the first message must come from the user")
        ret = ""
        for i, (_, message) in enumerate(self.messages):
            if not message:
                continue
            if i % 2 == 0:
                if i == 0 and self.system:
                    message = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n" + message
                ret += ("" if i == 0 else self.sep) + f"[INST] {message} [/INST]"
            else:
                ret += " " + message + " " + self.sep2
        return ret

    def append_message(self, role: str, message: str | None) -> None:
        self.messages.append([role, message])

    def copy(self) -> Conversation:
        return dataclasses.replace(self, messages=[list(m) for m in self.messages])


conv_vicuna_v1 = Conversation(
    system="A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    roles=("USER", "ASSISTANT"),
    version="v1",
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.TWO,
    sep=" ",
    sep2="</s>",
)

conv_llava_v1 = Conversation(
    system="A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    roles=("USER", "ASSISTANT"),
    version="v1",
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.TWO,
    sep=" ",
    sep2="</s>",
)

conv_llava_plain = Conversation(
    system="",
    roles=("", ""),
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.PLAIN,
    sep="\n",
)

conv_mistral_instruct = Conversation(
    system="",
    roles=("USER", "ASSISTANT"),
    version="llama_v2",
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.LLAMA_2,
    sep="",
    sep2="</s>",
)

conv_chatml_direct = Conversation(
    system="<|im_start|>system\nAnswer the questions.",
    roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
    version="mpt",
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.MPT,
    sep="<|im_end|>",
)

# Qwen2-VL / Qwen2.5-VL Instruct's chat template: ChatML with its default system prompt, each image as
# <|vision_start|><image><|vision_end|> right before the text (the model splices the image's tokens there)
conv_qwen2_vl = Conversation(
    system="<|im_start|>system\nYou are a helpful assistant.",
    roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
    version="qwen",
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.MPT,
    sep="<|im_end|>\n",
    image_format="<|vision_start|><image><|vision_end|>",
)

default_conversation = conv_vicuna_v1
conv_templates: dict[str, Conversation] = {
    "default": conv_vicuna_v1,
    "v1": conv_vicuna_v1,
    "vicuna_v1": conv_vicuna_v1,
    "llava_v1": conv_llava_v1,
    "plain": conv_llava_plain,
    "mistral_instruct": conv_mistral_instruct,
    "chatml_direct": conv_chatml_direct,
    "mistral_direct": conv_chatml_direct,
    "qwen2_vl": conv_qwen2_vl,
    "qwen2_5_vl": conv_qwen2_vl,
}


def get_conv_template(name: str) -> Conversation:
    """A fresh copy of template `name`, with a clear error listing the known ones."""
    if name not in conv_templates:
        raise ValueError(f"Unknown conversation mode {name!r}; choose one of: {', '.join(sorted(conv_templates))}")
    return conv_templates[name].copy()


def stop_strings(conv: Conversation) -> list[str]:
    """The end-of-turn strings a serving front end stops on and strips from the answer: `sep2` (`</s>`) for TWO
    and LLAMA_2, `sep` (`<|im_end|>`) for MPT, none for PLAIN."""
    if conv.sep_style in (SeparatorStyle.TWO, SeparatorStyle.LLAMA_2):
        return [conv.sep2] if conv.sep2 else []
    if conv.sep_style == SeparatorStyle.MPT:
        return [conv.sep] if conv.sep else []
    return []


def stop_token_ids(conv: Conversation, tokenizer) -> list[int]:
    """Token ids generation stops on: the tokenizer's EOS, plus for MPT (`chatml_direct`) the id of `<|im_end|>`
    when the tokenizer has it as a single token (the 34B checkpoint's EOS may be a different token)."""
    ids = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    if conv.sep_style == SeparatorStyle.MPT:
        end = tokenizer.get_vocab().get(conv.sep.strip())
        if end is not None and int(end) not in ids:
            ids.append(int(end))
    return ids


def conv_mode_for_model(model_name: str) -> str:
    """The template LLaVA's `cli.py`/`run_llava.py` infer from a checkpoint name, checked in this order on the
    lowercased name: contains "mistral" -> `mistral_instruct`; "v1.6-34b" -> `chatml_direct`; "v1" -> `llava_v1`;
    anything else -> `llava_v1`. (LLaVA's "llama-2" -> `llava_llama_2` and "mpt" -> `mpt` rules are left out, as
    those templates are not defined here, and its final fallback `llava_v0` is replaced by `llava_v1`.)"""
    name = model_name.lower()
    if "qwen" in name:
        return "qwen2_vl"
    if "mistral" in name:
        return "mistral_instruct"
    if "v1.6-34b" in name:
        return "chatml_direct"
    return "llava_v1"  # both the "v1" rule and the fallback


def resolve_conv_mode(conv_mode: str | None, model_name: str, model_config=None) -> str:
    """`conv_mode` when given (warning on stderr if it differs from the inferred one, as LLaVA's scripts do), else
    the template the model's config names (Qwen-VL: its chat template), else `conv_mode_for_model(model_name)`."""
    inferred = getattr(model_config, "conv_mode", None) or conv_mode_for_model(model_name)
    if conv_mode is None:
        return inferred
    if conv_mode != inferred:
        print(
            f"[WARNING] the auto inferred conversation mode is {inferred}, while `--conv-mode` is {conv_mode}, "
            f"using {conv_mode}",
            file=sys.stderr,
        )
    return conv_mode
