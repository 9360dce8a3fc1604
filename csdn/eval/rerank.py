"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), in the form the re-ID community uses (AGW, CLIP-ReID ``re_ranking``).

Steps, over the union of queries and gallery (n items):

1. squared Euclidean distances, each row divided by its maximum;
2. k-reciprocal neighbours ``R(i, k)``: ``j`` in the top ``k+1`` of ``i`` and ``i`` in the top ``k+1``
   of ``j`` (stable ranking; an item is its own nearest neighbour);
3. expansion: for each ``c`` in ``R(i, k1)``, add ``R(c, round(k1/2))`` when more than 2/3 of it lies
   in ``R(i, k1)``;
4. ``V[i]``: weights ``exp(-d(i, j))`` on the expanded set, normalised to sum 1; local query expansion
   averages ``V`` over each item's ``k2`` nearest neighbours;
5. Jaccard distance ``1 - s / (2 - s)`` with ``s = sum_k min(V[q, k], V[g, k])``, mixed with the
   original distance: ``(1 - lambda) * jaccard + lambda * original``.

Memory: the n x n distance matrix (feature dtype) and a few n x n boolean masks are dense; ``V`` is a
sparse matrix and the Jaccard sums are computed by joining its non-zeros column by column in bounded
blocks, so SYSU-MM01 multi-shot (3,803 + 3,010 items) needs well under 1 GB.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

# Upper bound on the (query, gallery) non-zero pairs joined at once when computing Jaccard sums.
_PAIR_BUDGET = 1 << 22
# Rows ranked at once when selecting nearest neighbours.
_SORT_ROWS = 512


@dataclass(frozen=True)
class RerankConfig:
    """Parameters of k-reciprocal re-ranking (the community defaults)."""

    k1: int = 20  # forward neighbourhood size for k-reciprocal neighbours
    k2: int = 6  # neighbours averaged by local query expansion (1 turns it off)
    lambda_value: float = 0.3  # weight of the original distance in the final mix


