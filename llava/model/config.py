"""The checkpoint configuration of a LLaVA model, parsed from either on-disk format.

Original LLaVA checkpoints say `model_type: "llava"` with Llama fields and `mm_*` fields at the top level, which
transformers' `AutoConfig` would mistake for its own (differently shaped) `LlavaConfig`; so the JSON is read here.
llava-hf checkpoints (`LlavaForConditionalGeneration`) nest `text_config` and `vision_config`; they are mapped to
the same fields so one model class serves both.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from transformers import CLIPVisionConfig, LlamaConfig, MistralConfig

CONFIG_FILE = "config.json"
ORIGINAL_FORMAT = "original"
HF_FORMAT = "llava-hf"

# model_type values this package loads: original LLaVA (1.5 and 1.6 share "llava"; 1.6-Mistral says
# "llava_mistral") and transformers' llava-hf classes.
ORIGINAL_MODEL_TYPES = ("llava", "llava_llama", "llava_mistral")
HF_MODEL_TYPES = ("llava", "llava_next", "video_llava")
# Decoder families by the text model_type: both run transformers' own layers (`llava.model.language_model.family`).
TEXT_CONFIGS = {"llama": LlamaConfig, "mistral": MistralConfig}
DEFAULT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]

# Fields of the original config.json that describe the Llama decoder.
_LLAMA_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "attention_bias",
    "mlp_bias",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "pretraining_tp",
    "initializer_range",
    "sliding_window",
)


class CheckpointConfigError(ValueError):
    """config.json is missing or describes neither an original LLaVA nor a llava-hf checkpoint."""


class TextShape:
    """The decoder's sizes every model family's config exposes, read from its `text_config`."""

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def num_hidden_layers(self) -> int:
        return self.text_config.num_hidden_layers

    @property
    def vocab_size(self) -> int:
        return self.text_config.vocab_size


@dataclasses.dataclass
class LlavaConfig(TextShape):
    """Everything the model needs to know about a checkpoint; attribute names follow LLaVA's config."""

    text_config: LlamaConfig | MistralConfig
    mm_vision_tower: str | None = "openai/clip-vit-large-patch14-336"
    mm_hidden_size: int = 1024
    mm_projector_type: str = "mlp2x_gelu"
    mm_vision_select_layer: int = -2
    mm_vision_select_feature: str = "patch"
    image_aspect_ratio: str = "pad"
    mm_use_im_start_end: bool = False
    mm_use_im_patch_token: bool = False
    mm_patch_merge_type: str = "flat"
    image_grid_pinpoints: list | None = None
    tokenizer_padding_side: str = "right"
    tokenizer_model_max_length: int | None = None
    max_sequence_length: int | None = None
    unfreeze_mm_vision_tower: bool = False
    checkpoint_format: str = ORIGINAL_FORMAT
    # anyres (LLaVA-NeXT): which rule set picks the crop grid and unpads ("llava", "hf", "fastervlm"; see
    # llava.model.anyres). A pruning method may ask for its reference's grid rule and merge (`set_pruning`).
    anyres_rule: str = "llava"
    pruning_grid_rule: str | None = None
    pruning_merge_type: str | None = None
    pruning_image_downsample: int | None = None  # the downsampling baseline's factor (`set_pruning`)
    # Video-LLaVA (original format): LanguageBind image and video towers instead of mm_vision_tower; frames per clip.
    mm_image_tower: str | None = None
    mm_video_tower: str | None = None
    num_frames: int = 8
    # llava-hf only: the tower's config (it lives in the checkpoint) and the id of its image placeholder token.
    vision_config: CLIPVisionConfig | None = None
    image_token_index: int | None = None
    video_token_index: int | None = None  # Video-LLaVA-hf: its video tower (plain CLIP per frame) is in the checkpoint
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def text_family(self) -> str:
        """The decoder family: "llama" or "mistral" (GQA Llama with an optional sliding window)."""
        return self.text_config.model_type

    @property
    def is_anyres(self) -> bool:
        return self.image_aspect_ratio == "anyres"

    @property
    def grid_rule(self) -> str:
        """The anyres grid-selection rule in force: the pruning method's reference rule, else `anyres_rule`."""
        return self.pruning_grid_rule or self.anyres_rule

    @property
    def merge_type(self) -> str:
        """The feature merge in force: the pruning method's reference merge, else the checkpoint's."""
        return self.pruning_merge_type or self.mm_patch_merge_type

    @property
    def is_video_llava(self) -> bool:
        """A Video-LLaVA checkpoint: LanguageBind image + video towers sharing one projector."""
        return self.mm_video_tower is not None or self.video_token_index is not None

    @property
    def has_image_newline(self) -> bool:
        """Whether the checkpoint has an `image_newline` embedding (LLaVA: only `*unpad*` merges train one)."""
        return "unpad" in self.mm_patch_merge_type

    @property
    def num_text_tokens(self) -> int:
        """Rows of the vocabulary a LLaVA-1.5 model may emit: llava-hf checkpoints append `<image>`, `<pad>` and
        padding rows (sampled at random by the converter) that the original 32000-token model never had."""
        if self.checkpoint_format == HF_FORMAT and self.image_token_index is not None:
            return min(self.image_token_index, self.vocab_size)
        return self.vocab_size

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> LlavaConfig:
        path = Path(folder) / CONFIG_FILE
        if not path.is_file():
            raise CheckpointConfigError(
                f"No {CONFIG_FILE} in {folder}. A LLaVA checkpoint folder holds config.json, the weight shards and "
                "the tokenizer files; check --model-path."
            )
        raw = json.loads(path.read_text())
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> LlavaConfig:
        model_type = raw.get("model_type")
        if "text_config" in raw and "vision_config" in raw:
            if model_type not in HF_MODEL_TYPES:
                raise _unsupported(model_type, source)
            config = cls._from_hf(raw)
        elif "mm_vision_tower" in raw or "mm_hidden_size" in raw or "mm_video_tower" in raw:
            if model_type not in ORIGINAL_MODEL_TYPES and model_type is not None:
                raise _unsupported(model_type, source)
            config = cls._from_original(raw)
        elif model_type is not None:
            raise _unsupported(model_type, source)
        else:
            raise CheckpointConfigError(
                f"{source} is neither an original LLaVA config (top-level `mm_vision_tower` / `mm_hidden_size`) nor a "
                "llava-hf config (`text_config` + `vision_config`) and names no model_type. Point --model-path at a "
                "LLaVA-1.5 or LLaVA-NeXT checkpoint folder."
            )
        config._check_anyres(source)
        return config

    def override_anyres(self, pinpoints=None, rule: str | None = None) -> None:
        """A user's anyres settings over the checkpoint's (pinpoints as a list or its string form)."""
        if rule is not None:
            from llava.model.anyres import GRID_RULES

            if rule not in GRID_RULES[:2]:
                raise ValueError(f"anyres_rule {rule!r}: use 'llava' or 'hf'")
            self.anyres_rule = rule
        if pinpoints is not None:
            if not self.is_anyres:
                raise ValueError("image_grid_pinpoints applies to LLaVA-NeXT (anyres) checkpoints only")
            self.image_grid_pinpoints = pinpoints
            self._check_anyres("image_grid_pinpoints override")

    def _check_anyres(self, source: str) -> None:
        if self.image_aspect_ratio != "anyres":
            return
        if not self.image_grid_pinpoints:
            raise CheckpointConfigError(
                f"{source} asks for image_aspect_ratio 'anyres' but has no image_grid_pinpoints; LLaVA-NeXT "
                f"checkpoints list them (LLaVA-1.6: {DEFAULT_PINPOINTS}). Add the list to config.json."
            )
        from llava.model.anyres import MERGE_TYPES, parse_pinpoints

        try:
            parse_pinpoints(self.image_grid_pinpoints)
        except (ValueError, SyntaxError) as err:
            raise CheckpointConfigError(f"{source}: unreadable image_grid_pinpoints ({err})") from None
        if self.mm_patch_merge_type not in MERGE_TYPES:
            raise CheckpointConfigError(
                f"{source}: mm_patch_merge_type {self.mm_patch_merge_type!r} is not one of {MERGE_TYPES}"
            )

    @classmethod
    def _from_original(cls, raw: dict[str, Any]) -> LlavaConfig:
        # `rope_scaling: null` (LLaVA-1.5) means plain RoPE; passing it would trip a deprecation warning.
        fields_present = {k: raw[k] for k in _LLAMA_FIELDS if k in raw and raw[k] is not None}
        mistral = raw.get("model_type") == "llava_mistral" or "LlavaMistralForCausalLM" in raw.get("architectures", [])
        if mistral:
            text = MistralConfig(**fields_present)
        else:
            fields_present.pop("sliding_window", None)
            text = LlamaConfig(**fields_present)
        fields = {f.name for f in dataclasses.fields(cls)}
        mm = {k: v for k, v in raw.items() if k in fields and k not in ("text_config", "vision_config", "raw")}
        for key in ("mm_patch_merge_type", "tokenizer_padding_side"):  # absent in 1.5 configs means the default
            if mm.get(key) is None:
                mm.pop(key, None)
        if raw.get("mm_video_tower") and "mm_vision_tower" not in raw:  # Video-LLaVA: images go to its image tower
            mm["mm_vision_tower"] = raw.get("mm_image_tower")
        return cls(text_config=text, checkpoint_format=ORIGINAL_FORMAT, raw=raw, **mm)

    @classmethod
    def _from_hf(cls, raw: dict[str, Any]) -> LlavaConfig:
        text_type = raw["text_config"].get("model_type", "llama")
        if text_type not in TEXT_CONFIGS:
            raise CheckpointConfigError(
                f"llava-hf text model_type {text_type!r} is not supported; known: {', '.join(TEXT_CONFIGS)}"
            )
        text_raw = {k: v for k, v in raw["text_config"].items() if k != "model_type"}
        text = TEXT_CONFIGS[text_type](**text_raw)
        vision_type = raw["vision_config"].get("model_type", "clip_vision_model")
        if vision_type not in ("clip_vision_model", "clip"):
            raise CheckpointConfigError(
                f"llava-hf vision tower model_type {vision_type!r} is not supported; only CLIP towers are"
            )
        vision_raw = {k: v for k, v in raw["vision_config"].items() if k != "model_type"}
        vision = CLIPVisionConfig(**vision_raw)
        act = raw.get("projector_hidden_act", "gelu")
        if act != "gelu":
            raise CheckpointConfigError(f"Unsupported llava-hf projector_hidden_act {act!r}; only 'gelu' is known.")
        layer = raw.get("vision_feature_layer", -2)
        if not isinstance(layer, int):
            raise CheckpointConfigError(f"Unsupported vision_feature_layer {layer!r}: a single layer index is needed")
        strategy = raw.get("vision_feature_select_strategy", "default")
        next_fields = {}
        if raw.get("model_type") == "llava_next":
            newline = raw.get("use_image_newline_parameter", True)
            next_fields = dict(
                image_aspect_ratio="anyres",
                image_grid_pinpoints=raw.get("image_grid_pinpoints") or DEFAULT_PINPOINTS,
                mm_patch_merge_type="spatial_unpad" if newline else "spatial",
            )
        return cls(
            text_config=text,
            mm_vision_tower=None,
            mm_hidden_size=vision.hidden_size,
            mm_projector_type="mlp2x_gelu",
            mm_vision_select_layer=layer,
            mm_vision_select_feature="patch" if strategy == "default" else "cls_patch",
            **({"image_aspect_ratio": "pad"} | next_fields),
            checkpoint_format=HF_FORMAT,
            vision_config=vision,
            image_token_index=raw.get("image_token_index", raw.get("image_token_id")),
            video_token_index=raw.get("video_token_index") if raw.get("model_type") == "video_llava" else None,
            raw=raw,
        )

    def to_original_dict(self) -> dict[str, Any]:
        """config.json of the original LLaVA format (used to write checkpoints)."""
        text = self.text_config
        mistral = self.text_family == "mistral"
        out = {
            "architectures": ["LlavaMistralForCausalLM" if mistral else "LlavaLlamaForCausalLM"],
            "model_type": "llava_mistral" if mistral else "llava",
            "hidden_size": text.hidden_size,
            "intermediate_size": text.intermediate_size,
            "num_hidden_layers": text.num_hidden_layers,
            "num_attention_heads": text.num_attention_heads,
            "num_key_value_heads": text.num_key_value_heads,
            "hidden_act": text.hidden_act,
            "rms_norm_eps": text.rms_norm_eps,
            "max_position_embeddings": text.max_position_embeddings,
            "rope_scaling": None,
            "rope_theta": text.rope_parameters["rope_theta"],
            "vocab_size": text.vocab_size,
            "tie_word_embeddings": False,
            "bos_token_id": text.bos_token_id,
            "eos_token_id": text.eos_token_id,
            "pad_token_id": text.pad_token_id,
            "pretraining_tp": 1,
            "torch_dtype": "float16",
            "use_cache": True,
        }
        if mistral:
            out["sliding_window"] = text.sliding_window
        for f in dataclasses.fields(self):
            if f.name.startswith(("mm_", "image_aspect", "image_grid", "unfreeze")):
                out[f.name] = getattr(self, f.name)
        out["use_mm_proj"] = True
        out["freeze_mm_mlp_adapter"] = False
        out["tune_mm_mlp_adapter"] = False
        return out


def _unsupported(model_type, source: str) -> CheckpointConfigError:
    return CheckpointConfigError(
        f"{source}: model_type {model_type!r} is not supported. This package loads Qwen2-VL / Qwen2.5-VL "
        "(transformers' format, model_type qwen2_vl / qwen2_5_vl) and LLaVA-1.5 and LLaVA-NeXT checkpoints: "
        f"original format (model_type {' / '.join(ORIGINAL_MODEL_TYPES)}) or llava-hf "
        f"(LlavaForConditionalGeneration / LlavaNextForConditionalGeneration, model_type "
        f"{' / '.join(HF_MODEL_TYPES)})."
    )
