"""Tables and figures for the three training-stage notebooks (03 prompts, 04 SII, 05 HSE + re-ID).

Everything works on plain tensors, records and per-epoch histories (``Experiment.histories[stage]``),
so each view can be tested on small hand-made inputs. Figures are pyplot figures, as in
:mod:`csdn.analysis.data_views`: a notebook shows them with ``plt.show()``. (Creating one also loads the inline
backend, which the pyplot-free figures of :mod:`csdn.eval.plots` need to display in a fresh kernel.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, MaxNLocator
from torch import Tensor

from csdn.data.protocol import GalleryRules
from csdn.data.records import INFRARED, MODALITIES, VISIBLE, Record
from csdn.eval.plots import plot_ranked_records
from csdn.model.prompts import ModalityPrompts
from csdn.reports import results_frame
from csdn.sources import dataset_label
from csdn.style import MODALITY_COLOURS, integer_ticks, series_colour
from csdn.train.text_stages import CachedFeatures

History = Sequence[Mapping[str, float]]  # one dict of metrics per epoch, as in Experiment.histories

# -- training curves ---------------------------------------------------------------------------------


def history_frame(history: History) -> pd.DataFrame:
    """A stage's per-epoch metrics as a table indexed by epoch."""
    if not history:
        raise ValueError("the history is empty: the stage has not run (or has nothing to train)")
    frame = pd.DataFrame(list(history))
    if "epoch" not in frame:
        frame["epoch"] = np.arange(1, len(frame) + 1)
    return frame.set_index("epoch")


def loss_keys(history: History) -> list[str]:
    """The loss columns of a history (``loss`` first, then the terms ``*_loss``)."""
    keys = history_frame(history).columns
    return [k for k in keys if k == "loss"] + sorted(k for k in keys if k.endswith("_loss"))


