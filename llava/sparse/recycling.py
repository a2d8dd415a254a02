"""Token recycling: density-peaks kNN clustering of pruned tokens and merging each cluster into one token.

Reproduces the reference (TCFormer's `cluster_dpc_knn` + `merge_tokens` as SparseVLM calls them), quirks included:
- the kNN size k equals the number of clusters c (the reference passes the cluster count as k);
- the density gets uniform noise * 1e-6 to break ties (seeded here, so a seeded run is deterministic);
- members are *averaged* (the paper says summed): sum / (count + 1e-6);
- distances are Euclidean / sqrt(channels). The reference computes them in fp16; we use float32.
"""

from __future__ import annotations

import torch


def dpc_knn_clusters(
    x: torch.Tensor, num_clusters: int, k: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the rows of `x` [N, C]; returns (cluster index per row [N], centre row indices [c] by descending
    centre score)."""
    n = x.shape[0]
    x = x.float()
    dist = torch.cdist(x[None], x[None])[0] / x.shape[-1] ** 0.5  # [N, N]
    k = min(k, n)
    nearest = torch.topk(dist, k=k, dim=-1, largest=False).values
    density = (-(nearest**2).mean(dim=-1)).exp()
    noise = torch.rand(density.shape, generator=generator, device=generator.device if generator else None)
    density = density + noise.to(density.device) * 1e-6
    higher = density[None, :] > density[:, None]  # higher[i, j]: j is denser than i
    delta = torch.where(higher, dist, dist.max()).min(dim=-1).values
    score = delta * density
    centres = torch.topk(score, k=num_clusters, dim=-1).indices
    assignment = dist[centres].argmin(dim=0)  # nearest centre for every row
    assignment[centres] = torch.arange(num_clusters, device=x.device)
    return assignment, centres


def merge_clusters(x: torch.Tensor, assignment: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Mean of each cluster's rows: [c, C] (in x's dtype)."""
    sums = torch.zeros((num_clusters, x.shape[-1]), dtype=torch.float32, device=x.device)
    sums.index_add_(0, assignment, x.float())
    counts = torch.zeros(num_clusters, dtype=torch.float32, device=x.device)
    counts.index_add_(0, assignment, torch.ones_like(assignment, dtype=torch.float32))
    return (sums / (counts[:, None] + 1e-6)).to(x.dtype)


def recycle(x: torch.Tensor, num_clusters: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Merged tokens [c, C] for the recycled tokens `x` [N, C], with SparseVLM's k = c."""
    assignment, _ = dpc_knn_clusters(x, num_clusters, k=num_clusters, generator=generator)
    return merge_clusters(x, assignment, num_clusters)
