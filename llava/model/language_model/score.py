"""SparseVLM token budgets: which layers prune, and how many visual tokens each keeps.

This is the file to edit to add a budget, as in the reference repository: add a row to `SCHEDULES`. A row maps
`RETAIN_TOKN` to the number of visual tokens *selected* after each layer of `PRUNING_LAYERS` (before recycled
cluster tokens are added, for version 1_0). Any budget not listed also works: `schedule_for` derives one (see
`derive_schedule`) whose equal-token count is within 1 of the request.

Versions: "1_0" = SparseVLM v1.5 (fixed schedule, token recycling, renumbered positions; the reference's default
`USE_VERSION`), "2_0" = SparseVLM+ (RoPE gravity correction, priority heads, no recycling, original positions).
v1.0's rank-adaptive mode (`--sparse --scale S --bias B`) prunes after `V1_0_LAYERS` and needs no schedule.
"""

from __future__ import annotations

import math

PRUNING_LAYERS = (2, 6, 15)
REFERENCE_VISUAL_TOKENS = 576  # the image the schedules below were tuned on (LLaVA-1.5: one 24 x 24 view)
V1_0_LAYERS = (2, 6, 15, 19)
VERSIONS = ("1_0", "2_0")

SCHEDULES: dict[str, dict[int, tuple[int, ...]]] = {
    "1_0": {
        192: (300, 200, 110),
        128: (303, 110, 36),
        96: (238, 48, 26),
        64: (66, 30, 17),
    },
    "2_0": {
        192: (300, 200, 118),
        128: (238, 108, 60),
        96: (246, 54, 28),
        64: (66, 34, 20),
    },
}

# Token recycling constants (spec 1.3): recycle the top 30 % (+1) of the pruned tokens, one cluster per 10 (+1).
RECYCLE_RATIO = 0.3
CLUSTER_RATIO = 0.1


def recycled_clusters(num_pruned: int) -> int:
    """Merged tokens added when `num_pruned` visual tokens are dropped (0 when none are)."""
    if num_pruned <= 0:
        return 0
    num_recycled = int(num_pruned * RECYCLE_RATIO) + 1
    return int(num_recycled * CLUSTER_RATIO) + 1


def visual_counts(
    schedule: tuple[int, ...],
    num_visual: int,
    num_layers: int,
    pruning_layers: tuple[int, ...] = PRUNING_LAYERS,
    recycling: bool = True,
) -> list[int]:
    """Visual tokens present after each decoder layer (pruning layers counted by their output)."""
    counts, current = [], num_visual
    stage = dict(zip(pruning_layers, schedule, strict=True))
    for layer in range(num_layers):
        if layer in stage and current > 0:
            keep = min(stage[layer], current - 1)
            current = keep + (recycled_clusters(current - keep) if recycling else 0)
        counts.append(current)
    return counts


def equal_tokens(counts_after: list[int], num_visual: int, convention: str = "reference") -> float:
    """Layer-averaged visual tokens. "reference": each layer counts its output (SparseVLM's log);
    "input": each layer counts what enters it (SparseVLM issue #35)."""
    if convention == "reference":
        return sum(counts_after) / len(counts_after)
    if convention == "input":
        return sum([num_visual] + counts_after[:-1]) / len(counts_after)
    raise ValueError(f"Unknown equal-token convention {convention!r}")


def derive_schedule(
    budget: int,
    version: str,
    num_visual: int = 576,
    num_layers: int = 32,
    pruning_layers: tuple[int, ...] = PRUNING_LAYERS,
) -> tuple[int, ...]:
    """A schedule for a budget `SCHEDULES` does not list.

    Rule: interpolate each layer's count linearly between the two listed budgets around `budget` (outside the
    listed range, scale the nearest listed schedule by budget / listed), then multiply the whole schedule by the
    factor alpha (found by bisection) that brings the equal-token count, computed exactly as the model will
    count it, closest to `budget`. Raises ValueError when no schedule gets within 1 token.
    """
    table = SCHEDULES[version]
    listed = sorted(table)
    lower = [b for b in listed if b <= budget]
    upper = [b for b in listed if b >= budget]
    if lower and upper:
        lo, hi = lower[-1], upper[0]
        w = 0.0 if hi == lo else (budget - lo) / (hi - lo)
        base = [a + w * (b - a) for a, b in zip(table[lo], table[hi], strict=True)]
    else:
        nearest = listed[0] if not lower else listed[-1]
        base = [c * budget / nearest for c in table[nearest]]
    recycling = version == "1_0"

    def realise(alpha: float) -> tuple[int, ...]:
        return tuple(max(1, min(num_visual - 1, round(alpha * c))) for c in base)

    def measure(alpha: float) -> float:
        counts = visual_counts(realise(alpha), num_visual, num_layers, pruning_layers, recycling)
        return equal_tokens(counts, num_visual)

    lo_a, hi_a = 0.0, 2.0 * num_visual / max(min(base), 1e-9)
    for _ in range(60):
        mid = (lo_a + hi_a) / 2
        if measure(mid) < budget:
            lo_a = mid
        else:
            hi_a = mid
    best = min((lo_a, hi_a), key=lambda a: abs(measure(a) - budget))
    if abs(measure(best) - budget) > 1:
        low, high = (
            equal_tokens(visual_counts((c,) * len(base), num_visual, num_layers, pruning_layers, recycling), num_visual)
            for c in (1, num_visual - 1)
        )
        raise ValueError(
            f"RETAIN_TOKN={budget} cannot be met with {num_visual} visual tokens and {num_layers} layers pruned after "
            f"layers {pruning_layers}: reachable equal-token counts run from {math.ceil(low)} to {math.floor(high)}. "
            f"Choose a budget in that range or add a schedule to SCHEDULES in {__name__}."
        )
    return realise(best)


def schedule_for(
    budget: int,
    version: str,
    num_visual: int = 576,
    num_layers: int = 32,
    pruning_layers: tuple[int, ...] = PRUNING_LAYERS,
) -> tuple[int, ...]:
    """The listed schedule for `budget` (if the model is the 32-layer, 576-token shape they were tuned for), else a
    derived one; clear errors for budgets that cannot be met."""
    if version not in VERSIONS:
        raise ValueError(f"Unknown SparseVLM version {version!r} (USE_VERSION / --sparse-version): use 1_0 or 2_0")
    if num_layers <= max(pruning_layers):
        raise ValueError(
            f"SparseVLM prunes after layers {pruning_layers}, but the model has only {num_layers} decoder layers"
        )
    if budget <= 0 or budget >= num_visual:
        raise ValueError(
            f"RETAIN_TOKN={budget} is not a pruning budget for {num_visual} visual tokens: use 0 < N < {num_visual}"
        )
    if budget in SCHEDULES[version] and num_visual == 576 and num_layers == 32 and pruning_layers == PRUNING_LAYERS:
        return SCHEDULES[version][budget]
    return derive_schedule(budget, version, num_visual, num_layers, pruning_layers)
