"""Whether a training stage is learning: every diagnostic its history records, as one panel per kind of
quantity (:func:`plot_diagnostics`) and as the last epoch's values with their meaning (:func:`diagnostics_table`).

Colour is the modality (MODALITY_COLOURS, shared with the projections of :mod:`csdn.analysis.projection`);
line style is the head of stage 3's network (GeM solid, projected dashed), or the validation metric.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from csdn.analysis.histories import (
    LOSS_COLOURS,
    NEUTRAL_COLOUR,
    PERCENT_KEYS,
    History,
    decorate,
    format_metric,
    history_frame,
    loss_keys,
    scale_axis,
)
from csdn.data.records import INFRARED, MODALITIES, VISIBLE
from csdn.style import MODALITY_COLOURS

HEAD_STYLES = {"gem": {"ls": "-", "marker": "o"}, "proj": {"ls": "--", "marker": "^"}}
HEAD_NAMES = {"gem": "GeM head", "proj": "projected head"}
# Visible drawn first with a larger circle: where both modalities coincide (stage 2's fused texts) both show.
MODALITY_MARKERS = {VISIBLE: {"marker": "o", "markersize": 6.5}, INFRARED: {"marker": "s", "markersize": 4}}
OTHER_LOSS_COLOURS = ("#7F7F7F", "#BCBD22", "#17BECF")  # further terms; none orange or blue (the modalities)
CHANCE_STYLE = {"color": "#999999", "ls": ":", "lw": 1.5}
# Text sizes of the diagnostics figure: three panels a row are about 13 inches wide, which a notebook
# scales down to its page width; these keep titles, labels and legends readable after that.
READABLE = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
}


def plot_diagnostics(
    history: History,
    title: str = "training",
    num_ids: int | None = None,
    loss: bool = True,
    validation: bool = True,
) -> Figure:
    """Whether a stage is learning, one panel per kind of quantity (only those the history records).

    Stage 3 (``csdn.train.reid_stage.batch_diagnostics``, means over the epoch's training batches):
    the loss and its terms, the ID accuracy of both heads, the unweighted HSE cross-entropy and
    the image-to-own-prototype top-1 per modality, the GeM and the projected feature norms per
    modality (one panel per head), the unweighted MSEL terms and the validation rank-1 / mAP,
    marked at the validated epochs only. Stages 1 and 2 (``csdn.train.text_stages.text_diagnostics``,
    over all training images after each epoch): the loss, the image-to-own-text top-1 and the text
    feature norm per modality. The loss and MSEL panels switch to a log axis when their curves span
    more than a factor ``LOG_SPREAD`` (so that a small term is not flattened by a large one).

    ``num_ids`` (the number of training identities) adds chance lines: 1 / num_ids to the accuracy
    and top-1 panels, ln(num_ids) (a uniform guess) to the HSE cross-entropy. Colour is the modality,
    line style the head. ``loss=False`` / ``validation=False`` leave out those panels (where a notebook has
    just drawn them with :func:`csdn.analysis.histories.plot_history`). At most three panels a row, with
    text sized to stay readable when the figure is scaled to a page's width.
    """
    _check_num_ids(num_ids)
    frame = history_frame(history)
    panels: list[Any] = []  # functions drawing one panel each on the axes they are given

    losses = loss_keys(history) if loss else []
    if losses:

        def draw_losses(ax):
            terms = [k for k in losses if k != "loss"]
            for key in losses:
                if key == "loss":
                    _curve(ax, frame, key, color="black", marker="o", lw=2.5, label="total")
                else:
                    others = [k for k in terms if k not in LOSS_COLOURS]
                    colour = LOSS_COLOURS.get(key) or OTHER_LOSS_COLOURS[others.index(key) % len(OTHER_LOSS_COLOURS)]
                    _curve(ax, frame, key, color=colour, marker="o", lw=1.2, label=key.removesuffix("_loss"))
            log = scale_axis(ax, frame, losses)
            decorate(
                ax,
                "loss (log scale)" if log else "loss",
                "loss and its terms (as summed)" if terms else "training loss",
            )
            if terms:
                ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))

        panels.append(draw_losses)

    heads = _head_keys(frame, "acc")
    if heads:

        def draw_accuracy(ax):
            for key, head in heads:
                _curve(ax, frame, key, 100, color=NEUTRAL_COLOUR, label=HEAD_NAMES[head], **HEAD_STYLES[head])
            if num_ids:
                _chance(ax, 100 / num_ids, f"chance 1/{num_ids}")
            ax.set_ylim(0, 102)
            decorate(ax, "ID accuracy (%)", "training ID accuracy (batches)")

        panels.append(draw_accuracy)

    hse = _modality_keys(frame, "hse_ce")
    if hse:

        def draw_hse(ax):
            for key, m in hse:
                _curve(ax, frame, key, color=MODALITY_COLOURS[m], **MODALITY_MARKERS[m], label=f"{m} images")
            if num_ids:
                _chance(ax, math.log(num_ids), f"chance ln {num_ids} = {math.log(num_ids):.2f}")
            _headroom(ax, frame, [k for k, _ in hse], math.log(num_ids) if num_ids else 0.0)
            decorate(ax, "cross-entropy (nats)", "HSE image-to-prototype CE (unweighted)")

        panels.append(draw_hse)

    i2t = _modality_keys(frame, "i2t_top1")
    if i2t:

        def draw_i2t(ax):
            for key, m in i2t:
                _curve(ax, frame, key, 100, color=MODALITY_COLOURS[m], **MODALITY_MARKERS[m], label=f"{m} images")
            if num_ids:
                _chance(ax, 100 / num_ids, f"chance 1/{num_ids}")
            ax.set_ylim(0, 102)
            decorate(ax, "own identity's text first (%)", "image-to-text top-1 (training images)")

        panels.append(draw_i2t)

    for head in HEAD_STYLES:
        norms = _modality_keys(frame, f"norm_{head}")
        if norms:

            def draw_norms(ax, norms=norms, head=head):
                for key, m in norms:
                    _curve(
                        ax,
                        frame,
                        key,
                        color=MODALITY_COLOURS[m],
                        label=f"{m} images",
                        ls=HEAD_STYLES[head]["ls"],
                        **MODALITY_MARKERS[m],
                    )
                _headroom(ax, frame, [k for k, _ in norms])
                decorate(ax, "mean L2 norm", f"feature norm, {HEAD_NAMES[head]}")

            panels.append(draw_norms)

    text_norms = _modality_keys(frame, "text_norm")
    if text_norms:

        def draw_text_norms(ax):
            for key, m in text_norms:
                _curve(ax, frame, key, color=MODALITY_COLOURS[m], **MODALITY_MARKERS[m], label=f"texts for {m} images")
            _headroom(ax, frame, [k for k, _ in text_norms])
            decorate(ax, "mean L2 norm", "text feature norm")

        panels.append(draw_text_norms)

    msel = _head_keys(frame, "msel")
    if msel:

        def draw_msel(ax):
            for key, head in msel:
                _curve(ax, frame, key, color=NEUTRAL_COLOUR, label=HEAD_NAMES[head], **HEAD_STYLES[head])
            log = scale_axis(ax, frame, [k for k, _ in msel])
            decorate(ax, "MSEL (log scale)" if log else "MSEL", "MSEL terms (unweighted)")

        panels.append(draw_msel)

    validated = [(k, name) for k, name in (("val_rank1", "rank-1"), ("val_mAP", "mAP")) if k in frame and validation]
    if validated:

        def draw_validation(ax):
            for (key, name), style in zip(validated, (HEAD_STYLES["gem"], HEAD_STYLES["proj"])):
                _curve(ax, frame, key, 100, color=NEUTRAL_COLOUR, label=name, **style)
            ax.set_ylim(0, 102)
            decorate(ax, "validation (%)", "held-out validation identities")

        panels.append(draw_validation)

    if not panels:
        raise ValueError(f"the history has no loss or diagnostic column (columns: {list(frame.columns)})")
    n = len(panels)
    ncols = n if n <= 3 else (2 if n == 4 else 3)
    nrows = -(-n // ncols)
    with plt.rc_context(READABLE):
        fig = plt.figure(figsize=(4.4 * ncols, 3.4 * nrows + 0.4), layout="constrained")
        axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
        epochs = frame.index.to_numpy()
        for ax, draw in zip(axes, panels):
            draw(ax)
            if ax.get_yscale() == "linear":
                ax.ticklabel_format(axis="y", useOffset=False)  # plain values, no "+4.87" offset
            if len(epochs):
                pad = max(0.3, 0.03 * (epochs.max() - epochs.min()))
                ax.set_xlim(epochs.min() - pad, epochs.max() + pad)
        for ax in axes[n:]:
            fig.delaxes(ax)
        fig.suptitle(title, fontsize=14)
    return fig


DIAGNOSTIC_MEANINGS = {
    "loss": "total loss",
    "id_loss": "ID cross-entropy, sum over both heads",
    "triplet_loss": "triplet loss, both features (weighted)",
    "hse_loss": "HSE loss (weighted)",
    "msel_loss": "MSEL loss (weighted)",
    "acc_gem": "training ID accuracy, GeM head",
    "acc_proj": "training ID accuracy, projected head",
    "hse_ce_visible": "HSE cross-entropy, visible images",
    "hse_ce_infrared": "HSE cross-entropy, infrared images",
    "i2t_top1_visible": "own text ranked first, visible images",
    "i2t_top1_infrared": "own text ranked first, infrared images",
    "norm_gem_visible": "GeM feature norm, visible",
    "norm_gem_infrared": "GeM feature norm, infrared",
    "norm_proj_visible": "projected feature norm, visible",
    "norm_proj_infrared": "projected feature norm, infrared",
    "text_norm_visible": "text feature norm (for visible images)",
    "text_norm_infrared": "text feature norm (for infrared images)",
    "msel_gem": "MSEL, GeM feature (unweighted)",
    "msel_proj": "MSEL, projected feature (unweighted)",
    "val_rank1": "validation rank-1",
    "val_mAP": "validation mAP",
    "val_score": "validation selection score",
    "lr": "learning rate",
}


def diagnostics_table(history: History, num_ids: int | None = None) -> pd.DataFrame:
    """The last epoch's value of every recorded metric, one row each (``epoch`` and ``seconds`` left out).

    Accuracies and validation metrics are formatted as percentages, the learning rate in scientific
    notation, the rest with four significant digits. A metric missing from the last epoch (validation
    on an epoch that did not validate) is read from the last epoch that has it, named in ``epoch``.
    With ``num_ids``, a ``chance`` column gives 1 / num_ids for the accuracies and ln(num_ids) for the
    HSE cross-entropies.
    """
    _check_num_ids(num_ids)
    frame = history_frame(history)
    known = [k for k in DIAGNOSTIC_MEANINGS if k in frame]
    keys = known + sorted(k for k in frame.columns if k not in DIAGNOSTIC_MEANINGS and k != "seconds")
    rows = []
    for key in keys:
        values = frame[key].dropna()
        if values.empty:
            continue
        value = float(values.iloc[-1])
        row = {
            "metric": key,
            "meaning": DIAGNOSTIC_MEANINGS.get(key, ""),
            "epoch": int(values.index[-1]),
            "value": format_metric(key, value),
        }
        if num_ids is not None:
            chance = (
                1 / num_ids
                if key in PERCENT_KEYS and not key.startswith("val_")
                else math.log(num_ids)
                if key.startswith("hse_ce_")
                else None
            )
            row["chance"] = "" if chance is None else format_metric(key, chance)
        rows.append(row)
    return pd.DataFrame(rows).set_index("metric")


def _headroom(ax, frame: pd.DataFrame, keys: Sequence[str], floor: float = 0.0) -> None:
    """A y-axis from 0 to a little above the largest value (and above ``floor``, e.g. a chance line)."""
    top = max([floor, *(float(frame[k].max()) for k in keys if frame[k].notna().any())])
    ax.set_ylim(0, 1.12 * top if top > 0 else 1.0)


def _modality_keys(frame: pd.DataFrame, prefix: str) -> list[tuple[str, str]]:
    """``(key, modality)`` for each ``<prefix>_<modality>`` column of ``frame``, visible first."""
    return [(f"{prefix}_{m}", m) for m in MODALITIES if f"{prefix}_{m}" in frame]


def _head_keys(frame: pd.DataFrame, prefix: str) -> list[tuple[str, str]]:
    """``(key, head)`` for each ``<prefix>_<head>`` column of ``frame``, GeM first."""
    return [(f"{prefix}_{h}", h) for h in HEAD_STYLES if f"{prefix}_{h}" in frame]


def _check_num_ids(num_ids: int | None) -> None:
    if num_ids is not None and (isinstance(num_ids, bool) or not isinstance(num_ids, (int, np.integer)) or num_ids < 2):
        raise ValueError(f"num_ids must be an integer >= 2 (the number of training identities), got {num_ids!r}")


def _curve(ax, frame: pd.DataFrame, key: str, scale: float = 1.0, **style: Any) -> None:
    """``key`` against epoch, only where the history has a value (validation: validated epochs only)."""
    rows = frame[key].dropna()
    ax.plot(rows.index, scale * rows.to_numpy(dtype=float), **{"markersize": 4, **style})


def _chance(ax, value: float, label: str) -> None:
    ax.axhline(value, label=label, **CHANCE_STYLE)
