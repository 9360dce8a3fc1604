"""Figures and tables for exploring a dataset: identity grids, attributes, captions, pixel histograms."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pandas.io.formats.style import Styler

from csdn.data.cache import decode_image
from csdn.data.records import INFRARED, VISIBLE, Record
from csdn.style import MODALITY_COLOURS, NEUTRAL_COLOUR, integer_ticks


def identity_grid(records: Sequence[Record], pids: Sequence[int], size: tuple[int, int] = (128, 64)) -> Figure:
    """One row per identity, one column per camera (visible cameras first): the first image of each."""
    cams = sorted({r.cam for r in records if r.modality == VISIBLE}) + sorted(
        {r.cam for r in records if r.modality == INFRARED}
    )
    first: dict[tuple[int, int], Record] = {}
    for r in records:
        first.setdefault((r.pid, r.cam), r)
    fig, axes = plt.subplots(len(pids), len(cams), figsize=(1.1 * len(cams), 2.0 * len(pids)), squeeze=False)
    for i, pid in enumerate(pids):
        for j, cam in enumerate(cams):
            ax = axes[i, j]
            ax.set_xticks([]), ax.set_yticks([])
            record = first.get((pid, cam))
            if record is not None:
                ax.imshow(decode_image(record.path, size))
                ax.set_title(f"cam{cam} {'IR' if record.modality == INFRARED else 'RGB'}", fontsize=7)
            if j == 0:
                ax.set_ylabel(f"id {pid}", fontsize=8)
    fig.tight_layout()
    return fig


def attribute_frame(metadata: dict) -> pd.DataFrame:
    """SynthVI identity attributes (from ``synthvi.json``) as one row per identity."""
    return pd.DataFrame.from_dict(metadata["identities"], orient="index").rename_axis("pid").reset_index()


def plot_attribute_distributions(attributes: pd.DataFrame, columns: Sequence[str] | None = None) -> Figure:
    """Horizontal bar charts of how many identities (rows of ``attributes``) have each attribute value, most
    frequent on top, the values as horizontal labels; the title says how many identities are counted. The
    bars are neutral grey: they count identities, not one modality's data (orange and blue are the
    modalities', :mod:`csdn.style`)."""
    columns = list(columns or [c for c in attributes.columns if c != "pid"])
    ncols = 4
    nrows = int(np.ceil(len(columns) / ncols))
    most = max(attributes[c].nunique() for c in columns)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.3 * ncols, (0.9 + 0.27 * most) * nrows), squeeze=False, layout="constrained"
    )
    for ax, column in zip(axes.flat, columns):
        counts = attributes[column].value_counts()
        ax.barh(range(len(counts)), counts.to_numpy(), color=NEUTRAL_COLOUR, height=0.7)
        ax.set_yticks(range(len(counts)), [str(v) for v in counts.index], fontsize=10)
        ax.set_ylim(most - 0.5, -0.5)  # most frequent on top; every panel's bars equally thick
        ax.set_title(column, fontsize=11)
        ax.tick_params(axis="x", labelsize=9)
        integer_ticks(ax, "x")
        ax.set_xlabel("identities", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(columns) :]:
        ax.axis("off")
    fig.suptitle(f"attribute values of {len(attributes)} identities (identities per value)")
    return fig


def left_aligned(frame: pd.DataFrame) -> Styler:
    """``frame`` for display with its cells and headers left-aligned and long text wrapped, without the row
    index (sentences such as captions read badly right-aligned, as notebooks align table cells)."""
    return (
        frame.style.hide(axis="index")
        .set_properties(**{"text-align": "left", "white-space": "normal"})
        .set_table_styles([{"selector": "th", "props": [("text-align", "left")]}])
    )


def caption_examples(metadata: dict, records: Sequence[Record], root: str, per_modality: int = 3) -> pd.DataFrame:
    """A few captions per modality (one image each of different identities), with the image each describes."""
    rows = []
    for modality in (VISIBLE, INFRARED):
        first_per_pid: dict[int, Record] = {}
        for r in records:
            if r.modality == modality:
                first_per_pid.setdefault(r.pid, r)
        for r in list(first_per_pid.values())[:per_modality]:
            rel = str(r.path)[len(str(root)) :].lstrip("/")
            rows.append(
                {"modality": modality, "pid": r.pid, "cam": r.cam, "caption": metadata["captions"].get(rel, "")}
            )
    return pd.DataFrame(rows)


def plot_pixel_histograms(images: np.ndarray, modalities: Sequence[str]) -> Figure:
    """Per-modality histograms of channel intensities and of colourfulness (inter-channel difference).

    Each modality's bars are the fraction of its pixels (or images), so the two modalities share one scale
    whatever their counts; images without any colour (every infrared one) are stated in the legend.
    """
    mods = np.asarray(modalities)
    fig, (ax_int, ax_col) = plt.subplots(1, 2, figsize=(10, 3.2))
    subsets = {m: images[mods == m].astype(np.float32) for m in (VISIBLE, INFRARED) if (mods == m).any()}
    spreads = {
        m: (np.abs(sub[..., 0] - sub[..., 1]) + np.abs(sub[..., 1] - sub[..., 2])).mean(axis=(1, 2)) / 2
        for m, sub in subsets.items()
    }
    spread_bins = np.linspace(0, max(max(float(v.max()) for v in spreads.values()), 1.0), 41)
    for modality, sub in subsets.items():
        colour, values, spread = MODALITY_COLOURS[modality], sub.reshape(-1), spreads[modality]
        share = np.full(len(values), 1 / len(values))
        ax_int.hist(values, bins=64, range=(0, 255), weights=share, alpha=0.5, color=colour, label=modality)
        grey = int((spread == 0).sum())
        label = f"{modality} ({grey} of {len(sub)} images without colour)" if grey else modality
        share = np.full(len(spread), 1 / len(spread))
        ax_col.hist(spread, bins=spread_bins, weights=share, alpha=0.5, color=colour, label=label)
    ax_int.set(title="pixel intensity (all channels)", xlabel="value", ylabel="fraction of pixels")
    ax_col.set(title="colourfulness per image", xlabel="mean |channel difference|", ylabel="fraction of images")
    ax_int.legend(), ax_col.legend(fontsize="small")
    fig.tight_layout()
    return fig
