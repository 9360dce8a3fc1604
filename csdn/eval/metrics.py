"""Re-ID metrics on a query x gallery matrix: CMC, mAP and mINP under a protocol's gallery rules.

Conventions (shared by every function here):

- **Ranking and ties.** Each query's gallery is ranked by a *stable* sort: best score (or smallest
  distance) first, and equal values keep their gallery order (lower gallery index first); -0.0 and
  0.0 are equal. float32 values are compared exactly, float64 values to about 1e-12 relative.
- **Gallery rules** (:class:`~csdn.data.protocol.GalleryRules`, declared by each dataset reader) remove
  gallery entries from a query's ranked list before anything is counted. SYSU-MM01: a query from camera
  3 ignores *every* camera-2 gallery image (cams 2 and 3 share a place; AGW's ``eval_sysu``); LLCM: a
  query ignores gallery images of its own pid taken by its own camera number (DEEN's ``eval_llcm``);
  RegDB: nothing is removed.
- **Valid queries.** A query with no true match left after filtering is skipped: it counts in
  ``num_queries`` but not in ``num_valid_queries``, and every metric averages over valid queries only.
- **CMC** at rank k is the fraction of valid queries whose first true match is within the top k. With
  ``rules.dedup_ids`` the ranked list is first reduced to the first occurrence of each identity (the
  community's multi-image-gallery CMC for SYSU-MM01 and LLCM); mAP and mINP always use every positive.
- **mINP** (Ye et al., 2021): INP = number of positives / rank of the hardest (last) positive.

How it is computed (vectorised over queries, in row chunks that bound memory): every entry of a
query's row gets a distinct integer key that orders it (best first, ties by gallery index), so the
rank of a true match is one plus the number of smaller keys in its row. One sort of each row's keys
(NumPy's SIMD sort) and a binary search per true match give every rank; true matches are looked up
from a table of each identity's gallery columns rather than by scanning the row. Entries a protocol
removes get a key after every other one and are not matches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from csdn.data.protocol import GalleryRules

# Upper bound on query-rows x gallery-columns elements processed at once.
_CHUNK_ELEMENTS = 1 << 18
_AFTER_ALL = torch.iinfo(torch.int64).max  # ranking key placing an entry after every other

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
        out.update(
            mAP=self.mAP,
            mINP=self.mINP,
            num_queries=self.num_queries,
            num_valid_queries=self.num_valid_queries,
            cmc=[float(v) for v in self.cmc],
        )
        return out


def rank_gallery(matrix: ArrayLike, *, higher_is_better: bool) -> torch.Tensor:
    """Gallery indices of each query row, best first; ties keep gallery order (stable sort)."""
    values = _as_matrix(matrix)
    return torch.sort(-values if higher_is_better else values, dim=1, stable=True).indices


def evaluate(
    scores_or_dist: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_cams: ArrayLike,
    g_cams: ArrayLike,
    *,
    rules: GalleryRules,
    higher_is_better: bool,
    dedup_ids: bool | None = None,
    max_rank: int = 20,
) -> Metrics:
    """CMC (ranks 1..max_rank), mAP and mINP of a query x gallery score or distance matrix.

    ``rules`` are the protocol's gallery rules (a reader's ``rules``); ``higher_is_better`` says whether
    the matrix holds similarities (True) or distances (False). ``dedup_ids=None`` uses
    ``rules.dedup_ids``. Raises ``ValueError`` on malformed input or when no query has a true match.
    """
    if not isinstance(rules, GalleryRules):
        raise TypeError(f"rules must be GalleryRules (a dataset reader's .rules), got {type(rules).__name__}")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    values = _as_matrix(scores_or_dist)
    n_q, n_g = values.shape
    q_pid, q_cam = _as_labels(q_pids, n_q, "q_pids"), _as_labels(q_cams, n_q, "q_cams")
    g_pid, g_cam = _as_labels(g_pids, n_g, "g_pids"), _as_labels(g_cams, n_g, "g_cams")
    dedup = rules.dedup_ids if dedup_ids is None else bool(dedup_ids)

    # Contiguous identity labels 0..num_ids-1 over the gallery; -1 for query pids absent from it.
    gallery_ids, g_label = torch.unique(g_pid, return_inverse=True)
    num_ids = len(gallery_ids)
    q_label = _label_in(gallery_ids, q_pid)

    columns = _columns_by_label(g_label, num_ids)
    match_rank = torch.zeros(n_q, columns.shape[1], dtype=torch.long)  # (query, k): rank of k-th match
    num_pos = torch.zeros(n_q, dtype=torch.long)
    first_rank = torch.zeros(n_q, dtype=torch.long)  # of the first match, identity-deduplicated or not
    size = max(1, _CHUNK_ELEMENTS // n_g)
    for start in range(0, n_q, size):
        rows = torch.arange(start, min(n_q, start + size))
        removed = (
            None
            if rules.removes_nothing
            else rules.removed(q_pid[rows, None], q_cam[rows, None], g_pid[None, :], g_cam[None, :])
        )
        match_rank[rows], num_pos[rows], first_rank[rows] = _match_ranks(
            values.index_select(0, rows), higher_is_better, q_label[rows], columns, g_label, num_ids, removed, dedup
        )

    valid = num_pos > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError(
            f"no query has a true match in the gallery under {rules} "
            f"({n_q} queries, {n_g} gallery items): check that query and gallery pids "
            "overlap and that the camera filter does not remove every match"
        )
    match_rank, num_pos, first_rank = match_rank[valid], num_pos[valid], first_rank[valid]
    k = torch.arange(1, match_rank.shape[1] + 1)
    ap = torch.where(k <= num_pos[:, None], k / match_rank.double(), 0.0).sum(1) / num_pos
    inp = num_pos / match_rank.gather(1, num_pos[:, None] - 1)[:, 0].double()  # hardest: the last match
    cmc = (first_rank[:, None] <= torch.arange(1, max_rank + 1)).sum(0, dtype=torch.float64) / num_valid
    return Metrics(
        cmc=cmc.numpy(), mAP=float(ap.mean()), mINP=float(inp.mean()), num_queries=n_q, num_valid_queries=num_valid
    )


def _columns_by_label(labels: torch.Tensor, num_ids: int) -> torch.Tensor:
    """(num_ids, most columns of one identity): the gallery columns of each identity, -1 padded."""
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=num_ids)
    slot = torch.arange(len(labels)) - (counts.cumsum(0) - counts)[labels[order]]
    table = torch.full((num_ids, max(1, int(counts.max()))), -1, dtype=torch.long)
    table[labels[order], slot] = order
    return table


def _match_ranks(block, higher_is_better, q_label, columns, g_label, num_ids, removed, dedup):
    """For one block of query rows (``block`` is consumed): the 1-based ranks of each query's true
    matches in ascending order (padded with larger values), their number, and the rank of the first
    one, identity-deduplicated when ``dedup``.

    ``columns`` is the identity -> gallery columns table (see ``_columns_by_label``); ``removed`` is the
    (rows, gallery) mask of the entries the gallery rules remove, or None.
    """
    key = _ranking_keys(block, higher_is_better)
    own = columns[q_label.clamp(min=0)]  # (rows, slots) gallery columns of the query's identity
    is_match = (own >= 0) & (q_label[:, None] >= 0)
    own = own.clamp(min=0)
    if removed is not None and bool(removed.any()):  # removed entries sort last and stop being matches
        key.masked_fill_(removed, _AFTER_ALL)
        is_match &= ~removed.gather(1, own)

    # Each row's true-match keys, sorted; padding and removed slots sort last.
    match_keys = torch.where(is_match, key.gather(1, own), _AFTER_ALL).sort(dim=1).values
    ranked_keys = key
    ranked_keys.numpy().sort(axis=1)  # in place, NumPy's SIMD sort (far faster than torch's here)
    match_rank = torch.searchsorted(ranked_keys, match_keys) + 1
    num_pos = is_match.sum(1)
    first = torch.where(num_pos > 0, match_rank[:, 0], 0)
    if dedup:
        first = _distinct_ids_in_prefix(ranked_keys, first, g_label, num_ids)
    return match_rank, num_pos, first


def _ranking_keys(block: torch.Tensor, higher_is_better: bool) -> torch.Tensor:
    """Distinct int64 keys per row, ascending from best to worst, ties broken by gallery index.

    ``block`` (a float32 or float64 copy) is consumed. Each value is mapped to an integer of the same
    order (IEEE-754 bit trick; bitwise NOT reverses it for scores), multiplied by 2**bits and added to
    the gallery index, with bits = ``_index_bits(gallery size)``: equal values order by index, and
    ``key & (2**bits - 1)`` recovers the index. float32 values lose nothing; float64 values lose their
    lowest mantissa bits (they are compared to about 1e-12 relative for 3,010 columns).
    """
    n_g = block.shape[1]
    shift = _index_bits(n_g)
    block.add_(0.0)  # turns -0.0 into +0.0, so the two zeros tie
    if block.dtype == torch.float64:
        ordered = _ordered_bits(block.view(torch.int64), 64)
        ordered >>= shift
    else:
        ordered = _ordered_bits(block.view(torch.int32), 32)
    index = torch.arange(n_g)
    if higher_is_better:  # index + 2**shift * ~ordered, with ~x = -x - 1
        return torch.add(index - (1 << shift), ordered, alpha=-(1 << shift))
    return torch.add(index, ordered, alpha=1 << shift)


def _ordered_bits(bits: torch.Tensor, width: int) -> torch.Tensor:
    """In place: IEEE-754 bit patterns to integers with the floats' order (negatives flipped)."""
    sign = bits >> (width - 1)  # -1 where negative, else 0
    bits ^= sign.bitwise_and_((1 << (width - 1)) - 1)
    return bits


