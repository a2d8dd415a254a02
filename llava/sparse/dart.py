"""DART (arXiv 2502.11494): once in prefill, before decoder layer K (2), keep the visual tokens least similar to a few
pivots ("duplication-aware" pruning).

Pivots are the 4 image tokens and the 4 tokens after the image block (question and template) whose post-RoPE keys
of layer K-1 have the largest L1 norm (heads concatenated). Each pivot in turn picks the `M // 8` remaining image
tokens with the lowest cosine similarity to it, on layer K-1's output passed through the model's final RMSNorm;
the image pivots and all picks stay, the text pivots only pick. So `M` (`max_num_trunction`, 128 by default)
keeps 4 + 8 * floor(M / 8) tokens: "128" keeps 132. Kept tokens keep their original position ids (with gaps, as
FastV's plan does; M-RoPE's 3-D ids on Qwen-VL), and the pruned cache serves decoding.

Specs: `specs/methods.md` section 7. The keys and the normed states are recomputed from layer K-1's input and
output with the layer's own modules (no attention maps, no change to the attention call).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import rotate_half

from llava.model.language_model.decoder import SequenceState
from llava.sparse.budget import Budget
from llava.sparse.engine import PrefillPlan, PruningMethod, VisualLayout
from llava.sparse.registry import BudgetArgs, register

DEFAULT_MAX_TOKENS = 128  # the reference CLI's --max_num_trunction


def rotate(states: torch.Tensor, head_dim: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Projected states [B, L, H * d] -> per-head states [B, H, L, d] rotated by RoPE tables cos / sin [B, L, d]
    (transformers' `apply_rotary_pos_emb`, the same for 1-D and M-RoPE tables)."""
    batch, length, _ = states.shape
    states = states.view(batch, length, -1, head_dim).transpose(1, 2)
    return states * cos[:, None] + rotate_half(states) * sin[:, None]


