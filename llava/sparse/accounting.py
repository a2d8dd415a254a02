"""Per-sample efficiency accounting of a prefill: visual tokens per layer, equal tokens, FLOPs, time, KV cache.

Conventions (stated because the field mixes them up):
- equal tokens, "reference": mean over decoder layers of the visual tokens each layer *outputs* (SparseVLM's log,
  192.03 for its 192 schedule); "input": of the visual tokens each layer *receives* (SparseVLM issue #35).
- decoder FLOPs: sum over layers of 4nd^2 + 2n^2d + 3ndm with n the whole sequence entering the layer (multiply-
  accumulates, FastV/SparseVLM convention, three FFN matrices); with grouped-query attention (Qwen-VL) the key and
  value projections are n*d*d_kv each, so 2nd^2 + 2n*d*d_kv replaces 4nd^2 (d_kv = d for LLaVA); the pruning
  method's own work (scores, ranks, clustering) is counted apart, as `method_flops`. Vision tower, projector and
  lm_head are not included.
- times: decoder prefill (layers only) and whole generation, per batch (every sample of a batch shows its batch's
  time); CUDA events on GPU, perf_counter on CPU.
- KV cache: bytes of the keys and values this sample's real tokens occupy across all layers after prefill.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, NamedTuple

import torch

GREEN, RESET = "\033[32m", "\033[0m"


class Stage(NamedTuple):
    """The visual block's provenance after one pruning stage: `layer` is "input" (the block entering the LLM, after
    any pre-LLM method) or the decoder layer whose pruning produced it (the key of `SampleAccount.kept`); `tokens`
    is its `llava.model.anyres.MergeLayout` (merged tokens appended as MERGED); `absorbed`, when the method said,
    holds per merged token (in block order) the layout of the original tokens it absorbed, else None."""

    layer: int | str
    tokens: Any
    absorbed: list | None = None


@dataclasses.dataclass
class SampleAccount:
    num_visual: int  # visual tokens entering the LLM
    num_encoded: int | None = None  # visual tokens the vision tower produced (differs for pre-LLM pruning)
    visual_into_layer: list[int] = dataclasses.field(default_factory=list)
    visual_after_layer: list[int] = dataclasses.field(default_factory=list)
    tokens_into_layer: list[int] = dataclasses.field(default_factory=list)
    method_flops: float = 0.0
    hidden_size: int = 0
    intermediate_size: int = 0
    kv_size: int | None = None  # key/value projection width (kv heads x head dim); None = hidden_size (no GQA)
    kv_bytes_per_token_layer: int = 0
    prefill_ms: float | None = None
    total_ms: float | None = None
    method_ms: float | None = None  # the method's own steps inside the prefill (CPU host time; None on GPU)
    # indices (into the visual block entering that layer) of the visual tokens each pruning layer kept
    kept: dict[int, torch.Tensor] = dataclasses.field(default_factory=dict, repr=False)
    # the block's provenance entering the LLM and after every rebuild (`Stage`); empty without provenance
    stages: list[Stage] = dataclasses.field(default_factory=list, repr=False)
    # multi-view images (LLaVA-NeXT): tokens per view (0 = base) entering the LLM and reaching the last layer,
    # newline tokens among the visual tokens at both points
    views_into_llm: list[int] | None = None
    views_final: list[int] | None = None
    newlines_into_llm: int = 0
    newlines_final: int = 0

    def record_views(self, tokens, final: bool) -> None:
        """Per-view and newline counts of a visual block's provenance (`llava.model.anyres.MergeLayout`)."""
        if tokens.num_views < 2 and tokens.num_newlines == 0:
            return
        if final:
            self.views_final, self.newlines_final = tokens.per_view_counts(), tokens.num_newlines
        else:
            self.views_into_llm, self.newlines_into_llm = tokens.per_view_counts(), tokens.num_newlines

    def equal_tokens(self, convention: str = "reference") -> float:
        counts = {"reference": self.visual_after_layer, "input": self.visual_into_layer}.get(convention)
        if counts is None:
            raise ValueError(f"Unknown equal-token convention {convention!r}: use 'reference' or 'input'")
        return sum(counts) / len(counts) if counts else float(self.num_visual)

    @property
    def decoder_flops(self) -> float:
        d, m = self.hidden_size, self.intermediate_size
        d_kv = d if self.kv_size is None else self.kv_size
        return float(sum(2 * n * d * (d + d_kv) + 2 * n * n * d + 3 * n * d * m for n in self.tokens_into_layer))

    @property
    def kv_cache_bytes(self) -> int:
        """Keys and values of the real tokens each layer keeps, over all layers (prefill)."""
        return sum(self.tokens_into_layer) * self.kv_bytes_per_token_layer

    def visual_schedule(self) -> list[int]:
        """Visual token count out of the tower, into the LLM, and after every layer where it changed."""
        out = [self.num_visual] if self.num_encoded in (None, self.num_visual) else [self.num_encoded, self.num_visual]
        for count in self.visual_after_layer:
            if count != out[-1]:
                out.append(count)
        return out

    def as_metadata(self) -> dict:
        views = {}
        if self.views_into_llm is not None:
            views = {
                "visual_tokens_per_view": self.views_into_llm,
                "visual_tokens_per_view_final": self.views_final,
                "newline_tokens": self.newlines_into_llm,
                "newline_tokens_final": self.newlines_final,
            }
        return {
            "visual_tokens_encoded": self.num_encoded if self.num_encoded is not None else self.num_visual,
            "visual_tokens": self.num_visual,
            "visual_tokens_per_layer": list(self.visual_after_layer),
            "equal_tokens": round(self.equal_tokens("reference"), 4),
            "equal_tokens_input": round(self.equal_tokens("input"), 4),
            "decoder_tflops": round(self.decoder_flops * 1e-12, 6),
            "method_tflops": round(self.method_flops * 1e-12, 6),
            "prefill_ms": None if self.prefill_ms is None else round(self.prefill_ms, 3),
            "method_ms": None if self.method_ms is None else round(self.method_ms, 3),
            "total_ms": None if self.total_ms is None else round(self.total_ms, 3),
            "kv_cache_mb": round(self.kv_cache_bytes / 2**20, 3),
            **views,
        }

    def line(self, color: bool = False) -> str:
        def ms(x):
            return "n/a" if x is None else f"{x:.2f}"

        text = (
            f"[Efficiency INFO] Equal Tokens: {self.equal_tokens():.2f} "
            f"(input-count {self.equal_tokens('input'):.2f}), "
            f"Visual Tokens: {' -> '.join(map(str, self.visual_schedule()))}, "
            f"TFLOPs: {self.decoder_flops * 1e-12:.4f} (+{self.method_flops * 1e-12:.4f} method), "
            f"Prefill Time (ms): {ms(self.prefill_ms)}, Total Time (ms): {ms(self.total_ms)}, "
            f"KV Cache (MB): {self.kv_cache_bytes / 2**20:.2f}"
        )
        if self.views_into_llm is not None:
            text += (
                f", Views: {'+'.join(map(str, self.views_into_llm))} -> {'+'.join(map(str, self.views_final))} "
                f"(+{self.newlines_into_llm} -> +{self.newlines_final} newline)"
            )
        return f"{GREEN}{text}{RESET}" if color else text


