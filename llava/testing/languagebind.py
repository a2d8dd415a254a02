"""Tiny random LanguageBind_Video_merge / LanguageBind_Image folders in their published on-disk format.

A folder holds `config.json` (the `to_dict()` of VL's `LanguageBind{Video,Image}Config`: `model_type`,
`projection_dim`, `logit_scale_init_value`, `text_config`, `vision_config` with LanguageBind's extra fields) and one
`pytorch_model.bin` with the whole two-tower CLIP as LanguageBind saves it (transformers 4.30 names):
`text_model.*`, `vision_model.*` (video: plus `encoder.layers.i.temporal_{embedding,layer_norm1,attn}.*`),
`visual_projection.weight`, `text_projection.weight`, `logit_scale`, and the persistent `position_ids` buffers of
that transformers version. No tokenizer files are written (nothing here reads them).

`video_llava_tower_state` renames a folder's vision weights the way a Video-LLaVA-7B checkpoint stores them
(`model.video_tower.video_tower.*` / `model.image_tower.image_tower.*`, issue PKU-YuanGroup/Video-LLaVA#18).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

VIDEO_LLAVA_TOWER_PREFIXES = {
    "video": "model.video_tower.video_tower.",
    "image": "model.image_tower.image_tower.",
}


@dataclass
class TinyLanguageBind:
    """A written folder, its config.json content and the tensors of its pytorch_model.bin."""

    path: Path
    config: dict
    state: dict[str, torch.Tensor]

    @property
    def vision_config(self) -> dict:
        return self.config["vision_config"]

    def vision_state(self) -> dict[str, torch.Tensor]:
        """The vision weights with `vision_model.` stripped (what the tower loaders take)."""
        prefix = "vision_model."
        return {k[len(prefix) :]: v for k, v in self.state.items() if k.startswith(prefix)}


def languagebind_config(
    kind: str = "video",
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    image_size: int = 28,
    patch_size: int = 14,
    num_frames: int = 8,
    hidden_act: str = "gelu",
    projection_dim: int = 16,
) -> dict:
    """config.json of a tiny LanguageBind folder; field names as VL's configuration_{video,image}.py write them.

    hidden_act: "gelu" as the OpenCLIP DataComp initialisation suggests; whether the published configs say gelu or
    quick_gelu is unverified (spec §1.3), so it is a parameter."""
    if kind not in VIDEO_LLAVA_TOWER_PREFIXES:
        raise ValueError(f"kind must be 'video' or 'image', got {kind!r}")
    video = kind == "video"
    text_config = {
        "model_type": "clip_text_model",
        "vocab_size": 64,
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "projection_dim": projection_dim,
        "num_hidden_layers": 1,
        "num_attention_heads": num_heads,
        "max_position_embeddings": 16,
        "hidden_act": hidden_act,
        "layer_norm_eps": 1e-5,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 1.0,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
    }
    vision_config = {
        "model_type": "clip_vision_model",
        "hidden_size": hidden_size,
        "intermediate_size": 4 * hidden_size,
        "projection_dim": projection_dim,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_channels": 3,
        "image_size": image_size,
        "patch_size": patch_size,
        "hidden_act": hidden_act,
        "layer_norm_eps": 1e-5,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 1.0,
        "add_time_attn": video,
        "num_frames": num_frames if video else 1,
        "force_patch_dropout": 0.0,
        "lora_r": 2,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "num_mel_bins": 0.0,
        "target_length": 0.0,
        "video_decode_backend": "decord",
    }
    return {
        "architectures": ["CLIPModel"],  # as third-party copies of the Hub config show [unverified]
        "model_type": "LanguageBindVideo" if video else "LanguageBindImage",
        "projection_dim": projection_dim,
        "logit_scale_init_value": 2.6592,
        "initializer_factor": 1.0,
        "torch_dtype": "float32",
        "transformers_version": "4.30.2",
        "text_config": text_config,
        "vision_config": vision_config,
    }


def _layer_shapes(prefix: str, dim: int, mlp: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
        shapes[f"{prefix}self_attn.{proj}.weight"] = (dim, dim)
        shapes[f"{prefix}self_attn.{proj}.bias"] = (dim,)
    for norm in ("layer_norm1", "layer_norm2"):
        shapes[f"{prefix}{norm}.weight"] = (dim,)
        shapes[f"{prefix}{norm}.bias"] = (dim,)
    shapes.update({f"{prefix}mlp.fc1.weight": (mlp, dim), f"{prefix}mlp.fc1.bias": (mlp,)})
    shapes.update({f"{prefix}mlp.fc2.weight": (dim, mlp), f"{prefix}mlp.fc2.bias": (dim,)})
    return shapes


def _temporal_shapes(prefix: str, dim: int, num_frames: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {f"{prefix}temporal_embedding": (1, num_frames, dim)}
    for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
        shapes[f"{prefix}temporal_attn.{proj}.weight"] = (dim, dim)
        shapes[f"{prefix}temporal_attn.{proj}.bias"] = (dim,)
    shapes[f"{prefix}temporal_layer_norm1.weight"] = (dim,)
    shapes[f"{prefix}temporal_layer_norm1.bias"] = (dim,)
    return shapes


def _random_tensor(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Values large enough that attention is far from uniform and every part of the network matters."""
    x = torch.randn(shape, generator=generator)
    if "norm" in name:
        return 1.0 + 0.2 * x if name.endswith("weight") else 0.2 * x
    if name.endswith("bias"):
        return 0.1 * x
    if len(shape) == 2 and "embedding" not in name:  # Linear weight [out, in]
        return x / shape[1] ** 0.5
    if name.endswith("patch_embedding.weight"):
        return x / (shape[1] * shape[2] * shape[3]) ** 0.5
    return 0.5 * x  # class, position, token and temporal embeddings


