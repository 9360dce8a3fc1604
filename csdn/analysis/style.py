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