def run_summary(metadata: list[dict], failed: int = 0) -> str:
    """The line a generator prints at the end of a run: how many answers, and the mean of each answer's
    `SampleAccount.as_metadata()` figures (equal tokens, visual tokens into the LLM, TFLOPs, times, KV cache)."""

    def mean(key: str) -> str:
        values = [m[key] for m in metadata if m.get(key) is not None]
        return "n/a" if not values else f"{sum(values) / len(values):.{4 if 'tflops' in key else 2}f}"

    return (
        f"[Efficiency INFO] {len(metadata)} answers ({failed} failed), mean Equal Tokens: {mean('equal_tokens')}, "
        f"Visual Tokens: {mean('visual_tokens')}, TFLOPs: {mean('decoder_tflops')} (+{mean('method_tflops')} "
        f"method), Prefill Time (ms): {mean('prefill_ms')}, Total Time (ms): {mean('total_ms')}, "
        f"KV Cache (MB): {mean('kv_cache_mb')}"
    )


class Timer:
    """Wall time of a region: CUDA events on a CUDA device (no sync until read), perf_counter otherwise."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)

    def __enter__(self) -> Timer:
        if self.cuda:
            self._start.record()
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self._end.record()
        else:
            self._elapsed = (time.perf_counter() - self._t0) * 1e3

    @property
    def ms(self) -> float:
        if self.cuda:
            self._end.synchronize()
            return self._start.elapsed_time(self._end)
        return self._elapsed
