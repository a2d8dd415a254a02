"""The projector from vision features to the language model's embedding space."""

from __future__ import annotations

import re

from torch import nn


class IdentityMap(nn.Module):
    def forward(self, x, *args, **kwargs):
        return x


def build_vision_projector(projector_type: str, mm_hidden_size: int, hidden_size: int) -> nn.Module:
    """`linear`, `identity` or `mlp{N}x_gelu` (LLaVA-1.5: `mlp2x_gelu` = Linear, GELU(erf), Linear)."""
    if projector_type == "linear":
        return nn.Linear(mm_hidden_size, hidden_size)
    match = re.match(r"^mlp(\d+)x_gelu$", projector_type)
    if match:
        layers: list[nn.Module] = [nn.Linear(mm_hidden_size, hidden_size)]
        for _ in range(1, int(match.group(1))):
            layers += [nn.GELU(), nn.Linear(hidden_size, hidden_size)]
        return nn.Sequential(*layers)
    if projector_type == "identity":
        return IdentityMap()
    raise ValueError(
        f"Unknown projector type {projector_type!r} (mm_projector_type in config.json); "
        "supported: linear, identity, mlp<N>x_gelu"
    )
