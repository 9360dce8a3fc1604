"""2-D projections of test features (t-SNE, UMAP) side by side across models, and ablation bar charts.

Every model's features are projected with the same :class:`ProjectionConfig` (same PCA width, same
perplexity / neighbours, same metric, same seed) so the panels differ only by the features. Points
are coloured by modality; a few identities get their own marker so one can follow a person across
modalities. Figures are pyplot figures in seaborn's ``whitegrid`` style (set per figure, not globally).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from csdn.data.records import Record
from csdn.errors import ConfigError
from csdn.style import MODALITY_COLOURS, NEUTRAL_COLOUR

METHODS = ("t-SNE", "UMAP")
IDENTITY_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "p", "h", "<", ">")


@dataclass(frozen=True)
class ProjectionConfig:
    """Settings shared by every model's projection (so panels are comparable)."""

    methods: tuple[str, ...] = METHODS  # projections drawn, one figure row each
    pca_dims: int = 50  # reduce to this many dimensions with PCA first (0: no PCA)
    perplexity: float = 30.0  # t-SNE perplexity (capped at (n - 1) / 3 for small sets)
    n_neighbors: int = 15  # UMAP neighbourhood size (capped at n - 1)
    min_dist: float = 0.1  # UMAP minimum distance between embedded points
    metric: str = "cosine"  # distance used by both methods
    seed: int = 0  # random state of PCA, t-SNE, UMAP and of the marked identities
    marked_ids: int = 8  # identities drawn with their own marker (at most len(IDENTITY_MARKERS))

    def __post_init__(self) -> None:
        unknown = set(self.methods) - set(METHODS)
        if not self.methods or unknown:
            raise ConfigError(f"methods must be a non-empty subset of {METHODS}, got {self.methods}")
        if not 0 <= self.marked_ids <= len(IDENTITY_MARKERS):
            raise ValueError(f"marked_ids must be in 0..{len(IDENTITY_MARKERS)}, got {self.marked_ids}")


def project(features: np.ndarray | torch.Tensor, method: str, cfg: ProjectionConfig = ProjectionConfig()) -> np.ndarray:
    """``(N, 2)`` coordinates of ``features`` (N, D) by ``method`` ("t-SNE" or "UMAP")."""
    x = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    x = x.astype(np.float32)
    if x.ndim != 2 or len(x) < 4:
        raise ValueError(f"a projection needs an (N, D) matrix with N >= 4, got shape {x.shape}")
    if cfg.pca_dims and x.shape[1] > cfg.pca_dims and len(x) > cfg.pca_dims:
        x = PCA(cfg.pca_dims, random_state=cfg.seed).fit_transform(x)
    if method == "t-SNE":
        perplexity = min(cfg.perplexity, (len(x) - 1) / 3)
        return TSNE(2, perplexity=perplexity, metric=cfg.metric, init="pca", random_state=cfg.seed).fit_transform(x)
    if method == "UMAP":
        import umap  # numba compiles on first use: import only when needed

        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=min(cfg.n_neighbors, len(x) - 1),
            min_dist=cfg.min_dist,
            metric=cfg.metric,
            random_state=cfg.seed,
            n_jobs=1,
        )
        return reducer.fit_transform(x)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def project_models(
    features: Mapping[str, np.ndarray | torch.Tensor], cfg: ProjectionConfig = ProjectionConfig()
) -> dict[str, dict[str, np.ndarray]]:
    """``{method: {model: (N, 2)}}`` for every model's features, with the same settings."""
    sizes = {name: len(f) for name, f in features.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"every model must give features of the same records, got row counts {sizes}")
    return {method: {name: project(f, method, cfg) for name, f in features.items()} for method in cfg.methods}


def marked_identities(pids: Sequence[int], n: int, seed: int = 0) -> list[int]:
    """``n`` identities (sorted) drawn with a fixed seed from the distinct ``pids``."""
    distinct = sorted(set(int(p) for p in pids))
    chosen = np.random.default_rng(seed).choice(len(distinct), size=min(n, len(distinct)), replace=False)
    return sorted(distinct[i] for i in chosen)


