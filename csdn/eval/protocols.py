"""Evaluation protocols: a dataset's :class:`~csdn.data.protocol.EvalSplit` run over its trials, averaged.

:func:`evaluate_split` runs any reader's split; :func:`evaluate_sysu`, :func:`evaluate_llcm` and
:func:`evaluate_regdb` are the three datasets' protocols spelled out. Every driver takes
``features_of(records) -> (N, D)`` tensor: L2-normalised features of the records in order, supplied by
the model side (it may use the records' modality to pick a stem). Similarity is the dot product; with
re-ranking, the k-reciprocal distance.

- **SYSU-MM01**: queries are all infrared test images; the gallery is sampled per trial (trials
  0..9, as AGW). Query features are extracted once, and the union of all trials' galleries once.
  SYSU filter (cam-3 queries ignore cam 2) and identity-deduplicated CMC.
- **RegDB**: one model per trial (trials 1..10, the official splits), so features come from
  ``features_of_trial(trial)``; both directions; no filtering, plain CMC.
- **LLCM**: queries fixed per direction, gallery of one image per (id, camera) sampled per trial
  (0..9); same-pid-same-camera removal and identity-deduplicated CMC. The direction names the
  query modality first: ``"visible->infrared"`` queries with visible images against infrared ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from csdn.data.protocol import EvalSplit, GalleryRules, check_direction
from csdn.data.records import Record
from csdn.eval.metrics import Metrics, evaluate
from csdn.eval.rerank import RerankConfig, k_reciprocal_rerank

FeaturesOf = Callable[[list[Record]], torch.Tensor]


def once_per_image(features_of: FeaturesOf) -> FeaturesOf:
    """``features_of`` that computes each record's feature once, however many splits, trials, directions or
    query cameras ask for it (one model, one evaluation): later calls compute only the records not seen yet."""
    rows: dict[Record, torch.Tensor] = {}

    def cached(records: list[Record]) -> torch.Tensor:
        missing = [r for r in dict.fromkeys(records) if r not in rows]
        if missing:
            rows.update(zip(missing, features_of(missing)))
        return torch.stack([rows[r] for r in records]) if records else features_of(records)

    return cached


Trials = int | Sequence[int]
Rerank = bool | RerankConfig

SUMMARY_RANKS = (1, 5, 10, 20)  # CMC ranks shown in tables and summaries


@dataclass(frozen=True, eq=False)
class ProtocolResult:
    """Metrics of every trial of one protocol, and their means."""

    name: str  # e.g. "SYSU-MM01 all-search single-shot"
    trials: tuple[int, ...]  # trial numbers in evaluation order
    per_trial: tuple[Metrics, ...]  # metrics of each trial, aligned with ``trials``

    def __post_init__(self) -> None:
        if not self.per_trial or len(self.trials) != len(self.per_trial):
            raise ValueError(
                f"{self.name}: need one Metrics per trial, got {len(self.per_trial)} for trials {self.trials}"
            )

    @property
    def cmc(self) -> np.ndarray:
        """Mean CMC curve over trials."""
        return np.mean([m.cmc for m in self.per_trial], axis=0)

    def rank(self, k: int) -> float:
        """Mean CMC at rank ``k`` (1-based)."""
        return float(np.mean([m.rank(k) for m in self.per_trial]))

    @property
    def r1(self) -> float:
        return self.rank(1)

    @property
    def r5(self) -> float:
        return self.rank(5)

    @property
    def r10(self) -> float:
        return self.rank(10)

    @property
    def r20(self) -> float:
        return self.rank(20)

    @property
    def mAP(self) -> float:
        return float(np.mean([m.mAP for m in self.per_trial]))

    @property
    def mINP(self) -> float:
        return float(np.mean([m.mINP for m in self.per_trial]))

    def summary(self) -> dict[str, float]:
        """Mean R1/R5/R10/R20 (those within the computed ranks), mAP and mINP, as fractions."""
        return {key: float(np.mean([_row(m)[key] for m in self.per_trial])) for key in _columns(self)}

    def table(self) -> str:
        """A fixed-width table in percent: one row per trial, then mean and standard deviation."""
        columns = _columns(self)
        rows = np.array([[_row(m)[c] * 100 for c in columns] for m in self.per_trial])
        header = f"{'trial':>6}" + "".join(f"{c.upper() if c[0] == 'r' else c:>8}" for c in columns)
        lines = [f"{self.name} ({len(self.trials)} trial{'s' * (len(self.trials) != 1)})", header]
        lines += [f"{t:>6}" + "".join(f"{v:8.2f}" for v in row) for t, row in zip(self.trials, rows)]
        lines.append(f"{'mean':>6}" + "".join(f"{v:8.2f}" for v in rows.mean(0)))
        lines.append(f"{'std':>6}" + "".join(f"{v:8.2f}" for v in rows.std(0)))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: name, trials, mean summary, mean CMC and per-trial metrics."""
        return {
            "name": self.name,
            "trials": list(self.trials),
            "mean": self.summary(),
            "cmc": [float(v) for v in self.cmc],
            "per_trial": [{"trial": t, **m.to_dict()} for t, m in zip(self.trials, self.per_trial)],
        }


