"""Where a model fails: rank-1 confusions of a test split, and which SynthVI attributes the confused
identities share.

:func:`rank1_confusions` ranks one trial's gallery for every query (under the split's gallery rules)
and records the identity ranked first. :func:`attribute_confusions` takes the failed queries (first
identity wrong) and asks, per attribute, how often the query's identity and the wrongly ranked one have
the same value, against the base rate: how often two different test identities share it at all. A
lift well above 1 means the model confuses people *because* they share that attribute (it relies on
it); a lift near 1 means the attribute plays no part in its mistakes. Infrared queries cannot show
colour, so a model that matches across modalities should confuse identities that share the
modality-invariant attributes (build, garments, bag, ...) and ignore colour.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

import pandas as pd
import torch

from csdn.analysis.oracle import Attributes
from csdn.data.protocol import EvalSplit
from csdn.synthvi.layouts import synthvi_pid
from csdn.synthvi.world import ATTRIBUTES, COLOR_ATTRIBUTES


def rank1_confusions(
    query_features: torch.Tensor, gallery_features: torch.Tensor, split: EvalSplit, trial: int
) -> pd.DataFrame:
    """One row per query of ``split``: its pid and camera, the pid and camera ranked first in ``trial``'s
    gallery (dot products, the split's rules applied) and whether that is a hit. ``query_features`` are
    aligned with ``split.query``, ``gallery_features`` with ``split.gallery(trial)``."""
    query, gallery = list(split.query), split.gallery(trial)
    if len(query_features) != len(query) or len(gallery_features) != len(gallery):
        raise ValueError(
            f"need one feature per image: {len(query_features)} for {len(query)} queries, "
            f"{len(gallery_features)} for {len(gallery)} gallery images"
        )
    q_pid, q_cam = (torch.tensor([getattr(r, f) for r in query]) for f in ("pid", "cam"))
    g_pid, g_cam = (torch.tensor([getattr(r, f) for r in gallery]) for f in ("pid", "cam"))
    removed = split.rules.removed_between(query, gallery)
    scores = (query_features.float() @ gallery_features.float().T).masked_fill(removed, float("-inf"))
    first = scores.argmax(1)
    return pd.DataFrame(
        {
            "query": range(len(query)),
            "pid": q_pid.numpy(),
            "cam": q_cam.numpy(),
            "first_pid": g_pid[first].numpy(),
            "first_cam": g_cam[first].numpy(),
            "hit": (g_pid[first] == q_pid).numpy(),
            "synthvi_pid": [synthvi_pid(r) for r in query],
            "first_synthvi_pid": [synthvi_pid(gallery[i]) for i in first.tolist()],
        }
    )


def attribute_confusions(
    confusions: pd.DataFrame, attributes: Attributes, names: Sequence[str] = tuple(ATTRIBUTES)
) -> pd.DataFrame:
    """Per attribute of ``names``: the share of failed queries whose identity has the same value as the
    identity ranked first (``confused``), the share among all pairs of different identities of the
    queries (``base rate``), and their ratio (``lift``), with the failure count; colour attributes are
    marked. ``attributes`` maps SynthVI pid -> attribute -> value (:func:`csdn.analysis.oracle.identity_attributes`)."""
    failed = confusions[~confusions["hit"]]
    if failed.empty:
        raise ValueError("no query failed at rank 1: nothing to analyse")
    pids = sorted(set(confusions["synthvi_pid"]))
    if len(pids) < 2:
        raise ValueError("the base rate needs at least two query identities")
    pairs = list(combinations(pids, 2))
    rows = []
    for name in names:
        confused = _share(attributes, zip(failed["synthvi_pid"], failed["first_synthvi_pid"]), name)
        base = _share(attributes, pairs, name)
        rows.append(
            {
                "attribute": name,
                "colour": name in COLOR_ATTRIBUTES,
                "confused": confused,
                "base rate": base,
                "lift": confused / base if base > 0 else float("nan"),
                "failures": len(failed),
            }
        )
    return pd.DataFrame(rows).set_index("attribute").sort_values("lift", ascending=False)


def _share(attributes: Mapping[int, Mapping[str, str]], pairs, name: str) -> float:
    same = [attributes[a][name] == attributes[b][name] for a, b in pairs]
    return sum(same) / len(same)
