"""HoliTom (NeurIPS 2025): holistic token merging for video, outside and inside the LLM (spec 12).

Outer merge, on a clip's projected tokens before the LLM (the reference's `holitom/llava_arch.py`):
1. cosines of every position between consecutive frames; a position is static over a window when all its cosines
   there exceed tau;
2. a DP over frames splits the clip into windows maximising the tokens saved ((#static positions) x (length - 1)),
   strict `>` so ties keep the shorter option; the keep ratio is raised to rho' = min(rho / (kept share), 1);
3. per window: static positions become one token each, their mean over the window's frames, then DPC-kNN clustering
   (round(n_static rho') centres, k = min(7, centres)) with each centre merged as 0.6 centre + 0.4 mean(members);
   the other (dynamic) positions keep, per frame, the top ceil(n_dynamic rho') by attention score, in raster order;
4. order: per window, its static tokens, then each frame's dynamic tokens.
The score is SigLIP's "mean attention received" at the last kept layer. On Video-LLaVA's LanguageBind tower it is the
same quantity at the selected layer (-2): per frame, the spatial attention averaged over heads and over all queries,
[CLS] included, read at the patch keys; computed from that layer's normed input and q/k projections one frame at a
time (one [heads, N, N] map alive at once). On Qwen-VL it is read at the tower's last full-attention block (SigLIP's
last layer attends over the whole frame too): per frame pair, the attention each 14-px patch receives averaged over
heads and queries, then over the 2 x 2 patches of each merged token (`qwen_vl.run_with_attention_received`).

Frames are our layouts' views (Video-LLaVA frames; Qwen-VL frame pairs). Video-LLaVA's [CLS] tokens are kept, unpruned
and outside the ratio, at the head of their frame's dynamic tokens. A merged token takes its representative's
provenance (a static token: the window's first frame at the centre's position), so Qwen's M-RoPE ids stay those of
a real cell and the accounting counts it in that frame.

Inner merge (the reference's `modeling_qwen2.py`), at decoder layer `k` (scripts: 18) in prefill: the top
round(n (1 - r)) visual tokens by the head-mean attention of the last prompt token at layer k-1 stay; each other token
is averaged into its most cosine-similar kept token, sequentially in index order (h <- (h + h_d) / 2); kept tokens
keep their original positions. `k = 0` is the reference's "HoliTom (w/o M)".

Images are refused (video only). Not exposed: the reference's D (dominant/contextual split of dynamic tokens, default
0 = pure top-k) and NO_BETA (its function default takes the beta path, as here).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from llava.model.language_model.decoder import SequenceState
from llava.sparse.attention_rows import RowsRequest
from llava.sparse.budget import Budget
from llava.sparse.dycoke import VideoPruning, frame_features, frame_tokens
from llava.sparse.engine import PrefillPlan, Selection
from llava.sparse.recycling import dpc_knn_clusters
from llava.sparse.registry import VIDEO, register

DEFAULT_RATIO = 0.1  # RETAIN_RATIO: the code's default and the scripts' lowest setting
INNER_LAYER = 18  # HOLITOM_k in every script
INNER_RATIO = 0.5  # HOLITOM_r in every script
BETA = 0.6
KNN = 7
MAX_WINDOW = 1024


def scripts_tau(ratio: float) -> float:
    """The scripts' tau (T): 0.65 at RETAIN_RATIO 0.10, 0.80 at 0.15-0.25 (also the code's default)."""
    return 0.65 if ratio <= 0.1 else 0.8


def static_counts(similarity: torch.Tensor, tau: float) -> torch.Tensor:
    """count[s, e] [F, F]: (#positions whose cosine exceeds tau for every consecutive pair in frames s..e) x (e - s);
    `similarity` [F - 1, n] holds the cosines of frames (t, t + 1)."""
    frames = similarity.shape[0] + 1
    static = (similarity > tau).int()
    count = torch.zeros(frames, frames)
    for start in range(frames - 1):
        run = torch.cumprod(static[start:], dim=0).sum(dim=-1).float()  # [F - 1 - start]: window start..start+1+j
        count[start, start + 1 :] = run.cpu() * torch.arange(1, frames - start)
    return count


def static_windows(
    similarity: torch.Tensor, tau: float, max_window: int = MAX_WINDOW
) -> tuple[list[tuple[int, int]], float]:
    """The reference's DP: windows [(start, end)] covering the frames and the tokens they save, dp[F - 1].
    dp[i] = max(dp[i-1], max over w = 2..min(i+1, max_window) of dp[i-w] + count[i-w+1, i]), strict `>`."""
    count = static_counts(similarity, tau).tolist()
    frames = len(count)
    dp, prev = [0.0] * frames, [0] * frames
    for i in range(frames):
        best, best_start = (dp[i - 1] if i > 0 else 0.0), i
        for width in range(2, min(i + 1, max_window) + 1):
            j = i - width
            value = (dp[j] if j >= 0 else 0.0) + count[j + 1][i]
            if value > best:
                best, best_start = value, j + 1
        dp[i], prev[i] = best, best_start
    windows, i = [], frames - 1
    while i >= 0:
        windows.append((prev[i], i))
        i = prev[i] - 1
    return windows[::-1], dp[-1]


def cluster_merge(
    x: torch.Tensor, num_clusters: int, knn: int = KNN, beta: float = BETA, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPC-kNN over the rows of `x` [m, D] (k = min(knn, clusters), distances Euclidean / sqrt(D), density noise 1e-6
    rand): (centre rows in index order [c], merged tokens [c, D]): beta x centre + (1 - beta) x the mean of the rows
    whose nearest centre it is, or the centre alone when none is. (A row exactly as far from two centres goes to the
    higher-scoring one here, to the lower index in the reference.)"""
    assignment, by_score = dpc_knn_clusters(x, num_clusters, min(knn, num_clusters), generator)
    centres, order = by_score.sort()
    slot = torch.empty_like(order)  # a centre's place by score -> its place in index order
    slot[order] = torch.arange(num_clusters, device=x.device)
    members = torch.ones(len(x), dtype=torch.bool, device=x.device)
    members[centres] = False
    owner = slot[assignment[members]]
    sums = torch.zeros((num_clusters, x.shape[-1]), dtype=x.dtype, device=x.device).index_add_(0, owner, x[members])
    counts = torch.bincount(owner, minlength=num_clusters)
    merged = x[centres].clone()
    has = counts > 0
    merged[has] = beta * x[centres[has]] + (1 - beta) * (sums[has] / counts[has, None].to(x.dtype))
    return centres, merged


@torch.no_grad()
def mean_attention_received(tower, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Video-LLaVA's tower features [B, T, 1 + P, C] and, per frame, the attention each patch receives in the selected
    layer, averaged over heads and queries ([CLS] query included): [B, T, P] float32. Recomputed from the layer's
    `layer_norm1` output (after the temporal block) and its q/k projections, one frame at a time."""
    hidden, normed = tower.hidden_states_and_attention_input(videos)
    attn = tower.vision_tower.encoder.layers[tower.num_layers_used - 1].self_attn
    scores = []
    for x in normed:  # [N, C]: one frame
        q = attn.q_proj(x).view(len(x), attn.num_heads, attn.head_dim).transpose(0, 1).float()
        k = attn.k_proj(x).view(len(x), attn.num_heads, attn.head_dim).transpose(0, 1).float()
        probs = (torch.matmul(q, k.transpose(1, 2)) * attn.scale).softmax(dim=-1)  # [heads, N, N]
        scores.append(probs.mean(dim=0).mean(dim=0)[1:])
    return hidden.to(videos.dtype), torch.stack(scores).view(videos.shape[0], tower.num_frames, -1)


def running_merge(states: torch.Tensor, scores: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The inner merge on one sample's visual states [n, D]: the `keep` top-scoring tokens stay (indices sorted);
    every other token, in index order, is averaged into its most cosine-similar kept token, h <- (h + h_d) / 2.
    Returns (kept indices, their merged states). Bit-identical to the sequential loop: tokens merging into different
    targets are independent, so each round merges every target's next member at once."""
    top = torch.topk(scores, keep).indices
    dropped_mask = torch.ones(len(states), dtype=torch.bool, device=states.device)
    dropped_mask[top] = False
    dropped = torch.nonzero(dropped_mask).flatten()
    out = states.clone()
    if len(dropped):
        a, b = F.normalize(states[dropped].float(), dim=-1), F.normalize(states[top].float(), dim=-1)
        target = top[torch.matmul(a, b.T).argmax(dim=-1)]
        order = torch.argsort(target, stable=True)  # members of one target stay in index order
        grouped = target[order]
        first = torch.ones_like(grouped, dtype=torch.bool)
        first[1:] = grouped[1:] != grouped[:-1]
        position = torch.arange(len(grouped), device=states.device)
        start = torch.cummax(torch.where(first, position, 0), dim=0).values
        rank = torch.empty_like(position)
        rank[order] = position - start
        for step in range(int(rank.max()) + 1):
            now = rank == step
            out[target[now]] = (out[target[now]] + states[dropped[now]]) / 2
    kept = top.sort().values
    return kept, out[kept]


class HoliTom(VideoPruning):
    """HoliTom's outer merge (pre-LLM, per clip) and, when `k` > 0, its inner merge at decoder layer `k`.

    `ratio` is RETAIN_RATIO (the share of each clip's patches kept by the outer merge, [CLS] tokens apart), or
    `budget` gives it as our budget's share of the clip (tokens at the nominal count, or a ratio). `tau` None takes
    the scripts' value for the ratio (`scripts_tau`)."""

    name = "holitom"
    needs_attention_received = True  # Qwen-VL's tower signal (Video-LLaVA's comes from tower_outputs)

    def __init__(
        self,
        ratio: float | None = DEFAULT_RATIO,
        tau: float | None = None,
        k: int = INNER_LAYER,
        r: float = INNER_RATIO,
        beta: float = BETA,
        knn: int = KNN,
        max_window: int = MAX_WINDOW,
        budget: Budget | None = None,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        if (ratio is None) == (budget is None):
            raise ValueError("HoliTom takes either a ratio or a budget")
        if ratio is not None and not 0 < ratio <= 1:
            raise ValueError(f"--holitom-ratio {ratio} must be in (0, 1]")
        if k < 0 or not 0 <= r < 1:
            raise ValueError(f"HoliTom inner merge k={k}, r={r}: k >= 0 (0 = off), r in [0, 1)")
        self.ratio, self.tau, self.k, self.r, self.budget = ratio, tau, k, r, budget
        self.beta, self.knn, self.max_window, self.seed = beta, knn, max_window, seed
        self.tower_flops = 0.0

    def describe(self) -> str:
        ratio = f"ratio={self.ratio:g}" if self.budget is None else f"budget={self.budget.describe()}"
        tau = "scripts'" if self.tau is None else f"{self.tau:g}"
        inner = f"inner k={self.k} r={self.r:g}" if self.k else "w/o inner merge"
        return f"holitom {ratio} tau={tau} {inner}"

    def validate(self, model) -> None:
        super().validate(model)
        layers = model.config.text_config.num_hidden_layers
        if self.k and self.k >= layers:
            raise ValueError(
                f"--holitom-k {self.k}: the inner merge needs a decoder layer after k-1 (the model has {layers}); "
                "give a smaller k, or 0 to run without it"
            )

    def prepare(self, model, input_ids) -> None:
        super().prepare(model, input_ids)
        self.tower_flops = 0.0

    def tower_outputs(self, tower, pixels):
        if pixels.dim() != 5 or not hasattr(tower, "num_frames"):  # not a Video-LLaVA video tower
            return super().tower_outputs(tower, pixels)
        features, scores = mean_attention_received(tower, pixels)
        tokens, width = features.shape[2], tower.hidden_size
        self.tower_flops = tower.num_frames * (2.0 * tokens * width * width + 1.0 * tokens * tokens * width)
        return features, {"received": scores}

    def clip_ratio(self, tokens) -> float:
        if self.budget is None:
            return self.ratio
        return min(1.0, self.budget.fraction(self.nominal or len(tokens)))

    def select_projected(self, tokens, embeddings, signals):
        leading, patches = frame_tokens(tokens)
        frames, n, dim = len(patches), len(patches[0]), embeddings.shape[-1]
        features = frame_features(patches, embeddings)  # [F, n, D]
        flops = self.tower_flops + 3.0 * (frames - 1) * n * dim
        if signals is None:
            raise ValueError("HoliTom ranks by the vision tower's mean attention received; this tower gave none")
        scores = signals["received"].to(embeddings.device).float()
        if tuple(scores.shape) != (frames, n):
            raise ValueError(f"HoliTom: tower scores {tuple(scores.shape)} do not match {frames} x {n} patches")
        ratio = self.clip_ratio(tokens)
        tau = scripts_tau(ratio) if self.tau is None else self.tau
        normed = F.normalize(features.float(), dim=-1)
        similarity = F.cosine_similarity(normed[:-1], normed[1:], dim=-1)  # [F - 1, n]
        windows, saved = static_windows(similarity, tau, self.max_window)
        static_pairs = similarity.gt(tau).cpu()  # [F - 1, n]: position static between frames t and t + 1
        total = frames * n
        ratio = min(ratio / ((total - saved) / total), 1)
        generator = None if self.seed is None else torch.Generator().manual_seed(self.seed)
        index, rows = [], []
        for start, end in windows:
            static = static_pairs[start:end].all(dim=0) if end > start else torch.zeros(n, dtype=torch.bool)
            static_pos, dynamic_pos = torch.nonzero(static).flatten(), torch.nonzero(~static).flatten()
            clusters = round(len(static_pos) * ratio)
            if clusters > 0:
                mean = features[start : end + 1, static_pos.to(features.device)].mean(dim=0)
                centres, merged = cluster_merge(mean, clusters, self.knn, self.beta, generator)
                index.append(patches[start][static_pos[centres.cpu()]])
                rows.append(merged)
                flops += 1.0 * len(static_pos) ** 2 * dim
            dominant = math.ceil(len(dynamic_pos) * ratio)
            for frame in range(start, end + 1):
                chosen = torch.topk(scores[frame, dynamic_pos.to(scores.device)], dominant).indices.sort().values
                picked = torch.cat([leading[frame], patches[frame][dynamic_pos[chosen.cpu()]]])
                index.append(picked)
                rows.append(embeddings[picked.to(embeddings.device)])
        self.record_flops(flops)
        return Selection(tokens.select(torch.cat(index)), torch.cat(rows))

    def plan(self, layouts, model, inputs) -> PrefillPlan:
        if not self.k:
            return super().plan(layouts, model, inputs)
        return HoliTomPlan(self, layouts, model, inputs)


class HoliTomPlan(PrefillPlan):
    """The inner merge: the last prompt token's attention row at layer k-1 ranks the visual tokens; after that layer
    the rest are averaged into their most similar kept token and dropped."""

    prunes_next_layer_input = True  # layer k is the first to see the merged tokens

    def __init__(self, method: HoliTom, layouts, model, inputs) -> None:
        text = model.config.text_config
        super().__init__(layouts, text.num_hidden_layers, text, model.dtype, inputs.num_encoded, method.prune_newlines)
        self.method = method

    def rows_request(self, layer_idx: int, state: SequenceState) -> RowsRequest | None:
        if layer_idx != self.method.k - 1:
            return None
        rows = [torch.tensor([layout.length - 1], device=state.hidden_states.device) for layout in self.layouts]
        return self.make_rows_request(rows, state)

    def prune(self, layer_idx: int, state: SequenceState, request: RowsRequest | None) -> SequenceState:
        if request is None:
            return state
        padded = state.hidden_states.shape[1]
        hidden = state.hidden_states.clone()
        keep = []
        for b, layout in enumerate(self.layouts):
            count = max(1, round(layout.visual * (1 - self.method.r)))
            if layout.visual == 0 or count >= layout.visual:
                keep.append(None)
                continue
            start = layout.visual_start(padded)
            scores = request.probs[b].mean(dim=0)[0, start : start + layout.visual]
            kept, merged = running_merge(hidden[b, start : start + layout.visual], scores, count)
            hidden[b, start + kept] = merged
            self.accounts[b].method_flops += 4.0 * self.num_heads * layout.length * self.head_dim
            self.accounts[b].method_flops += 1.0 * (layout.visual - count) * count * hidden.shape[-1]
            self.accounts[b].kept[layer_idx] = kept
            keep.append(kept)
        return self.rebuild(dataclasses.replace(state, hidden_states=hidden), keep)


def _add_args(group) -> None:
    group.add_argument(
        "--holitom-ratio",
        type=float,
        default=None,
        help=f"HoliTom RETAIN_RATIO: share of each clip's patches the outer merge keeps (default {DEFAULT_RATIO}, or "
        "the --retained-tokens / --retained-ratio budget as a share of the clip)",
    )
    group.add_argument(
        "--holitom-tau",
        type=float,
        default=None,
        help="HoliTom T: cosine above which a position is static (default: the scripts', 0.65 at ratio <= 0.1, "
        "else 0.8)",
    )
    group.add_argument(
        "--holitom-k",
        type=int,
        default=INNER_LAYER,
        help=f"HoliTom HOLITOM_k: decoder layer of the inner merge (default {INNER_LAYER}; 0 = without it)",
    )
    group.add_argument(
        "--holitom-r",
        type=float,
        default=INNER_RATIO,
        help=f"HoliTom HOLITOM_r: share of the visual tokens the inner merge folds away (default {INNER_RATIO})",
    )


@register(
    "holitom",
    add_args=_add_args,
    help="HoliTom temporal + spatial merge before the LLM and inside it (video)",
    families=VIDEO,
    video_only=True,
)
def _build(args, budget) -> HoliTom:
    ratio = getattr(args, "holitom_ratio", None)
    given = None
    if ratio is None and budget.given:
        given = Budget(budget.tokens, budget.ratio)
    elif ratio is None:
        ratio = DEFAULT_RATIO
    return HoliTom(
        ratio,
        getattr(args, "holitom_tau", None),
        getattr(args, "holitom_k", INNER_LAYER),
        getattr(args, "holitom_r", INNER_RATIO),
        budget=given,
        seed=budget.seed,
    )
