"""load_pretrained_model(): a LLaVA checkpoint folder -> (tokenizer, model, image_processor, context_len).

Both on-disk formats load into the same `LlavaLlamaForCausalLM`: original LLaVA folders (`config.json` with the
`mm_*` fields, sharded `.bin` or safetensors, CLIP tower loaded separately from `mm_vision_tower`) and llava-hf
folders (`LlavaForConditionalGeneration`, tower inside the checkpoint). The model is built on the meta device and
the shards are assigned one at a time, so a 7B model never exists twice in memory.

A model too big for one GPU is spread over several by a device map (`device_map=`, `llava.model.placement`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from pathlib import Path

import torch
from transformers import CLIPVisionConfig

from llava.model.checkpoint import iter_tensors, split_key, weight_files
from llava.model.config import HF_FORMAT, LlavaConfig
from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
from llava.model.language_model.qwen_vl import is_qwen_vl, load_qwen_vl
from llava.model.multimodal_encoder.clip_encoder import CLIP_L_336_CONFIG, CLIP_L_336_NAME, CLIPVisionTower
from llava.model.multimodal_encoder.image_processor import CLIPImagePreprocessor
from llava.model.placement import Placement, resolve_placement

logger = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


class VisionTowerNotFoundError(FileNotFoundError):
    """The CLIP tower named by the checkpoint (or the override) is neither a local folder nor cached."""


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but torch sees no CUDA device; use device='cpu' or 'auto'")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None -> float16 on CUDA (as LLaVA), float32 on CPU."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def resolve_attn_implementation(
    attn_implementation: str | None, use_flash_attn: bool, device: torch.device | None
) -> str:
    """The attention kernel's name; `device` None skips the device check (done per device of a device map)."""
    impl = attn_implementation or ("flash_attention_2" if use_flash_attn else "sdpa")
    if impl == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            raise ImportError(
                "attn_implementation='flash_attention_2' needs the flash-attn package: "
                "pip install -e '.[flash]' on a CUDA machine, or use 'sdpa'"
            )
        if device is not None and device.type != "cuda":
            raise ValueError("flash_attention_2 runs only on CUDA devices; use 'sdpa' or 'eager' on CPU")
    elif impl not in ("eager", "sdpa"):
        raise ValueError(f"Unknown attn_implementation {impl!r}; use eager, sdpa or flash_attention_2")
    return impl


def load_tokenizer(folder: str | Path, text_config=None):
    """The checkpoint's tokenizer (LLaMA SentencePiece or its tokenizers conversion); pad = unk as in LLaVA.

    The text config is passed so that `AutoTokenizer` does not parse an original LLaVA config.json as
    transformers' (differently shaped) llava config; the class then comes from tokenizer_config.json."""
    from transformers import AutoTokenizer, LlamaConfig

    folder = Path(folder)
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"No tokenizer in {folder}: expected {' or '.join(_TOKENIZER_FILES)} (with tokenizer_config.json). "
            "Copy the tokenizer files of the checkpoint into this folder."
        )
    tokenizer = AutoTokenizer.from_pretrained(str(folder), config=text_config or LlamaConfig())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def _is_hub_id(name: str) -> bool:
    return re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None and not name.startswith((".", "/"))


def locate_model(model_path: str) -> Path:
    """A local folder for `model_path`: itself, or (for a Hub id like liuhaotian/llava-v1.5-7b) its Hugging Face
    cache snapshot, downloaded when the Hub is reachable and HF_HUB_OFFLINE is not set."""
    path = Path(model_path).expanduser()
    if path.is_dir():
        return path
    if not _is_hub_id(model_path) or path.exists():
        raise FileNotFoundError(f"Model path {model_path!r} does not exist or is not a folder; check --model-path")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_path, local_files_only=True))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise FileNotFoundError(
            f"Model {model_path!r} is not a local folder and not in the Hugging Face cache (HF_HUB_OFFLINE is set); "
            "download it and pass its folder as --model-path"
        )
    try:
        return Path(snapshot_download(model_path))
    except Exception as err:
        raise FileNotFoundError(
            f"Model {model_path!r} is not a local folder, not cached, and could not be downloaded "
            f"({type(err).__name__}); download it elsewhere and pass its folder as --model-path"
        ) from None


