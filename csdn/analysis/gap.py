"""Modality-gap metrics: how far apart visible and infrared features lie, and whether identity crosses over.

Three measurements on the features of both modalities (rows of one matrix, with each row's modality and
identity):

- **centroid ratio**: distance between the visible and the infrared centroid divided by the
  within-modality spread, the root-mean-square distance of a feature to its own modality's centroid.
  0 means the two clouds share a centre; above 1 the centres are further apart than a typical feature
  is from its own centre.
- **modality classifier accuracy**: cross-validated *balanced* accuracy (the mean of the per-modality
  recalls) of a linear classifier (standardised features, logistic regression) that predicts the
  modality. 0.5 means a linear model cannot tell the modalities apart, whatever the two counts are
  (plain accuracy would reward always answering the larger modality); 1.0 means they are linearly
  separable. Folds keep each identity on one side when identities are given, so the classifier cannot
  key on a person.
- **nearest-neighbour identity accuracy**: the fraction of features whose nearest neighbour has the same
  identity, searched among the *other* modality (cross) and among the *same* modality (intra, the
  feature itself excluded). A feature whose identity has no other image in the searched set is skipped.
  A small gap shows as cross close to intra.
- **identity-modality margin**: per feature, the mean cosine similarity to the same identity's features
  in the *other* modality minus the mean similarity to *other* identities' features in the *same*
  modality, averaged. Positive: a person is closer to themself across modalities than to strangers seen
  by the same kind of camera (identity outweighs modality); negative: modality outweighs identity.
- **other-modality neighbour rate**: the fraction of features whose nearest neighbour among *both*
  modalities (itself excluded) is of the other modality. Beside it, the rate a modality-blind,
  identity-perfect embedding would give: the share of each feature's other same-identity images that are
  of the other modality (about 50% for balanced identities). A modality-clustered embedding gives 0%.
- **learned vs generalised** (:func:`cross_modality_retrieval`, used by the ablation): infrared->visible
  rank-1 and mAP over every image of a set of identities, no gallery sampling or camera rule, once on
  *training* identities (what stage 3 fitted across modalities; the ablation draws as many as there are
  test identities, since mAP falls with the gallery's size) and once on the test identities.

The linear classifier stays, but on this world it separates the modalities of every model (the
infrared images carry no colour at all), so it cannot rank models; the margin, NN cross and the
train/test retrieval do. The neighbour rate asks whether the gap is closed (on the demo: 0 for every model).

:func:`modality_gap` L2-normalises the features first (retrieval compares normalised features) and
computes the per-model metrics; :func:`gap_table` lines several models up. :func:`gap_records` picks the
test images the measurements run on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from csdn.data.protocol import GalleryRules, Reader, SplitOptions
from csdn.data.records import INFRARED, MODALITIES, VISIBLE, Record
from csdn.eval.metrics import evaluate

Features = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class GapConfig:
    """How the modality-gap metrics are computed."""

    normalize: bool = True  # L2-normalise features first (retrieval compares normalised features)
    folds: int = 5  # cross-validation folds of the linear modality classifier
    seed: int = 0  # shuffling of the cross-validation folds
    max_iter: int = 2000  # logistic-regression iterations


@dataclass(frozen=True)
class GapMetrics:
    """The modality-gap measurements of one model's features."""

    centroid_distance: float  # distance between the visible and infrared centroids
    spread: float  # RMS distance of a feature to its own modality's centroid
    centroid_ratio: float  # centroid_distance / spread
    modality_accuracy: float  # cross-validated balanced accuracy of a linear modality classifier (0.5: inseparable)
    nn_intra: float  # nearest neighbour in the same modality has the same identity (fraction)
    nn_cross: float  # nearest neighbour in the other modality has the same identity (fraction)
    margin: float  # mean cos(same id, other modality) - mean cos(other ids, same modality), averaged per feature
    other_modality_nn: float  # nearest neighbour among both modalities is of the other modality (fraction)
    other_modality_nn_ideal: float  # the same for a modality-blind, identity-perfect embedding (fraction)
    n_visible: int  # visible features measured
    n_infrared: int  # infrared features measured

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _as_array(features: Features) -> np.ndarray:
    array = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    if array.ndim != 2 or len(array) == 0:
        raise ValueError(f"features must be a non-empty (N, D) matrix, got shape {array.shape}")
    return array.astype(np.float64)


def _modality_mask(modalities: Sequence[str], n: int) -> np.ndarray:
    """Boolean mask of the visible rows; both modalities must be present."""
    if len(modalities) != n:
        raise ValueError(f"need one modality per feature row: {len(modalities)} modalities for {n} rows")
    unknown = set(modalities) - set(MODALITIES)
    if unknown:
        raise ValueError(f"modalities must be {MODALITIES}, got {sorted(unknown)}")
    visible = np.array([m == VISIBLE for m in modalities])
    if visible.all() or not visible.any():
        raise ValueError(f"the modality gap needs features of both modalities, got only {modalities[0]!r}")
    return visible


