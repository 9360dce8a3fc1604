"""Evaluation: features, metrics, the datasets' protocols, re-ranking and plots.

Plots live in :mod:`csdn.eval.plots` (imported on demand, so evaluation does not load matplotlib).
"""

from csdn.eval.features import extract_features
from csdn.eval.metrics import Metrics, evaluate, rank_gallery
from csdn.eval.protocols import (
    FeaturesOf,
    ProtocolResult,
    evaluate_features,
    evaluate_llcm,
    evaluate_regdb,
    evaluate_split,
    evaluate_sysu,
)
from csdn.eval.rerank import RerankConfig, k_reciprocal_rerank

__all__ = [
    "FeaturesOf",
    "Metrics",
    "ProtocolResult",
    "RerankConfig",
    "evaluate",
    "evaluate_features",
    "evaluate_llcm",
    "evaluate_regdb",
    "evaluate_split",
    "evaluate_sysu",
    "extract_features",
    "k_reciprocal_rerank",
    "rank_gallery",
]
