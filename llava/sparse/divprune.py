"""DivPrune (CVPR 2025): keep the most diverse subset of an image's tokens as they enter the LLM.

The reference (vbdi/divprune @799e2d9, `LAYER_INDEX=0`) takes the visual block of the LLM input embeddings (the
projector outputs; LLaVA-NeXT: the whole packed anyres block, newline tokens included), computes the cosine distance
D = 1 - cos between every pair of tokens and greedily solves max-min diversity: the first pick is the token whose
nearest neighbour is farthest (the second smallest entry of its column, the smallest being its own 0), every next
pick the token whose distance to the picked set is largest. `round(SUBSET_RATIO * N)` tokens are kept, in their
original order. It needs no attention and no text, so it applies to every family here: LLaVA-1.5, LLaVA-NeXT (one
global selection over the block), Qwen-VL (the merger outputs; kept tokens keep their 3-D M-RoPE ids), Video-LLaVA
and Qwen-VL clips (one selection over the whole clip).

Budget: `--retained-tokens T` is the ratio T / nominal (576 on LLaVA-1.5, 2,880 on NeXT, 2,056 for a Video-LLaVA
clip) applied to each block's own N, so T is kept exactly at the nominal count (`llava.sparse.budget`); on Qwen-VL,
T tokens of each image, or of each frame pair of a clip. `--retained-ratio` is the reference's `SUBSET_RATIO`; with
neither, the reference script's 0.098 (56 of 576).

Differences from the reference, both plain bugs fixed: the visual block is where the splice put it (the reference
slices `embeds[0, 35:35+N]`, a hard-coded vicuna_v1 system-prompt length and batch element 0 only), and a token is
never picked twice (the reference re-picks a selected token when its fp16 self-distance beats every remaining
score, e.g. on duplicate tokens, which duplicates it in the sequence).

Memory: the reference holds the full N x N distance matrix. Here only the first step needs all pairs (the nearest
neighbour distances), computed in blocks of columns so that at most `BLOCK_ENTRIES` distances exist at once (one
block for any image; a long clip is chunked); every later step computes the picked token's row, as the reference
reads it from its matrix. The values are the same products; only the rounding of a blocked product may differ.
"""

from __future__ import annotations

import torch

from llava.sparse.budget import Budget
from llava.sparse.engine import PruningMethod
from llava.sparse.registry import register

DEFAULT_RATIO = 0.098  # run_Divprune.sh's SUBSET_RATIO: 56 of 576 tokens
BLOCK_ENTRIES = 1 << 24  # distances held at once in the first step (16 M: 32 MiB in fp16)


def divprune_order(embeddings: torch.Tensor, count: int, block_entries: int = BLOCK_ENTRIES) -> torch.Tensor:
    """The first `count` picks of the greedy max-min selection over `embeddings` [N, D], in pick order, computed in
    the embeddings' dtype (the reference's). Picked tokens are never picked again."""
    n = len(embeddings)
    normed = embeddings / embeddings.norm(dim=1, keepdim=True)
    width = max(1, block_entries // n)
    nearest = torch.cat(  # column j: its second smallest distance (the smallest is its own, about 0)
        [
            (1.0 - normed @ normed[start : start + width].T).topk(2, dim=0, largest=False).values[1]
            for start in range(0, n, width)
        ]
    )
    picks = [torch.argmax(nearest)]
    score = torch.full_like(nearest, float("inf"))
    for _ in range(1, count):
        last = picks[-1].view(1)
        score = torch.minimum(score, 1.0 - (normed.index_select(0, last) @ normed.T)[0])
        score.index_fill_(0, last, float("-inf"))  # fixed: the reference may re-pick a selected token
        picks.append(torch.argmax(score))
    return torch.stack(picks)


def divprune_flops(num_tokens: int, kept: int, dim: int) -> float:
    """Multiply-adds x 2 of one selection: all pairwise products once (first step), one row per later pick."""
    return 2.0 * num_tokens * num_tokens * dim + 2.0 * max(0, kept - 1) * num_tokens * dim


class DivPrune(PruningMethod):
    """Greedy max-min diverse subset of each image's (clip's) projected tokens."""

    name = "divprune"

    def __init__(self, retained_tokens: int | None = None, ratio: float | None = None, fp32: bool = False) -> None:
        if retained_tokens is None and ratio is None:
            ratio = DEFAULT_RATIO
        self.budget = Budget(retained_tokens, ratio)
        self.fp32 = fp32

    def describe(self) -> str:
        if self.budget.ratio is not None:
            return f"divprune ratio={self.budget.ratio:g}"
        if self.nominal is None:
            return f"divprune T={self.budget.tokens} per image (per frame pair of a clip)"
        return f"divprune T={self.budget.tokens} (round({self.budget.tokens}/{self.nominal} x N) of each block)"

    def validate(self, model) -> None:
        tokens = self.budget.tokens
        if tokens is None:
            return
        if tokens < 1 or (self.nominal is not None and tokens > self.nominal):
            bound = "at least 1" if self.nominal is None else f"in 1..{self.nominal} (the model's nominal count)"
            raise ValueError(f"divprune: --retained-tokens {tokens} must be {bound}")

    def keep_count(self, tokens) -> int:
        """Tokens kept of a block (`MergeLayout`): the budget's share of its N tokens (newlines included)."""
        n = len(tokens)
        nominal = self.nominal or n // max(1, tokens.num_views)  # Qwen-VL: T per image / per frame pair
        return self.budget.count(n, nominal)

    @torch.no_grad()
    def select_projected(self, tokens, embeddings, signals):
        count = self.keep_count(tokens)
        if count >= len(tokens):
            return None
        x = embeddings.float() if self.fp32 else embeddings
        self.record_flops(divprune_flops(len(tokens), count, embeddings.shape[-1]))
        return divprune_order(x, count).sort().values.cpu()


def _add_args(group) -> None:
    group.add_argument(
        "--divprune-fp32",
        action="store_true",
        help="DivPrune: compute the cosine distances in float32 (default: in the embeddings' dtype, as the "
        "reference does in fp16)",
    )


@register(
    "divprune",
    add_args=_add_args,
    help="DivPrune: max-min diverse subset of the projected tokens (budget: T / nominal of each block; default "
    "ratio 0.098)",
)
def _build(args, budget) -> DivPrune:
    return DivPrune(budget.tokens, budget.ratio, fp32=getattr(args, "divprune_fp32", False))
