"""A training stage's per-epoch history (``Experiment.histories[stage]``, or the tiny-CLIP pretraining's): as a
table, its loss, validation and learning-rate curves, and one loss curve per variant.

The figures are pyplot figures, as in :mod:`csdn.analysis.data_views`: a notebook shows them with ``plt.show()``.
(Creating one also loads the inline backend, which the pyplot-free figures of :mod:`csdn.eval.plots` need to
display in a fresh kernel.) :mod:`csdn.analysis.diagnostics` draws the same histories panel by panel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, MaxNLocator

from csdn.runs import metric_columns
from csdn.style import series_colour

History = Sequence[Mapping[str, float]]  # one dict of metrics per epoch, as in Experiment.histories
NEUTRAL_COLOUR = "#444444"  # quantities of no particular modality (heads, validation)
LOSS_COLOURS = {"id_loss": "#2CA02C", "triplet_loss": "#E377C2", "hse_loss": "#9467BD", "msel_loss": "#8C564B"}
PERCENT_KEYS = ("acc_gem", "acc_proj", "i2t_top1_visible", "i2t_top1_infrared", "val_rank1", "val_mAP", "val_score")
LOG_SPREAD = 10.0  # curves whose values span more than this factor share a log axis


def history_frame(history: History) -> pd.DataFrame:
    """A stage's per-epoch metrics as a table indexed by epoch, its columns in reading order
    (:func:`csdn.runs.metric_columns`: loss, its terms, the other metrics visible before infrared, validation,
    lr, seconds), whatever order the history's dicts have (a cached one comes back sorted by name)."""
    if not history:
        raise ValueError("the history is empty: the stage has not run (or has nothing to train)")
    frame = pd.DataFrame(list(history))
    if "epoch" not in frame:
        frame["epoch"] = np.arange(1, len(frame) + 1)
    return frame[metric_columns([{column: None for column in frame.columns}])].set_index("epoch")


def loss_keys(history: History) -> list[str]:
    """The loss columns of a history (``loss`` first, then the terms ``*_loss`` in :func:`history_frame`'s order)."""
    keys = history_frame(history).columns
    return [k for k in keys if k == "loss"] + [k for k in keys if k.endswith("_loss")]


def validation_keys(history: History) -> list[str]:
    """The validation metrics of a history (``val_*``, the selection score left out; rank-1 before mAP)."""
    return [k for k in history_frame(history).columns if k.startswith("val_") and k != "val_score"]


