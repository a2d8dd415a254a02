"""SparseVLM (v1.0 rank-adaptive, v1.5 / USE_VERSION=1_0 schedules with recycling) and SparseVLM+ (2_0).

Text raters (spec 1.1) are picked once per prefill from the layer-0 embeddings; at each pruning layer the engine
hands us the raters' attention rows (softmax over all keys, post-RoPE, from inside that layer's attention call),
from which every visual token gets a score (1.2); the top ones stay, and for v1.x the best of the rest are
recycled into merged tokens (1.3). Reference quirks reproduced on purpose are marked "quirk".
"""

from __future__ import annotations

import torch

from llava.model.language_model import score as budgets
from llava.model.language_model.decoder import SequenceState
from llava.sparse.attention_rows import RowsRequest
from llava.sparse.budget import Budget
from llava.sparse.engine import PrefillPlan, PruningMethod, VisualLayout, patches_per_view
from llava.sparse.recycling import dpc_knn_clusters, merge_clusters

VIDEO_LAYERS = (1,)  # the video branch's single pruning layer (pruning_loc = [1])
PRIORITY_HEADS = 14  # SparseVLM+ keeps the 14 heads with the most rater-to-visual mass (hard-coded in the reference)


def select_raters(visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Indices (into `text`) of the text raters: softmax over text of the raw visual.text dot products, averaged
    over visual tokens; raters score strictly above the mean (quirk: no 1/sqrt(d), strict >, template tokens
    included). Computed in float32 (the reference's fp16 product can overflow)."""
    relation = (visual.float() @ text.float().T).softmax(dim=-1).mean(dim=0)  # [T]
    return torch.nonzero(relation > relation.mean()).flatten()


def gravity_table(inv_freq: torch.Tensor, max_distance: int, attention_scaling: float = 1.0) -> torch.Tensor:
    """SparseVLM+'s RoPE "attention gravity" R(i, j) = q1.k1 / sqrt(d) for all-ones q, k rotated to positions i, j.
    For rotate-half RoPE it depends only on the distance i - j: (2 / sqrt(d)) * sum_a cos((i - j) * theta_a), so
    one table indexed by distance replaces the reference's [heads, L, L] product."""
    head_dim = 2 * inv_freq.numel()
    distance = torch.arange(max_distance + 1, dtype=torch.float64, device=inv_freq.device)
    angles = distance[:, None] * inv_freq.double()[None, :]
    return (2 * attention_scaling**2 * angles.cos().sum(dim=-1) / head_dim**0.5).float()


def mrope_gravity(
    inv_freq: torch.Tensor,
    section: list[int],
    rater_pos: torch.Tensor,
    visual_pos: torch.Tensor,
    attention_scaling: float = 1.0,
) -> torch.Tensor:
    """SparseVLM+'s gravity R(i, j) under M-RoPE (Qwen-VL), [raters, visual]: frequencies 0..s0-1 rotate by the
    temporal id, the next s1 by the height id, the last s2 by the width id (transformers' `mrope_section`), so
    R(i, j) = (2 / sqrt(d)) * sum_a cos(theta_a * (P_i[c(a)] - P_j[c(a)])) for positions P [n, 3]."""
    axis = torch.cat([torch.full((n,), i % 3) for i, n in enumerate(section)]).to(rater_pos.device)
    offset = (rater_pos[:, None, :] - visual_pos[None, :, :]).double()  # [R, V, 3]
    angles = offset[..., axis] * inv_freq.to(offset.device).double()  # [R, V, d/2]
    head_dim = 2 * inv_freq.numel()
    return (2 * attention_scaling**2 * angles.cos().sum(dim=-1) / head_dim**0.5).float()


def rank_budget(relation: torch.Tensor, num_visual: int, scale: float, bias: float) -> int | None:
    """v1.0's adaptive keep count from the rank of the rater x visual attention block (float32, torch's default
    tolerance): min(int(rank * scale + bias), V - 1), or None (prune nothing, recycle nothing) when rank == V.
    (The paper deletes lambda * (V - rank) tokens instead; the code keeps scale * rank + bias.)"""
    rank = int(torch.linalg.matrix_rank(relation.float()))
    if num_visual - rank == 0:
        return None
    return max(0, min(int(rank * scale + bias), num_visual - 1))


class SparseVLM(PruningMethod):
    """version "1_0" (default; = v1.5), "2_0" (SparseVLM+), "v1.0" with `scale` / `bias` (rank-adaptive), or
    "video" (the reference's Video-LLaVA branch, specs/sparsevlm.md 6: one pruning layer, 1, keeping exactly
    rank(P) tokens of the whole clip, recycling and truncated positions as v1.0; the branch's call with 5 of the
    6 arguments its scorer requires, a TypeError at the pruning layer as published, is fixed)."""

    name = "sparsevlm"

    def __init__(
        self,
        version: str = "1_0",
        retained_tokens: int = 192,
        scale: float = 13.5,
        bias: float = 0.0,
        priority_heads: int = PRIORITY_HEADS,
        seed: int | None = 0,
        ratio: float | None = None,
        pruning_layers: tuple[int, ...] | None = None,
    ) -> None:
        if version not in ("v1.0", "video", *budgets.VERSIONS):
            raise ValueError(f"Unknown SparseVLM version {version!r}: use v1.0, 1_0, 2_0 or video")
        if version == "video":
            scale, bias = 1.0, 0.0  # keep = rank(P): no scale or bias in the video branch
        self.version = version
        self.retained_tokens = retained_tokens
        self.ratio = ratio  # --retained-ratio: the budget becomes this fraction of the nominal count when bound
        self.scale, self.bias = scale, bias
        self.priority_heads = priority_heads
        self.seed = seed
        self.recycling = version != "2_0"
        self.renumber_positions = version != "2_0"  # quirk (v1.x): positions truncated to 0..n-1 after pruning
        default = {"v1.0": budgets.V1_0_LAYERS, "video": VIDEO_LAYERS}.get(version, budgets.PRUNING_LAYERS)
        self.layers = tuple(pruning_layers) if pruning_layers else default
        if not self.rank_adaptive and len(self.layers) != len(budgets.PRUNING_LAYERS):
            raise ValueError(f"SparseVLM {version} prunes at 3 layers (default {default}), got {self.layers}")

    @property
    def rank_adaptive(self) -> bool:
        """v1.0 and the video branch keep a count from the rank of the rater x visual attention, not a schedule."""
        return self.version in ("v1.0", "video")

    def bind(self, nominal: int | None) -> None:
        super().bind(nominal)
        if self.ratio is not None and nominal is not None:
            self.retained_tokens = Budget(ratio=self.ratio).count(nominal, nominal)

    def budget_for(self, num_visual: int) -> int:
        """The budget for an image of `num_visual` tokens where images have their own counts (Qwen-VL): the count
        as given, or `ratio` of the image's tokens."""
        if self.ratio is not None and self.nominal is None:
            return Budget(ratio=self.ratio).count(num_visual, num_visual)
        return self.retained_tokens

    def describe(self) -> str:
        if self.version == "video":
            return "sparsevlm video (rank, layer 1)"
        if self.version == "v1.0":
            return f"sparsevlm v1.0 (rank, scale={self.scale}, bias={self.bias})"
        budget = f"ratio {self.ratio:g}" if self.ratio is not None and self.nominal is None else self.retained_tokens
        layers = "" if self.layers == budgets.PRUNING_LAYERS else f" layers={','.join(map(str, self.layers))}"
        return f"sparsevlm {self.version} RETAIN_TOKN={budget}{layers}"

    def schedule(self, num_visual: int, num_layers: int, view_tokens: int | None = None) -> tuple[int, ...] | None:
        """Tokens kept after each pruning layer for an image of `num_visual` rankable tokens (None: keep all).

        On a single-view model (LLaVA-1.5) the budget's schedule is used as listed or derived
        (`score.schedule_for`). Elsewhere the ratio is kept: the schedule of the same fraction of one
        `view_tokens`-token view (LLaVA-NeXT: its views; Qwen-VL, whose images each have their own count and whose
        budget is per image: LLaVA's 576-token view, `score.REFERENCE_VISUAL_TOKENS`), derived for the model's
        depth and pruning layers and scaled to `num_visual` (specs/llava_next.md 5.6, specs/qwen2_5_vl.md 6.2)."""
        if self.rank_adaptive:
            if num_layers <= max(self.layers):
                raise ValueError(
                    f"SparseVLM {self.version} prunes after layers {self.layers}; the model has {num_layers} layers"
                )
            return None
        nominal = self.nominal or num_visual
        retained = self.retained_tokens
        if view_tokens is None:
            retained = self.budget_for(num_visual)
            if retained >= num_visual:
                return None  # the image has no more tokens than the budget
            view_tokens = budgets.REFERENCE_VISUAL_TOKENS
        if view_tokens == nominal == num_visual:
            return budgets.schedule_for(retained, self.version, num_visual, num_layers, self.layers)
        per_view = round(retained * view_tokens / nominal)
        try:
            base = budgets.schedule_for(per_view, self.version, view_tokens, num_layers, self.layers)
        except ValueError as err:
            raise ValueError(
                f"RETAIN_TOKN={retained} of {nominal} visual tokens is {per_view} per "
                f"{view_tokens}-token view, which SparseVLM's schedules cannot reach ({err}). "
                f"Scale that per-view range by {nominal / view_tokens:.3g} for the totals that work."
            ) from None
        return tuple(max(1, min(num_visual - 1, round(c * num_visual / view_tokens))) for c in base)

    def validate(self, model) -> None:
        """Raise now (at model build time) if this budget cannot run on `model`."""
        patches = patches_per_view(model)
        layers = model.config.num_hidden_layers
        if patches is None:  # per-image counts: check the layers and the budget on LLaVA's reference view
            if not self.rank_adaptive and self.ratio is None and self.retained_tokens < budgets.REFERENCE_VISUAL_TOKENS:
                budgets.schedule_for(
                    self.retained_tokens, self.version, budgets.REFERENCE_VISUAL_TOKENS, layers, self.layers
                )
            elif max(self.layers) >= layers:
                raise ValueError(f"SparseVLM prunes after layers {self.layers}; the model has {layers} layers")
            return
        self.schedule(self.nominal or patches, layers, patches)

    def plan(self, layouts: list[VisualLayout], model, inputs) -> SparseVLMPlan:
        return SparseVLMPlan(self, layouts, model, inputs)


class SparseVLMPlan(PrefillPlan):
    def __init__(self, method: SparseVLM, layouts: list[VisualLayout], model, inputs) -> None:
        text = model.config.text_config
        super().__init__(layouts, text.num_hidden_layers, text, model.dtype, inputs.num_encoded, method.prune_newlines)
        self.method = method
        self.model = model
        self.stage = {layer: i for i, layer in enumerate(method.layers)}
        view_tokens = patches_per_view(model)
        self.rankable = [self.rankable_count(b) for b in range(len(layouts))]
        self.schedules = {v: method.schedule(v, text.num_hidden_layers, view_tokens) for v in set(self.rankable) if v}
        # Raters, once per prefill, from the layer-0 inputs, never recomputed from deeper layers (quirk); stored
        # relative to the text suffix start, which moves as the visual block shrinks.
        embeds, padded = inputs.inputs_embeds, inputs.inputs_embeds.shape[1]
        self.raters: list[torch.Tensor] = []
        for b, layout in enumerate(layouts):
            if layout.visual == 0:
                self.raters.append(torch.zeros(0, dtype=torch.long, device=embeds.device))
                continue
            start = layout.visual_start(padded)
            visual = embeds[b, start : start + layout.visual]
            suffix = embeds[b, start + layout.visual : padded]
            self.raters.append(select_raters(visual, suffix))
            self.accounts[b].method_flops += 2.0 * layout.visual * layout.suffix * text.hidden_size

    def rows_request(self, layer_idx: int, state: SequenceState) -> RowsRequest | None:
        if layer_idx not in self.stage:
            return None
        rows = [lay.prefix + lay.visual + r for lay, r in zip(self.layouts, self.raters, strict=True)]
        return self.make_rows_request(rows, state)

    def prune(self, layer_idx: int, state: SequenceState, request: RowsRequest | None) -> SequenceState:
        if request is None:
            return state
        padded = state.hidden_states.shape[1]
        keep, merged, merged_positions, members = [], [], [], []
        for b, layout in enumerate(self.layouts):
            n_raters = len(self.raters[b])
            if layout.visual == 0 or n_raters == 0:
                keep.append(None)
                merged.append(None)
                merged_positions.append(None)
                members.append(None)
                continue
            start = layout.visual_start(padded)
            probs = request.probs[b, :, :n_raters, start : start + layout.visual]  # [H, raters, V]
            relation = self._relation(probs, state.position_ids[b], request.rows[b, :n_raters], start, layout.visual)
            scores = relation.mean(dim=0)  # [V]
            self.accounts[b].method_flops += 4.0 * probs.shape[0] * n_raters * padded * self.head_dim
            count = self._keep_count(b, relation, self.rankable_count(b), layer_idx)
            if count is None:  # v1.0 with rank == V, or an image within the budget: no pruning, no recycling
                keep.append(None)
                merged.append(None)
                merged_positions.append(None)
                members.append(None)
                continue
            kept = self.top_tokens(b, scores, count)
            self.accounts[b].kept[layer_idx] = kept
            keep.append(kept)
            tokens, centres, groups = (None, None, None)
            if self.method.recycling:
                tokens, centres, groups = self._recycle(b, state, scores, kept, start, layer_idx) or (None,) * 3
            merged.append(tokens)
            members.append(groups)
            merged_positions.append(None if centres is None else state.position_ids[b, start + centres])
        # quirk (v1.x): positions renumbered 0..n-1 after pruning. Under M-RoPE (Qwen-VL) ids are kept, as every
        # public port does, and a merged token takes its cluster centre's ids (specs/qwen2_5_vl.md 4.4).
        renumber = self.method.renumber_positions and state.position_ids.dim() == 2
        return self.rebuild(state, keep, merged, renumber, merged_positions, merged_members=members)

    def _relation(self, probs, positions, rows, start, num_visual) -> torch.Tensor:
        """Rater x visual attention [raters, V], averaged over heads (all heads; for 2_0 the priority heads of the
        gravity-corrected attention)."""
        if self.method.version != "2_0":
            return probs.mean(dim=0)
        rotary = self.model.model.rotary_emb
        rater_pos = positions[rows]
        visual_pos = positions[start : start + num_visual]
        if positions.dim() == 2:  # M-RoPE: R depends on the 3-D offset
            gravity = mrope_gravity(
                rotary.inv_freq, rotary.mrope_section, rater_pos, visual_pos, rotary.attention_scaling
            )
        else:
            distance = (rater_pos[:, None] - visual_pos[None, :]).abs()
            table = gravity_table(rotary.inv_freq.to(distance.device), int(distance.max()), rotary.attention_scaling)
            gravity = table[distance]
        corrected = probs / gravity[None]  # quirk: R may approach 0 for distances near 1900+
        heads = min(self.method.priority_heads, corrected.shape[0])
        mass = corrected.sum(dim=(1, 2))
        chosen = torch.topk(mass, heads).indices
        return corrected[chosen].mean(dim=0)

    def _keep_count(self, b: int, relation: torch.Tensor, num_visual: int, layer_idx: int) -> int | None:
        if self.method.rank_adaptive:
            return rank_budget(relation, num_visual, self.method.scale, self.method.bias)
        schedule = self.schedules[self.rankable[b]]
        if schedule is None:
            return None
        # quirk: capped at V - 1, so every pruning event drops at least one token (and, with recycling, adds one)
        return min(schedule[self.stage[layer_idx]], num_visual - 1)

    def _recycle(self, b, state, scores, kept, start, layer_idx) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(merged tokens [c, D], the visual index of each one's cluster centre [c]), or None if nothing was
        pruned."""
        pruned_mask = torch.ones_like(scores, dtype=torch.bool)
        pruned_mask[kept] = False
        pruned = torch.nonzero(pruned_mask).flatten()
        if len(pruned) == 0:
            return None
        num_recycled = int(len(pruned) * budgets.RECYCLE_RATIO) + 1  # quirk: "+1" even for one pruned token
        order = torch.topk(scores[pruned], num_recycled).indices
        tokens = state.hidden_states[b, start + pruned[order]]
        clusters = budgets.recycled_clusters(len(pruned))
        generator = None
        if self.method.seed is not None:
            generator = torch.Generator().manual_seed(self.method.seed * 1000 + layer_idx)
        self.accounts[b].method_flops += 2.0 * num_recycled * num_recycled * tokens.shape[-1]
        assignment, centres = dpc_knn_clusters(tokens, clusters, k=clusters, generator=generator)
        recycled = pruned[order]
        groups = [recycled[assignment == c] for c in range(clusters)]
        return merge_clusters(tokens, assignment, clusters), recycled[centres], groups
