"""Tiny random LLaVA checkpoints written in the real on-disk formats, for tests and offline demos.

`write_tiny_clip` saves a full (text + vision) `CLIPModel` with its `preprocessor_config.json`, like
`openai/clip-vit-large-patch14-336`; `write_tiny_llava` saves an original-format LLaVA-1.5 folder (config.json with
the `mm_*` fields, sharded safetensors or `.bin` with the stray `rotary_emb.inv_freq` buffers of transformers-4.31
checkpoints, a tokenizer, no vision tower) or, with `next=True`, a LLaVA-NeXT folder (anyres fields, a fine-tuned
copy of the tower and `image_newline` inside the checkpoint, Llama or Mistral decoder); `convert_to_llava_hf`
rewrites such a folder in the llava-hf `LlavaForConditionalGeneration` / `LlavaNextForConditionalGeneration`
layout with the key mapping and vocabulary padding of transformers' converters.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from llava.model.config import LlavaConfig
from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
from llava.model.multimodal_encoder.image_processor import CLIPImagePreprocessor
from llava.testing.tokenizer import save_tokenizer


def write_tiny_clip(
    folder: str | Path,
    image_size: int = 336,
    patch_size: int = 14,
    hidden_size: int = 32,
    num_layers: int = 3,
    num_heads: int = 4,
    seed: int = 0,
    intermediate_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """A random CLIP (vision + text) checkpoint folder; returns it."""
    from transformers import CLIPConfig, CLIPModel

    folder = Path(folder)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=2,
            num_attention_heads=num_heads,
            vocab_size=64,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=hidden_size,
            intermediate_size=intermediate_size or 4 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            image_size=image_size,
            patch_size=patch_size,
        ),
        projection_dim=hidden_size,
    )
    with _default_dtype(dtype):
        model = CLIPModel(config)
    model.save_pretrained(str(folder))
    CLIPImagePreprocessor(size=image_size, crop_size=image_size).save_pretrained(folder)
    return folder


def tiny_llava_config(
    vision_tower: str,
    vocab_size: int,
    mm_hidden_size: int,
    hidden_size: int = 64,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 128,
) -> LlavaConfig:
    from transformers import LlamaConfig

    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    return LlavaConfig(text_config=text, mm_vision_tower=vision_tower, mm_hidden_size=mm_hidden_size)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _save_shards(state: dict[str, torch.Tensor], folder: Path, num_shards: int, safetensors: bool) -> None:
    names = list(state)
    per = -(-len(names) // num_shards)
    groups = [names[i : i + per] for i in range(0, len(names), per)]
    if len(groups) == 1:
        single = "model.safetensors" if safetensors else "pytorch_model.bin"
        _save_one({n: state[n] for n in names}, folder / single, safetensors)
        return
    weight_map = {}
    for i, group in enumerate(groups, 1):
        stem, ext = ("model", "safetensors") if safetensors else ("pytorch_model", "bin")
        file = f"{stem}-{i:05d}-of-{len(groups):05d}.{ext}"
        _save_one({n: state[n] for n in group}, folder / file, safetensors)
        weight_map.update({n: file for n in group})
    index = "model.safetensors.index.json" if safetensors else "pytorch_model.bin.index.json"
    total = sum(t.numel() * t.element_size() for t in state.values())
    (folder / index).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _save_one(state: dict[str, torch.Tensor], path: Path, safetensors: bool) -> None:
    state = {k: v.contiguous() for k, v in state.items()}
    if safetensors:
        save_file(state, str(path), metadata={"format": "pt"})
    else:
        torch.save(state, path)


def write_tiny_llava(
    folder: str | Path,
    clip_folder: str | Path,
    hidden_size: int = 64,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 128,
    num_shards: int = 2,
    safetensors: bool = True,
    seed: int = 0,
    vocab_size: int | None = None,
    num_kv_heads: int | None = None,
    dtype: torch.dtype = torch.float32,
    next: bool = False,
    text_family: str = "llama",
    pinpoints: list | None = None,
) -> Path:
    """A random original-format LLaVA-1.5 checkpoint using the CLIP tower in `clip_folder`; returns the folder.
    `vocab_size` larger than the tiny tokenizer's gives real-size embedding and lm_head matrices (benchmarks).

    `next=True` writes a LLaVA-NeXT checkpoint instead: `image_aspect_ratio` anyres with `pinpoints` (LLaVA-1.6's
    by default), `spatial_unpad`, `unfreeze_mm_vision_tower`, the tower's weights perturbed (as fine-tuning does)
    and stored under `model.vision_tower.vision_tower.vision_model.*`, and `model.image_newline`.
    `text_family="mistral"` makes it a LLaVA-1.6-Mistral (`llava_mistral`, Mistral decoder, no sliding window)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = max(save_tokenizer(folder), vocab_size or 0)
    clip_config = json.loads((Path(clip_folder) / "config.json").read_text())["vision_config"]
    config = tiny_llava_config(
        str(Path(clip_folder).resolve()),
        vocab_size,
        clip_config["hidden_size"],
        hidden_size,
        num_layers,
        num_heads,
        intermediate_size,
    )
    if num_kv_heads:
        config.text_config.num_key_value_heads = num_kv_heads
    if text_family == "mistral":
        from transformers import MistralConfig

        fields = {k: v for k, v in config.text_config.to_dict().items() if k != "model_type"}
        config.text_config = MistralConfig(**fields, sliding_window=None)
    if next:
        from llava.model.config import DEFAULT_PINPOINTS

        config.image_aspect_ratio = "anyres"
        config.image_grid_pinpoints = pinpoints or DEFAULT_PINPOINTS
        config.mm_patch_merge_type = "spatial_unpad"
        config.unfreeze_mm_vision_tower = True
    torch.manual_seed(seed)
    with _default_dtype(dtype):
        model = LlavaLlamaForCausalLM(config)
    with torch.no_grad():  # sharper attention, so that answers depend on the prompt and the image
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(4.0)
            layer.self_attn.k_proj.weight.mul_(4.0)
    if next:
        with torch.no_grad():
            model.model.image_newline.copy_(torch.randn(hidden_size) / hidden_size**0.5)
    state = {k: v for k, v in model.state_dict().items()}
    if next:
        state.update(_fine_tuned_tower(Path(clip_folder), seed))
    if not safetensors:  # transformers 4.31 saved these buffers; loaders must ignore them
        inv_freq = model.model.rotary_emb.inv_freq
        state.update({f"model.layers.{i}.self_attn.rotary_emb.inv_freq": inv_freq for i in range(num_layers)})
    _save_shards(state, folder, num_shards, safetensors)
    (folder / "config.json").write_text(json.dumps(config.to_original_dict(), indent=2))
    (folder / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}, indent=2)
    )
    return folder


