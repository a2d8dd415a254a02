"""Our own loop over transformers' `LlamaDecoderLayer`s, owning masks, positions and a per-layer KV cache.

Writing the loop here (instead of calling `LlamaModel.forward`) is what lets the visual part of the sequence shrink
between layers: every layer is told its own query/key lengths, mask and rotary positions, and every layer keeps its
own cache with its own validity mask. Without pruning it computes exactly what `LlamaModel` computes.
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import DynamicCache

ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")


@dataclasses.dataclass
class SequenceState:
    """The sequence entering a decoder layer. `token_mask` is False on padding; `has_padding` says whether any
    position is False, known on the host so that unpadded batches never need a mask (or a device sync)."""

    hidden_states: torch.Tensor  # [B, L, D]
    position_ids: torch.Tensor  # [B, L]
    token_mask: torch.Tensor  # [B, L] bool
    has_padding: bool


class DecoderCache:
    """Per-layer keys/values (a transformers `DynamicCache`) plus, per layer, which cached keys are real tokens
    and the rotary position the next generated token takes in that layer."""

    def __init__(self) -> None:
        self.kv = DynamicCache()
        self.key_mask: list[torch.Tensor | None] = []
        self.next_position: list[torch.Tensor | None] = []
        self.has_padding = False

    def layer_length(self, layer_idx: int) -> int:
        return self.kv.layers[layer_idx].get_seq_length() if layer_idx < len(self.kv.layers) else 0

    def nbytes(self) -> int:
        """Bytes held by all cached keys and values."""
        total = 0
        for layer in self.kv.layers:
            if getattr(layer, "keys", None) is not None:
                total += layer.keys.numel() * layer.keys.element_size()
                total += layer.values.numel() * layer.values.element_size()
        return total


def build_attention_mask(
    attn_implementation: str,
    key_mask: torch.Tensor,
    query_length: int,
    has_padding: bool,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """The mask one layer's attention kernel expects for `query_length` new tokens over keys `key_mask` [B, K]
    (the new tokens are the last `query_length` keys, causally ordered).

    sdpa: None when unpadded (its `is_causal` path), else bool [B, 1, Q, K]; eager: additive float [B, 1, Q, K];
    flash_attention_2: None or the 2-D key padding mask (it applies causality itself). Padding queries may attend
    to themselves so that no softmax row is empty (an empty row gives NaN keys/values that would leak through
    masked-out positions as 0 * NaN).
    """
    if attn_implementation == "flash_attention_2":
        return key_mask.to(torch.int32) if has_padding else None
    if not has_padding and (attn_implementation == "sdpa" or query_length == 1):
        return None
    batch, key_length = key_mask.shape
    past = key_length - query_length
    device = key_mask.device
    key_index = torch.arange(key_length, device=device)
    query_index = torch.arange(past, key_length, device=device)
    allowed = key_index[None, :] <= query_index[:, None]  # [Q, K] causal
    allowed = allowed[None] & key_mask[:, None, :]
    allowed = allowed | (key_index[None, None, :] == query_index[None, :, None])
    allowed = allowed[:, None]  # [B, 1, Q, K]
    if attn_implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)


class DecoderLoop:
    """Runs a `LlamaModel`'s decoder layers over a `SequenceState`, memoising masks and rotary tables across
    layers that share them."""

    def __init__(self, text_model, attn_implementation: str) -> None:
        if attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {attn_implementation!r}")
        self.text_model = text_model
        self.attn_implementation = attn_implementation

    def run(self, state: SequenceState, cache: DecoderCache | None, plan=None) -> torch.Tensor:
        """Prefill (cache empty or None) or one decode step; returns the final-norm hidden states [B, L, D].

        `plan` (a `llava.sparse.engine.PrefillPlan`, prefill only) is told when each layer starts and ends; it may
        ask for attention rows of a layer and hand back a shorter sequence after it."""
        layers = self.text_model.layers
        decoding = cache is not None and len(cache.key_mask) == len(layers)
        if cache is not None and not decoding:
            cache.key_mask = [None] * len(layers)
            cache.next_position = [None] * len(layers)
            cache.has_padding = False
        hidden = state.hidden_states
        # Layers that see the same keys and positions share one mask, one rotary table and one cache entry; the
        # memo is keyed by the identity of the tensor they share, and holds that tensor so its id stays unique.
        memo: dict[tuple, tuple[torch.Tensor, object]] = {}

        def shared(kind: str, source: torch.Tensor, make, *args):
            key = (kind, id(source))
            if key not in memo:
                memo[key] = (source, make(*args))
            return memo[key][1]

        for idx, layer in enumerate(layers):
            if decoding:
                past_mask, past_position = cache.key_mask[idx], cache.next_position[idx]
                key_mask = shared("keys", past_mask, torch.cat, [past_mask, state.token_mask], 1)
                positions = shared("positions", past_position, torch.unsqueeze, past_position, 1)
            else:
                key_mask, positions = state.token_mask, state.position_ids
                if cache is not None:
                    cache.has_padding |= state.has_padding
            has_padding = cache.has_padding if decoding else state.has_padding
            mask = shared(
                "mask",
                key_mask,
                build_attention_mask,
                self.attn_implementation,
                key_mask,
                hidden.shape[1],
                has_padding,
                hidden.dtype,
            )
            position_embeddings = shared("rotary", positions, self.text_model.rotary_emb, hidden, positions)
            request = plan.enter_layer(idx, state) if plan is not None else None
            extra = {} if request is None else {"rows_request": request}
            hidden = layer(
                hidden,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=None if cache is None else cache.kv,
                use_cache=cache is not None,
                position_embeddings=position_embeddings,
                **extra,
            )
            if cache is not None:
                cache.key_mask[idx] = key_mask
                cache.next_position[idx] = shared("next", positions, next_positions, positions, state)
            if plan is not None:
                state = plan.leave_layer(idx, dataclasses.replace(state, hidden_states=hidden), request)
                hidden = state.hidden_states
        return self.text_model.norm(hidden)


def next_positions(positions: torch.Tensor, state: SequenceState) -> torch.Tensor:
    """Rotary position of the token that follows `positions` ([B, L]), per sample: one past the last real token."""
    return positions.masked_fill(~state.token_mask, -1).amax(dim=1) + 1
