"""Our own loop over transformers' `LlamaDecoderLayer`s, owning masks, positions and a per-layer KV cache.

Writing the loop here (instead of calling `LlamaModel.forward`) is what lets the visual part of the sequence shrink
between layers: every layer is told its own query/key lengths, mask and rotary positions, and every layer keeps its
own cache with its own validity mask. Without pruning it computes exactly what `LlamaModel` computes.

Layers may sit on several devices (a device map, `llava.model.builder`): the loop then moves the sequence (hidden
states, positions, token mask) and a pruning plan's row request to each layer's device when it differs from the
previous layer's, so masks, rotary tables and cache entries are built on, and stay on, the device that uses them.
On one device (`layer_devices` None) nothing is moved or compared per layer.
"""

from __future__ import annotations

import dataclasses

import torch

from llava.model.language_model.cache import CacheSegment, DecoderCache

ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")


@dataclasses.dataclass
class SequenceState:
    """The sequence entering a decoder layer. `token_mask` is False on padding; `has_padding` says whether any
    position is False, known on the host so that unpadded batches never need a mask (or a device sync)."""

    hidden_states: torch.Tensor  # [B, L, D]
    position_ids: torch.Tensor  # [B, L]
    token_mask: torch.Tensor  # [B, L] bool
    has_padding: bool


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


def layer_devices(text_model) -> tuple[torch.device, ...] | None:
    """The device of each decoder layer of `text_model` when they sit on several devices, else None (the
    `layer_devices` a loader spreading the model sets; kept in step by `LlavaLlamaModel._apply`)."""
    return getattr(text_model, "layer_devices", None)


def move_state(state: SequenceState, hidden: torch.Tensor, device: torch.device, move) -> SequenceState:
    """The sequence entering a layer on `device`: `hidden` (the running hidden states) and the state's positions
    and token mask there; `move(tensor, device)` memoises the copies that several layers share."""
    return SequenceState(
        hidden.to(device), move(state.position_ids, device), move(state.token_mask, device), state.has_padding
    )


def move_request(request, device: torch.device) -> None:
    """Move a pruning plan's row request (a dataclass of tensors) to `device`, in place, so that the plan that
    holds it reads the attention rows the layer writes into it."""
    for field in dataclasses.fields(request):
        value = getattr(request, field.name)
        if isinstance(value, torch.Tensor) and value.device != device:
            setattr(request, field.name, value.to(device))


