"""The per-layer KV cache of a pruned sequence: preallocated buffers, so that a decode step has fixed shapes.

Pruning leaves each layer holding its own number of keys, so every layer gets its own buffers
[B, kv heads, capacity, head dim], sized at prefill to what that layer kept plus the room asked for
(`max_new_tokens`, rounded up to `CAPACITY_MULTIPLE`). Layers between two pruning events see the same keys in the
same order: they share one `CacheSegment` holding what they have in common, the key mask over the buffer's slots
(False on padding and on slots not written yet), the slot the next token is written to and the rotary position it
takes. A decode step writes its keys at that slot (`index_copy_` with a device index), attends over the whole
buffer under the key mask, and then moves every segment one slot on, all without host syncs, allocations that
depend on the step, or shapes that change: the step can be captured by `torch.compile` (CUDA graphs on a GPU).
Slots not written yet hold zeros and are masked out, so the result equals attending over the filled slots alone.

Host-side counters (`length`) mirror the device slots so that a caller that decodes past the room it asked for gets
larger buffers (`reserve`), outside any captured region.
"""

from __future__ import annotations

import torch

CAPACITY_MULTIPLE = 64  # buffer lengths are multiples of this, so that nearby prompt lengths share compiled shapes


def _capacity(length: int, room: int) -> int:
    return -(-(length + room) // CAPACITY_MULTIPLE) * CAPACITY_MULTIPLE


def _static(tensor: torch.Tensor) -> torch.Tensor:
    """Tell torch.compile the tensor keeps its address across steps (a CUDA graph may read and write it in place)."""
    torch._dynamo.mark_static_address(tensor)
    return tensor


class CacheSegment:
    """What the layers between two pruning events share: key mask, write slot, next rotary position, on one device."""

    def __init__(self, token_mask: torch.Tensor, next_position: torch.Tensor, room: int) -> None:
        batch, self.length = token_mask.shape
        self.capacity = _capacity(self.length, room)
        self.key_mask = _static(token_mask.new_zeros(batch, self.capacity))  # [B, capacity] bool
        self.key_mask[:, : self.length] = token_mask
        self.slot = _static(torch.tensor([self.length], device=token_mask.device))  # where the next token goes
        self.next_position = _static(next_position.clone())  # [B] rotary position of the next token
        self.layers: list[int] = []

    def advance(self) -> None:
        """After a decode step (inside a captured region too): the next token goes one slot and position on."""
        self.slot.add_(1)
        self.next_position.add_(1)


class DecoderCache:
    """Per-layer key/value buffers and their segments. The layers call `update` (transformers' Cache protocol):
    at prefill it allocates the layer's buffers and stores the prompt's keys; at decode it writes one slot."""

    def __init__(self, max_new_tokens: int = 0) -> None:
        self.room = max(0, max_new_tokens)
        self.keys: list[torch.Tensor] = []  # per layer [B, H_kv, capacity, d]
        self.values: list[torch.Tensor] = []
        self.segments: list[CacheSegment] = []
        self.segment_of: list[CacheSegment] = []  # per layer
        self.segment_index: list[int] = []  # per layer, its segment's index (plain ints: compiled code guards on them)
        self.decoding = False
        self.decode_plan = None  # a pruning method's `DecodePlan` for the decode steps (None: none)

    # -- prefill ------------------------------------------------------------------------------------------------
    def add_segment(self, token_mask: torch.Tensor, next_position: torch.Tensor) -> CacheSegment:
        segment = CacheSegment(token_mask, next_position, self.room)
        self.segments.append(segment)
        return segment

    def enter_layer(self, layer_idx: int, segment: CacheSegment) -> None:
        """Layer `layer_idx` (called in order) keeps its keys in `segment`'s slots."""
        assert layer_idx == len(self.segment_of), "layers enter the cache in order"
        self.segment_of.append(segment)
        self.segment_index.append(self.segments.index(segment))
        segment.layers.append(layer_idx)

    def finish_prefill(self) -> None:
        self.decoding = True

    # -- the Cache protocol the decoder layers call -------------------------------------------------------------
    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        segment = self.segment_of[layer_idx]
        if not self.decoding:
            batch, heads, length, dim = key.shape
            keys = _static(key.new_zeros(batch, heads, segment.capacity, dim))
            values = _static(value.new_zeros(batch, heads, segment.capacity, value.shape[-1]))
            keys[:, :, :length] = key
            values[:, :, :length] = value
            self.keys.append(keys)
            self.values.append(values)
            return key, value  # the prompt attends to itself only
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys.index_copy_(2, segment.slot, key)
        values.index_copy_(2, segment.slot, value)
        return keys, values

    # -- decoding -----------------------------------------------------------------------------------------------
    def reserve(self) -> None:
        """Before a decode step (on the host): grow the buffers of any segment that has no free slot left."""
        for segment in self.segments:
            if segment.length == segment.capacity:
                self._grow(segment, max(CAPACITY_MULTIPLE, segment.capacity // 2))

    def advanced(self) -> None:
        """After a decode step (on the host): one more filled slot in every segment."""
        for segment in self.segments:
            segment.length += 1

    def _grow(self, segment: CacheSegment, extra: int) -> None:
        def larger(buffer: torch.Tensor, dim: int) -> torch.Tensor:
            shape = list(buffer.shape)
            shape[dim] = extra
            return _static(torch.cat([buffer, buffer.new_zeros(shape)], dim))

        segment.capacity += extra
        segment.key_mask = larger(segment.key_mask, 1)
        for idx in segment.layers:
            self.keys[idx] = larger(self.keys[idx], 2)
            self.values[idx] = larger(self.values[idx], 2)

    # -- inspection ---------------------------------------------------------------------------------------------
    def layer_length(self, layer_idx: int) -> int:
        """Filled slots (keys of real and padding tokens) of layer `layer_idx`."""
        return self.segment_of[layer_idx].length if layer_idx < len(self.segment_of) else 0

    def next_position(self, layer_idx: int) -> torch.Tensor:
        """[B] rotary position the next generated token takes in layer `layer_idx`."""
        return self.segment_of[layer_idx].next_position

    def nbytes(self) -> int:
        """Bytes of the filled slots' keys and values (what the prompt and generated tokens occupy)."""
        total = 0
        for keys, values, segment in zip(self.keys, self.values, self.segment_of, strict=True):
            total += (keys.nbytes + values.nbytes) // segment.capacity * segment.length
        return total

    def capacity_bytes(self) -> int:
        """Bytes the buffers hold, free slots included."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)
