"""Re-ID metrics on a query x gallery matrix: CMC, mAP and mINP under the SYSU, RegDB and LLCM rules.

Conventions (shared by every function here):

- **Ranking and ties.** Each query's gallery is ranked by a *stable* sort: best score (or smallest
  distance) first, and equal values keep their gallery order (lower gallery index first).
- **Protocol filters** remove gallery entries from a query's ranked list before anything is counted:
  ``"sysu"``: a query from camera 3 ignores *every* camera-2 gallery image (cams 2 and 3 share a
  place; AGW's ``eval_sysu``); ``"llcm"``: a query ignores gallery images of its own pid taken by its
  own camera number (DEEN's ``eval_llcm``); ``"regdb"``: nothing is removed.
- **Valid queries.** A query with no true match left after filtering is skipped: it counts in
  ``num_queries`` but not in ``num_valid_queries``, and every metric averages over valid queries only.
- **CMC** at rank k is the fraction of valid queries whose first true match is within the top k. With
  ``dedup_ids`` the ranked list is first reduced to the first occurrence of each identity (the
  community's multi-image-gallery CMC for SYSU-MM01 and LLCM); mAP and mINP always use every positive.
- **mINP** (Ye et al., 2021): INP = number of positives / rank of the hardest (last) positive.

The computation is vectorised over queries (torch, float64, processed in row chunks to bound memory).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

PROTOCOLS = ("sysu", "regdb", "llcm")
# Whether each protocol's CMC deduplicates identities (AGW eval_sysu, DEEN eval_llcm, AGW eval_regdb).
DEFAULT_DEDUP = {"sysu": True, "regdb": False, "llcm": True}
# SYSU-MM01: queries from this camera ignore every gallery image of the other camera.
SYSU_QUERY_CAM, SYSU_IGNORED_GALLERY_CAM = 3, 2
# Upper bound on query-rows x gallery-columns elements processed at once.
_CHUNK_ELEMENTS = 1 << 22

ArrayLike = np.ndarray | torch.Tensor | Sequence[float]


@dataclass(frozen=True, eq=False)
class Metrics:
    """Metrics of one query set against one gallery (fractions in [0, 1])."""

    cmc: np.ndarray  # (max_rank,) float64; cmc[k-1] = fraction of valid queries matched within rank k
    mAP: float  # mean average precision over valid queries
    mINP: float  # mean inverse negative penalty over valid queries
    num_queries: int  # queries evaluated
    num_valid_queries: int  # queries with at least one true match after filtering

    def rank(self, k: int) -> float:
        """CMC at rank ``k`` (1-based)."""
        if not 1 <= k <= len(self.cmc):
            raise ValueError(f"rank must be in 1..{len(self.cmc)}, got {k}")
        return float(self.cmc[k - 1])

    @property
    def r1(self) -> float:
        return self.rank(1)

    def to_dict(self) -> dict:
        """Plain-Python summary (JSON-serialisable); rank-k keys for k in 1, 5, 10, 20 within range."""
        out = {f"r{k}": self.rank(k) for k in (1, 5, 10, 20) if k <= len(self.cmc)}
        out.update(mAP=self.mAP, mINP=self.mINP, num_queries=self.num_queries,
                   num_valid_queries=self.num_valid_queries, cmc=[float(v) for v in self.cmc])
        return out


def rank_gallery(matrix: ArrayLike, *, higher_is_better: bool) -> torch.Tensor:
    """Gallery indices of each query row, best first; ties keep gallery order (stable sort)."""
    values = _as_matrix(matrix)
    key = -values if higher_is_better else values
    return torch.sort(key, dim=1, stable=True).indices


def evaluate(
    scores_or_dist: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_cams: ArrayLike,
    g_cams: ArrayLike,
    *,
    protocol: str,
    higher_is_better: bool,
    dedup_ids: bool | None = None,
    max_rank: int = 20,
) -> Metrics:
    """CMC (ranks 1..max_rank), mAP and mINP of a query x gallery score or distance matrix.

    ``higher_is_better`` says whether the matrix holds similarities (True) or distances (False).
    ``dedup_ids=None`` uses the protocol's convention (``DEFAULT_DEDUP``). Raises ``ValueError`` on
    malformed input or when no query has a true match in the gallery.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    values = _as_matrix(scores_or_dist)
    n_q, n_g = values.shape
    q_pid, q_cam = _as_labels(q_pids, n_q, "q_pids"), _as_labels(q_cams, n_q, "q_cams")
    g_pid, g_cam = _as_labels(g_pids, n_g, "g_pids"), _as_labels(g_cams, n_g, "g_cams")
    dedup = DEFAULT_DEDUP[protocol] if dedup_ids is None else bool(dedup_ids)

    # Contiguous identity labels, so identity deduplication can scatter into a (rows, ids) table.
    gallery_ids, g_label = torch.unique(g_pid, return_inverse=True)
    q_label = _label_in(gallery_ids, q_pid)

    per_query = []
    rows = max(1, _CHUNK_ELEMENTS // n_g)
    for start in range(0, n_q, rows):
        part = slice(start, start + rows)
        order = rank_gallery(values[part], higher_is_better=higher_is_better)
        per_query.append(_query_stats(order, q_pid[part], q_cam[part], q_label[part], g_pid, g_cam,
                                      g_label, len(gallery_ids), protocol, dedup))
    first_rank, ap, inp, valid = (torch.cat(parts) for parts in zip(*per_query))

    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError(f"no query has a true match in the gallery under protocol {protocol!r} "
                         f"({n_q} queries, {n_g} gallery items): check that query and gallery pids "
                         "overlap and that the camera filter does not remove every match")
    ranks = torch.arange(1, max_rank + 1)
    cmc = (first_rank[valid, None] <= ranks).sum(0, dtype=torch.float64) / num_valid
    return Metrics(cmc=cmc.numpy(), mAP=float(ap[valid].mean()), mINP=float(inp[valid].mean()),
                   num_queries=n_q, num_valid_queries=num_valid)


def _query_stats(order, q_pid, q_cam, q_label, g_pid, g_cam, g_label, num_ids, protocol, dedup):
    """Per-query (first-match rank, AP, INP, valid) for one chunk of ranked rows."""
    pid_ranked, cam_ranked = g_pid[order], g_cam[order]
    keep = _keep_mask(protocol, q_pid, q_cam, pid_ranked, cam_ranked)
    match = (pid_ranked == q_pid[:, None]) & keep
    kept_rank = keep.cumsum(1)  # 1-based position in the filtered list (meaningful where keep)
    num_pos = match.sum(1)
    valid = num_pos > 0

    hits = match.cumsum(1)
    precision = torch.where(match, hits.double() / kept_rank.clamp(min=1), 0.0)
    ap = precision.sum(1) / num_pos.clamp(min=1)
    hardest = torch.where(match, kept_rank, 0).amax(1)
    inp = num_pos.double() / hardest.clamp(min=1)

    if dedup:
        first_rank = _dedup_first_rank(order, keep, q_label, g_label, num_ids)
    else:
        beyond = kept_rank.shape[1] + 1
        first_rank = torch.where(match, kept_rank, beyond).amin(1)
    return first_rank, ap, inp, valid


def _keep_mask(protocol, q_pid, q_cam, pid_ranked, cam_ranked) -> torch.Tensor:
    """True where a ranked gallery entry takes part in the query's evaluation."""
    if protocol == "sysu":
        return ~((q_cam[:, None] == SYSU_QUERY_CAM) & (cam_ranked == SYSU_IGNORED_GALLERY_CAM))
    if protocol == "llcm":
        return ~((pid_ranked == q_pid[:, None]) & (cam_ranked == q_cam[:, None]))
    return torch.ones_like(pid_ranked, dtype=torch.bool)


def _dedup_first_rank(order, keep, q_label, g_label, num_ids) -> torch.Tensor:
    """Rank of the query's identity in the kept list reduced to each identity's first occurrence."""
    n_rows, n_g = order.shape
    position = torch.arange(n_g).expand(n_rows, n_g)
    # first_pos[q, id]: earliest kept position of that identity (n_g when it never appears).
    first_pos = torch.full((n_rows, num_ids), n_g, dtype=torch.long)
    first_pos.scatter_reduce_(1, g_label[order], torch.where(keep, position, n_g), reduce="amin")
    own = first_pos.gather(1, q_label.clamp(min=0)[:, None])
    own = torch.where(q_label[:, None] >= 0, own, n_g)
    # Identities seen no later than the query's own one (itself included) give its 1-based rank.
    rank = (first_pos <= own).sum(1)
    return torch.where(own[:, 0] < n_g, rank, n_g + 1)


def _label_in(sorted_ids: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
    """Index of each pid in ``sorted_ids``, or -1 where absent."""
    where = torch.searchsorted(sorted_ids, pids).clamp(max=len(sorted_ids) - 1)
    return torch.where(sorted_ids[where] == pids, where, -1)


def _as_matrix(matrix: ArrayLike) -> torch.Tensor:
    """A finite 2-D float64 CPU tensor with at least one row and column."""
    tensor = torch.as_tensor(np.asarray(matrix) if not isinstance(matrix, torch.Tensor) else matrix)
    tensor = tensor.detach().to("cpu", torch.float64)
    if tensor.ndim != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(f"expected a non-empty (queries, gallery) matrix, got shape {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise ValueError("the score/distance matrix contains NaN or infinite values")
    return tensor


def _as_labels(labels: ArrayLike, length: int, name: str) -> torch.Tensor:
    """A 1-D int64 CPU tensor of the given length."""
    tensor = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if tensor.ndim != 1 or len(tensor) != length:
        raise ValueError(f"{name} must be 1-D with {length} entries (one per matrix "
                         f"{'row' if name.startswith('q') else 'column'}), got shape {tuple(tensor.shape)}")
    if tensor.is_floating_point() and not torch.equal(tensor, tensor.round()):
        raise ValueError(f"{name} must hold integers")
    return tensor.detach().to("cpu", torch.int64)