def k_reciprocal_rerank(
    q_feats: torch.Tensor | np.ndarray,
    g_feats: torch.Tensor | np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> torch.Tensor:
    """Re-ranked (queries, gallery) *distance* matrix (lower is better) from query and gallery features.

    Computed on the CPU in the features' floating dtype (float32 input gives float32 output).
    """
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    q, g = _as_features(q_feats, "q_feats"), _as_features(g_feats, "g_feats")
    if q.shape[1] != g.shape[1] or q.dtype != g.dtype:
        raise ValueError(f"query and gallery features differ: {tuple(q.shape)} {q.dtype} vs {tuple(g.shape)} {g.dtype}")
    n_q = len(q)
    dist = _row_normalised_sq_dist(torch.cat([q, g]))
    n = len(dist)
    k_forward, k_half = min(k1 + 1, n), min(round(k1 / 2) + 1, n)
    nearest = _nearest(dist, max(k_forward, min(k2, n)))
    expanded = _expanded_neighbours(nearest[:, :k_forward], nearest[:, :k_half])
    v = _encode(dist, expanded)
    del expanded
    if k2 > 1:
        v = _local_query_expansion(v, nearest[:, :k2])
    jaccard = torch.from_numpy(_jaccard(v, n_q)).to(dist.dtype)
    return (1.0 - lambda_value) * jaccard + lambda_value * dist[:n_q, n_q:]


def _as_features(feats, name: str) -> torch.Tensor:
    """A non-empty, finite 2-D floating CPU tensor."""
    tensor = feats if isinstance(feats, torch.Tensor) else torch.as_tensor(np.asarray(feats))
    tensor = tensor.detach().cpu()
    if tensor.ndim != 2 or len(tensor) == 0:
        raise ValueError(f"{name} must be a non-empty (items, dim) matrix, got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        tensor = tensor.float()
    if tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.float()
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return tensor


def _row_normalised_sq_dist(feats: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances, each row divided by its maximum."""
    sq = (feats * feats).sum(1)
    dist = torch.addmm(sq[:, None] + sq[None, :], feats, feats.T, alpha=-2.0).clamp_(min=0.0)
    row_max = dist.amax(1, keepdim=True)
    return dist.div_(torch.where(row_max > 0, row_max, torch.ones_like(row_max)))


def _nearest(dist: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of each row's ``k`` smallest distances, ascending; ties by index (as a stable sort).

    Distances are >= 0, so their IEEE-754 bit patterns order like the values; appending the column
    index in the low bits makes every key distinct, and a partial selection (top-k) then gives exactly
    the order of a stable sort (float64 distances are compared to about 1e-12 relative).
    """
    n = dist.shape[1]
    shift = max(1, (n - 1).bit_length())
    index = torch.arange(n)
    parts = []
    for start in range(0, len(dist), _SORT_ROWS):
        block = dist[start : start + _SORT_ROWS] + 0.0  # a copy, with -0.0 turned into +0.0
        if block.dtype == torch.float64:
            key = block.view(torch.int64) >> shift
        else:
            key = block.view(torch.int32).long()
        key = torch.add(index, key, alpha=1 << shift)
        parts.append(torch.topk(key, k, dim=1, largest=False, sorted=True).indices)
    return torch.cat(parts)


def _reciprocal(neighbours: torch.Tensor) -> torch.Tensor:
    """Dense mask ``R[i, j]``: ``j`` is among ``i``'s neighbours and ``i`` among ``j``'s."""
    n = len(neighbours)
    forward = torch.zeros(n, n, dtype=torch.bool)
    forward[torch.arange(n)[:, None], neighbours] = True
    return forward & forward.T


def _expanded_neighbours(forward: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """Dense mask of each item's expanded k-reciprocal set (steps 2 and 3)."""
    n = len(forward)
    rows = torch.arange(n)[:, None]
    recip = _reciprocal(forward)
    half_recip = _reciprocal(half)
    half_lists = torch.where(half_recip[rows, half], half, -1)  # R(c, k1/2) per item, -1 padded
    del half_recip
    candidate_ok = recip[rows, forward]  # candidates c are i's k-reciprocal neighbours
    members = half_lists[forward]  # (n, k_forward, k_half): R(c, k1/2) of each candidate
    member_ok = members >= 0
    inside = recip[rows[:, :, None], members.clamp(min=0)] & member_ok
    accept = candidate_ok & (inside.sum(-1) > (2.0 / 3.0) * member_ok.sum(-1))
    add = accept[:, :, None] & member_ok
    expanded = recip
    expanded[rows[:, :, None].expand_as(members)[add], members[add]] = True
    return expanded


def _encode(dist: torch.Tensor, expanded: torch.Tensor) -> sp.csr_matrix:
    """Sparse ``V``: Gaussian weights of the expanded neighbours, each row summing to 1."""
    n = len(dist)
    rows, cols = expanded.nonzero(as_tuple=True)
    weights = torch.exp(-dist[rows, cols].double()).numpy()
    rows, cols = rows.numpy(), cols.numpy()
    totals = np.bincount(rows, weights=weights, minlength=n)
    return sp.csr_matrix((weights / totals[rows], (rows, cols)), shape=(n, n))


def _local_query_expansion(v: sp.csr_matrix, nearest: torch.Tensor) -> sp.csr_matrix:
    """Average each row of ``V`` over the item's nearest neighbours (itself included)."""
    n, k = nearest.shape
    rows = np.repeat(np.arange(n), k)
    average = sp.csr_matrix((np.full(n * k, 1.0 / k), (rows, nearest.reshape(-1).numpy())), shape=(n, n))
    return (average @ v).tocsr()


def _jaccard(v: sp.csr_matrix, n_q: int) -> np.ndarray:
    """Jaccard distances between the first ``n_q`` rows of ``V`` and the remaining rows."""
    v_q, v_g = v[:n_q].tocsr(), v[n_q:].tocsc()
    n_g = v_g.shape[0]
    col_start, col_count = v_g.indptr[:-1], np.diff(v_g.indptr)
    row_of = np.repeat(np.arange(n_q), np.diff(v_q.indptr))
    pairs_per_row = np.bincount(row_of, weights=col_count[v_q.indices], minlength=n_q)
    shared = np.zeros((n_q, n_g))
    for start, stop in _row_blocks(pairs_per_row, _PAIR_BUDGET):
        entries = slice(v_q.indptr[start], v_q.indptr[stop])
        cols, values = v_q.indices[entries], v_q.data[entries]
        counts = col_count[cols]
        # Every query non-zero (q, k) meets every gallery non-zero in the same column k.
        owner = np.repeat(np.arange(len(cols)), counts)
        offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        at = col_start[cols][owner] + offset
        flat = (row_of[entries][owner] - start) * n_g + v_g.indices[at]
        mins = np.minimum(values[owner], v_g.data[at])
        shared[start:stop] = np.bincount(flat, weights=mins, minlength=(stop - start) * n_g).reshape(-1, n_g)
    return 1.0 - shared / (2.0 - shared)


def _row_blocks(cost: np.ndarray, budget: int) -> Iterator[tuple[int, int]]:
    """Consecutive row ranges whose summed cost stays within ``budget`` (at least one row each)."""
    total = np.cumsum(cost)
    start = 0
    while start < len(cost):
        before = total[start - 1] if start else 0.0
        stop = max(start + 1, int(np.searchsorted(total, before + budget, side="right")))
        yield start, stop
        start = stop
