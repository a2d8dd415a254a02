"""FastV: after layer K-1, drop the image tokens the last prompt token attends to least (static KV-cache mode).

The score of each image token is the head-averaged attention of the final prompt token (the ":" of
"ASSISTANT:") at layer K-1, as in every released FastV implementation; `score="paper"` instead averages the
attention each image token receives from all queries, normalised by how many causal queries can see it. Layers
0..K-1 run on every token; from layer K on, the kept tokens keep their original position ids, the pruned cache
serves decoding, and decode positions continue from the full prompt length. The image span comes from the
spliced input (never a constant like 35).
"""

from __future__ import annotations

import torch

from llava.model.language_model.decoder import SequenceState
from llava.sparse.attention_rows import RowsRequest
from llava.sparse.budget import Budget
from llava.sparse.engine import PrefillPlan, PruningMethod, VisualLayout, patches_per_view

SCORES = ("last", "paper")


class FastV(PruningMethod):
    name = "fastv"

    def __init__(
        self, k: int = 2, retained_tokens: int | None = 192, drop_ratio: float | None = None, score: str = "last"
    ) -> None:
        if k < 1:
            raise ValueError(f"FastV K={k}: K must be >= 1 (K=0, a random subset, is --method random)")
        if score not in SCORES:
            raise ValueError(f"FastV score {score!r}: use one of {SCORES}")
        if drop_ratio is not None and not 0 <= drop_ratio < 1:
            raise ValueError(f"FastV R={drop_ratio}: the drop ratio must be in [0, 1)")
        self.k, self.retained_tokens, self.drop_ratio, self.score = k, retained_tokens, drop_ratio, score

    def describe(self) -> str:
        budget = f"R={self.drop_ratio}" if self.drop_ratio is not None else f"keep={self.retained_tokens}"
        return f"fastv K={self.k} {budget} score={self.score}"

    def keep_count(self, num_visual: int) -> int:
        """Image tokens kept of `num_visual` rankable ones (the budget scaled to the image, `llava.sparse.budget`)."""
        if self.drop_ratio is not None:
            return round(num_visual * (1 - self.drop_ratio))
        return Budget(self.retained_tokens).count(num_visual, self.nominal or num_visual)

    def validate(self, model) -> None:
        layers = model.config.num_hidden_layers
        if self.k >= layers:
            raise ValueError(f"FastV K={self.k} needs more than {self.k} decoder layers; the model has {layers}")
        nominal = self.nominal or patches_per_view(model)
        if self.drop_ratio is None and not 0 < self.retained_tokens <= (nominal or self.retained_tokens):
            raise ValueError(f"fastv: --retained-tokens {self.retained_tokens} must be in 1..{nominal}")

    def plan(self, layouts: list[VisualLayout], model, inputs) -> FastVPlan:
        return FastVPlan(self, layouts, model, inputs)


class FastVPlan(PrefillPlan):
    prunes_next_layer_input = True  # layer K is the first to see the kept tokens

    def __init__(self, method: FastV, layouts, model, inputs) -> None:
        text = model.config.text_config
        super().__init__(layouts, text.num_hidden_layers, text, model.dtype, inputs.num_encoded, method.prune_newlines)
        self.method = method

    def rows_request(self, layer_idx: int, state: SequenceState) -> RowsRequest | None:
        if layer_idx != self.method.k - 1:
            return None
        if self.method.score == "last":
            rows = [torch.tensor([lay.length - 1]) for lay in self.layouts]
        else:
            rows = [torch.arange(lay.length) for lay in self.layouts]
        return self.make_rows_request([r.to(state.hidden_states.device) for r in rows], state)

    def prune(self, layer_idx: int, state: SequenceState, request: RowsRequest | None) -> SequenceState:
        if request is None:
            return state
        padded = state.hidden_states.shape[1]
        keep = []
        for b, layout in enumerate(self.layouts):
            if layout.visual == 0:
                keep.append(None)
                continue
            start = layout.visual_start(padded)
            probs = request.probs[b].mean(dim=0)  # [rows, keys], head average
            rows = int(request.row_mask[b].sum())
            self.accounts[b].method_flops += 4.0 * self.num_heads * rows * padded * self.head_dim
            if self.method.score == "last":
                scores = probs[0, start : start + layout.visual]
            else:  # mean received attention, normalised by the number of causal queries that see each key
                received = probs[:rows, start : start + layout.visual].sum(dim=0)
                seen_by = layout.length - (layout.prefix + torch.arange(layout.visual, device=received.device))
                scores = received / seen_by
            kept = self.top_tokens(b, scores, self.method.keep_count(self.rankable_count(b)))
            self.accounts[b].kept[layer_idx] = kept
            keep.append(kept)
        return self.rebuild(state, keep, renumber_positions=False)