def _fine_tuned_tower(clip_folder: Path, seed: int) -> dict[str, torch.Tensor]:
    """The CLIP tower's vision weights, slightly changed (a NeXT checkpoint's tower differs from openai's), under
    the original checkpoint's keys."""
    from safetensors import safe_open

    generator = torch.Generator().manual_seed(seed + 1)
    tower = {}
    with safe_open(str(clip_folder / "model.safetensors"), framework="pt") as f:
        for name in f.keys():
            if name.startswith("vision_model.") and not name.endswith("position_ids"):
                tensor = f.get_tensor(name)
                noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32).to(tensor.dtype)
                tower["model.vision_tower.vision_tower." + name] = tensor + 0.02 * noise
    return tower


def convert_to_llava_hf(original: str | Path, folder: str | Path, seed: int = 0) -> Path:
    """Rewrite an original-format checkpoint (and its CLIP tower) as a llava-hf folder.

    Follows transformers' `convert_llava_weights_to_hf.py` (LLaVA-NeXT: `convert_llava_next_weights_to_hf.py`):
    add `<image>` and `<pad>` tokens, pad the vocabulary to a multiple of 64 with rows drawn from
    N(mean, 1e-5 * cov) of the old ones, and map the keys (`model.*` -> `language_model.model.*`, `lm_head` ->
    `language_model.lm_head`, `model.mm_projector.{0,2}` -> `multi_modal_projector.linear_{1,2}`, CLIP
    `vision_model.*` -> `vision_tower.vision_model.*`, `model.image_newline` -> `image_newline`). A NeXT
    checkpoint's own (fine-tuned) tower is used; a 1.5 checkpoint takes the tower of its `mm_vision_tower`.
    """
    from safetensors import safe_open

    from llava.model.checkpoint import iter_tensors, weight_files

    original, folder = Path(original), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = LlavaConfig.from_pretrained(original)
    clip_dir = Path(config.mm_vision_tower)
    old_vocab = config.vocab_size
    image_token, pad_token = old_vocab, old_vocab + 1
    new_vocab = -(-(old_vocab + 2) // 64) * 64
    save_tokenizer(folder, extra_special_tokens=["<image>", "<pad>"])

    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in iter_tensors(weight_files(original)):
        if name.endswith("rotary_emb.inv_freq"):
            continue
        if name.startswith("model.vision_tower.vision_tower."):
            state["vision_tower." + name.removeprefix("model.vision_tower.vision_tower.")] = tensor
            continue
        if name == "model.image_newline":
            state["image_newline"] = tensor
            continue
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            tensor = _pad_rows(tensor, new_vocab, generator)
        if name.startswith("model.mm_projector."):
            index, rest = name.removeprefix("model.mm_projector.").split(".", 1)
            name = f"multi_modal_projector.linear_{1 if index == '0' else 2}.{rest}"
        else:  # model.* and lm_head.*
            name = "language_model." + name
        state[name] = tensor
    if not any(name.startswith("vision_tower.") for name in state):
        with safe_open(str(clip_dir / "model.safetensors"), framework="pt") as f:
            for name in f.keys():
                if name.startswith("vision_model."):
                    state["vision_tower." + name] = f.get_tensor(name)
    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"}
    )

    text = config.text_config.to_dict()
    text.update(vocab_size=new_vocab, pad_token_id=pad_token, model_type=config.text_family)
    vision = json.loads((clip_dir / "config.json").read_text())["vision_config"]
    vision["model_type"] = "clip_vision_model"
    hf_config = {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "image_token_index": image_token,
        "pad_token_id": pad_token,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": config.mm_vision_select_layer,
        "vision_feature_select_strategy": "default",
        "image_seq_length": (vision["image_size"] // vision["patch_size"]) ** 2,
        "text_config": text,
        "vision_config": vision,
        "tie_word_embeddings": False,
    }
    if config.is_anyres:
        hf_config.update(
            architectures=["LlavaNextForConditionalGeneration"],
            model_type="llava_next",
            image_grid_pinpoints=config.image_grid_pinpoints,
            use_image_newline_parameter=True,
        )
        del hf_config["image_seq_length"]
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2, default=str))
    shutil.copy(clip_dir / "preprocessor_config.json", folder / "preprocessor_config.json")
    return folder


def _pad_rows(weight: torch.Tensor, rows: int, generator: torch.Generator) -> torch.Tensor:
    """`weight` with rows appended up to `rows`, drawn as transformers' converters do; computed in float32 (the CPU
    has no half-precision Cholesky), returned in the weight's dtype."""
    extra = rows - weight.shape[0]
    full = weight.float()
    mean = full.mean(0)
    centred = full - mean
    cov = centred.T @ centred / full.shape[0]
    dist = torch.distributions.MultivariateNormal(mean, covariance_matrix=1e-5 * cov + 1e-9 * torch.eye(len(mean)))
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    return torch.cat([weight, dist.sample((extra,)).to(weight.dtype)])


def write_tiny_pair(folder: str | Path, **llava_kwargs) -> tuple[Path, Path]:
    """`folder/clip` and `folder/llava-v1.5-tiny`; returns (llava folder, clip folder)."""
    folder = Path(folder)
    clip = write_tiny_clip(folder / "clip")
    llava = write_tiny_llava(folder / "llava-v1.5-tiny", clip, **llava_kwargs)
    return llava, clip
