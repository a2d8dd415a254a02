"""The CLIP vision tower: transformers' `CLIPVisionModel`, read out at `mm_vision_select_layer`."""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

# The tower every LLaVA-1.5 / LLaVA-NeXT checkpoint names, with its published config (NeXT checkpoints carry its
# fine-tuned weights, so only this config is needed to load them).
CLIP_L_336_NAME = "openai/clip-vit-large-patch14-336"
CLIP_L_336_CONFIG = CLIPVisionConfig(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
    projection_dim=768,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)


class CLIPVisionTower(nn.Module):
    """Image pixels -> per-patch features of layer `select_layer` (before `post_layernorm`).

    Encoder layers after the selected one never influence the output, so they are dropped once the weights are
    loaded (`truncate_unused_layers`): the features are bit-identical and LLaVA-1.5 saves 1/24 of the tower.
    """

    def __init__(self, vision_model: CLIPVisionModel, select_layer: int = -2, select_feature: str = "patch") -> None:
        super().__init__()
        if select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"Unexpected mm_vision_select_feature {select_feature!r}; use 'patch' or 'cls_patch'")
        self.vision_tower = vision_model
        self.select_layer = select_layer
        self.select_feature = select_feature
        n = vision_model.config.num_hidden_layers
        # hidden_states[i] is the output of encoder layer i (0 = embeddings), so layer index k needs k layers.
        self.num_layers_used = select_layer + n + 1 if select_layer < 0 else select_layer
        if not 0 <= self.num_layers_used <= n:
            raise ValueError(f"mm_vision_select_layer {select_layer} is out of range for a {n}-layer tower")

    def truncate_unused_layers(self) -> None:
        self.vision_tower.encoder.layers = self.vision_tower.encoder.layers[: self.num_layers_used]

    @property
    def config(self) -> CLIPVisionConfig:
        return self.vision_tower.config

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side**2

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.embeddings.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.vision_tower.embeddings.patch_embedding.weight.device

    def encoder_hidden_states(self, images: torch.Tensor) -> torch.Tensor:
        """Output of the selected encoder layer, all tokens ([CLS] first), in the tower's dtype."""
        model = self.vision_tower
        images = images.to(device=self.device, dtype=self.dtype)
        if len(model.encoder.layers) == self.num_layers_used:
            return model(pixel_values=images).last_hidden_state
        return model(pixel_values=images, output_hidden_states=True).hidden_states[self.num_layers_used]

    def feature_select(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden[:, 1:] if self.select_feature == "patch" else hidden

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, num_patches, C], cast back to the dtype of `images` (as LLaVA does)."""
        return self.feature_select(self.encoder_hidden_states(images)).to(images.dtype)

    def hidden_states_and_attention_input(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(`encoder_hidden_states(images)`, the selected layer's `layer_norm1` output [views, T, C]): what that
        layer's attention reads, captured by a hook during the same pass (with gradients, for training)."""
        layer = self.vision_tower.encoder.layers[self.num_layers_used - 1]
        captured: dict[str, torch.Tensor] = {}

        def grab_normed(module, args, output):
            captured["x"] = output

        handle = layer.layer_norm1.register_forward_hook(grab_normed)
        try:
            hidden = self.encoder_hidden_states(images)
        finally:
            handle.remove()
        return hidden, captured["x"]

    @property
    def selected_attention(self) -> nn.Module:
        """The self-attention module of the selected layer (the one whose [CLS] row FasterVLM reads)."""
        return self.vision_tower.encoder.layers[self.num_layers_used - 1].self_attn

    @torch.no_grad()
    def forward_with_cls_attention(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features as `forward`, plus the head-averaged attention the [CLS] query pays each patch inside the
        selected layer (the layer that produced the features; FasterVLM's score): [B, num_patches], float32.

        Only that one row is computed (`cls_attention`), instead of asking every CLIP layer for its full
        attention maps."""
        hidden, x = self.hidden_states_and_attention_input(images)
        return self.feature_select(hidden).to(images.dtype), cls_attention(self.selected_attention, x).mean(dim=1)


def cls_attention(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[views, heads, T - 1] float32: per head, the softmax attention the [CLS] query (token 0) pays every other
    token in the CLIP attention module `attn`, for its `layer_norm1` output `x` [views, T, C]. Only that row is
    computed, from the module's own q/k projections."""
    views, tokens, _ = x.shape
    q = attn.q_proj(x[:, :1]).view(views, 1, attn.num_heads, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(views, tokens, attn.num_heads, attn.head_dim).transpose(1, 2)
    probs = (torch.matmul(q.float(), k.float().transpose(2, 3)) * attn.scale).softmax(dim=-1)  # [V, h, 1, T]
    return probs[:, :, 0, 1:]
