"""The CLIP vision tower: transformers' `CLIPVisionModel`, read out at `mm_vision_select_layer`."""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel


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
