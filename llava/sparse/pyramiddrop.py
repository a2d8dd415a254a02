"""PyramidDrop (arXiv 2410.17247): in prefill, before each stage layer l (8, 16, 24), keep the image tokens the last
prompt token attends to most at layer l, a shrinking share of the image per stage (0.5, 0.25, 0.125 of it).

The ranking row is layer l's own: its input norm, q_proj and k_proj applied to the hidden states entering it (layer
l-1's output), RoPE at the current positions, the last prompt token's query over all keys (causal, padding masked),
softmax in float32, averaged over heads and sliced to the image ("cheap attention": one row per sample, no L x L
map; layer l then runs on the kept tokens, so the row is recomputed before the layer rather than read inside it).
Stage s keeps `int(N * ratio_s)` of the image's N tokens. After each stage the positions are renumbered 0..n-1
(quirk of the reference, 1-D ids only; M-RoPE's 3-D ids on Qwen-VL are kept, as no contiguous 3-D renumbering
exists), and decoding continues per stage at the pruned length: step t of layers after stage s sits at
t - (tokens dropped up to s), as the reference shifts its decode positions.

Specs: `specs/methods.md` section 8.
"""

from __future__ import annotations

import torch

from llava.model.language_model.decoder import SequenceState
from llava.sparse.attention_rows import RowsRequest, attention_rows
from llava.sparse.budget import Budget
from llava.sparse.dart import rotate
from llava.sparse.engine import PrefillPlan, PruningMethod, VisualLayout
from llava.sparse.registry import BudgetArgs, register

LAYERS = (8, 16, 24)  # the reference's layer_list
RATIOS = (0.5, 0.25, 0.125)  # its image_token_ratio_list (lambda = 0.5); the loader prepends 1.0


def equal_fraction(ratios: tuple[float, ...], layers: tuple[int, ...], num_layers: int) -> float:
    """Layer-averaged share of the image the decoder sees under a schedule (before int() truncation)."""
    spans = [b - a for a, b in zip((0, *layers), (*layers, num_layers), strict=True)]
    return sum(r * n for r, n in zip((1.0, *ratios), spans, strict=True)) / num_layers


def geometric_ratios(fraction: float, layers: tuple[int, ...], num_layers: int) -> tuple[float, ...]:
    """The ratios (lambda, lambda^2, ...) of the reference's pyramid whose layer-averaged share of the image is
    `fraction` (bisection on lambda in (0, 1]; the schedule's shape as the paper's, its scale from our budget)."""
    lowest = layers[0] / num_layers  # lambda -> 0: only the layers before the first stage see the image
    if fraction >= 1:
        return (1.0,) * len(layers)
    if fraction <= lowest:
        raise ValueError(
            f"pdrop: a budget of {fraction:.4g} of the visual tokens is out of reach with stages at layers "
            f"{list(layers)} of {num_layers}: layers 0-{layers[0] - 1} see every token, so the layer-averaged share is "
            f"above {lowest:.4g}. Start the stages earlier (--pdrop-layers) or give --pdrop-ratios."
        )
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        if equal_fraction(tuple(mid ** (s + 1) for s in range(len(layers))), layers, num_layers) < fraction:
            low = mid
        else:
            high = mid
    lam = (low + high) / 2
    return tuple(lam ** (s + 1) for s in range(len(layers)))


