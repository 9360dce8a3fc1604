"""The look shared by every figure: one modality palette, and integer ticks for epochs and ranks.

Every plot of the package (and every notebook) colours visible data orange and infrared data blue, from
:data:`MODALITY_COLOURS`; nothing else in a figure uses those two colours.
"""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

from csdn.data.records import INFRARED, VISIBLE

MODALITY_COLOURS = {VISIBLE: "#E69F00", INFRARED: "#3B4CC0"}  # orange visible, blue infrared


def integer_ticks(ax: Axes, axis: str = "x") -> None:
    """Only integer tick positions on ``axis`` ("x", "y" or "both") of ``ax`` (epochs, ranks, counts)."""
    for name in ("x", "y") if axis == "both" else (axis,):
        getattr(ax, f"{name}axis").set_major_locator(MaxNLocator(integer=True))


# Colours for series that are not modalities (models, loss terms, metrics): never orange or blue.
SERIES_COLOURS = ("#2CA02C", "#9467BD", "#D62728", "#8C564B", "#E377C2", "#7F7F7F", "#BCBD22", "#17BECF")


NEUTRAL_COLOUR = "#7F7F7F"  # data of no modality and no series (counts of identities, ...): a mid grey


def series_colour(index: int) -> str:
    """The ``index``-th colour of :data:`SERIES_COLOURS` (cycling)."""
    return SERIES_COLOURS[index % len(SERIES_COLOURS)]
