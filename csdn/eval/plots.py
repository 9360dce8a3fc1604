"""Evaluation figures: CMC curves and rank lists. Each function returns a matplotlib ``Figure``
(created without pyplot, so nothing is drawn twice in a notebook and no global state is touched)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from csdn.data.cache import decode_image
from csdn.data.records import Record
from csdn.eval.metrics import Metrics
from csdn.eval.protocols import ProtocolResult
from csdn.style import SERIES_COLOURS

QUERY_COLOUR = "black"  # frame of the query image (not blue: blue is the infrared modality)
CORRECT_COLOUR = "green"  # frame of a gallery image of the query's identity
WRONG_COLOUR = "red"  # frame of a gallery image of another identity
FRAME_WIDTH = 4.0  # frame line width in points


def plot_cmc(results: Mapping[str, ProtocolResult | Metrics], title: str = "CMC") -> Figure:
    """One CMC curve (matching rate in percent against rank) per named result."""
    if not results:
        raise ValueError("plot_cmc needs at least one named result")
    fig = Figure(figsize=(5.5, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for i, (name, result) in enumerate(results.items()):
        if not isinstance(result, (ProtocolResult, Metrics)):
            raise TypeError(f"result {name!r} must be a ProtocolResult or Metrics, got {type(result).__name__}")
        cmc = np.asarray(result.cmc) * 100
        ranks = np.arange(1, len(cmc) + 1)
        label = f"{name} (R1 {cmc[0]:.1f}%, mAP {result.mAP * 100:.1f}%)"
        ax.plot(ranks, cmc, marker="o", markersize=3, label=label, color=SERIES_COLOURS[i % len(SERIES_COLOURS)])
    ax.set_xlabel("Rank")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("Matching rate (%)")
    ax.set_ylim(0, 101)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return fig


def plot_rank_list(
    query_image: np.ndarray,
    gallery_images: Sequence[np.ndarray],
    correct: Sequence[bool],
    scores: Sequence[float],
    k: int = 10,
    *,
    title: str | None = None,
    captions: Sequence[str] | None = None,
    query_caption: str | None = None,
    ranks: Sequence[int] | None = None,
    per_row: int = 10,
    label_size: float | str = "small",
) -> Figure:
    """The query followed by its top-``k`` gallery images (already in rank order), framed green when
    the identity is correct and red otherwise, each titled with its rank and score (in ``label_size``
    points, or a relative size), ``per_row`` images to a row.

    Images are H x W x 3 uint8 arrays; ``correct``, ``scores`` and the optional ``captions`` (a line under
    each rank, e.g. identity and camera) and ``ranks`` (default 1, 2, ...: give them to append an image
    from further down, such as the first true match beyond the top k) are aligned with ``gallery_images``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if per_row < 1:
        raise ValueError(f"per_row must be >= 1, got {per_row}")
    k = min(k, len(gallery_images))
    if k == 0:
        raise ValueError("gallery_images is empty")
    for name, values in (("correct", correct), ("scores", scores), ("captions", captions), ("ranks", ranks)):
        if values is not None and len(values) < k:
            raise ValueError(f"{name} ({len(values)}) needs at least {k} entries, one per shown gallery image")
    ranks = list(ranks) if ranks is not None else list(range(1, k + 1))
    rows, cols = -(-k // per_row), min(k, per_row) + 1
    fig = Figure(figsize=(1.3 * cols, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    _show(
        axes[0, 0],
        _rgb(query_image, "query_image"),
        QUERY_COLOUR,
        "query" + (f"\n{query_caption}" if query_caption else ""),
        label_size,
    )
    for i in range(k):
        colour = CORRECT_COLOUR if correct[i] else WRONG_COLOUR
        label = f"{ranks[i]}\n{float(scores[i]):.3f}" + (f"\n{captions[i]}" if captions is not None else "")
        image = _rgb(gallery_images[i], f"gallery_images[{i}]")
        _show(axes[i // per_row, 1 + i % per_row], image, colour, label, label_size)
    for r in range(rows):  # cells without an image: the query column below the first row, a short last row
        for c in range(cols):
            if (r > 0 and c == 0) or (c > 0 and r * per_row + c > k):
                axes[r, c].remove()
    if title:
        fig.suptitle(title)
    return fig


def plot_ranked_records(
    query: Record,
    entries: Sequence[tuple[int, Record, float]],
    size: tuple[int, int],
    title: str,
    per_row: int = 10,
    label_size: float | str = "small",
) -> Figure:
    """:func:`plot_rank_list` of image records: the ``query`` and its gallery ``entries`` (rank, record,
    score), decoded at ``size = (H, W)``, framed by identity and each labelled with identity and camera."""
    return plot_rank_list(
        decode_image(query.path, size),
        [decode_image(record.path, size) for _, record, _ in entries],
        [record.pid == query.pid for _, record, _ in entries],
        [score for _, _, score in entries],
        k=len(entries),
        title=title,
        captions=[f"pid {record.pid} cam {record.cam}" for _, record, _ in entries],
        query_caption=f"pid {query.pid} cam {query.cam}",
        ranks=[rank for rank, _, _ in entries],
        per_row=per_row,
        label_size=label_size,
    )


def _show(ax: Axes, image: np.ndarray, colour: str, label: str, size: float | str = "small") -> None:
    ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(FRAME_WIDTH)
    ax.set_title(label, fontsize=size)


def _rgb(image: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"{name} must be an H x W x 3 uint8 array, got {array.dtype} of shape {array.shape}")
    return array