def centroid_gap(features: Features, modalities: Sequence[str]) -> tuple[float, float, float]:
    """``(centroid distance, within-modality spread, their ratio)`` of the features as given."""
    x = _as_array(features)
    visible = _modality_mask(modalities, len(x))
    mu_v, mu_i = x[visible].mean(0), x[~visible].mean(0)
    residual = np.concatenate([x[visible] - mu_v, x[~visible] - mu_i])
    spread = float(np.sqrt((residual**2).sum(1).mean()))
    distance = float(np.linalg.norm(mu_v - mu_i))
    return distance, spread, distance / spread if spread > 0 else float("inf")


def modality_classifier_accuracy(
    features: Features,
    modalities: Sequence[str],
    folds: int = 5,
    seed: int = 0,
    groups: Sequence[int] | None = None,
    max_iter: int = 2000,
) -> float:
    """Mean cross-validated balanced accuracy of a linear (logistic-regression) modality classifier
    (0.5 = chance for any pair of modality counts).

    With ``groups`` (e.g. identities) every group stays within one fold (stratified group k-fold).
    """
    x = _as_array(features)
    y = _modality_mask(modalities, len(x)).astype(int)
    smallest = int(min(y.sum(), len(y) - y.sum()))
    if folds < 2 or smallest < folds:
        raise ValueError(
            f"{folds}-fold cross-validation needs folds >= 2 and at least {folds} features per "
            f"modality, got {smallest} in the smaller modality"
        )
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    if groups is None:
        cv, extra = StratifiedKFold(folds, shuffle=True, random_state=seed), {}
    else:
        if len(groups) != len(x):
            raise ValueError(f"need one group per feature row: {len(groups)} groups for {len(x)} rows")
        if len(set(groups)) < folds:
            raise ValueError(f"{folds}-fold group cross-validation needs >= {folds} groups, got {len(set(groups))}")
        cv, extra = StratifiedGroupKFold(folds, shuffle=True, random_state=seed), {"groups": np.asarray(groups)}
    return float(cross_val_score(classifier, x, y, cv=cv, scoring="balanced_accuracy", **extra).mean())


def nearest_neighbour_accuracy(
    features: Features, pids: Sequence[int], modalities: Sequence[str]
) -> tuple[float, float]:
    """``(intra, cross)``: how often a feature's nearest neighbour (Euclidean) shares its identity.

    Intra searches the same modality without the feature itself; cross searches the other modality.
    Features whose identity has no candidate in the searched set are skipped; NaN when none is left.
    """
    x = torch.as_tensor(_as_array(features))
    visible = torch.as_tensor(_modality_mask(modalities, len(x)))
    pid = _pid_tensor(pids, len(x))
    distance = torch.cdist(x, x)
    same_modality = visible[:, None] == visible[None, :]
    return (
        _nn_hits(distance, pid, same_modality & ~torch.eye(len(x), dtype=torch.bool)),
        _nn_hits(distance, pid, ~same_modality),
    )


def identity_modality_margin(features: Features, pids: Sequence[int], modalities: Sequence[str]) -> float:
    """Mean over features of: mean cosine similarity to the same identity in the other modality minus mean
    cosine similarity to other identities in the same modality. Features lacking either set are skipped;
    NaN when none is left."""
    x = torch.as_tensor(_normalised(_as_array(features)))
    visible = torch.as_tensor(_modality_mask(modalities, len(x)))
    pid = _pid_tensor(pids, len(x))
    similarity = x @ x.T
    same_id, same_modality = pid[:, None] == pid[None, :], visible[:, None] == visible[None, :]
    positive, negative = same_id & ~same_modality, ~same_id & same_modality
    kept = positive.any(1) & negative.any(1)
    if not kept.any():
        return float("nan")
    mean_positive = (similarity * positive).sum(1)[kept] / positive.sum(1)[kept]
    mean_negative = (similarity * negative).sum(1)[kept] / negative.sum(1)[kept]
    return float((mean_positive - mean_negative).mean())


def other_modality_neighbour_rate(
    features: Features, pids: Sequence[int], modalities: Sequence[str]
) -> tuple[float, float]:
    """``(rate, ideal)``: the fraction of features whose nearest neighbour among both modalities (Euclidean,
    itself excluded) is of the other modality, and that fraction for an embedding that ignores modality
    and always finds the own identity (per feature: its other same-identity images' other-modality share;
    features without another image of their identity are left out of the ideal)."""
    x = torch.as_tensor(_as_array(features))
    visible = torch.as_tensor(_modality_mask(modalities, len(x)))
    pid = _pid_tensor(pids, len(x))
    distance = torch.cdist(x, x).fill_diagonal_(float("inf"))
    rate = float((visible[distance.argmin(1)] != visible).double().mean())
    others = (pid[:, None] == pid[None, :]).fill_diagonal_(False)
    cross = others & (visible[:, None] != visible[None, :])
    has_other = others.any(1)
    ideal = (cross.sum(1)[has_other] / others.sum(1)[has_other]).double().mean() if has_other.any() else float("nan")
    return rate, float(ideal)


