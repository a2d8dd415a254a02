"""Video-LLaVA's LanguageBind towers on transformers' CLIP modules (spec `video.md` §1.2).

The video tower (LanguageBind_Video_merge) is a CLIP ViT whose every encoder layer first mixes each token position
over the frames: add the layer's learned `temporal_embedding`, layer-norm, unmasked attention over the T frames,
residual. `LanguageBindEncoderLayer` is transformers' own `CLIPEncoderLayer` with those three parameters added under
their published names (`encoder.layers.i.temporal_{embedding,layer_norm1,attn}`), so both the LanguageBind folders
and the towers embedded in a Video-LLaVA checkpoint load by name. The image tower (LanguageBind_Image) is a plain
CLIP ViT and loads into the existing `CLIPVisionTower`.

On disk (VL `videollava/model/multimodal_encoder/languagebind/`): a folder holds `config.json` (`model_type`
LanguageBindVideo / LanguageBindImage, `text_config`, `vision_config` with LanguageBind's extra fields
`add_time_attn`, `num_frames`, ...) and the full two-tower CLIP weights (`text_model.*`, `vision_model.*`,
`visual_projection.weight`, `text_projection.weight`, `logit_scale`); only `vision_model.*` is read here.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoderLayer

from llava.model.checkpoint import iter_tensors, weight_files
from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower, cls_attention

# The vision_config fields transformers' CLIPVisionConfig understands; LanguageBind's config adds `add_time_attn`,
# `num_frames`, `force_patch_dropout`, `lora_*`, `num_mel_bins`, `target_length` and `video_decode_backend`.
CLIP_VISION_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "projection_dim",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
    "image_size",
    "patch_size",
    "hidden_act",
    "layer_norm_eps",
    "attention_dropout",
    "initializer_range",
    "initializer_factor",
)
_TEMPORAL_KEY = re.compile(r"^encoder\.layers\.\d+\.temporal_")
_FOLDER_HELP = "Download it (e.g. `hf download LanguageBind/{name} --local-dir DIR`) and pass that folder."


class LanguageBindEncoderLayer(CLIPEncoderLayer):
    """transformers' CLIP encoder layer run after LanguageBind's temporal block (spec §1.2 steps 1-3).

    Input and output are (B*T, N, D), frames of one video consecutive, as `CLIPEncoder` passes them. The
    temporal block views them as (B*N, T, D), adds `temporal_embedding` (it stays in the residual stream), applies
    `temporal_layer_norm1` and unmasked attention over the T frames of each token position, adds the result, and
    views back; then the ordinary CLIP layer runs (spatial attention within each frame, MLP).
    """

    def __init__(self, config: CLIPVisionConfig, num_frames: int) -> None:
        super().__init__(config)
        self.num_frames = num_frames
        self.temporal_embedding = nn.Parameter(torch.zeros(1, num_frames, config.hidden_size))
        self.temporal_layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.temporal_attn = CLIPAttention(config)

    def temporal_mix(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B*T, N, D) -> (B*T, N, D): the temporal pre-block."""
        frames, tokens, dim = hidden_states.shape
        t = self.num_frames
        if frames % t:
            raise ValueError(f"{frames} frames in the batch are not a multiple of the tower's num_frames={t}")
        x = hidden_states.view(frames // t, t, tokens, dim).transpose(1, 2).reshape(-1, t, dim)  # (B*N, T, D)
        if t != 1:  # as the original: a single frame gets no temporal embedding
            x = x + self.temporal_embedding[:, :t]
        # `.forward`, not a module call: transformers records every called CLIPAttention as an `output_attentions`
        # entry, and the original returns only the spatial attention maps.
        mixed, _ = self.temporal_attn.forward(self.temporal_layer_norm1(x))
        x = x + mixed
        return x.view(frames // t, tokens, t, dim).transpose(1, 2).reshape(frames, tokens, dim)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> torch.Tensor:
        return super().forward(self.temporal_mix(hidden_states), attention_mask, **kwargs)


def build_languagebind_vision_model(config: CLIPVisionConfig, num_frames: int) -> CLIPVisionModel:
    """A `CLIPVisionModel` whose encoder layers are `LanguageBindEncoderLayer`s (weights as initialised on the
    current default device; build under `torch.device("meta")` to load real weights cheaply)."""
    model = CLIPVisionModel(config)
    layers = [LanguageBindEncoderLayer(model.config, num_frames) for _ in range(config.num_hidden_layers)]
    model.encoder.layers = nn.ModuleList(layers)
    return model


class LanguageBindVideoTower(CLIPVisionTower):
    """Videos [B, 3, T, H, W] -> features [B, T, 1 + num_patches, C] of layer `select_layer` (before
    `post_layernorm`), [CLS] kept ("return all", as Video-LLaVA), frames in time order: the CLIP tower's machinery
    run on the B * T frames, whose LanguageBind layers attend across frames.

    T must equal the tower's `num_frames` (8 for LanguageBind_Video_merge): the temporal embedding is sized for it.
    Encoder layers after the selected one never influence the output and are dropped by `truncate_unused_layers`.
    A plain `CLIPVisionModel` (no temporal layers) with an explicit `num_frames` is the -hf port's video tower,
    which runs each frame on its own (specs/video.md 1.3).
    """

    def __init__(self, vision_model: CLIPVisionModel, select_layer: int = -2, num_frames: int | None = None) -> None:
        super().__init__(vision_model, select_layer, "cls_patch")
        temporal = [isinstance(layer, LanguageBindEncoderLayer) for layer in vision_model.encoder.layers]
        if any(temporal) and not all(temporal):
            raise ValueError("The video tower mixes LanguageBind and plain CLIP layers")
        if not any(temporal) and num_frames is None:
            raise ValueError(
                "A per-frame CLIP video tower (no temporal layers) needs num_frames; LanguageBind towers are built "
                "with build_languagebind_vision_model"
            )
        if self.num_layers_used < 1:
            raise ValueError(f"mm_vision_select_layer {select_layer} selects the embeddings, not a video tower layer")
        self.temporal = all(temporal)
        self._num_frames = vision_model.encoder.layers[0].num_frames if self.temporal else num_frames

    @property
    def num_frames(self) -> int:
        return self._num_frames

    def frames(self, videos: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] -> [B*T, 3, H, W] in the tower's dtype and device, after checking T."""
        if videos.dim() != 5:
            raise ValueError(f"Expected videos of shape [B, 3, T, H, W], got {tuple(videos.shape)}")
        b, c, t, h, w = videos.shape
        if t != self.num_frames:
            raise ValueError(
                f"The LanguageBind video tower takes exactly num_frames={self.num_frames} frames per video (its "
                f"temporal embedding is sized for them), got {t}; sample {self.num_frames} frames"
            )
        frames = videos.to(device=self.device, dtype=self.dtype).transpose(1, 2).reshape(b * t, c, h, w)
        return frames

    def encoder_hidden_states(self, videos: torch.Tensor) -> torch.Tensor:
        """Output of the selected encoder layer, [B, T, N, C] ([CLS] first in each frame), in the tower's dtype."""
        hidden = super().encoder_hidden_states(self.frames(videos))
        return hidden.view(videos.shape[0], self.num_frames, *hidden.shape[1:])

    @torch.no_grad()
    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] -> [B, T, 1 + num_patches, C], cast back to the dtype of `videos`."""
        return self.encoder_hidden_states(videos).to(videos.dtype)

    @torch.no_grad()
    def forward_with_cls_attention(self, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features as `forward`, plus per frame the head-averaged spatial attention the [CLS] query pays each patch
        inside the selected layer (FasterVLM's video score): [B, T, num_patches], float32.

        Only that row is computed, from the selected layer's `layer_norm1` output (captured by a hook, so after the
        temporal block) and its q/k projections."""
        hidden, x = self.hidden_states_and_attention_input(videos)  # x: [B * T, N, C], after the temporal block
        cls_row = cls_attention(self.selected_attention, x).mean(dim=1)
        return hidden.to(videos.dtype), cls_row.view(videos.shape[0], self.num_frames, -1)


# --- Loading ---------------------------------------------------------------------------------------------------


def _clip_config(vision_config: dict | CLIPVisionConfig, attn_implementation: str | None) -> CLIPVisionConfig:
    """transformers' CLIPVisionConfig from a LanguageBind `vision_config` (dict or config), `hidden_act` and the
    other fields as written there (a missing `hidden_act` means quick_gelu in both LanguageBind and transformers)."""
    if isinstance(vision_config, CLIPVisionConfig):
        config = copy.deepcopy(vision_config)
    else:
        fields = {k: vision_config[k] for k in CLIP_VISION_FIELDS if k in vision_config}
        extra = {k: vision_config[k] for k in ("add_time_attn", "num_frames") if k in vision_config}
        config = CLIPVisionConfig(**fields, **extra)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    return config


def _assign_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Put `state` into `model` (built on meta) by name, with clear errors for missing, unexpected or misshapen
    tensors; the `position_ids` buffers (stored by older transformers) are recreated, not read."""
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"{source} lacks {len(missing)} vision tower weights, e.g. {missing[0]}")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        hint = (
            " (un-merged LoRA weights: use the merged tower, LanguageBind_Video_merge)"
            if any("lora_" in k for k in unexpected)
            else ""
        )
        raise ValueError(f"{source} holds weights this tower does not have, e.g. {unexpected[0]}{hint}")
    wrong = [(k, tuple(state[k].shape), tuple(s)) for k, s in expected.items() if tuple(state[k].shape) != tuple(s)]
    if wrong:
        key, got, want = wrong[0]
        raise ValueError(f"{source}: {key} is {got}, the config says {want}; the config belongs to another tower")
    model.load_state_dict(state, strict=False, assign=True)
    for name, buffer in list(model.named_buffers()):  # the only buffers: position ids 0..P-1
        module_name, _, attr = name.rpartition(".")
        ids = torch.arange(buffer.shape[-1]).expand(buffer.shape)
        model.get_submodule(module_name).register_buffer(attr, ids, persistent=False)


def languagebind_video_tower_from_state(
    vision_config: dict | CLIPVisionConfig,
    state: dict[str, torch.Tensor],
    num_frames: int | None = None,
    select_layer: int = -2,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
    truncate: bool = True,
    source: str = "The video tower state",
) -> LanguageBindVideoTower:
    """The video tower from its weights with the prefix stripped: `embeddings.*`, `pre_layrnorm.*`,
    `encoder.layers.i.{self_attn,layer_norm1,mlp,layer_norm2,temporal_embedding,temporal_layer_norm1,
    temporal_attn}.*`, `post_layernorm.*` (what a Video-LLaVA checkpoint holds under
    `model.video_tower.video_tower.`, or a LanguageBind folder under `vision_model.`).

    `num_frames` defaults to the length of the stored temporal embeddings; a value that disagrees with them or
    with the config is an error."""
    config = _clip_config(vision_config, attn_implementation)
    if getattr(config, "add_time_attn", True) is False:
        raise ValueError(f"{source}: its config has add_time_attn=false, so it is not a LanguageBind video tower")
    if not any(_TEMPORAL_KEY.match(k) for k in state):
        raise ValueError(
            f"{source} has no temporal weights (encoder.layers.i.temporal_embedding / temporal_layer_norm1 / "
            "temporal_attn): it is a per-frame CLIP, e.g. the -hf conversion's video tower. Load the original "
            "Video-LLaVA-7B shards or the LanguageBind_Video_merge folder instead"
        )
    stored = state.get("encoder.layers.0.temporal_embedding")
    stored_frames = int(stored.shape[1]) if stored is not None else None
    frames = num_frames or stored_frames
    if frames is None:
        raise ValueError(f"{source} lacks encoder.layers.0.temporal_embedding, so its frame count is unknown")
    config_frames = getattr(config, "num_frames", None)
    for what, value in (("the stored temporal_embedding", stored_frames), ("the config", config_frames)):
        if value is not None and value != frames:
            raise ValueError(f"{source}: num_frames={frames} disagrees with {what} ({value} frames)")
    config.num_frames = frames
    with torch.device("meta"):
        model = build_languagebind_vision_model(config, frames)
    _assign_state(model, state, source)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    tower = LanguageBindVideoTower(model, select_layer)
    if truncate:
        tower.truncate_unused_layers()
    return tower


def read_languagebind_folder(folder: str | Path, name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(vision_config dict, vision weights with `vision_model.` stripped) of a LanguageBind folder; the text tower,
    projections and `logit_scale` it also holds are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"LanguageBind folder {folder} does not exist. {_FOLDER_HELP.format(name=name)}")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json; is it a {name} folder? {_FOLDER_HELP.format(name=name)}")
    config = json.loads(config_path.read_text())
    vision = config.get("vision_config", config if config.get("model_type") == "clip_vision_model" else None)
    if vision is None:
        raise ValueError(f"{config_path} has no vision_config; is {folder} a {name} folder?")
    prefix = "vision_model."
    state = {k[len(prefix) :]: v for k, v in iter_tensors(weight_files(folder)) if k.startswith(prefix)}
    if not state:
        raise ValueError(f"The weights in {folder} hold no {prefix}* tensors; is it a {name} folder?")
    return vision, state


def load_languagebind_video_tower(
    folder: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    select_layer: int = -2,
    attn_implementation: str | None = None,
    truncate: bool = True,
) -> LanguageBindVideoTower:
    """The video tower of a LanguageBind_Video_merge folder (config.json + pytorch_model.bin)."""
    vision, state = read_languagebind_folder(folder, "LanguageBind_Video_merge")
    return languagebind_video_tower_from_state(
        vision,
        state,
        num_frames=vision.get("num_frames"),
        select_layer=select_layer,
        dtype=dtype,
        device=device,
        attn_implementation=attn_implementation,
        truncate=truncate,
        source=f"The LanguageBind video folder {folder}",
    )


def load_languagebind_image_tower(
    folder: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    select_layer: int = -2,
    select_feature: str = "patch",
    attn_implementation: str | None = None,
    truncate: bool = True,
) -> CLIPVisionTower:
    """The image tower of a LanguageBind_Image folder as a `CLIPVisionTower` (Video-LLaVA: layer -2, [CLS]
    dropped, so 256 tokens for a 224 image)."""
    vision, state = read_languagebind_folder(folder, "LanguageBind_Image")
    if vision.get("add_time_attn") or any(_TEMPORAL_KEY.match(k) for k in state):
        raise ValueError(f"{folder} is a LanguageBind video tower; load it with load_languagebind_video_tower")
    config = _clip_config(vision, attn_implementation)
    with torch.device("meta"):
        model = CLIPVisionModel(config)
    _assign_state(model, state, f"The LanguageBind image folder {folder}")
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    tower = CLIPVisionTower(model, select_layer, select_feature)
    if truncate:
        tower.truncate_unused_layers()
    return tower