def languagebind_state(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors for every key of a LanguageBind folder's pytorch_model.bin (float32, seeded)."""
    vision, text = config["vision_config"], config["text_config"]
    dim, tdim = vision["hidden_size"], text["hidden_size"]
    positions = (vision["image_size"] // vision["patch_size"]) ** 2 + 1
    shapes: dict[str, tuple[int, ...]] = {
        "vision_model.embeddings.class_embedding": (dim,),
        "vision_model.embeddings.patch_embedding.weight": (dim, 3, vision["patch_size"], vision["patch_size"]),
        "vision_model.embeddings.position_embedding.weight": (positions, dim),
        "vision_model.pre_layrnorm.weight": (dim,),
        "vision_model.pre_layrnorm.bias": (dim,),
    }
    for i in range(vision["num_hidden_layers"]):
        prefix = f"vision_model.encoder.layers.{i}."
        shapes.update(_layer_shapes(prefix, dim, vision["intermediate_size"]))
        if vision["add_time_attn"]:
            shapes.update(_temporal_shapes(prefix, dim, vision["num_frames"]))
    shapes.update({"vision_model.post_layernorm.weight": (dim,), "vision_model.post_layernorm.bias": (dim,)})
    shapes["text_model.embeddings.token_embedding.weight"] = (text["vocab_size"], tdim)
    shapes["text_model.embeddings.position_embedding.weight"] = (text["max_position_embeddings"], tdim)
    for i in range(text["num_hidden_layers"]):
        shapes.update(_layer_shapes(f"text_model.encoder.layers.{i}.", tdim, text["intermediate_size"]))
    shapes.update({"text_model.final_layer_norm.weight": (tdim,), "text_model.final_layer_norm.bias": (tdim,)})
    shapes["visual_projection.weight"] = (config["projection_dim"], dim)
    shapes["text_projection.weight"] = (config["projection_dim"], tdim)

    generator = torch.Generator().manual_seed(seed)
    state = {name: _random_tensor(name, shape, generator) for name, shape in shapes.items()}
    state["logit_scale"] = torch.tensor(config["logit_scale_init_value"])
    # transformers 4.30 (LanguageBind's pin) still saved the position ids buffers.
    state["vision_model.embeddings.position_ids"] = torch.arange(positions)[None]
    state["text_model.embeddings.position_ids"] = torch.arange(text["max_position_embeddings"])[None]
    return state


def _write_atomically(folder: Path, config: dict, state: dict[str, torch.Tensor]) -> None:
    """Write into a temporary sibling folder and rename it into place, so a reader never sees half a folder."""
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists and is not empty; choose a new folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        torch.save(state, tmp / "pytorch_model.bin")
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_tiny_languagebind(folder: str | Path, kind: str = "video", seed: int = 0, **sizes) -> TinyLanguageBind:
    """A tiny random LanguageBind folder ("video": LanguageBind_Video_merge, "image": LanguageBind_Image);
    `sizes` go to `languagebind_config` (hidden_size, num_layers, num_heads, image_size, patch_size, num_frames,
    hidden_act, projection_dim)."""
    folder = Path(folder)
    config = languagebind_config(kind, **sizes)
    state = languagebind_state(config, seed)
    _write_atomically(folder, config, state)
    return TinyLanguageBind(folder, config, state)


def write_tiny_languagebind_video(folder: str | Path, seed: int = 0, **sizes) -> TinyLanguageBind:
    return write_tiny_languagebind(folder, "video", seed, **sizes)


def write_tiny_languagebind_image(folder: str | Path, seed: int = 0, **sizes) -> TinyLanguageBind:
    return write_tiny_languagebind(folder, "image", seed, **sizes)


def video_llava_tower_state(state: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """A LanguageBind folder's vision weights named as a Video-LLaVA-7B checkpoint embeds them:
    `vision_model.X` -> `model.video_tower.video_tower.X` (kind "video") or `model.image_tower.image_tower.X`
    ("image"). The `position_ids` buffers are left out (transformers 4.31, which wrote Video-LLaVA-7B, no longer
    saved them [unverified for that checkpoint])."""
    prefix = "vision_model."
    target = VIDEO_LLAVA_TOWER_PREFIXES[kind]
    return {
        target + k[len(prefix) :]: v
        for k, v in state.items()
        if k.startswith(prefix) and not k.endswith("position_ids")
    }