def _index_bits(n_g: int) -> int:
    return max(1, (n_g - 1).bit_length())


def _distinct_ids_in_prefix(ranked_keys, lengths, g_label, num_ids) -> torch.Tensor:
    """Number of distinct identities among the first ``lengths[q]`` ranked entries of each row."""
    n_rows, n_g = ranked_keys.shape
    row = torch.repeat_interleave(torch.arange(n_rows), lengths)
    pos = torch.arange(len(row)) - torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
    index = ranked_keys[row, pos] & ((1 << _index_bits(n_g)) - 1)
    seen = torch.zeros(n_rows, num_ids, dtype=torch.bool)
    seen[row, g_label[index]] = True
    return seen.sum(1)


def _label_in(sorted_ids: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
    """Index of each pid in ``sorted_ids``, or -1 where absent."""
    where = torch.searchsorted(sorted_ids, pids).clamp(max=len(sorted_ids) - 1)
    return torch.where(sorted_ids[where] == pids, where, -1)


def _as_matrix(matrix: ArrayLike) -> torch.Tensor:
    """A finite 2-D CPU tensor (float64 stays float64, anything else becomes float32), not empty."""
    tensor = torch.as_tensor(np.asarray(matrix) if not isinstance(matrix, torch.Tensor) else matrix)
    dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    tensor = tensor.detach().to("cpu", dtype)
    if tensor.ndim != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(f"expected a non-empty (queries, gallery) matrix, got shape {tuple(tensor.shape)}")
    # A NaN or infinity makes the sum non-finite; only then (or on overflow) look element by element.
    if not torch.isfinite(tensor.sum()) and not torch.isfinite(tensor).all():
        raise ValueError("the score/distance matrix contains NaN or infinite values")
    return tensor


def _as_labels(labels: ArrayLike, length: int, name: str) -> torch.Tensor:
    """A 1-D int64 CPU tensor of the given length."""
    tensor = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if tensor.ndim != 1 or len(tensor) != length:
        raise ValueError(
            f"{name} must be 1-D with {length} entries (one per matrix "
            f"{'row' if name.startswith('q') else 'column'}), got shape {tuple(tensor.shape)}"
        )
    if tensor.is_floating_point() and not torch.equal(tensor, tensor.round()):
        raise ValueError(f"{name} must hold integers")
    return tensor.detach().to("cpu", torch.int64)