def plot_projections(
    coords: Mapping[str, Mapping[str, np.ndarray]],
    records: Sequence[Record],
    cfg: ProjectionConfig = ProjectionConfig(),
    title: str | None = None,
) -> Figure:
    """A grid of scatter plots: one row per method, one column per model (``coords[method][model]``).

    Every point is coloured by modality; the identities of :func:`marked_identities` are drawn large,
    each with its own marker, in both modalities.
    """
    methods = list(coords)
    models = list(coords[methods[0]]) if methods else []
    if not models:
        raise ValueError("plot_projections needs at least one method with at least one model")
    marked = marked_identities([r.pid for r in records], cfg.marked_ids, cfg.seed)
    markers = {f"id {pid}": IDENTITY_MARKERS[i] for i, pid in enumerate(marked)}
    base = pd.DataFrame(
        {
            "modality": [r.modality for r in records],
            "identity": [f"id {r.pid}" if r.pid in marked else "" for r in records],
        }
    )
    with sns.axes_style("whitegrid"):
        fig = plt.figure(figsize=(3.6 * len(models) + 1.6, 3.4 * len(methods)), layout="constrained")
        axes = fig.subplots(len(methods), len(models), squeeze=False)
        for i, method in enumerate(methods):
            for j, model in enumerate(models):
                xy = np.asarray(coords[method][model])
                if len(xy) != len(records):
                    raise ValueError(f"{method} / {model}: {len(xy)} points for {len(records)} records")
                frame = base.assign(x=xy[:, 0], y=xy[:, 1])
                ax = axes[i, j]
                sns.scatterplot(
                    frame,
                    x="x",
                    y="y",
                    hue="modality",
                    palette=MODALITY_COLOURS,
                    s=10,
                    alpha=0.35,
                    linewidth=0,
                    legend=False,
                    ax=ax,
                )
                chosen = frame[frame["identity"] != ""]
                if len(chosen):
                    sns.scatterplot(
                        chosen,
                        x="x",
                        y="y",
                        hue="modality",
                        style="identity",
                        markers=markers,
                        style_order=list(markers),
                        palette=MODALITY_COLOURS,
                        s=70,
                        edgecolor="black",
                        linewidth=0.6,
                        legend=(i, j) == (0, len(models) - 1),
                        ax=ax,
                    )
                ax.set(xlabel="", ylabel=method if j == 0 else "", xticks=[], yticks=[], title=model if i == 0 else "")
        legend_ax = axes[0, len(models) - 1]
        if legend_ax.get_legend() is not None:
            sns.move_legend(legend_ax, "upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)
        if title:
            fig.suptitle(title)
    return fig


# Axis labels of the per-run gap and diagnostic columns plot_ablation draws (the percent metrics get "(%)").
METRIC_LABELS = {
    "margin": "identity-modality margin",
    "nn_cross": "other-modality NN: same identity (fraction)",
    "x-mod mAP train ids": "cross-modality mAP, training ids (%)",
    "x-mod mAP test ids": "cross-modality mAP, test ids (%)",
}


def plot_ablation(
    runs: pd.DataFrame,
    metrics: Sequence[str] = ("R1", "mAP", "mINP"),
    protocol: str | None = None,
    title: str | None = None,
) -> Figure:
    """Bars of the mean of each ``metric`` per variant (error bars: standard deviation over seeds,
    dots: the seeds) for one ``protocol`` (default: the first) of a tidy ablation ``metrics`` table, or of
    its per-run table (no protocol column: gap metrics and diagnostics, one row per variant and seed)."""
    missing = {"variant", "seed", *metrics} - set(runs.columns)
    if missing:
        raise ValueError(f"the ablation table lacks columns {sorted(missing)} (expected run_ablation's output)")
    rows = runs
    if "protocol" in runs.columns:
        protocols = list(dict.fromkeys(runs["protocol"]))
        protocol = protocol or protocols[0]
        if protocol not in protocols:
            raise ValueError(f"protocol {protocol!r} is not in the table; choose one of {protocols}")
        rows = runs[runs["protocol"] == protocol]
    order = list(dict.fromkeys(rows["variant"]))
    with sns.axes_style("whitegrid"):
        fig = plt.figure(figsize=(3.4 * len(metrics) + 2.0, 0.42 * len(order) + 1.4), layout="constrained")
        axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
        for ax, metric in zip(axes, metrics):
            sns.barplot(
                rows,
                x=metric,
                y="variant",
                order=order,
                errorbar="sd",
                capsize=0.25,
                color=NEUTRAL_COLOUR,
                alpha=0.6,
                err_kws={"linewidth": 1.2},
                ax=ax,
            )
            sns.stripplot(rows, x=metric, y="variant", order=order, color="black", size=3.5, jitter=0.15, ax=ax)
            percent = metric in ("R1", "R10", "mAP", "mINP")
            ax.set(xlabel=f"{metric} (%)" if percent else METRIC_LABELS.get(metric, metric), ylabel="")
        seeds = rows["seed"].nunique()
        spread = "one seed: no spread" if seeds == 1 else f"mean ± sd over {seeds} seeds, dots: the seeds"
        head = title or (f"ablation, {protocol}" if protocol else "ablation, per run")
        fig.suptitle(f"{head} ({spread})")
    return fig


def plot_gap(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Four panels from :func:`csdn.analysis.gap.gap_table`: the identity-modality margin (0: identity and
    modality weigh the same), the other-modality neighbour rate (black ticks: its modality-blind ideal),
    nearest-neighbour identity accuracy within and across modalities, and the modality-classifier accuracy
    (dashed line: chance)."""
    needed = {
        "id-modality margin",
        "other-modality NN (%)",
        "other-modality NN ideal (%)",
        "modality clf acc (%)",
        "NN intra (%)",
        "NN cross (%)",
    }
    if not needed <= set(table.columns):
        missing = sorted(needed - set(table.columns))
        raise ValueError(f"the gap table lacks columns {missing} (expected gap_table's output)")
    models = list(table.index)
    frame = table.reset_index(names="model")
    nn = frame.melt(id_vars="model", value_vars=["NN intra (%)", "NN cross (%)"], var_name="search", value_name="NN")
    nn["search"] = nn["search"].map({"NN intra (%)": "same modality", "NN cross (%)": "other modality"})
    with sns.axes_style("whitegrid"):
        fig = plt.figure(figsize=(4.0 * 4, 3.6), layout="constrained")
        axes = fig.subplots(1, 4)
        sns.barplot(frame, x="model", y="id-modality margin", order=models, color="#8DA0CB", ax=axes[0])
        axes[0].axhline(0, color="black", linewidth=1)
        sns.barplot(frame, x="model", y="other-modality NN (%)", order=models, color="#8DA0CB", ax=axes[1])
        axes[1].scatter(models, frame["other-modality NN ideal (%)"], marker="_", s=400, color="black", zorder=3)
        axes[1].set(ylim=(0, 100), ylabel="nearest neighbour of the other modality (%)")
        sns.barplot(nn, x="model", y="NN", hue="search", order=models, palette=["#66C2A5", "#FC8D62"], ax=axes[2])
        axes[2].set(ylabel="nearest neighbour same identity (%)", ylim=(0, 100))
        axes[2].legend(fontsize="small", title=None)
        sns.barplot(frame, x="model", y="modality clf acc (%)", order=models, color="#8DA0CB", ax=axes[3])
        axes[3].axhline(50, color="black", linestyle="--", linewidth=1)
        axes[3].set_ylim(0, 100)
        for ax in axes:
            ax.set_xlabel("")
            ax.tick_params(axis="x", rotation=25)
        fig.suptitle(title or "modality gap of the test features")
    return fig
