"""Conversation templates, reproducing LLaVA's `conversation.py` prompt strings byte for byte.

Only the templates LLaVA-1.5/1.6 evaluation uses are defined: `vicuna_v1` (every 1.5 eval script), `llava_v1`
(the eval scripts' argparse default and Q-Bench), and `plain` (pre-training).
"""

from __future__ import annotations

import dataclasses
from enum import Enum, auto


class SeparatorStyle(Enum):
    TWO = auto()
    PLAIN = auto()


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

    def get_prompt(self) -> str:
        seps = [self.sep, self.sep2]
        if self.sep_style == SeparatorStyle.TWO:
            ret = self.system + seps[0]
            for i, (role, message) in enumerate(self.messages):
                ret += role + ": " + message + seps[i % 2] if message else role + ":"
            return ret
        if self.sep_style == SeparatorStyle.PLAIN:
            ret = self.system
            for i, (_, message) in enumerate(self.messages):
                ret += message + seps[i % 2] if message else ""
            return ret
        raise ValueError(f"Unsupported separator style: {self.sep_style}")

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

default_conversation = conv_vicuna_v1
conv_templates: dict[str, Conversation] = {
    "default": conv_vicuna_v1,
    "v1": conv_vicuna_v1,
    "vicuna_v1": conv_vicuna_v1,
    "llava_v1": conv_llava_v1,
    "plain": conv_llava_plain,
}


def get_conv_template(name: str) -> Conversation:
    """A fresh copy of template `name`, with a clear error listing the known ones."""
    if name not in conv_templates:
        raise ValueError(f"Unknown conversation mode {name!r}; choose one of: {', '.join(sorted(conv_templates))}")
    return conv_templates[name].copy()
