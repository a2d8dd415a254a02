"""Reading weight shards of both checkpoint formats and mapping their key names onto our modules."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import torch

SAFE_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
SAFE_SINGLE = "model.safetensors"
BIN_SINGLE = "pytorch_model.bin"


class MissingWeightsError(FileNotFoundError):
    """A checkpoint folder without (complete) weight files."""


def weight_files(folder: str | Path) -> list[Path]:
    """The shard files of a checkpoint, from its index if there is one; safetensors preferred over .bin."""
    folder = Path(folder)
    for index_name in (SAFE_INDEX, BIN_INDEX):
        index = folder / index_name
        if index.is_file():
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            missing = [n for n in names if not (folder / n).is_file()]
            if missing:
                raise MissingWeightsError(
                    f"{index} lists shards that are not in {folder}: {', '.join(missing)}. "
                    "The download is incomplete; fetch the missing files."
                )
            return [folder / n for n in names]
    for single in (SAFE_SINGLE, BIN_SINGLE):
        if (folder / single).is_file():
            return [folder / single]
    raise MissingWeightsError(
        f"No weights in {folder}: expected {SAFE_SINGLE}, {BIN_SINGLE} or a sharded checkpoint with "
        f"{SAFE_INDEX} / {BIN_INDEX}. Check --model-path, or finish downloading the checkpoint."
    )


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) over all shards, one shard in memory at a time (.bin shards are memory-mapped)."""
    for path in files:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            yield from state.items()


# Keys of an original LLaVA checkpoint that are not weights of the language model + projector.
_ORIGINAL_IGNORED = re.compile(r"(\.rotary_emb\.inv_freq$)")
_ORIGINAL_TOWER = "model.vision_tower.vision_tower."
# Video-LLaVA's LanguageBind towers, stored in its shards (the original code reads them from their own repos).
_ORIGINAL_VIDEO_LLAVA_TOWERS = {
    "model.image_tower.image_tower.": "image_tower",
    "model.video_tower.video_tower.": "video_tower",
}

# llava-hf names (on the Hub, as saved by transformers 5, and as held in memory by 4.52+) -> original names.
_HF_RULES = [
    (re.compile(r"^(?:model\.)?language_model\.model\."), "model."),
    (re.compile(r"^model\.language_model\."), "model."),
    (re.compile(r"^(?:language_model\.)?lm_head\."), "lm_head."),
    (re.compile(r"^(?:model\.)?multi_modal_projector\.linear_1\."), "model.mm_projector.0."),
    (re.compile(r"^(?:model\.)?multi_modal_projector\.linear_2\."), "model.mm_projector.2."),
    (re.compile(r"^(?:model\.)?image_newline$"), "model.image_newline"),
]
_HF_TOWER = re.compile(r"^(?:model\.)?(?:vision_tower|image_tower)\.(?:vision_model\.)?")  # image_tower: Video-LLaVA-hf
_HF_VIDEO_TOWER = re.compile(r"^(?:model\.)?video_tower\.(?:vision_model\.)?")


def split_key(name: str, checkpoint_format: str) -> tuple[str, str] | None:
    """Where a checkpoint tensor goes: ("llm", key in LlavaLlamaForCausalLM), ("tower", key in CLIPVisionModel),
    ("image_tower" / "video_tower", key in Video-LLaVA's LanguageBind tower as stored under its prefix), or None
    for tensors to ignore (rotary `inv_freq` buffers)."""
    if checkpoint_format == "original":
        if _ORIGINAL_IGNORED.search(name):
            return None
        if name.startswith(_ORIGINAL_TOWER):
            key = name[len(_ORIGINAL_TOWER) :]
            return "tower", key.removeprefix("vision_model.")
        for prefix, kind in _ORIGINAL_VIDEO_LLAVA_TOWERS.items():
            if name.startswith(prefix):
                return kind, name[len(prefix) :]
        return "llm", name
    tower = _HF_TOWER.match(name)
    if tower:
        return "tower", name[tower.end() :]
    video_tower = _HF_VIDEO_TOWER.match(name)
    if video_tower:
        return "video_tower", name[video_tower.end() :]
    for pattern, replacement in _HF_RULES:
        if pattern.match(name):
            return "llm", pattern.sub(replacement, name, count=1)
    return "llm", name