def plot_history(history: History, title: str = "training") -> Figure:
    """Loss terms per epoch (a log axis when the terms span more than a factor 10), the validation
    metrics at the validated epochs (in %) when the history has any, and the learning rate when recorded.

    ``history`` is a list of per-epoch dicts: a stage's (``Experiment.histories``) or the tiny-CLIP
    pretraining's (:func:`csdn.synthvi.pretrain.read_history`).
    """
    frame = history_frame(history)
    losses, metrics = loss_keys(history), validation_keys(history)
    if not losses:
        raise ValueError(f"the history has no loss column (columns: {list(frame.columns)})")
    panels = ["loss"] + ["validation"] * bool(metrics) + ["lr"] * ("lr" in frame)
    fig = plt.figure(figsize=(4.6 * len(panels) + 0.8, 3.6), layout="constrained")
    axes = dict(zip(panels, fig.subplots(1, len(panels), squeeze=False)[0]))
    ax = axes["loss"]
    for i, key in enumerate(losses):
        colour = "black" if key == "loss" else LOSS_COLOURS.get(key, series_colour(i + 4))
        ax.plot(
            frame.index, frame[key], marker="o", markersize=3, label=key, lw=2.5 if key == "loss" else 1.2, color=colour
        )
    log = scale_axis(ax, frame, losses)
    decorate(ax, "loss (log scale)" if log else "loss", f"{title}: loss")
    if metrics:
        ax = axes["validation"]
        validated = frame[metrics].dropna(how="all").index
        for i, key in enumerate(metrics):
            rows = frame[key].dropna()
            ax.plot(rows.index, 100 * rows, marker="os"[i % 2], label=key.removeprefix("val_"), color=series_colour(i))
        decorate(ax, "validation (%)", f"{title}: validation")
        ax.set_xticks(validated if len(validated) <= 12 else validated[:: -(-len(validated) // 12)])
        ax.set_xlim(0.5, frame.index.max() + 0.5)
    if "lr" in frame:
        ax = axes["lr"]
        ax.plot(frame.index, frame["lr"], marker="o", markersize=3, color=NEUTRAL_COLOUR, label="learning rate")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        decorate(ax, "learning rate", f"{title}: learning rate")
    return fig


def history_table(history: History, last: int = 5, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The last ``last`` epochs of a history as text: accuracies and validation in %, the learning rate
    in scientific notation, the rest to 4 significant digits (empty where a metric was not measured);
    ``columns`` keeps those of the given columns the history has, in that order."""
    frame = history_frame(history).tail(last)
    if columns is not None:
        frame = frame[[c for c in columns if c in frame.columns]]
    return frame.apply(lambda column: [("" if pd.isna(v) else format_metric(column.name, v)) for v in column])


def loss_table(histories: Mapping[str, History], key: str = "loss", last: int = 5) -> pd.DataFrame:
    """``key`` over the last ``last`` epochs of each named, non-empty history (e.g. one per SII variant), one
    column each, as text to four significant digits like :func:`history_table` (empty where a history is
    shorter)."""
    frame = pd.DataFrame({name: history_frame(h)[key] for name, h in histories.items() if h}).tail(last)
    return frame.apply(lambda column: [("" if pd.isna(v) else format_metric(key, v)) for v in column])


def plot_loss_curves(histories: Mapping[str, History], key: str = "loss", title: str = "loss") -> Figure:
    """One curve of ``key`` per named history (e.g. one per SII variant); empty histories are skipped."""
    drawn = {name: history_frame(h) for name, h in histories.items() if h}
    if not drawn:
        raise ValueError("plot_loss_curves needs at least one non-empty history")
    fig = plt.figure(figsize=(5.5, 3.6), layout="constrained")
    ax = fig.add_subplot()
    for i, (name, frame) in enumerate(drawn.items()):
        if key not in frame:
            raise ValueError(f"history {name!r} has no {key!r} column (columns: {list(frame.columns)})")
        ax.plot(frame.index, frame[key], marker="o", markersize=3, label=name, color=series_colour(i))
    curves = pd.DataFrame({name: frame[key] for name, frame in drawn.items()})
    log = scale_axis(ax, curves, list(curves.columns))
    decorate(ax, f"{key} (log scale)" if log else key, title)
    return fig


class _PlainLogFormatter(LogFormatter):
    """Log-axis tick labels as plain numbers (0.5, 8, 30), on the ticks matplotlib would label."""

    def __call__(self, x, pos=None):
        return f"{x:.3g}" if super().__call__(x, pos) else ""


def scale_axis(ax, frame: pd.DataFrame, keys: Sequence[str]) -> bool:
    """A log y-axis when the curves of ``keys`` (all positive) span more than ``LOG_SPREAD``; True if so."""
    values = frame[list(keys)].to_numpy(dtype=float)
    values = values[~np.isnan(values)]
    if len(keys) < 2 or not len(values) or values.min() <= 0 or values.max() / values.min() <= LOG_SPREAD:
        return False
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_PlainLogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    return True


def format_metric(key: str, value: float) -> str:
    """A metric as text: accuracies and validation in %, the learning rate in scientific notation, else 4 digits."""
    if key in PERCENT_KEYS:
        return f"{100 * value:.1f}%"
    if key == "lr":
        return f"{value:.2e}"
    return f"{value:.4g}"


def decorate(ax, ylabel: str, title: str) -> None:
    """Whole epochs on the x-axis, the labels and title, a light grid and the legend."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs, also for a single one
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