def evaluate_features(
    q_feats: torch.Tensor,
    g_feats: torch.Tensor,
    query: Sequence[Record],
    gallery: Sequence[Record],
    *,
    rules: GalleryRules,
    dedup_ids: bool | None = None,
    rerank: Rerank = False,
    max_rank: int = 20,
) -> Metrics:
    """Metrics of query features against gallery features under ``rules`` (dot products or re-ranking)."""
    q_pids, q_cams = [r.pid for r in query], [r.cam for r in query]
    g_pids, g_cams = [r.pid for r in gallery], [r.cam for r in gallery]
    config = _rerank_config(rerank)
    if config is None:
        matrix, higher_is_better = q_feats @ g_feats.T, True
    else:
        matrix, higher_is_better = k_reciprocal_rerank(q_feats, g_feats, **asdict(config)), False
    return evaluate(
        matrix,
        q_pids,
        g_pids,
        q_cams,
        g_cams,
        rules=rules,
        higher_is_better=higher_is_better,
        dedup_ids=dedup_ids,
        max_rank=max_rank,
    )


def evaluate_split(
    features_of: FeaturesOf, split: EvalSplit, rerank: Rerank = False, *, max_rank: int = 20
) -> ProtocolResult:
    """``split`` (a reader's validation or test split) over its trials: query features once, the union of
    the trials' galleries once, then the metrics of each trial under the split's gallery rules."""
    galleries = [split.gallery(t) for t in split.trials]
    per_trial = _fixed_query_trials(
        features_of, list(split.query), galleries, split.trials, split.rules, rerank, max_rank
    )
    return ProtocolResult(split.title, split.trials, per_trial)


def evaluate_by_query_camera(
    features_of: FeaturesOf, split: EvalSplit, rerank: Rerank = False, *, max_rank: int = 20
) -> dict[int, ProtocolResult]:
    """``split`` evaluated separately for the queries of each camera (same galleries, trials and rules):
    camera number -> result, in camera order. Every image's feature is computed once."""
    cached = once_per_image(features_of)
    results = {}
    for cam in sorted({r.cam for r in split.query}):
        query = tuple(r for r in split.query if r.cam == cam)
        camera_split = replace(
            split, name=f"{split.name}, query cam {cam}", title=f"{split.title}, query camera {cam}", query=query
        )
        results[cam] = evaluate_split(cached, camera_split, rerank, max_rank=max_rank)
    return results


def evaluate_sysu(
    features_of: FeaturesOf,
    dataset: Any,
    mode: str = "all",
    shots: int = 1,
    trials: Trials = 10,
    rerank: Rerank = False,
    *,
    rand_perm: str | Path | None = None,
    max_rank: int = 20,
) -> ProtocolResult:
    """SYSU-MM01 ``mode``-search (``"all"``/``"indoor"``), ``shots`` per (id, camera), averaged over trials.

    ``dataset`` is a :class:`csdn.data.sysu.SYSUMM01`; ``trials`` is a count (trials 0..n-1, as AGW) or
    explicit trial numbers; ``rand_perm`` is the official permutation file (see ``SYSUMM01.gallery``).
    """
    split = dataset.search_split(mode, shots, _trial_ids(trials, first=0), rand_perm=rand_perm)
    return evaluate_split(features_of, split, rerank, max_rank=max_rank)