def locate_vision_tower(name: str, source: str, model_dir: Path | None = None) -> Path:
    """A local folder for the CLIP tower `name`: itself if it is a folder (a relative path is also tried against
    the checkpoint folder, so a checkpoint can ship its tower beside it), else its Hugging Face cache snapshot
    (downloading it only when the Hub is reachable and HF_HUB_OFFLINE is not set)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if model_dir is not None and not path.is_absolute() and (model_dir / path).is_dir():
        return (model_dir / path).resolve()
    how_to = (
        "Download it (for LLaVA-1.5: `hf download openai/clip-vit-large-patch14-336 --local-dir DIR`) and pass "
        "vision_tower=DIR (CLI: --vision-tower DIR)."
    )
    if not _is_hub_id(name):
        raise VisionTowerNotFoundError(f"Vision tower {name!r} ({source}) is not a folder. {how_to}")
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception:
        if offline:
            raise VisionTowerNotFoundError(
                f"Vision tower {name!r} ({source}) is not in the Hugging Face cache and HF_HUB_OFFLINE is set. {how_to}"
            ) from None
    try:
        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt"]))
    except Exception as err:
        raise VisionTowerNotFoundError(
            f"Vision tower {name!r} ({source}) is neither a local folder nor cached, and downloading it failed "
            f"({type(err).__name__}). {how_to}"
        ) from None


def _load_clip(folder: Path, dtype: torch.dtype, device: torch.device):
    from transformers import CLIPVisionModel
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a full CLIPModel checkpoint reports its unused text tower
    try:
        return CLIPVisionModel.from_pretrained(str(folder), dtype=dtype).to(device)
    finally:
        hf_logging.set_verbosity(verbosity)


def load_pretrained_model(
    model_path: str,
    model_base: str | None = None,
    model_name: str | None = None,
    load_8bit: bool = False,
    load_4bit: bool = False,
    device_map: str | None = "auto",
    device: str | torch.device = "auto",
    use_flash_attn: bool = False,
    *,
    dtype: str | torch.dtype | None = None,
    vision_tower: str | None = None,
    vision_dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None,
    pruning="env",
    max_memory: dict | None = None,
    image_grid_pinpoints=None,
    anyres_rule: str | None = None,
    **kwargs,
):
    """Load a LLaVA checkpoint. Returns `(tokenizer, model, image_processor, context_len)` like LLaVA.

    dtype: model dtype (default float16 on CUDA, float32 on CPU). vision_dtype: CLIP dtype (default float32, what
    LLaVA HEAD and SparseVLM run; pass float16 to reproduce the LLaVA-1.5 paper's tower). vision_tower: a folder or
    Hub id overriding config.json's `mm_vision_tower`. image_grid_pinpoints / anyres_rule (LLaVA-NeXT): override
    the checkpoint's anyres resolutions (a list or its string form) and the grid/unpad rules ("llava", "hf").
    attn_implementation: eager, sdpa (default) or flash_attention_2 (`use_flash_attn=True` is LLaVA's spelling of
    the same). pruning: a
    `llava.sparse.engine.PruningMethod`, None for the unpruned model, or "env" (default) for what the environment
    asks for (`METHOD`, `RETAIN_TOKN`, `USE_VERSION`; see `llava.sparse.methods`), read now, not at import.

    device_map: None or a strategy keeps the whole model on `device` (today's placement) unless `max_memory` is
    given or more than one CUDA device is visible and `device` names none in particular (auto, cuda): then
    accelerate spreads whole decoder layers over the devices ("auto" = "balanced", "balanced_low_0",
    "sequential"), within `max_memory` (device -> size, e.g. {0: "30GiB", 1: "40GiB"}) if given. A dict
    (module name -> device, e.g. {"model.layers.0": 0, ..., "model.layers.59": 1}, or a JSON string of one) places
    every decoder layer as given. Either way the vision tower, projector, embed_tokens and image_newline go with the
    first layer, norm and lm_head with the last; `model.device` is lm_head's device (where logits come out).
    """
    if load_8bit or load_4bit:
        raise ValueError("8-bit / 4-bit loading is not supported; load in float16 or bfloat16 instead")
    model_dir = locate_model(model_path)
    model_name = model_name or Path(model_path).name
    if model_base is not None and "lora" in model_name.lower():
        raise ValueError(
            f"{model_name} is a LoRA checkpoint: merge it into its base model first (LLaVA's "
            "scripts/merge_lora_weights.py) and load the merged folder"
        )
    target = resolve_device(device)
    pruning = _resolve_pruning(pruning, model_path, model_base)
    if is_qwen_vl(checkpoint_model_type(model_dir)):
        return _load_qwen(model_dir, target, dtype, attn_implementation, use_flash_attn, pruning, device_map, kwargs)
    # the tower's layers after the selected one are dropped unless the method reads them (PruMerge: the next layer)
    truncate = not getattr(pruning, "needs_full_tower", False)
    explicit_map = isinstance(device_map, dict) or (isinstance(device_map, str) and device_map.lstrip().startswith("{"))
    impl = resolve_attn_implementation(attn_implementation, use_flash_attn, None if explicit_map else target)

    config = LlavaConfig.from_pretrained(model_dir)
    config.override_anyres(image_grid_pinpoints, anyres_rule)
    base_dir = locate_model(model_base) if model_base else model_dir
    tokenizer = load_tokenizer(base_dir, config.text_config)

    with torch.device("meta"):
        model = LlavaLlamaForCausalLM(config, attn_implementation=impl)
    placement = resolve_placement(model, device_map, device, target, max_memory, dtype)
    if not placement.single or explicit_map:
        for layer_device in sorted(set(placement.layers), key=str):
            resolve_attn_implementation(attn_implementation, use_flash_attn, layer_device)
    compute = next((d for d in placement.layers if d.type == "cuda"), placement.first)
    model_dtype = resolve_dtype(dtype, compute)
    tower_dtype = resolve_dtype(vision_dtype or torch.float32, compute)
    files = weight_files(base_dir)
    if model_base is not None:  # projector-only checkpoint on top of a base language model
        projector = model_dir / "mm_projector.bin"
        if not projector.is_file():
            raise FileNotFoundError(f"{model_dir} has no mm_projector.bin to put on top of {model_base}")
        files = files + [projector]
    towers = _assign_weights(model, config, files, model_dtype, placement)
    tower_state = towers.get("tower", {})
    model.model.reset_rotary(config, placement.first)

    if config.is_video_llava:
        tower, video_tower, image_processor, model.video_processor = _video_llava_towers(
            config, model_dir, towers, vision_tower, kwargs.get("video_tower"), tower_dtype, placement.first, truncate
        )
        model.model.vision_tower, model.model.video_tower = tower, video_tower
    elif config.checkpoint_format == HF_FORMAT:
        clip = _clip_from_state(config.vision_config, tower_state, model_dir)
        image_processor = CLIPImagePreprocessor.from_pretrained(model_dir)
    else:
        clip, image_processor = _original_tower(config, model_dir, vision_tower, tower_state, tower_dtype)
    if not config.is_video_llava:
        clip = clip.to(device=placement.first, dtype=tower_dtype).eval()
        tower = CLIPVisionTower(clip, config.mm_vision_select_layer, config.mm_vision_select_feature)
        if truncate:
            tower.truncate_unused_layers()
        tower.requires_grad_(False)
        model.model.vision_tower = tower
    model.eval().requires_grad_(False)
    if not placement.single:
        model.model.layer_devices = placement.layers
        model.device_map = placement.module_map(model)
        logger.info("Decoder layers spread over %s", ", ".join(str(d) for d in dict.fromkeys(placement.layers)))
    _apply_pruning(model, pruning)
    context_len = config.max_sequence_length or 2048
    return tokenizer, model, image_processor, context_len


def checkpoint_model_type(model_dir: Path) -> str | None:
    """The `model_type` of the folder's config.json (None if it has none or no config)."""
    import json

    path = model_dir / "config.json"
    return json.loads(path.read_text()).get("model_type") if path.is_file() else None


def _load_qwen(model_dir: Path, target, dtype, attn_implementation, use_flash_attn, pruning, device_map, kwargs):
    """Qwen2-VL / Qwen2.5-VL (transformers' format): `llava.model.language_model.qwen_vl`."""
    if isinstance(device_map, dict) or (isinstance(device_map, str) and device_map.lstrip().startswith("{")):
        raise ValueError("--device-map is not supported for Qwen-VL checkpoints yet: load them on one device")
    impl = resolve_attn_implementation(attn_implementation, use_flash_attn, target)
    tokenizer, model, image_processor = load_qwen_vl(
        str(model_dir),
        target,
        resolve_dtype(dtype, target),
        impl,
        min_pixels=kwargs.get("min_pixels"),
        max_pixels=kwargs.get("max_pixels"),
    )
    model.requires_grad_(False)
    _apply_pruning(model, pruning)
    return tokenizer, model, image_processor, model.config.text_config.max_position_embeddings


def _resolve_pruning(pruning, model_path: str | None = None, model_base: str | None = None):
    """The method asked for: a PruningMethod, None, or "env" (read now; methods that read the checkpoint's own
    files, such as CDPruner's LLM tokenizer, are told `model_path` / `model_base` as the command-line flags would)."""
    if isinstance(pruning, str):
        if pruning != "env":
            raise ValueError(f"pruning must be a PruningMethod, None or 'env', got {pruning!r}")
        from llava.sparse.methods import pruning_from_env

        return pruning_from_env(model_path=model_path, model_base=model_base)
    return pruning


def _apply_pruning(model, pruning) -> None:
    model.set_pruning(_resolve_pruning(pruning))


def _original_tower(config: LlavaConfig, model_dir: Path, override: str | None, tower_state: dict, dtype):
    """The CLIP tower of an original-format checkpoint and its image processor.

    LLaVA-1.5 checkpoints do not contain the tower: it is loaded from `mm_vision_tower` (a folder or Hub id).
    LLaVA-NeXT checkpoints carry their fine-tuned tower (`unfreeze_mm_vision_tower`): only its config and
    preprocessing settings come from `mm_vision_tower`, and when that is openai's CLIP-L/336 and not available
    here, its published config is used, so the checkpoint folder alone suffices."""
    name = override or config.mm_vision_tower
    source = "vision_tower argument" if override else f"mm_vision_tower in {model_dir / 'config.json'}"
    if not name:
        raise VisionTowerNotFoundError(f"No vision tower: config.json has no mm_vision_tower ({model_dir})")
    in_checkpoint = bool(tower_state) and config.unfreeze_mm_vision_tower
    try:
        tower_dir = locate_vision_tower(name, source, model_dir)
    except VisionTowerNotFoundError:
        if not (in_checkpoint and name == CLIP_L_336_NAME):
            raise
        logger.info("Using the published %s config; the tower weights come from the checkpoint", name)
        return _clip_from_state(CLIP_L_336_CONFIG, tower_state, model_dir), CLIPImagePreprocessor()
    processor = CLIPImagePreprocessor.from_pretrained(tower_dir)
    if in_checkpoint:
        return _clip_from_state(CLIPVisionConfig.from_pretrained(str(tower_dir)), tower_state, model_dir), processor
    return _load_clip(tower_dir, dtype, torch.device("cpu")), processor


def _video_llava_towers(
    config: LlavaConfig, model_dir: Path, towers: dict, image_override, video_override, dtype, device, truncate=True
):
    """(image tower, video tower, image processor, video processor) of a Video-LLaVA checkpoint.

    Original format: as the original code, the towers come from the LanguageBind folders the config names
    (`mm_image_tower`, `mm_video_tower`; the copies inside the shards are not used), the video tower with its
    temporal attention in every layer. -hf format: both towers are in the checkpoint, and its video tower is a plain
    CLIP run on each frame (the conversion dropped the temporal layers; specs/video.md 1.3)."""
    from llava.model.multimodal_encoder.languagebind import (
        LanguageBindVideoTower,
        load_languagebind_image_tower,
        load_languagebind_video_tower,
    )
    from llava.model.multimodal_encoder.video_processor import VideoLlavaVideoProcessor

    layer = config.mm_vision_select_layer
    if config.checkpoint_format == HF_FORMAT:
        image_clip = _clip_from_state(config.vision_config, towers.get("tower", {}), model_dir)
        image = CLIPVisionTower(image_clip, layer, "patch")
        video_clip = _clip_from_state(config.vision_config, towers.get("video_tower", {}), model_dir)
        video = LanguageBindVideoTower(video_clip, layer, num_frames=config.num_frames)
        if truncate:
            image.truncate_unused_layers()
            video.truncate_unused_layers()
    else:
        folders = {}
        for kind, name, override in (
            ("image", config.mm_image_tower, image_override),
            ("video", config.mm_video_tower, video_override),
        ):
            source = f"{kind} tower argument" if override else f"mm_{kind}_tower in {model_dir / 'config.json'}"
            if not (override or name):
                raise VisionTowerNotFoundError(f"No {kind} tower: config.json has no mm_{kind}_tower ({model_dir})")
            folders[kind] = locate_vision_tower(override or name, source, model_dir)
        image = load_languagebind_image_tower(folders["image"], select_layer=layer, truncate=truncate)
        video = load_languagebind_video_tower(folders["video"], select_layer=layer, truncate=truncate)
    image = image.to(device=device, dtype=dtype).eval().requires_grad_(False)
    video = video.to(device=device, dtype=dtype).eval().requires_grad_(False)
    size = image.config.image_size
    image_processor = CLIPImagePreprocessor(size=size, crop_size=size)
    video_processor = VideoLlavaVideoProcessor(size=video.config.image_size, num_frames=video.num_frames)
    return image, video, image_processor, video_processor


def _clip_from_state(vision_config, tower_state: dict, model_dir: Path):
    """A CLIPVisionModel built from `vision_config` holding the checkpoint's tower weights, or a clear error when
    the checkpoint's tower is missing or does not fit the config."""
    from transformers import CLIPVisionModel

    with torch.device("meta"):
        clip = CLIPVisionModel(vision_config)
    state = {k: v for k, v in tower_state.items() if not k.endswith("position_ids")}
    expected = {k: v.shape for k, v in clip.state_dict().items() if not k.endswith("position_ids")}
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"The checkpoint in {model_dir} lacks vision tower weights, e.g. {missing[0]}")
    wrong = [(k, tuple(state[k].shape), tuple(shape)) for k, shape in expected.items() if state[k].shape != shape]
    unexpected = sorted(set(state) - set(expected))
    if wrong or unexpected:
        detail = f"{wrong[0][0]} is {wrong[0][1]}, the config says {wrong[0][2]}" if wrong else unexpected[0]
        raise ValueError(
            f"The vision tower stored in {model_dir} does not match its config ({detail}); the tower config "
            "(mm_vision_tower / vision_config) belongs to another CLIP"
        )
    clip.load_state_dict(state, strict=False, assign=True)
    for name, buffer in list(clip.named_buffers()):  # the only buffers: position ids 0..P-1, not stored
        module_name, _, attr = name.rpartition(".")
        ids = torch.arange(buffer.shape[-1]).expand(buffer.shape)
        clip.get_submodule(module_name).register_buffer(attr, ids, persistent=False)
    return clip


def _assign_weights(
    model: LlavaLlamaForCausalLM, config: LlavaConfig, files, dtype: torch.dtype, placement: Placement
) -> dict:
    """Move the shards' language-model tensors into `model` (built on meta), each onto its device in `placement`;
    return the vision towers' tensors by kind ("tower", and Video-LLaVA's "image_tower" / "video_tower")."""
    expected = {k for k in model.state_dict() if not k.startswith(("model.vision_tower.", "model.video_tower."))}
    params = dict(model.named_parameters())
    towers: dict[str, dict[str, torch.Tensor]] = {}
    seen: set[str] = set()
    vocab_rows = config.vocab_size
    for name, tensor in iter_tensors(files):
        where = split_key(name, config.checkpoint_format)
        if where is None:
            continue
        kind, key = where
        if kind != "llm":
            towers.setdefault(kind, {})[key] = tensor
            continue
        if key not in expected:
            logger.info("Ignoring checkpoint tensor %s", name)
            continue
        if key in ("model.embed_tokens.weight", "lm_head.weight") and tensor.shape[0] != vocab_rows:
            raise ValueError(f"{name} has {tensor.shape[0]} rows but config.json says vocab_size={vocab_rows}")
        target = params[key]
        if tuple(target.shape) != tuple(tensor.shape):
            raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)} != model shape {tuple(target.shape)}")
        module_name, _, attr = key.rpartition(".")
        module = model.get_submodule(module_name)
        device = placement.device_of(key)
        setattr(module, attr, torch.nn.Parameter(tensor.to(device=device, dtype=dtype), requires_grad=False))
        seen.add(key)
    missing = expected - seen
    if missing:
        raise ValueError(
            f"The checkpoint is missing {len(missing)} weights of the language model / projector, e.g. "
            f"{sorted(missing)[:3]}; the files may be incomplete or belong to another model"
        )
    return towers