def cross_modality_retrieval(features: Features, records: Sequence[Record]) -> dict[str, float]:
    """Infrared->visible retrieval over all of ``records`` (every infrared image queries every visible one,
    no camera rule, cosine similarity): ``{"R1": ..., "mAP": ...}`` as fractions."""
    x = torch.as_tensor(_normalised(_as_array(features)))
    if len(records) != len(x):
        raise ValueError(f"need one record per feature row: {len(records)} records for {len(x)} rows")
    visible = torch.as_tensor(_modality_mask([r.modality for r in records], len(x)))
    pids, cams = np.array([r.pid for r in records]), np.array([r.cam for r in records])
    q, g = ~visible.numpy(), visible.numpy()
    metrics = evaluate(
        (x[~visible] @ x[visible].T).numpy(),
        pids[q],
        pids[g],
        cams[q],
        cams[g],
        rules=GalleryRules(),
        higher_is_better=True,
        max_rank=1,
    )
    return {"R1": float(metrics.cmc[0]), "mAP": float(metrics.mAP)}


def _normalised(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def _pid_tensor(pids: Sequence[int], n: int) -> torch.Tensor:
    if len(pids) != n:
        raise ValueError(f"need one identity per feature row: {len(pids)} identities for {n} rows")
    return torch.as_tensor(np.asarray(pids, dtype=np.int64))


def _nn_hits(distance: torch.Tensor, pid: torch.Tensor, allowed: torch.Tensor) -> float:
    """Fraction of rows (with a same-identity candidate among ``allowed``) whose nearest allowed column matches."""
    masked = distance.masked_fill(~allowed, float("inf"))
    has_match = ((pid[:, None] == pid[None, :]) & allowed).any(1)
    if not has_match.any():
        return float("nan")
    nearest = masked.argmin(1)
    return float((pid[nearest] == pid)[has_match].double().mean())


def modality_gap(features: Features, records: Sequence[Record], cfg: GapConfig = GapConfig()) -> GapMetrics:
    """All modality-gap metrics of ``features`` (one row per record, in order)."""
    x = _as_array(features)
    if len(records) != len(x):
        raise ValueError(f"need one record per feature row: {len(records)} records for {len(x)} rows")
    if cfg.normalize:
        x = _normalised(x)
    modalities, pids = [r.modality for r in records], [r.pid for r in records]
    distance, spread, ratio = centroid_gap(x, modalities)
    accuracy = modality_classifier_accuracy(x, modalities, cfg.folds, cfg.seed, groups=pids, max_iter=cfg.max_iter)
    intra, cross = nearest_neighbour_accuracy(x, pids, modalities)
    margin = identity_modality_margin(x, pids, modalities)
    other, ideal = other_modality_neighbour_rate(x, pids, modalities)
    n_visible = sum(m == VISIBLE for m in modalities)
    return GapMetrics(
        distance, spread, ratio, accuracy, intra, cross, margin, other, ideal, n_visible, len(x) - n_visible
    )


def gap_table(metrics: Mapping[str, GapMetrics]) -> pd.DataFrame:
    """One row per model: centroid ratio, modality-classifier accuracy, NN identity accuracy (%), counts."""
    rows = []
    for model, m in metrics.items():
        rows.append(
            {
                "model": model,
                "centroid ratio": m.centroid_ratio,
                "centroid distance": m.centroid_distance,
                "spread": m.spread,
                "modality clf acc (%)": 100 * m.modality_accuracy,
                "NN intra (%)": 100 * m.nn_intra,
                "NN cross (%)": 100 * m.nn_cross,
                "cross / intra": m.nn_cross / m.nn_intra if m.nn_intra > 0 else float("nan"),
                "id-modality margin": m.margin,
                "other-modality NN (%)": 100 * m.other_modality_nn,
                "other-modality NN ideal (%)": 100 * m.other_modality_nn_ideal,
                "visible": m.n_visible,
                "infrared": m.n_infrared,
            }
        )
    return pd.DataFrame(rows).set_index("model")


def gap_records(dataset: Reader, trials: int = 10) -> list[Record]:
    """The test images the gap is measured on: the infrared->visible queries of the dataset's first
    all-search single-shot split and the union of its galleries over ``trials`` trials (one fixed
    gallery on RegDB)."""
    options = SplitOptions(trials=trials, modes=("all",), shots=(1,), directions=(f"{INFRARED}->{VISIBLE}",))
    split = dataset.test_splits(options)[0]
    return list(dict.fromkeys([*split.query, *(r for t in split.trials for r in split.gallery(t))]))