def evaluate_llcm(
    features_of: FeaturesOf,
    dataset: Any,
    direction: str,
    trials: Trials = 10,
    rerank: Rerank = False,
    *,
    max_rank: int = 20,
) -> ProtocolResult:
    """LLCM in one ``direction`` (query modality first), averaged over trials (0..n-1 for a count).

    ``dataset`` is a :class:`csdn.data.llcm.LLCM`.
    """
    split = dataset.direction_split(check_direction(direction), _trial_ids(trials, first=0))
    return evaluate_split(features_of, split, rerank, max_rank=max_rank)


def evaluate_regdb(
    features_of_trial: Callable[[int], FeaturesOf],
    dataset: str | Path | Callable[[int], Any],
    direction: str,
    trials: Trials = 10,
    rerank: Rerank = False,
    *,
    max_rank: int = 20,
) -> ProtocolResult:
    """RegDB in one ``direction``, one model per trial, averaged over trials (1..n for a count).

    ``features_of_trial(trial)`` gives the ``features_of`` of the model trained on that trial's split.
    ``dataset`` is the RegDB root folder, or a function ``trial -> dataset`` with
    ``.direction_split(direction)`` (a :class:`csdn.data.regdb.RegDB`). ``direction`` may say "thermal"
    for "infrared".
    """
    direction = check_direction(direction.replace("thermal", "infrared"))
    dataset_of = _regdb_reader(dataset) if isinstance(dataset, (str, Path)) else dataset
    trial_ids = _trial_ids(trials, first=1)
    per_trial = []
    for t in trial_ids:
        split = dataset_of(t).direction_split(direction)
        per_trial.extend(evaluate_split(features_of_trial(t), split, rerank, max_rank=max_rank).per_trial)
    return ProtocolResult(f"RegDB {direction.replace('infrared', 'thermal')}", trial_ids, tuple(per_trial))


def _fixed_query_trials(features_of, query, galleries, trial_ids, rules, rerank, max_rank):
    """Metrics per trial with one query set: features of the query and of the union of galleries once."""
    q_feats = _features(features_of, query, "query")
    union = list(dict.fromkeys(r for gallery in galleries for r in gallery))
    u_feats = _features(features_of, union, "gallery (all trials)")
    position = {record: i for i, record in enumerate(union)}
    per_trial = []
    for t, gallery in zip(trial_ids, galleries):
        if not gallery:
            raise ValueError(f"the gallery of trial {t} is empty: check the dataset's test identities")
        g_feats = u_feats[torch.tensor([position[r] for r in gallery])]
        per_trial.append(
            evaluate_features(q_feats, g_feats, query, gallery, rules=rules, rerank=rerank, max_rank=max_rank)
        )
    return tuple(per_trial)


def _features(features_of: FeaturesOf, records: list[Record], what: str) -> torch.Tensor:
    """Call ``features_of`` and check it returned one row per record; CPU float32."""
    if not records:
        raise ValueError(f"no records for the {what}: check the dataset split")
    feats = features_of(records)
    if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or len(feats) != len(records):
        shape = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
        raise ValueError(
            f"features_of must return a ({len(records)}, D) tensor for the {len(records)} "
            f"records of the {what}, got {shape}"
        )
    return feats.detach().to("cpu", torch.float32)


def _trial_ids(trials: Trials, first: int) -> tuple[int, ...]:
    """Trial numbers from a count (``first``, ``first + 1``, ...) or an explicit sequence."""
    if isinstance(trials, (int, np.integer)):
        if trials < 1:
            raise ValueError(f"trials must be >= 1, got {trials}")
        return tuple(range(first, first + int(trials)))
    ids = tuple(int(t) for t in trials)
    if not ids:
        raise ValueError("trials must name at least one trial")
    return ids


def _rerank_config(rerank: Rerank) -> RerankConfig | None:
    if isinstance(rerank, RerankConfig):
        return rerank
    return RerankConfig() if rerank else None


def _regdb_reader(root: str | Path) -> Callable[[int], Any]:
    from csdn.data.regdb import RegDB  # the reader is only needed when a root folder is given

    return lambda trial: RegDB(root, trial)


def _row(m: Metrics) -> dict[str, float]:
    return {key: value for key, value in m.to_dict().items() if key[0] == "r" or key in ("mAP", "mINP")}


def _columns(result: ProtocolResult) -> list[str]:
    max_rank = min(len(m.cmc) for m in result.per_trial)
    return [f"r{k}" for k in SUMMARY_RANKS if k <= max_rank] + ["mAP", "mINP"]
