"""The query/gallery inspector's logic: every test query ranked by every model, and one query's figure.

:class:`InspectorData` holds the features of several models (name -> features of every record of the
test splits) and ranks each split's queries against its gallery the way :mod:`csdn.eval.metrics`
does: dot-product scores, the protocol's gallery rules (:meth:`csdn.data.protocol.GalleryRules.removed`),
a stable sort (ties keep gallery order). From that ranking it answers what the widget layer of
:mod:`csdn.analysis.widgets` shows: a query's top-k with correct/incorrect marks and scores, the rank
of its first true match, the worst-ranked queries, and the queries of an identity or a camera.
An :class:`InspectorState` names what is shown; :func:`render` draws it.

Ranks here are positions in the ranked list the inspector shows: the protocol filter applied, every
gallery image counted (no identity deduplication), so a first true match at rank 1 is a CMC rank-1 hit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import Tensor

from csdn.data.protocol import GalleryRules, Reader, SplitOptions
from csdn.data.records import Record
from csdn.eval.metrics import rank_gallery
from csdn.eval.plots import plot_ranked_records

FeaturesOf = Callable[[list[Record]], Tensor]  # records -> (N, d) L2-normalised features, as the protocols use
DIRECTIONS = ("infrared->visible", "visible->infrared")


@dataclass(frozen=True)
class Split:
    """One query/gallery split of a test protocol (one trial)."""

    rules: GalleryRules  # the protocol's gallery rules (csdn.data.protocol), as its metrics apply them
    query: tuple[Record, ...]  # query images
    gallery: tuple[Record, ...]  # gallery images

    def __post_init__(self) -> None:
        if not self.query or not self.gallery:
            raise ValueError(f"a split needs queries and gallery images, got {len(self.query)} and {len(self.gallery)}")


def protocol_splits(
    dataset: Reader,
    trials: Sequence[int] = (0,),
    modes: Sequence[str] = ("all", "indoor"),
    directions: Sequence[str] = DIRECTIONS,
) -> dict[str, Split]:
    """The reader's single-shot test splits, one per trial in ``trials``, e.g. ``"all 1-shot, trial 0"``
    (SYSU-MM01) or ``"infrared->visible, trial 0"`` (LLCM); a split with one fixed gallery (RegDB's, the
    reader's own trial) is named without a trial."""
    trials = sorted(set(trials))
    if not trials or min(trials) < 0:
        raise ValueError(f"give at least one non-negative trial, got {trials}")
    options = SplitOptions(trials=max(trials) + 1, modes=tuple(modes), shots=(1,), directions=tuple(directions))
    splits = {}
    for split in dataset.test_splits(options):
        fixed = len(split.trials) == 1
        for t in split.trials[:1] if fixed else trials:
            name = split.name if fixed else f"{split.name}, trial {t}"
            splits[name] = Split(split.rules, split.query, tuple(split.gallery(t)))
    if not splits:
        raise ValueError("no split selected: give at least one mode or direction")
    return splits


@dataclass(frozen=True)
class InspectorState:
    """What the inspector shows: one query of one split, ranked by one model."""

    model: str  # a model name of the InspectorData
    split: str  # a split name of the InspectorData
    query: int  # index into the split's query list
    k: int = 10  # gallery images shown


@dataclass(frozen=True, eq=False)
class SplitRanking:
    """Every query of a split ranked by one model (queries x gallery)."""

    scores: Tensor  # (Q, G) float32 dot products
    allowed: Tensor  # (Q, G) bool: the gallery images the protocol keeps for each query
    order: Tensor  # (Q, G) gallery indices best first (ties: gallery order); removed images last
    num_allowed: Tensor  # (Q,) gallery images the protocol keeps for each query
    num_matches: Tensor  # (Q,) true matches among them
    first_match: Tensor  # (Q,) 1-based rank of the first true match; 0 when the query has none


@dataclass(frozen=True)
class QueryView:
    """One query's top-k: what the inspector draws."""

    state: InspectorState  # what was asked for
    query: Record  # the query image
    gallery: tuple[Record, ...]  # the top-k gallery images, best first
    scores: tuple[float, ...]  # their scores
    correct: tuple[bool, ...]  # whether each is the query's identity
    first_match: int | None  # rank of the first true match (None: no true match in the gallery)
    first_match_score: float | None  # its score
    first_match_record: Record | None  # its gallery image
    num_matches: int  # true matches in the gallery the protocol keeps
    num_allowed: int  # gallery images the protocol keeps

    def summary(self) -> str:
        """Two short lines (each fits a notebook's output width, which would otherwise break a long line
        anywhere, even mid-word): the model, split and query; the rank and score of its first true match and
        how many true matches the gallery holds."""
        q = self.query
        if self.first_match is None:
            found = "no true match in the gallery"
        else:
            shown = "shown" if self.first_match <= len(self.gallery) else f"below the top {len(self.gallery)}"
            found = f"first true match at rank {self.first_match}, score {self.first_match_score:.3f} ({shown})"
        return (
            f"{self.state.model} | {self.state.split} | query pid {q.pid}, cam {q.cam} ({q.modality}, "
            f"{Path(q.path).name})\n{found}; {self.num_matches} true matches of {self.num_allowed} gallery images"
        )


@dataclass(eq=False)
class InspectorData:
    """Features of several models over the records of named test splits, and their rankings.

    ``features[model]`` is an ``(N, d)`` tensor aligned with ``records``, which must contain every query
    and gallery record of every split. Rankings are computed on first use and kept.
    """

    splits: Mapping[str, Split]  # split name -> Split
    records: Sequence[Record]  # the records the feature rows belong to
    features: Mapping[str, Tensor]  # model name -> (N, d) features aligned with records
    _rankings: dict[tuple[str, str], SplitRanking] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.splits or not self.features:
            raise ValueError("InspectorData needs at least one split and one model")
        self.splits, self.records = dict(self.splits), list(self.records)
        self.features = {name: torch.as_tensor(f).detach().float().cpu() for name, f in self.features.items()}
        self._row = {record: i for i, record in enumerate(self.records)}
        for name, f in self.features.items():
            if f.dim() != 2 or f.shape[0] != len(self.records):
                raise ValueError(
                    f"features of model {name!r} must be ({len(self.records)}, d), one row per record, "
                    f"got {tuple(f.shape)}"
                )
        for name, split in self.splits.items():
            missing = [r for r in split.query + split.gallery if r not in self._row]
            if missing:
                raise ValueError(f"split {name!r}: {len(missing)} records have no features, e.g. {missing[0].path}")

    @classmethod
    def from_models(cls, models: Mapping[str, FeaturesOf], splits: Mapping[str, Split]) -> InspectorData:
        """Extract each model's features once, for the union of the splits' records."""
        records = sorted({r for split in splits.values() for r in split.query + split.gallery})
        return cls(splits, records, {name: features_of(records) for name, features_of in models.items()})

    @property
    def models(self) -> list[str]:
        return list(self.features)

    @property
    def split_names(self) -> list[str]:
        return list(self.splits)

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise KeyError(f"unknown split {name!r}; choose one of {self.split_names}")
        return self.splits[name]

    def ranking(self, model: str, split: str) -> SplitRanking:
        """Every query of ``split`` ranked by ``model`` (computed once, then kept)."""
        if model not in self.features:
            raise KeyError(f"unknown model {model!r}; choose one of {self.models}")
        key = (model, split)
        if key not in self._rankings:
            self._rankings[key] = self._rank(self.features[model], self.split(split))
        return self._rankings[key]

    def _rank(self, features: Tensor, split: Split) -> SplitRanking:
        q = features[[self._row[r] for r in split.query]]
        g = features[[self._row[r] for r in split.gallery]]
        allowed = _allowed_matrix(split)
        scores = q @ g.T
        order = rank_gallery(scores, higher_is_better=True)
        removed_last = torch.sort((~allowed.gather(1, order)).to(torch.uint8), dim=1, stable=True).indices
        order = order.gather(1, removed_last)
        g_pids = torch.tensor([r.pid for r in split.gallery])
        q_pids = torch.tensor([r.pid for r in split.query])
        matches = (g_pids[order] == q_pids[:, None]) & allowed.gather(1, order)
        first = torch.where(matches.any(1), matches.int().argmax(1) + 1, 0)
        return SplitRanking(scores, allowed, order, allowed.sum(1), matches.sum(1), first)

    def view(self, state: InspectorState) -> QueryView:
        """The top-``state.k`` of one query, with scores, correct marks and its first true match."""
        split = self.split(state.split)
        if not 0 <= state.query < len(split.query):
            raise IndexError(f"query {state.query} out of range: split {state.split!r} has {len(split.query)} queries")
        if state.k < 1:
            raise ValueError(f"k must be >= 1, got {state.k}")
        ranking = self.ranking(state.model, state.split)
        i, query = state.query, split.query[state.query]
        k = min(state.k, int(ranking.num_allowed[i]))
        top = ranking.order[i, :k].tolist()
        first = int(ranking.first_match[i])
        first_score = float(ranking.scores[i, ranking.order[i, first - 1]]) if first else None
        first_record = split.gallery[int(ranking.order[i, first - 1])] if first else None
        return QueryView(
            state,
            query,
            tuple(split.gallery[j] for j in top),
            tuple(float(ranking.scores[i, j]) for j in top),
            tuple(split.gallery[j].pid == query.pid for j in top),
            first or None,
            first_score,
            first_record,
            int(ranking.num_matches[i]),
            int(ranking.num_allowed[i]),
        )

    def worst_queries(self, model: str, split: str, n: int = 20) -> list[int]:
        """Indices of the ``n`` queries whose first true match ranks lowest (worst first; ties by query
        order); queries without a true match are left out."""
        first = self.ranking(model, split).first_match
        valid = torch.nonzero(first > 0).flatten()
        worst = valid[torch.sort(-first[valid], stable=True).indices]
        return worst[:n].tolist()

    def queries_of(self, split: str, pid: int | None = None, cam: int | None = None) -> list[int]:
        """Indices of the queries of ``split`` of identity ``pid`` and/or camera ``cam`` (None: any)."""
        return [
            i
            for i, r in enumerate(self.split(split).query)
            if (pid is None or r.pid == pid) and (cam is None or r.cam == cam)
        ]

    def query_pids(self, split: str) -> list[int]:
        return sorted({r.pid for r in self.split(split).query})

    def query_cams(self, split: str) -> list[int]:
        return sorted({r.cam for r in self.split(split).query})

    def query_label(self, model: str, split: str, index: int) -> str:
        """A short label of a query for a selection list: identity, camera, file, first-match rank."""
        r = self.split(split).query[index]
        first = int(self.ranking(model, split).first_match[index])
        return f"pid {r.pid} · cam {r.cam} · {Path(r.path).name} · first match {'#' + str(first) if first else '-'}"


def first_match_frame(data: InspectorData, split: str) -> pd.DataFrame:
    """One row per query of ``split``: identity, camera, file, and the rank of its first true match
    under each model (0: no true match), indexed by query index."""
    queries = data.split(split).query
    frame = pd.DataFrame(
        {"pid": [r.pid for r in queries], "cam": [r.cam for r in queries], "file": [Path(r.path).name for r in queries]}
    )
    for model in data.models:
        frame[f"rank ({model})"] = data.ranking(model, split).first_match.numpy()
    frame.index.name = "query"
    return frame


def _allowed_matrix(split: Split) -> Tensor:
    """``(Q, G)`` mask of the gallery each query ranks: the complement of what the gallery rules remove."""
    return ~split.rules.removed_between(split.query, split.gallery)


RENDER_PER_ROW = 5  # gallery images a row: the figure (about 800 px) then fits a notebook page unscaled
RENDER_LABEL_SIZE = 11  # points of the rank, score, identity and camera over each image


def render(view: QueryView, image_size: tuple[int, int], per_row: int = RENDER_PER_ROW) -> Figure:
    """The query and its top-k gallery images (green frame: the query's identity, red: another; each
    labelled with its rank, score, identity and camera in :data:`RENDER_LABEL_SIZE` points), ``per_row`` to a
    row, with the first true match appended when it ranks below the top k; images decoded at
    ``image_size = (H, W)``; titled with the summary."""
    first = "no true match" if view.first_match is None else f"first true match: rank {view.first_match}"
    title = (
        f"{view.state.model} · {view.state.split}\nquery pid {view.query.pid}, cam {view.query.cam} "
        f"({view.query.modality}) · {first}"
    )
    entries = list(zip(range(1, len(view.gallery) + 1), view.gallery, view.scores))
    if view.first_match is not None and view.first_match > len(view.gallery):
        entries.append((view.first_match, view.first_match_record, view.first_match_score))
    return plot_ranked_records(view.query, entries, image_size, title, per_row, label_size=RENDER_LABEL_SIZE)
