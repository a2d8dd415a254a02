"""The pruning engine: per-prefill bookkeeping that every method shares.

A method answers where it acts (after which decoder layers), how it scores visual tokens (which attention rows it
asks for) and what it does with the rest (drop, or recycle into merged tokens). The engine owns everything else:
where each sample's image sits as the sequence shrinks, rebuilding hidden states / positions / padding after a
pruning event for a batch whose samples keep different counts, and the accounting.

Layouts are kept in plain ints on the host, so selecting and gathering costs no device syncs beyond the methods'
own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import torch

from llava.model.anyres import MERGED, NEWLINE, MergeLayout
from llava.model.language_model.decoder import SequenceState
from llava.sparse.accounting import SampleAccount, Stage
from llava.sparse.attention_rows import RowsRequest


@dataclasses.dataclass
class VisualLayout:
    """One sample's unpadded sequence: `prefix` tokens, then `visual` image tokens, then `suffix` text tokens;
    `tokens` says where each visual token came from (view and patch, newline, or merged by a method)."""

    prefix: int
    visual: int
    suffix: int
    tokens: MergeLayout | None = None

    @property
    def length(self) -> int:
        return self.prefix + self.visual + self.suffix

    def visual_start(self, padded_length: int) -> int:
        """Index of the first visual token in a left-padded row of `padded_length`."""
        return padded_length - self.length + self.prefix


def _concat(parts: list[MergeLayout]) -> MergeLayout:
    """One layout holding the tokens of `parts` (same image) in order."""
    if len(parts) == 1:
        return parts[0]
    return dataclasses.replace(
        parts[0], **{f: torch.cat([getattr(p, f) for p in parts]) for f in ("view", "patch", "row", "col")}
    )


def _earlier_absorbed(tokens: MergeLayout, previous: list | None) -> dict[int, MergeLayout | None]:
    """Block index -> what that merged token absorbed (`previous`: the block's list per merged token, or None)."""
    old = torch.nonzero(tokens.view == MERGED).flatten().tolist()
    return {i: None if previous is None else previous[k] for k, i in enumerate(old)}


def absorbed_layouts(tokens: MergeLayout, earlier: dict, members: list) -> list[MergeLayout | None]:
    """Per entry of `members` (indices into the block `tokens` of what one new merged token absorbed, or None),
    the original tokens as one `MergeLayout` (an absorbed merged token expanded through `earlier`), or None."""
    out = []
    for index in members:
        if index is None:
            out.append(None)
            continue
        index = index.cpu().flatten()
        nested = [earlier[i] for i in index.tolist() if earlier.get(i) is not None]
        out.append(_concat([tokens.select(index[tokens.view[index] != MERGED])] + nested))
    return out


@dataclasses.dataclass
class AbsorbedLayout(MergeLayout):
    """The layout of a pre-LLM `Selection` that said what its merged tokens absorbed: `absorbed` holds, per merged
    token in block order, the original tokens it absorbed (as `Stage.absorbed`, which the LLM's input stage takes
    from here). Selecting tokens or appending merged ones keeps the list aligned."""

    absorbed: list | None = None

    def select(self, keep) -> AbsorbedLayout:
        picked = torch.arange(len(self))[keep]
        ordinal = torch.cumsum(self.view == MERGED, 0) - 1
        absorbed = [self.absorbed[int(ordinal[i])] for i in picked.tolist() if int(self.view[i]) == MERGED]
        return dataclasses.replace(super().select(keep), absorbed=absorbed)

    def with_merged(self, count: int) -> AbsorbedLayout:
        return dataclasses.replace(super().with_merged(count), absorbed=self.absorbed + [None] * count)


def layouts_from_spans(
    image_spans: list[list[tuple[int, int]]], lengths: list[int], padded: int, tokens: list | None = None
) -> list[VisualLayout]:
    """Layouts from the splice's image spans (and each sample's token provenance, if known); a sample must hold at
    most one image for in-LLM pruning."""
    layouts = []
    tokens = tokens or [None] * len(lengths)
    for spans, length, provenance in zip(image_spans, lengths, tokens, strict=True):
        if len(spans) > 1:
            raise ValueError(
                "The engine handles one image or video per sample; this prompt holds "
                f"{len(spans)} <image> / <video> placeholders. Ask about one image or video at a time."
            )
        if not spans:
            layouts.append(VisualLayout(length, 0, 0))
            continue
        start, count = spans[0]
        prefix = start - (padded - length)
        if provenance is not None and len(provenance) != count:  # the prompt was truncated inside the image
            provenance = provenance.select(slice(0, count))
        layouts.append(VisualLayout(prefix, count, length - prefix - count, provenance))
    return layouts


def patches_per_view(model) -> int | None:
    """Patches of one view of the model's tower (576 for CLIP-L/336), or None where each image has its own count
    (Qwen-VL)."""
    return getattr(model.get_vision_tower(), "num_patches", None)


def inputs_layouts(inputs) -> list[VisualLayout]:
    """The layouts of a spliced batch (`llava.model.llava_arch.MultimodalInputs`)."""
    tokens = None
    if inputs.images is not None:
        tokens = [inputs.images[idx[0]].tokens if len(idx) == 1 else None for idx in inputs.image_indices]
    return layouts_from_spans(inputs.image_spans, inputs.lengths, inputs.inputs_embeds.shape[1], tokens)


class PrefillPlan:
    """What happens during one prefill. The base plan prunes nothing and only accounts; methods subclass it and
    override `rows_request` (ask for attention rows before a layer) and `prune` (after it).

    `prunes_next_layer_input`: the method's pruning belongs to the input of the next layer (FastV: "layer K sees
    the kept tokens") rather than to the output of the scoring layer (SparseVLM: "layer l outputs the kept
    tokens"); it decides which layer the reference equal-token convention counts as reduced."""

    prunes_next_layer_input = False

    def __init__(
        self,
        layouts: list[VisualLayout],
        num_layers: int,
        text_config,
        dtype: torch.dtype,
        num_encoded: list[int] | None = None,
        prune_newlines: bool = False,
    ) -> None:
        self.layouts = layouts
        self.prune_newlines = prune_newlines
        self.num_layers = num_layers
        self.num_heads = text_config.num_attention_heads
        self.head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // self.num_heads
        bytes_per = 2 * text_config.num_key_value_heads * self.head_dim * torch.finfo(dtype).bits // 8
        self.accounts = [
            SampleAccount(
                num_visual=layout.visual,
                num_encoded=None if num_encoded is None else num_encoded[b],
                hidden_size=text_config.hidden_size,
                intermediate_size=text_config.intermediate_size,
                kv_size=text_config.num_key_value_heads * self.head_dim,
                kv_bytes_per_token_layer=bytes_per,
            )
            for b, layout in enumerate(layouts)
        ]
        self.current_layer: int | None = None  # the layer whose `leave_layer` is running (stages are keyed by it)
        for account, layout in zip(self.accounts, layouts, strict=True):
            if layout.tokens is not None:
                account.record_views(layout.tokens, final=False)
                account.stages.append(Stage("input", layout.tokens, getattr(layout.tokens, "absorbed", None)))

    # -- hooks the decoder loop calls ------------------------------------------------------------------------------
    def enter_layer(self, layer_idx: int, state: SequenceState) -> RowsRequest | None:
        for account, layout in zip(self.accounts, self.layouts, strict=True):
            account.tokens_into_layer.append(layout.length)
            account.visual_into_layer.append(layout.visual)
        with self._method_time(state):
            return self.rows_request(layer_idx, state)

    def leave_layer(self, layer_idx: int, state: SequenceState, request: RowsRequest | None) -> SequenceState:
        before = [layout.visual for layout in self.layouts]
        self.current_layer = layer_idx
        with self._method_time(state):
            state = self.prune(layer_idx, state, request)
        after = before if self.prunes_next_layer_input else [layout.visual for layout in self.layouts]
        for account, count in zip(self.accounts, after, strict=True):
            account.visual_after_layer.append(count)
        return state

    def _absorbed(self, b: int, tokens: MergeLayout, kept: torch.Tensor, members, count: int) -> list | None:
        """Per merged token after a rebuild (block order: the kept earlier ones, then the `count` new ones), the
        original tokens it absorbed as a `MergeLayout` (a merged token it absorbed expanded through the previous
        stage), None where unknown; None when nothing is known at all."""
        stages = self.accounts[b].stages
        earlier = _earlier_absorbed(tokens, stages[-1].absorbed if stages else None)
        out = [earlier[i] for i in kept.tolist() if i in earlier]
        out += absorbed_layouts(tokens, earlier, [None if members is None else members[k] for k in range(count)])
        return out if any(a is not None for a in out) else None

    @contextlib.contextmanager
    def _method_time(self, state: SequenceState):
        """Adds the host time of the method's own steps to `method_ms` (CPU only: on a GPU, host time without a
        sync says nothing; there `method_ms` stays None)."""
        if state.hidden_states.device.type != "cpu":
            yield
            return
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = (time.perf_counter() - start) * 1e3
            for account in self.accounts:
                account.method_ms = (account.method_ms or 0.0) + elapsed

    # -- what methods override -------------------------------------------------------------------------------------
    def rows_request(self, layer_idx: int, state: SequenceState) -> RowsRequest | None:
        return None

    def prune(self, layer_idx: int, state: SequenceState, request: RowsRequest | None) -> SequenceState:
        return state

    def finish(self) -> None:
        """Record where the visual tokens that reached the last layer came from (per view, newlines)."""
        for account, layout in zip(self.accounts, self.layouts, strict=True):
            if layout.tokens is not None:
                account.record_views(layout.tokens, final=True)

    # -- tools for methods -------------------------------------------------------------------------------------------
    def protected(self, b: int) -> torch.Tensor | None:
        """Bool mask over sample b's visual tokens that no method may drop (newline tokens, unless the method
        was told to rank them), or None when every visual token may be ranked."""
        tokens = self.layouts[b].tokens
        if self.prune_newlines or tokens is None:
            return None
        newline = tokens.is_newline
        return newline if bool(newline.any()) else None

    def rankable_count(self, b: int) -> int:
        """Visual tokens of sample b that a method may rank."""
        protected = self.protected(b)
        return self.layouts[b].visual - (0 if protected is None else int(protected.sum()))

    def top_tokens(self, b: int, scores: torch.Tensor, count: int) -> torch.Tensor:
        """Sorted indices of sample b's visual tokens to keep: the `count` best-scoring rankable tokens, and every
        protected one."""
        protected = self.protected(b)
        if protected is None:
            return torch.topk(scores, count).indices.sort().values
        protected = protected.to(scores.device)
        ranked = torch.nonzero(~protected).flatten()
        chosen = ranked[torch.topk(scores[ranked], count).indices]
        return torch.cat([chosen, torch.nonzero(protected).flatten()]).sort().values

    def make_rows_request(self, rows: list[torch.Tensor], state: SequenceState) -> RowsRequest:
        """A request for per-sample query rows given in unpadded coordinates (empty tensors allowed)."""
        device = state.hidden_states.device
        padded = state.hidden_states.shape[1]
        width = max(1, max(len(r) for r in rows))
        index = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        mask = torch.zeros((len(rows), width), dtype=torch.bool, device=device)
        for b, (r, layout) in enumerate(zip(rows, self.layouts, strict=True)):
            offset = padded - layout.length
            index[b] = offset + (r[-1] if len(r) else layout.length - 1)  # padding rows repeat a valid row
            index[b, : len(r)] = offset + r
            mask[b, : len(r)] = True
        return RowsRequest(rows=index, row_mask=mask, key_mask=state.token_mask)

    def rebuild(
        self,
        state: SequenceState,
        keep: list[torch.Tensor | None],
        merged: list[torch.Tensor | None] | None = None,
        renumber_positions: bool = False,
        merged_positions: list[torch.Tensor | None] | None = None,
        merged_members: list[list[torch.Tensor] | None] | None = None,
    ) -> SequenceState:
        """Drop visual tokens: per sample, keep the visual tokens at the (sorted) indices `keep[b]` (None = keep
        all), append `merged[b]` hidden states right after them, and left-pad the batch again. Positions are the
        kept tokens' original ids (merged tokens: `merged_positions[b]`), or renumbered 0..n-1 (SparseVLM v1.x on
        1-D positions). Positions may be 1-D ids [B, L] or M-RoPE's [B, L, 3]. `merged_members[b]` (optional, for
        the pictures): per merged token, the indices of the visual tokens (of the block before this call) it
        absorbed; each sample's `account.stages` gets the surviving block's provenance."""
        hidden, positions = state.hidden_states, state.position_ids
        padded, device = hidden.shape[1], hidden.device
        merged = merged or [None] * len(keep)
        rows_h, rows_p, new_layouts = [], [], []
        for b, layout in enumerate(self.layouts):
            start = layout.visual_start(padded)
            kept = keep[b]
            if kept is None:
                kept = torch.arange(layout.visual, device=device)
            index = torch.cat(
                [
                    torch.arange(start - layout.prefix, start, device=device),
                    start + kept,
                    torch.arange(start + layout.visual, padded, device=device),
                ]
            )
            h, p = hidden[b, index], positions[b, index]
            extra = merged[b]
            n_extra = 0 if extra is None else len(extra)
            if n_extra:
                cut = layout.prefix + len(kept)
                h = torch.cat([h[:cut], extra.to(h.dtype), h[cut:]])
                if not renumber_positions:
                    extra_positions = None if merged_positions is None else merged_positions[b]
                    if extra_positions is None:
                        raise ValueError("merged tokens need positions: renumber, or give merged_positions")
                    p = torch.cat([p[:cut], extra_positions.to(p.device), p[cut:]])
            if renumber_positions:
                p = torch.arange(len(h), device=device)
            rows_h.append(h)
            rows_p.append(p)
            tokens = None
            if layout.tokens is not None:
                tokens = layout.tokens.select(kept.cpu()).with_merged(n_extra)
            if tokens is not None and (keep[b] is not None or n_extra):
                members = None if merged_members is None else merged_members[b]
                absorbed = self._absorbed(b, layout.tokens, kept.cpu(), members, n_extra)
                self.accounts[b].stages.append(Stage(self.current_layer, tokens, absorbed))
            new_layouts.append(VisualLayout(layout.prefix, len(kept) + n_extra, layout.suffix, tokens))
        self.layouts = new_layouts
        longest = max(len(h) for h in rows_h)
        new_hidden = hidden.new_zeros((len(rows_h), longest, hidden.shape[-1]))
        new_positions = positions.new_zeros((len(rows_h), longest, *positions.shape[2:]))
        token_mask = torch.zeros((len(rows_h), longest), dtype=torch.bool, device=device)
        for b, (h, p) in enumerate(zip(rows_h, rows_p, strict=True)):
            new_hidden[b, longest - len(h) :] = h
            new_positions[b, longest - len(h) :] = p
            token_mask[b, longest - len(h) :] = True
        has_padding = any(len(h) != longest for h in rows_h)
        return SequenceState(new_hidden, new_positions, token_mask, has_padding)


@dataclasses.dataclass
class Selection:
    """What a pre-LLM method lets into the LLM from one image or clip when it does more than keep a subset: the
    layout of the tokens (kept ones with their provenance, merged ones as `MERGED`, in the order they enter the
    LLM) and their features (VisionZip's contextual tokens, PruMerge's weighted sums; in the space the hook ran in:
    the tower's for `select_tokens`, the LLM's for `select_projected`). `members` (optional, for the kept-token
    pictures): per merged token of `tokens`, in order, the indices into the block the hook saw of the tokens it
    absorbed (None where not said)."""

    tokens: MergeLayout
    features: torch.Tensor  # [len(tokens), C]
    members: list[torch.Tensor | None] | None = None


def apply_selection(tokens: MergeLayout, features: torch.Tensor, chosen) -> tuple[MergeLayout, torch.Tensor]:
    """(layout, features [n, C]) after a hook's answer: None keeps all, indices select, a `Selection` replaces.
    `features` are the block's rows in `tokens` order."""
    if chosen is None:
        return tokens, features
    if isinstance(chosen, Selection):
        if len(chosen.tokens) != len(chosen.features):
            raise ValueError(f"A Selection of {len(chosen.tokens)} tokens came with {len(chosen.features)} features")
        if chosen.members is None:
            return chosen.tokens, chosen.features
        if len(chosen.members) != chosen.tokens.num_merged:
            raise ValueError(f"{len(chosen.members)} members given for {chosen.tokens.num_merged} merged tokens")
        earlier = _earlier_absorbed(tokens, getattr(tokens, "absorbed", None))
        absorbed = absorbed_layouts(tokens, earlier, chosen.members)
        fields = {f.name: getattr(chosen.tokens, f.name) for f in dataclasses.fields(MergeLayout)}
        return AbsorbedLayout(**fields, absorbed=absorbed), chosen.features
    return tokens.select(chosen), features[chosen.to(features.device)]


def split_signals(signals, sizes: list[int]) -> list:
    """A tower's per-view signals (a tensor [views, ...], a dict of such, or None) cut into per-image pieces."""
    if signals is None:
        return [None] * len(sizes)
    if isinstance(signals, dict):
        parts = {key: value.split(sizes) for key, value in signals.items()}
        return [{key: parts[key][i] for key in signals} for i in range(len(sizes))]
    return list(signals.split(sizes))


class DecodePlan:
    """A method's per-generation object for the decode steps (`PruningMethod.decode_plan`): at each step the decoder
    loop asks every layer for an attention-row request and an extra key mask; it never frees cache slots."""

    def request(self, layer_idx: int, key_mask: torch.Tensor) -> RowsRequest | None:
        """A `RowsRequest` for the new token's attention row at this layer (`key_mask` [B, K]: its valid keys)."""
        return None

    def take_row(self, layer_idx: int, request: RowsRequest) -> None:
        """The request after the layer ran: `request.probs` [B, H, 1, K] holds the row."""

    def key_mask(self, layer_idx: int) -> torch.Tensor | None:
        """Bool [B, K] of keys this layer may attend to on top of the cache's own mask, or None for all."""
        return None


class PruningMethod:
    """A configured method. The base method is `none`: no pruning.

    Pre-LLM methods override `select_before_llm` (which patches each view keeps, before the projector), or the
    hooks around it: `tower_outputs` (what the vision tower gives them), `select_tokens` (the merged block before the
    projector) and `select_projected` (after it: the LLM's input embeddings); `prepare` sees the batch's prompt ids
    first. In-LLM methods override `plan` (the per-prefill object that scores and prunes between decoder layers)."""

    name = "none"
    needs_cls_attention = False  # whether select_before_llm wants the tower's [CLS] attention row
    needs_full_tower = False  # whether the method reads tower layers after the selected one (the loader keeps them)
    # whether select_projected wants, on a tower without [CLS] (Qwen-VL), each token's mean attention received at the
    # tower's last full-attention layer (per frame pair: [frames, tokens])
    needs_attention_received = False
    prune_newlines = False  # whether in-LLM ranking may drop LLaVA-NeXT's newline tokens
    # The anyres grid rule and merge this method's reference used (None: the checkpoint's; see llava.model.anyres)
    grid_rule: str | None = None
    merge_type: str | None = None
    # VTC-Bench's downsampling baseline: each image shrunk by this factor before the processor (None: as given)
    image_downsample: int | None = None
    nominal: int | None = None  # the model's nominal visual token count (llava.sparse.budget), set by `bind`

    def bind(self, nominal: int) -> None:
        """Told by the model which nominal visual count budgets are stated against."""
        self.nominal = nominal

    def record_flops(self, flops: float) -> None:
        """Count `flops` of the method's own pre-LLM work on the image or clip being encoded (call it from the hooks
        that see that block); the family adds them to that sample's account."""
        self._pending_flops = getattr(self, "_pending_flops", 0.0) + flops

    def take_flops(self) -> float:
        """The FLOPs recorded since the last call; the families take them once per encoded block."""
        flops, self._pending_flops = getattr(self, "_pending_flops", 0.0), 0.0
        return flops

    def prepare(self, model, input_ids) -> None:
        """Called with a batch's prompt ids (a [B, T] tensor or a list of 1-D tensors, placeholders included)
        before its images are encoded (text-conditioned pre-LLM methods such as CDPruner read the question here)."""

    def tower_outputs(self, tower, pixels: torch.Tensor):
        """(features [views, tokens, C], per-view signals or None) of the vision tower for every view or frame of
        the batch: by default the features, with the [CLS] attention row when `needs_cls_attention`. Signals may be
        a tensor [views, ...] or a dict of such; each image's `select_tokens` receives its own views' part."""
        if self.needs_cls_attention:
            return tower.forward_with_cls_attention(pixels)
        return tower(pixels), None

    def select_projected(self, tokens: MergeLayout, embeddings: torch.Tensor, signals):
        """After the projector (Qwen-VL: after the merger), one image's block as it would enter the LLM
        (`embeddings` [len(tokens), D], newline tokens included): None to keep all, indices into the block, or a
        `Selection`. DivPrune, CDPruner and pooling act here."""
        return None

    def select_before_llm(self, features: torch.Tensor, cls_attention: torch.Tensor | None) -> torch.Tensor | None:
        """Indices [views, k] (sorted, raster order) of the patches to keep per view, or None to keep all.
        `features` [views, P, C] are the tower's selected-layer patch features."""
        return None

    def select_tokens(
        self, tokens: MergeLayout, features: torch.Tensor, cls_attention: torch.Tensor | None
    ) -> torch.Tensor | Selection | None:
        """Indices of the merged block's tokens (`tokens`, one image) that enter the LLM, None for all, or a
        `Selection`. `features` are the image's views [views, leading + patches, C]; `cls_attention` is its part of
        `tower_outputs`' signals.
        The default keeps, per view (a video: per frame), the patches `select_before_llm` picks, in merge order,
        and every newline token; a [CLS] token leading each view's features (`cls_patch`, Video-LLaVA's frames) is
        dropped, as FasterVLM's video branch does, so k counts patches. Methods that rank the whole block override
        this."""
        patches = features[:, tokens.leading :]
        keep = self.select_before_llm(patches, cls_attention)
        if keep is None:
            return None
        chosen = torch.zeros(patches.shape[:2], dtype=torch.bool)
        chosen.scatter_(1, keep.cpu(), True)
        is_patch = tokens.patch >= 0
        picked = chosen[tokens.view.clamp(min=0), tokens.patch.clamp(min=0)] & is_patch & (tokens.view >= 0)
        mask = (tokens.view == NEWLINE) | picked
        return torch.nonzero(mask).flatten()

    def decode_plan(self, layouts: list[VisualLayout], length: int) -> DecodePlan | None:
        """The decode-time plan after a prefill of padded `length` (cache slot i holds padded position i when no
        layer pruned in the prefill), or None: the plain decode step, compiled if asked."""
        return None

    def plan(self, layouts: list[VisualLayout], model, inputs) -> PrefillPlan:
        """The per-prefill object; `inputs` is the spliced `MultimodalInputs` (methods read embeddings there)."""
        text = model.config.text_config
        return PrefillPlan(layouts, text.num_hidden_layers, text, model.dtype, inputs.num_encoded, self.prune_newlines)

    def validate(self, model) -> None:
        """Raise now (when the model is built) if this configuration cannot run on `model`."""

    def describe(self) -> str:
        return self.name