class PyramidDrop(PruningMethod):
    """PyramidDrop with stages before `layers`. The schedule is `ratios` (kept share of the image after each
    stage) when given; else our budget (`retained_tokens` at the model's nominal count, or `ratio`) read as the
    layer-averaged share of the image (equal tokens) and met by scaling the reference's geometric pyramid
    (lambda, lambda^2, lambda^3); else the reference's (0.5, 0.25, 0.125) (270 equal tokens of 576 on 32 layers)."""

    name = "pdrop"

    def __init__(
        self,
        layers: tuple[int, ...] = LAYERS,
        ratios: tuple[float, ...] | None = None,
        retained_tokens: int | None = None,
        ratio: float | None = None,
    ) -> None:
        layers = tuple(layers)
        if not layers or any(b <= a for a, b in zip(layers, layers[1:], strict=False)) or layers[0] < 1:
            raise ValueError(f"pdrop: stage layers {list(layers)} must be increasing and >= 1")
        if ratios is not None and (len(ratios) != len(layers) or not all(0 < r <= 1 for r in ratios)):
            raise ValueError(f"pdrop: give one ratio in (0, 1] per stage layer {list(layers)}, got {list(ratios)}")
        if ratios is not None and (retained_tokens is not None or ratio is not None):
            raise ValueError("pdrop: give either --pdrop-ratios or a budget (--retained-tokens / --retained-ratio)")
        if retained_tokens is not None and retained_tokens < 1:
            raise ValueError(f"pdrop: --retained-tokens {retained_tokens} must be at least 1")
        self.layers = layers
        self.ratios = None if ratios is None else tuple(ratios)
        self.retained_tokens, self.ratio = retained_tokens, ratio
        if self.ratios is None and retained_tokens is None and ratio is None:
            self.ratios = RATIOS if len(layers) == len(RATIOS) else tuple(0.5 ** (s + 1) for s in range(len(layers)))
        self.num_layers: int | None = None  # the model's depth, set by `validate`

    def fraction(self, num_visual: int) -> float | None:
        """The budget as a share of an image of `num_visual` tokens (None: fixed ratios)."""
        if self.ratios is not None:
            return None
        if self.ratio is not None:
            return self.ratio
        return Budget(self.retained_tokens).fraction(self.nominal or num_visual)

    def schedule(self, num_visual: int) -> tuple[float, ...]:
        """Kept share of the image after each stage, for an image of `num_visual` rankable tokens."""
        if self.ratios is not None:
            return self.ratios
        return geometric_ratios(self.fraction(num_visual), self.layers, self.num_layers)

    def describe(self) -> str:
        layers = ",".join(map(str, self.layers))
        if self.ratios is None and (self.nominal is None or self.num_layers is None):
            budget = f"ratio {self.ratio:g}" if self.ratio is not None else f"{self.retained_tokens} per image"
            return f"pdrop layers={layers} equal tokens={budget}"
        ratios = self.schedule(self.nominal) if self.num_layers else self.ratios
        text = f"pdrop layers={layers} ratios={','.join(f'{r:.4g}' for r in ratios)}"
        if self.nominal and self.num_layers:
            counts = [int(self.nominal * r) for r in ratios]
            spans = [b - a for a, b in zip((0, *self.layers), (*self.layers, self.num_layers), strict=True)]
            equal = sum(c * n for c, n in zip((self.nominal, *counts), spans, strict=True)) / self.num_layers
            text += f" ({self.nominal} -> {' -> '.join(map(str, counts))}, equal tokens {equal:.2f})"
        return text

    def validate(self, model) -> None:
        self.num_layers = model.config.text_config.num_hidden_layers
        if self.layers[-1] >= self.num_layers:
            raise ValueError(
                f"pdrop: stages before layers {list(self.layers)} need more than {self.layers[-1]} decoder layers; "
                f"the model has {self.num_layers} (pass --pdrop-layers)"
            )
        if self.ratios is None and (self.nominal is not None or self.ratio is not None):  # a fixed share: check now
            geometric_ratios(self.fraction(self.nominal or 1), self.layers, self.num_layers)

    def plan(self, layouts: list[VisualLayout], model, inputs) -> PyramidDropPlan:
        if self.num_layers is None:
            self.num_layers = model.config.text_config.num_hidden_layers
        return PyramidDropPlan(self, layouts, model, inputs)


