"""Attention probabilities for a few query rows, taken from inside the stock attention call.

Scoring methods need `softmax(q_r K^T / sqrt(d))` for a handful of query rows r (SparseVLM's text raters, FastV's
last token) at one layer. transformers 5 dispatches attention through a registry and passes the decoder layer's
extra keyword arguments down to it, so every model built here uses a registered wrapper around the stock kernel
(`llava_eager`, `llava_sdpa`, `llava_flash_attention_2`): when the decoder loop hands it a `RowsRequest` it computes
those rows from the layer's post-RoPE queries and keys, then calls the stock kernel for the layer's output. Layers
without a request just call the stock kernel. No [heads, L, L] tensor is ever built.
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.models.llama.modeling_llama import eager_attention_forward

WRAPPED_PREFIX = "llava_"


@dataclasses.dataclass
class RowsRequest:
    """Which query rows to score at one layer, and (once the layer ran) their attention probabilities."""

    rows: torch.Tensor  # [B, R] indices into the layer's query positions (padded rows may repeat a valid one)
    row_mask: torch.Tensor  # [B, R] bool, False for padding rows
    key_mask: torch.Tensor  # [B, K] bool, False for padded keys
    probs: torch.Tensor | None = None  # [B, H, R, K] float32, filled by the attention wrapper


def attention_rows(query: torch.Tensor, key: torch.Tensor, request: RowsRequest, scaling: float) -> torch.Tensor:
    """softmax over all (causally visible, unpadded) keys of the requested query rows, per head, in float32."""
    batch, heads, q_len, dim = query.shape
    key = repeat_kv(key, heads // key.shape[1])
    index = request.rows[:, None, :, None].expand(batch, heads, request.rows.shape[1], dim)
    q_rows = query.gather(2, index).float()
    logits = torch.matmul(q_rows, key.float().transpose(2, 3)) * scaling  # [B, H, R, K]
    past = key.shape[2] - q_len
    key_pos = torch.arange(key.shape[2], device=key.device)
    visible = key_pos[None, None, :] <= (request.rows + past)[:, :, None]  # causal
    visible = visible & request.key_mask[:, None, :]
    logits = logits.masked_fill(~visible[:, None], float("-inf"))
    return logits.softmax(dim=-1)


def _flash_attention_forward(*args, **kwargs):
    from transformers.integrations.flash_attention import flash_attention_forward

    return flash_attention_forward(*args, **kwargs)


_STOCK = {
    "eager": eager_attention_forward,
    "sdpa": sdpa_attention_forward,
    "flash_attention_2": _flash_attention_forward,
}


def _wrap(stock):
    def forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        request: RowsRequest | None = kwargs.pop("rows_request", None)
        if request is not None:
            request.probs = attention_rows(query, key, request, scaling if scaling is not None else module.scaling)
        return stock(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)

    return forward


for _name, _stock in _STOCK.items():
    AttentionInterface.register(WRAPPED_PREFIX + _name, _wrap(_stock))


def wrapped_name(attn_implementation: str) -> str:
    """Registry name of the row-capturing wrapper around a stock implementation."""
    return WRAPPED_PREFIX + attn_implementation