class DecoderLoop:
    """Runs a `LlamaModel`'s decoder layers over a `SequenceState`, memoising masks and rotary tables across
    layers that share them."""

    def __init__(self, text_model, attn_implementation: str) -> None:
        if attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {attn_implementation!r}")
        self.text_model = text_model
        self.attn_implementation = attn_implementation
        self.devices = layer_devices(text_model)  # None: every layer on one device, nothing to move

    def run(self, state: SequenceState, cache: DecoderCache | None = None, plan=None) -> torch.Tensor:
        """Prefill: returns the final-norm hidden states [B, L, D]; fills `cache` (if given) for decoding.

        `plan` (a `llava.sparse.engine.PrefillPlan`) is told when each layer starts and ends; it may ask for
        attention rows of a layer and hand back a shorter sequence after it."""
        hidden = state.hidden_states
        # Layers that see the same keys and positions share one mask, one rotary table and one cache segment; the
        # memo is keyed by the identity of the tensor they share, and holds that tensor so its id stays unique.
        memo: dict[tuple, tuple[torch.Tensor, object]] = {}

        def shared(kind, source: torch.Tensor, make, *args):
            key = (kind, id(source))
            if key not in memo:
                memo[key] = (source, make(*args))
            return memo[key][1]

        def move(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
            return shared(("to", device), tensor, tensor.to, device)

        devices = self.devices
        here = None if devices is None else hidden.device
        for idx, layer in enumerate(self.text_model.layers):
            if devices is not None and devices[idx] != here:
                here = devices[idx]
                state = move_state(state, hidden, here, move)
                hidden = state.hidden_states
            key_mask, positions = state.token_mask, state.position_ids
            mask = shared(
                "mask",
                key_mask,
                build_attention_mask,
                self.attn_implementation,
                key_mask,
                hidden.shape[1],
                state.has_padding,
                hidden.dtype,
            )
            position_embeddings = shared("rotary", positions, self.text_model.rotary_emb, hidden, positions)
            if cache is not None:
                segment = shared("segment", key_mask, _new_segment, cache, state)
                cache.enter_layer(idx, segment)
            request = plan.enter_layer(idx, state) if plan is not None else None
            if request is not None and devices is not None:
                move_request(request, here)
            extra = {} if request is None else {"rows_request": request}
            hidden = layer(
                hidden,
                attention_mask=mask,
                position_ids=None,  # in position_embeddings already; gapped ids would look packed to FA2
                past_key_values=cache,
                use_cache=cache is not None,
                position_embeddings=position_embeddings,
                **extra,
            )
            if plan is not None:
                state = plan.leave_layer(idx, dataclasses.replace(state, hidden_states=hidden), request)
                hidden = state.hidden_states
        if cache is not None:
            cache.finish_prefill()
        return self.text_model.norm(hidden)

    def step(self, hidden: torch.Tensor, cache: DecoderCache, plan=None) -> torch.Tensor:
        """One decode step of one new token per sample (`hidden` [B, 1, D], their embeddings) over the cache's
        fixed-size buffers; returns the final-norm hidden states [B, 1, D]. Fixed shapes, no host syncs: the
        caller may compile it (`LlavaLlamaForCausalLM.compile_decode`).

        `plan` (a `llava.sparse.engine.DecodePlan`, None for none) may ask for the new token's attention row at a
        layer and narrow the keys of a layer with an extra per-sample key mask; it is run uncompiled."""
        inputs = []
        for segment in cache.segments:  # the new token's slot becomes a valid key; its mask, positions, rotary
            segment.key_mask.index_fill_(1, segment.slot, True)
            positions = segment.next_position[:, None]
            inputs.append(
                (
                    static_attention_mask(self.attn_implementation, segment.key_mask, hidden.dtype),
                    positions,
                    # the rotary table reads only its input's dtype and device
                    self.text_model.rotary_emb(hidden.new_empty(0, device=positions.device), positions),
                )
            )
        devices = self.devices
        for idx, layer in enumerate(self.text_model.layers):
            if devices is not None and devices[idx] != hidden.device:
                hidden = hidden.to(devices[idx])
            mask, positions, position_embeddings = inputs[cache.segment_index[idx]]
            request, extra = None, {}
            if plan is not None:
                key_mask = cache.segment_of[idx].key_mask
                keep = plan.key_mask(idx)
                if keep is not None:
                    keep = keep.to(key_mask.device)  # a no-op on one device
                    mask = static_attention_mask(self.attn_implementation, key_mask & keep, hidden.dtype)
                request = plan.request(idx, key_mask)
                if request is not None:
                    extra = {"rows_request": request}
            hidden = layer(
                hidden,
                attention_mask=mask,
                position_ids=None,
                past_key_values=cache,
                use_cache=True,
                position_embeddings=position_embeddings,
                **extra,
            )
            if request is not None:
                plan.take_row(idx, request)
        for segment in cache.segments:
            segment.advance()
        return self.text_model.norm(hidden)


def _new_segment(cache: DecoderCache, state: SequenceState) -> CacheSegment:
    return cache.add_segment(state.token_mask, next_positions(state.position_ids, state))


def static_attention_mask(attn_implementation: str, key_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The mask of one decode query over a cache buffer's slots `key_mask` [B, K]: always given, since free slots
    must be masked (sdpa: bool [B, 1, 1, K]; eager: additive; flash_attention_2: the 2-D key mask)."""
    if attn_implementation == "flash_attention_2":
        return key_mask.to(torch.int32)
    allowed = key_mask[:, None, None, :]
    if attn_implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=key_mask.device).masked_fill(~allowed, torch.finfo(dtype).min)


def next_positions(positions: torch.Tensor, state: SequenceState) -> torch.Tensor:
    """Rotary position of the token that follows `positions` ([B, L], or M-RoPE's [B, L, 3]), per sample: one past
    the largest id of its real tokens."""
    mask = state.token_mask if positions.dim() == 2 else state.token_mask[..., None]
    largest = positions.masked_fill(~mask, -1)
    return (largest.amax(dim=1) if positions.dim() == 2 else largest.amax(dim=(1, 2))) + 1