class PyramidDropPlan(PrefillPlan):
    prunes_next_layer_input = True  # stage layer l is the first to see its kept tokens

    def __init__(self, method: PyramidDrop, layouts: list[VisualLayout], model, inputs) -> None:
        text = model.config.text_config
        super().__init__(layouts, text.num_hidden_layers, text, model.dtype, inputs.num_encoded, method.prune_newlines)
        self.method = method
        self.text_model = model.model
        self.stage = {layer - 1: s for s, layer in enumerate(method.layers)}  # ranked after layer l-1
        self.original = [self.rankable_count(b) for b in range(len(layouts))]  # N of each image
        self.schedules = [method.schedule(n) if n else None for n in self.original]

    def last_row(self, layer_idx: int, state: SequenceState) -> torch.Tensor:
        """Layer l's (= layer_idx + 1) attention of the last prompt token over all keys [B, L], softmax in float32
        (then in the model's dtype, as the reference casts it back), averaged over heads."""
        layer = self.text_model.layers[layer_idx + 1]
        attn = layer.self_attn
        hidden = state.hidden_states
        device = layer.input_layernorm.weight.device  # a device map may put layer l elsewhere
        hidden, positions = hidden.to(device), state.position_ids.to(device)
        x = layer.input_layernorm(hidden)
        cos, sin = self.text_model.rotary_emb(hidden, positions)
        keys = rotate(attn.k_proj(x), attn.head_dim, cos, sin)  # [B, H_kv, L, d]
        query = rotate(attn.q_proj(x[:, -1:]), attn.head_dim, cos[:, -1:], sin[:, -1:])  # [B, H, 1, d]
        batch = hidden.shape[0]
        request = RowsRequest(
            rows=torch.zeros((batch, 1), dtype=torch.long, device=device),
            row_mask=torch.ones((batch, 1), dtype=torch.bool, device=device),
            key_mask=state.token_mask.to(device),
        )  # the last (left-padded) position is every sample's last prompt token; it sees every real key
        probs = attention_rows(query, keys, request, attn.scaling)  # [B, H, 1, L] float32
        width = hidden.shape[-1]
        for account, layout in zip(self.accounts, self.layouts, strict=True):
            n = layout.length
            account.method_flops += n * width * (keys.shape[1] * keys.shape[-1] + 1) + width * width
            account.method_flops += query.shape[1] * n * attn.head_dim  # multiply-accumulates, as decoder_flops
        return probs[:, :, 0].to(hidden.dtype).mean(dim=1).to(state.hidden_states.device)

    def prune(self, layer_idx: int, state: SequenceState, request) -> SequenceState:
        if layer_idx not in self.stage:
            return state
        stage, padded = self.stage[layer_idx], state.hidden_states.shape[1]
        row = self.last_row(layer_idx, state)
        keep = []
        for b, layout in enumerate(self.layouts):
            if layout.visual == 0 or self.schedules[b] is None:
                keep.append(None)
                continue
            start = layout.visual_start(padded)
            count = min(int(self.original[b] * self.schedules[b][stage]), self.rankable_count(b))
            kept = self.top_tokens(b, row[b, start : start + layout.visual], count)
            self.accounts[b].kept[layer_idx] = kept
            keep.append(kept)
        # quirk: positions renumbered 0..n-1 after every stage (1-D ids); M-RoPE ids (Qwen-VL) are kept
        return self.rebuild(state, keep, renumber_positions=state.position_ids.dim() == 2)


def _add_args(group) -> None:
    group.add_argument(
        "--pdrop-layers",
        type=int,
        nargs="+",
        default=None,
        help=f"PyramidDrop: the layers before which it ranks and drops (default {' '.join(map(str, LAYERS))})",
    )
    group.add_argument(
        "--pdrop-ratios",
        type=float,
        nargs="+",
        default=None,
        help="PyramidDrop: share of the image kept after each stage (reference: 0.5 0.25 0.125); without it a "
        "--retained-tokens / --retained-ratio budget is met as equal tokens by scaling that pyramid",
    )


@register("pdrop", add_args=_add_args, help="PyramidDrop: last-token attention ranking at layers 8/16/24")
def _build(args, budget: BudgetArgs) -> PyramidDrop:
    layers = tuple(getattr(args, "pdrop_layers", None) or LAYERS)
    ratios = getattr(args, "pdrop_ratios", None)
    return PyramidDrop(layers, None if ratios is None else tuple(ratios), budget.tokens, budget.ratio)