def validation_keys(history: History) -> list[str]:
    """The validation metrics of a history (``val_*``, the selection score left out)."""
    return sorted(k for k in history_frame(history).columns if k.startswith("val_") and k != "val_score")


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
    log = _scale_axis(ax, frame, losses)
    _decorate(ax, "loss (log scale)" if log else "loss", f"{title}: loss")
    if metrics:
        ax = axes["validation"]
        validated = frame[metrics].dropna(how="all").index
        for i, key in enumerate(metrics):
            rows = frame[key].dropna()
            ax.plot(rows.index, 100 * rows, marker="os"[i % 2], label=key.removeprefix("val_"), color=series_colour(i))
        _decorate(ax, "validation (%)", f"{title}: validation")
        ax.set_xticks(validated if len(validated) <= 12 else validated[:: -(-len(validated) // 12)])
        ax.set_xlim(0.5, frame.index.max() + 0.5)
    if "lr" in frame:
        ax = axes["lr"]
        ax.plot(frame.index, frame["lr"], marker="o", markersize=3, color=NEUTRAL_COLOUR, label="learning rate")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        _decorate(ax, "learning rate", f"{title}: learning rate")
    return fig


def history_table(history: History, last: int = 5, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The last ``last`` epochs of a history as text: accuracies and validation in %, the learning rate
    in scientific notation, the rest to 4 significant digits (empty where a metric was not measured);
    ``columns`` keeps those of the given columns the history has, in that order."""
    frame = history_frame(history).tail(last)
    if columns is not None:
        frame = frame[[c for c in columns if c in frame.columns]]
    return frame.apply(lambda column: [("" if pd.isna(v) else _format(column.name, v)) for v in column])


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
    log = _scale_axis(ax, curves, list(curves.columns))
    _decorate(ax, f"{key} (log scale)" if log else key, title)
    return fig


# -- training diagnostics ----------------------------------------------------------------------------
#
# Colour is the modality (MODALITY_COLOURS, shared with the projections of csdn.analysis.projection);
# line style is the head of stage 3's network (GeM solid, projected dashed), or the validation metric.

HEAD_STYLES = {"gem": {"ls": "-", "marker": "o"}, "proj": {"ls": "--", "marker": "^"}}
HEAD_NAMES = {"gem": "GeM head", "proj": "projected head"}
# Visible drawn first with a larger circle: where both modalities coincide (stage 2's fused texts) both show.
MODALITY_MARKERS = {VISIBLE: {"marker": "o", "markersize": 6.5}, INFRARED: {"marker": "s", "markersize": 4}}
NEUTRAL_COLOUR = "#444444"  # quantities of no particular modality (heads, validation)
LOSS_COLOURS = {"id_loss": "#2CA02C", "triplet_loss": "#E377C2", "hse_loss": "#9467BD", "msel_loss": "#8C564B"}
OTHER_LOSS_COLOURS = ("#7F7F7F", "#BCBD22", "#17BECF")  # further terms; none orange or blue (the modalities)
CHANCE_STYLE = {"color": "#999999", "ls": ":", "lw": 1.5}
PERCENT_KEYS = ("acc_gem", "acc_proj", "i2t_top1_visible", "i2t_top1_infrared", "val_rank1", "val_mAP", "val_score")


class _PlainLogFormatter(LogFormatter):
    """Log-axis tick labels as plain numbers (0.5, 8, 30), on the ticks matplotlib would label."""

    def __call__(self, x, pos=None):
        return f"{x:.3g}" if super().__call__(x, pos) else ""


LOG_SPREAD = 10.0  # curves whose values span more than this factor share a log axis


def _scale_axis(ax, frame: pd.DataFrame, keys: Sequence[str]) -> bool:
    """A log y-axis when the curves of ``keys`` (all positive) span more than ``LOG_SPREAD``; True if so."""
    values = frame[list(keys)].to_numpy(dtype=float)
    values = values[~np.isnan(values)]
    if len(keys) < 2 or not len(values) or values.min() <= 0 or values.max() / values.min() <= LOG_SPREAD:
        return False
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_PlainLogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    return True


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


def plot_diagnostics(history: History, title: str = "training", num_ids: int | None = None) -> Figure:
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
    line style the head.
    """
    _check_num_ids(num_ids)
    frame = history_frame(history)
    panels: list[Any] = []  # functions drawing one panel each on the axes they are given

    losses = loss_keys(history)
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
            log = _scale_axis(ax, frame, losses)
            _decorate(
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
            _decorate(ax, "ID accuracy (%)", "training ID accuracy (batches)")

        panels.append(draw_accuracy)

    hse = _modality_keys(frame, "hse_ce")
    if hse:

        def draw_hse(ax):
            for key, m in hse:
                _curve(ax, frame, key, color=MODALITY_COLOURS[m], **MODALITY_MARKERS[m], label=f"{m} images")
            if num_ids:
                _chance(ax, math.log(num_ids), f"chance ln {num_ids} = {math.log(num_ids):.2f}")
            _headroom(ax, frame, [k for k, _ in hse], math.log(num_ids) if num_ids else 0.0)
            _decorate(ax, "cross-entropy (nats)", "HSE image-to-prototype CE (unweighted)")

        panels.append(draw_hse)

    i2t = _modality_keys(frame, "i2t_top1")
    if i2t:

        def draw_i2t(ax):
            for key, m in i2t:
                _curve(ax, frame, key, 100, color=MODALITY_COLOURS[m], **MODALITY_MARKERS[m], label=f"{m} images")
            if num_ids:
                _chance(ax, 100 / num_ids, f"chance 1/{num_ids}")
            ax.set_ylim(0, 102)
            _decorate(ax, "own identity's text first (%)", "image-to-text top-1 (training images)")

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
                _decorate(ax, "mean L2 norm", f"feature norm, {HEAD_NAMES[head]}")

            panels.append(draw_norms)

    text_norms = _modality_keys(frame, "text_norm")
    if text_norms:

        def draw_text_norms(ax):
            for key, m in text_norms:
                _curve(ax, frame, key, color=MODALITY_COLOURS[m], **MODALITY_MARKERS[m], label=f"texts for {m} images")
            _headroom(ax, frame, [k for k, _ in text_norms])
            _decorate(ax, "mean L2 norm", "text feature norm")

        panels.append(draw_text_norms)

    msel = _head_keys(frame, "msel")
    if msel:

        def draw_msel(ax):
            for key, head in msel:
                _curve(ax, frame, key, color=NEUTRAL_COLOUR, label=HEAD_NAMES[head], **HEAD_STYLES[head])
            log = _scale_axis(ax, frame, [k for k, _ in msel])
            _decorate(ax, "MSEL (log scale)" if log else "MSEL", "MSEL terms (unweighted)")

        panels.append(draw_msel)

    validation = [(k, name) for k, name in (("val_rank1", "rank-1"), ("val_mAP", "mAP")) if k in frame]
    if validation:

        def draw_validation(ax):
            for (key, name), style in zip(validation, (HEAD_STYLES["gem"], HEAD_STYLES["proj"])):
                _curve(ax, frame, key, 100, color=NEUTRAL_COLOUR, label=name, **style)
            ax.set_ylim(0, 102)
            _decorate(ax, "validation (%)", "held-out validation identities")

        panels.append(draw_validation)

    if not panels:
        raise ValueError(f"the history has no loss or diagnostic column (columns: {list(frame.columns)})")
    n = len(panels)
    ncols = n if n <= 4 else (3 if n in (5, 6, 9) else 4)
    nrows = -(-n // ncols)
    fig = plt.figure(figsize=(4.2 * ncols, 3.3 * nrows + 0.4), layout="constrained")
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
    fig.suptitle(title)
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
            "value": _format(key, value),
        }
        if num_ids is not None:
            chance = (
                1 / num_ids
                if key in PERCENT_KEYS and not key.startswith("val_")
                else math.log(num_ids)
                if key.startswith("hse_ce_")
                else None
            )
            row["chance"] = "" if chance is None else _format(key, chance)
        rows.append(row)
    return pd.DataFrame(rows).set_index("metric")


def _format(key: str, value: float) -> str:
    if key in PERCENT_KEYS:
        return f"{100 * value:.1f}%"
    if key == "lr":
        return f"{value:.2e}"
    return f"{value:.4g}"


def _decorate(ax, ylabel: str, title: str) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs, also for a single one
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


# -- stage 1: what the prompts learned ---------------------------------------------------------------


def word_token_ids(tokenizer: Any, words: Iterable[str]) -> Tensor:
    """Sorted ids of the ``words`` that are a single token of ``tokenizer`` (open_clip style); the
    candidates for :func:`nearest_words` (e.g. the vocabulary of a dataset's captions)."""
    ids = set()
    for word in {w.strip(".,;:!?\"'()").lower() for w in words} - {""}:
        tokens = tokenizer([word])[0]
        tokens = tokens[tokens != 0]
        if tokens.numel() == 3:  # start, the word, end
            ids.add(int(tokens[1]))
    if not ids:
        raise ValueError("none of the words is a single token of the tokenizer")
    return torch.tensor(sorted(ids))


def nearest_words(
    context: Tensor, token_embedding: Tensor, tokenizer: Any, k: int = 3, candidates: Tensor | None = None
) -> list[list[tuple[str, float]]]:
    """For each context vector ``(n_ctx, width)``, the ``k`` vocabulary words whose token embedding
    ``(vocab, width)`` is closest by cosine, as ``(word, cosine)`` best first.

    ``candidates`` restricts the search to those token ids; words are decoded with ``tokenizer.decode``.
    """
    if context.dim() != 2 or token_embedding.dim() != 2 or context.shape[1] != token_embedding.shape[1]:
        raise ValueError(
            f"context (n_ctx, width) and token_embedding (vocab, width) must share the width, got "
            f"{tuple(context.shape)} and {tuple(token_embedding.shape)}"
        )
    ids = torch.arange(token_embedding.shape[0]) if candidates is None else torch.as_tensor(candidates).long().cpu()
    if not 1 <= k <= len(ids):
        raise ValueError(f"k must be in [1, {len(ids)}] (the number of candidate words), got {k}")
    vocab = F.normalize(token_embedding.detach().float().cpu()[ids], dim=1)
    cosine = F.normalize(context.detach().float().cpu(), dim=1) @ vocab.T
    top = cosine.topk(k, dim=1)
    return [
        [(tokenizer.decode([int(ids[j])]).strip(), float(c)) for c, j in zip(row_c, row_j)]
        for row_c, row_j in zip(top.values, top.indices)
    ]


def context_words_frame(
    prompts: ModalityPrompts,
    token_embedding: Tensor,
    tokenizer: Any,
    labels: Sequence[int],
    pids: Sequence[int] | None = None,
    k: int = 3,
    candidates: Tensor | None = None,
) -> pd.DataFrame:
    """One row per (identity, learner, context token): the ``k`` nearest words with their cosines.

    ``labels`` are training labels (rows of the learners); ``pids`` the dataset identities to show for them.
    """
    pids = list(labels) if pids is None else list(pids)
    if len(pids) != len(labels):
        raise ValueError(f"pids ({len(pids)}) must align with labels ({len(labels)})")
    rows = []
    for label, pid in zip(labels, pids):
        for name, learner in prompts.learners.items():
            words = nearest_words(learner.context[label], token_embedding, tokenizer, k, candidates)
            for position, nearest in enumerate(words, start=1):
                rows.append(
                    {
                        "pid": pid,
                        "prompt": name,
                        "token": position,
                        "nearest words": ", ".join(f"{w} ({c:.2f})" for w, c in nearest),
                    }
                )
    return pd.DataFrame(rows)


def similarity_by_identity(texts: Tensor, images: Tensor, labels: Tensor) -> Tensor:
    """Mean cosine ``(num_ids, num_ids)`` between identity ``i``'s text feature (row ``i`` of ``texts``)
    and the images of identity ``j`` (``labels`` are rows of ``texts``); NaN for an identity without images."""
    if texts.dim() != 2 or images.dim() != 2 or texts.shape[1] != images.shape[1]:
        raise ValueError(
            f"texts (num_ids, d) and images (N, d) must share d, got {tuple(texts.shape)} and {tuple(images.shape)}"
        )
    labels = torch.as_tensor(labels).long().cpu()
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must be ({images.shape[0]},), one per image, got {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= texts.shape[0]):
        raise ValueError(f"labels must lie in [0, {texts.shape[0]}) (rows of texts)")
    cosine = F.normalize(texts.detach().float().cpu(), dim=1) @ F.normalize(images.detach().float().cpu(), dim=1).T
    n = texts.shape[0]
    sums = torch.zeros(n, n).index_add_(1, labels, cosine)
    counts = torch.bincount(labels, minlength=n).float()
    return sums / counts  # 0 / 0 -> NaN for identities without images


def own_and_other(matrix: Tensor) -> tuple[float, float]:
    """Mean of the diagonal (own identity) and of the off-diagonal (other identities), NaNs ignored."""
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
        raise ValueError(f"need a square matrix of at least 2 x 2, got {tuple(matrix.shape)}")
    own = torch.diagonal(matrix)
    other = matrix[~torch.eye(matrix.shape[0], dtype=torch.bool)]
    return float(own.nanmean()), float(other.nanmean())


def modality_similarities(texts: Mapping[str, Tensor], feats: CachedFeatures) -> dict[tuple[str, str], Tensor]:
    """:func:`similarity_by_identity` for every (text source, image modality) pair."""
    images = {VISIBLE: (feats.visible, feats.visible_labels), INFRARED: (feats.infrared, feats.infrared_labels)}
    return {
        (name, modality): similarity_by_identity(t, *images[modality])
        for name, t in texts.items()
        for modality in MODALITIES
    }


def similarity_table(matrices: Mapping[tuple[str, str], Tensor]) -> pd.DataFrame:
    """One row per (text, images) pair: mean cosine to the own identity's images, to others', and the margin."""
    rows = []
    for (text, images), matrix in matrices.items():
        own, other = own_and_other(matrix)
        rows.append(
            {"text": text, "images": images, "own identity": own, "other identities": other, "margin": own - other}
        )
    return pd.DataFrame(rows).round(4)


def plot_similarity_heatmaps(matrices: Mapping[str, Tensor], max_ids: int = 24, centre: bool = True) -> Figure:
    """One identities x identities heatmap per named matrix (text rows, image columns, first ``max_ids``),
    two per row. With ``centre`` the matrix is double-centred (over all identities, before cropping to
    ``max_ids``): each column's and each row's mean is subtracted and the grand mean added back. Some
    images are more similar to every prompt than others (vertical stripes), and some prompts to every
    image (horizontal stripes); centred, what is left is how much more a prompt and an identity's images
    go together than their averages say, and prompts that pick out their identities show as a bright
    diagonal."""
    if not matrices:
        raise ValueError("plot_similarity_heatmaps needs at least one matrix")
    ncols = min(2, len(matrices))
    nrows = -(-len(matrices) // ncols)
    fig = plt.figure(figsize=(4.6 * ncols, 3.9 * nrows), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    for ax, (name, matrix) in zip(axes, matrices.items()):
        values = (
            matrix - matrix.mean(0, keepdim=True) - matrix.mean(1, keepdim=True) + matrix.mean() if centre else matrix
        )
        shown = values[:max_ids, :max_ids].numpy()
        image = ax.imshow(shown, cmap="viridis")
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel("images of identity")
        ax.set_ylabel("prompt of identity")
        integer_ticks(ax, "both")
        label = "mean cosine, double-centred" if centre else "mean cosine"
        fig.colorbar(image, ax=ax, shrink=0.8, label=label)
    for ax in axes[len(matrices) :]:
        ax.axis("off")
    return fig


# -- stage 2: what the fusion does -------------------------------------------------------------------


def mean_cosine(a: Tensor, b: Tensor) -> float:
    """Mean row-wise cosine between two ``(n, d)`` tensors."""
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"need two (n, d) tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return float(F.cosine_similarity(a.detach().float().cpu(), b.detach().float().cpu(), dim=1).mean())


def fusion_shift_table(prototypes: Mapping[str, Mapping[str, Tensor]], t_vis: Tensor, t_ir: Tensor) -> pd.DataFrame:
    """How far each variant's prototypes move from the visible and infrared prompt features (mean cosine).

    ``prototypes`` maps a variant name to its per-modality prototypes (``csdn.model.sii.text_prototypes``):
    one row per (variant, image modality the prototype serves). The first row is the reference
    cosine between the two prompt features themselves.
    """
    rows = [
        {
            "variant": "(visible vs infrared prompts)",
            "prototype for": "-",
            "cos to visible prompts": mean_cosine(t_vis, t_ir),
            "cos to infrared prompts": mean_cosine(t_vis, t_ir),
        }
    ]
    for name, per_modality in prototypes.items():
        shared = torch.equal(per_modality[MODALITIES[0]], per_modality[MODALITIES[1]])  # a fusion: one text
        for modality in MODALITIES[:1] if shared else MODALITIES:
            rows.append(
                {
                    "variant": name,
                    "prototype for": "both modalities" if shared else modality,
                    "cos to visible prompts": mean_cosine(per_modality[modality], t_vis),
                    "cos to infrared prompts": mean_cosine(per_modality[modality], t_ir),
                }
            )
    return pd.DataFrame(rows).round(4)


def i2t_accuracy(images: Tensor, labels: Tensor, texts: Tensor) -> float:
    """Fraction of images whose most similar text feature (cosine) is their own identity's row of ``texts``."""
    labels = torch.as_tensor(labels).long().cpu()
    if images.dim() != 2 or texts.dim() != 2 or labels.shape != (images.shape[0],) or images.shape[0] == 0:
        raise ValueError(
            f"need images (N>0, d), labels (N,) and texts (num_ids, d), got {tuple(images.shape)}, "
            f"{tuple(labels.shape)} and {tuple(texts.shape)}"
        )
    cosine = F.normalize(images.detach().float().cpu(), dim=1) @ F.normalize(texts.detach().float().cpu(), dim=1).T
    return float((cosine.argmax(dim=1) == labels).float().mean())


def retrieval_table(texts: Mapping[str, Tensor | Mapping[str, Tensor]], feats: CachedFeatures) -> pd.DataFrame:
    """i2t accuracy (%) of each text source against visible and infrared images.

    A source is one ``(num_ids, d)`` tensor for both image modalities, or a per-modality mapping (the
    prototypes of SII ``none`` serve each modality with its own prompts).
    """
    rows = []
    for name, source in texts.items():
        per_modality = source if isinstance(source, Mapping) else {m: source for m in MODALITIES}
        rows.append(
            {
                "text": name,
                "visible images": 100 * i2t_accuracy(feats.visible, feats.visible_labels, per_modality[VISIBLE]),
                "infrared images": 100 * i2t_accuracy(feats.infrared, feats.infrared_labels, per_modality[INFRARED]),
            }
        )
    return pd.DataFrame(rows).set_index("text").round(2)


# -- stage 3: result tables ---------------------------------------------------------------------------


def results_table(results: Mapping[str, Mapping[str, Any]], data: Any) -> pd.DataFrame:
    """:func:`csdn.reports.results_frame` (one row per model and protocol, percent) indexed by
    ``(data, model, protocol)``, the data level being :func:`dataset_label` of ``data``."""
    table = results_frame(results)
    table.insert(0, "data", dataset_label(data))
    return table.set_index(["data", "model", "protocol"])


# -- stage 3: rank lists ------------------------------------------------------------------------------


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
