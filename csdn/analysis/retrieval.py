"""What stage 3's network retrieves: the results table of the test protocol, and a query's rank list (its top
matches under the gallery rules, with its first true match)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from torch import Tensor

from csdn.data.protocol import GalleryRules
from csdn.data.records import Record
from csdn.eval.plots import plot_ranked_records
from csdn.reports import results_frame
from csdn.sources import dataset_label


def results_table(results: Mapping[str, Mapping[str, Any]], data: Any) -> pd.DataFrame:
    """:func:`csdn.reports.results_frame` (one row per model and protocol, percent) indexed by
    ``(data, model, protocol)``, the data level being :func:`dataset_label` of ``data``."""
    table = results_frame(results)
    table.insert(0, "data", dataset_label(data))
    return table.set_index(["data", "model", "protocol"])


def top_matches(query_feature: Tensor, gallery_features: Tensor, allowed: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Indices and dot-product scores of the ``k`` best allowed gallery entries, best first."""
    if query_feature.dim() != 1 or gallery_features.dim() != 2 or gallery_features.shape[1] != query_feature.shape[0]:
        raise ValueError(
            f"need a query feature (d,) and gallery features (M, d), got {tuple(query_feature.shape)} "
            f"and {tuple(gallery_features.shape)}"
        )
    if allowed.shape != (gallery_features.shape[0],):
        raise ValueError(f"allowed must be a mask of shape ({gallery_features.shape[0]},), got {tuple(allowed.shape)}")
    scores = gallery_features.float().cpu() @ query_feature.float().cpu()
    scores = scores.masked_fill(~allowed.cpu(), float("-inf"))
    k = min(k, int(allowed.sum()))
    if k < 1:
        raise ValueError("no gallery entry is allowed for this query")
    top = scores.topk(k)
    return top.indices, top.values


def pick_queries(query: Sequence[Record], n: int, seed: int = 0) -> list[int]:
    """Indices of ``n`` queries of distinct identities (the first image of each), chosen reproducibly."""
    first: dict[int, int] = {}
    for i, record in enumerate(query):
        first.setdefault(record.pid, i)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(sorted(first), size=min(n, len(first)), replace=False)
    return [first[int(pid)] for pid in chosen]


def plot_query_rank_list(
    query: Record,
    query_feature: Tensor,
    gallery: Sequence[Record],
    gallery_features: Tensor,
    rules: GalleryRules,
    size: tuple[int, int],
    k: int = 10,
    title: str | None = None,
    per_row: int = 10,
) -> Figure:
    """A query image and its top-``k`` gallery images under the gallery ``rules``, decoded at ``size``,
    each labelled with identity and camera; when the query's first true match ranks below ``k`` it is
    appended with its rank, and the title says where the first true match is."""
    allowed = rules.kept(query, gallery)
    indices, scores = top_matches(query_feature, gallery_features, allowed, int(allowed.sum()))
    ranked = [gallery[i] for i in indices.tolist()]
    first = next((r for r, g in enumerate(ranked) if g.pid == query.pid), None)
    shown = list(range(min(k, len(ranked))))
    if first is not None and first >= k:
        shown.append(first)
    where = "no true match in the gallery" if first is None else f"first true match at rank {first + 1}"
    title = f"{title or f'query pid {query.pid} cam {query.cam} ({query.modality})'} · {where}"
    return plot_ranked_records(query, [(i + 1, ranked[i], float(scores[i])) for i in shown], size, title, per_row)