def post_rope_keys(layer, rotary, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The post-RoPE keys [B, H_kv, L, d] a decoder layer computes from its input `hidden` [B, L, D] at
    `positions` ([B, L] ids or M-RoPE's [B, L, 3]): its own input norm, k_proj and the model's rotary table."""
    attn = layer.self_attn
    cos, sin = rotary(hidden, positions)
    return rotate(attn.k_proj(layer.input_layernorm(hidden)), attn.head_dim, cos, sin)


def pivot_order(image_pivots: list[int], text_pivots: list[int]) -> list[int]:
    """The order the reference visits its pivots: it iterates `set(image_pivots + text_pivots)`.

    quirk: CPython iterates a set of ints in hash-table slot order, and an int hashes to itself (no hash
    randomisation for ints), so the order depends only on the values and their insertion order: 8 pivots live in a
    32-slot table at slot `index mod 32` (linear probing on a collision). Building the same set from the same
    absolute sequence indices (the sample's unpadded positions, as the batch-1 reference sees them) in the same
    order (top-k order, image pivots first) reproduces the reference's order exactly and deterministically."""
    return list(set(image_pivots + text_pivots))


def dart_keep(
    key_l1: torch.Tensor,
    normed: torch.Tensor,
    start: int,
    count: int,
    per_pivot: int,
    image_pivots: int = 4,
    text_pivots: int = 4,
    rankable: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sorted indices (into the visual block) of the tokens DART retains for one sample.

    `key_l1` [L] and `normed` [L, D] cover the sample's unpadded sequence; the visual block is `start`..`start +
    count`, the text after it is where text pivots come from. `rankable` (indices into the block, default all) are
    the tokens that may be pivots or picks (newline tokens protected by the engine are not). Each pivot, in the
    reference's set order, picks `per_pivot` of the remaining candidates with the lowest cosine similarity."""
    if rankable is None:
        rankable = torch.arange(count, device=key_l1.device)
    image_norms = key_l1[start : start + count][rankable]
    image = (rankable[torch.topk(image_norms, min(image_pivots, len(rankable))).indices] + start).tolist()
    after = key_l1[start + count :]
    text = (torch.topk(after, min(text_pivots, len(after))).indices + start + count).tolist()
    chosen = set(image + text)
    candidates = set((rankable + start).tolist()) - set(image)
    pool = list(candidates)
    for pivot in pivot_order(image, text):
        if not pool or per_pivot == 0:
            break
        similarity = -F.cosine_similarity(normed[pivot], normed[pool], dim=-1)
        picked = [pool[i] for i in torch.topk(similarity, min(per_pivot, len(pool))).indices.tolist()]
        chosen.update(picked)
        candidates.difference_update(picked)
        pool = list(candidates)
    chosen.difference_update(text)  # text pivots pick but are not kept
    return torch.tensor(sorted(chosen), dtype=torch.long, device=key_l1.device) - start


class DART(PruningMethod):
    """DART before layer `k`. The budget `M` is `max_tokens` (the reference's `max_num_trunction`, an absolute
    count per image), else `ratio` of each image's rankable tokens, else `retained_tokens` at the model's nominal
    count (scaled to each image, `llava.sparse.budget`). It keeps `image_pivots + (image_pivots + text_pivots) *
    floor(M / (image_pivots + text_pivots))` tokens, M capped at the image's rankable count minus the image pivots
    (the reference's LLaVA-NeXT rule `min(M, N - 4)`); an image with no more rankable tokens than M is not
    pruned."""

    name = "dart"

    def __init__(
        self,
        max_tokens: int | None = None,
        retained_tokens: int | None = DEFAULT_MAX_TOKENS,
        ratio: float | None = None,
        k: int = 2,
        image_pivots: int = 4,
        text_pivots: int = 4,
    ) -> None:
        if k < 1:
            raise ValueError(f"DART K={k}: K must be >= 1 (it reads layer K-1's keys and output)")
        if image_pivots < 1 or text_pivots < 0:
            raise ValueError(f"DART pivots {image_pivots} / {text_pivots}: need >= 1 image pivot and >= 0 text pivots")
        if max_tokens is None and ratio is None and (retained_tokens is None or retained_tokens < 1):
            raise ValueError(f"dart: --retained-tokens {retained_tokens} must be at least 1")
        if max_tokens is not None and max_tokens < 0:
            raise ValueError(f"dart: --dart-max-tokens {max_tokens} must be >= 0")
        if ratio is not None and not 0 < ratio <= 1:
            raise ValueError(f"dart: --retained-ratio {ratio} must be in (0, 1]")
        self.max_tokens, self.retained_tokens, self.ratio = max_tokens, retained_tokens, ratio
        self.k, self.image_pivots, self.text_pivots = k, image_pivots, text_pivots

    def budget(self, rankable: int) -> float:
        """M for an image of `rankable` tokens."""
        if self.max_tokens is not None:
            return self.max_tokens
        if self.ratio is not None:
            return self.ratio * rankable  # the reference's ratio path: N * (1 - reduction_ratio), floored below
        return Budget(self.retained_tokens).count(rankable, self.nominal or rankable)

    def per_pivot(self, rankable: int) -> int | None:
        """Tokens each pivot picks in an image of `rankable` tokens, or None to keep the whole image."""
        budget = self.budget(rankable)
        if budget >= rankable or rankable <= self.image_pivots:
            return None
        return int(min(budget, rankable - self.image_pivots) // (self.image_pivots + self.text_pivots))

    def retained(self, rankable: int) -> int:
        """Tokens kept of an image of `rankable` tokens (given enough text after it for the text pivots)."""
        per_pivot = self.per_pivot(rankable)
        if per_pivot is None:
            return rankable
        return self.image_pivots + (self.image_pivots + self.text_pivots) * per_pivot

    def describe(self) -> str:
        if self.max_tokens is not None:
            budget = f"M={self.max_tokens} per image"
        elif self.ratio is not None:
            budget = f"M=ratio {self.ratio:g} of each image"
        else:
            budget = f"M={self.retained_tokens}"
        kept = f", keeps {self.retained(self.nominal)} of {self.nominal}" if self.nominal and self.ratio is None else ""
        return f"dart K={self.k} {budget}{kept}"

    def validate(self, model) -> None:
        layers = model.config.text_config.num_hidden_layers
        if self.k >= layers:
            raise ValueError(f"DART K={self.k} needs more than {self.k} decoder layers; the model has {layers}")

    def plan(self, layouts: list[VisualLayout], model, inputs) -> DARTPlan:
        return DARTPlan(self, layouts, model, inputs)


class DARTPlan(PrefillPlan):
    prunes_next_layer_input = True  # layer K is the first to see the kept tokens

    def __init__(self, method: DART, layouts: list[VisualLayout], model, inputs) -> None:
        text = model.config.text_config
        super().__init__(layouts, text.num_hidden_layers, text, model.dtype, inputs.num_encoded, method.prune_newlines)
        self.method = method
        self.text_model = model.model
        self.key_l1: torch.Tensor | None = None  # [B, L] L1 norms of layer K-1's post-RoPE keys

    def rows_request(self, layer_idx: int, state: SequenceState):
        """At layer K-1's input: the L1 norm of its post-RoPE keys, heads concatenated (with grouped-query attention
        the key heads as they are: repeating them would scale every norm by the same factor)."""
        if layer_idx == self.method.k - 1:
            keys = self.keys(state)
            self.key_l1 = torch.norm(keys.transpose(1, 2).flatten(2), p=1, dim=-1)
            hidden = state.hidden_states.shape[-1]
            for account, layout in zip(self.accounts, self.layouts, strict=True):
                account.method_flops += layout.length * (hidden + 1) * keys.shape[1] * keys.shape[-1]
        return None

    def keys(self, state: SequenceState) -> torch.Tensor:
        """Layer K-1's post-RoPE keys [B, H_kv, L, d] from its input."""
        layer = self.text_model.layers[self.method.k - 1]
        return post_rope_keys(layer, self.text_model.rotary_emb, state.hidden_states, state.position_ids)

    def normed(self, state: SequenceState, b: int, offset: int) -> torch.Tensor:
        """Layer K-1's output of sample b's unpadded tokens through the model's final RMSNorm [L, D]."""
        norm, hidden = self.text_model.norm, state.hidden_states[b, offset:]
        return norm(hidden.to(norm.weight.device)).to(hidden.device)  # a device map may hold the norm elsewhere

    def prune(self, layer_idx: int, state: SequenceState, request) -> SequenceState:
        if layer_idx != self.method.k - 1:
            return state
        method, padded = self.method, state.hidden_states.shape[1]
        keep = []
        for b, layout in enumerate(self.layouts):
            rankable = self.rankable_count(b)
            per_pivot = method.per_pivot(rankable) if layout.visual else None
            if per_pivot is None:
                keep.append(None)
                continue
            offset = padded - layout.length
            protected = self.protected(b)
            ranked = None if protected is None else torch.nonzero(~protected.to(state.hidden_states.device)).flatten()
            normed = self.normed(state, b, offset)
            kept = dart_keep(
                self.key_l1[b, offset:],
                normed,
                layout.prefix,
                layout.visual,
                per_pivot,
                method.image_pivots,
                method.text_pivots,
                ranked,
            )
            if protected is not None:  # protected (newline) tokens stay
                kept = torch.cat([kept, torch.nonzero(protected.to(kept.device)).flatten()]).sort().values
            pivots = method.image_pivots + min(method.text_pivots, layout.suffix)
            self.accounts[b].method_flops += normed.numel() + pivots * rankable * normed.shape[-1]
            self.accounts[b].kept[layer_idx] = kept
            keep.append(kept)
        self.key_l1 = None
        return self.rebuild(state, keep, renumber_positions=False)


def _add_args(group) -> None:
    group.add_argument(
        "--dart-max-tokens",
        type=int,
        default=None,
        help="DART: M (the reference's max_num_trunction), an absolute count per image: keeps 4 + 8 * floor(M / 8) "
        "(default: from --retained-tokens / --retained-ratio, else 128; NeXT's reference used 320)",
    )
    group.add_argument("--dart-k", type=int, default=2, help="DART: prune before this decoder layer (default 2)")
    group.add_argument(
        "--dart-pivots",
        type=int,
        nargs=2,
        default=(4, 4),
        metavar=("IMAGE", "TEXT"),
        help="DART: image and text pivots (default 4 4)",
    )


@register("dart", add_args=_add_args, help="DART: keep the image tokens least similar to key-norm pivots (layer 2)")
def _build(args, budget: BudgetArgs) -> DART:
    max_tokens = getattr(args, "dart_max_tokens", None)
    image_pivots, text_pivots = getattr(args, "dart_pivots", (4, 4))
    if max_tokens is not None and budget.given:
        raise ValueError("Give either --dart-max-tokens or --retained-tokens / --retained-ratio, not both")
    tokens = budget.tokens if budget.tokens is not None else DEFAULT_MAX_TOKENS
    return DART(max_tokens, tokens, budget.ratio, getattr(args, "dart_k", 2), image_pivots, text_pivots)
