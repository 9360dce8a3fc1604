"""Result tables and report folders shared by the CLI and the notebooks.

:func:`write_report_files` is the one writer of report folders (``csdn train``/``eval``/``demo``,
``csdn ablate``, ``csdn gap``): each file is written atomically (temporary file + rename), figures as PNG.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from csdn.artifacts import atomic_write_bytes, atomic_write_json
from csdn.eval.protocols import ProtocolResult
from csdn.overrides import format_overrides

SUMMARY_COLUMNS = ("R1", "R10", "mAP", "mINP")
FIGURE_DPI = 120  # resolution of every report figure


def percent_metrics(result: ProtocolResult, ranks: tuple[int, ...] = (1, 10, 20)) -> dict[str, float]:
    """``R<k>`` for each of ``ranks`` (NaN beyond the computed CMC), mAP and mINP of ``result``, in percent."""
    out = {f"R{k}": 100 * result.rank(k) if k <= len(result.cmc) else float("nan") for k in ranks}
    return {**out, "mAP": 100 * result.mAP, "mINP": 100 * result.mINP}


def results_frame(results: Mapping[str, Mapping[str, ProtocolResult]]) -> pd.DataFrame:
    """One row per (model, protocol): mean R1, R10, R20, mAP and mINP in percent over trials (R20 left
    empty when the CMC stops earlier)."""
    rows = [
        {"model": model, "protocol": protocol, "trials": len(result.trials), **percent_metrics(result)}
        for model, per_protocol in results.items()
        for protocol, result in per_protocol.items()
    ]
    return pd.DataFrame(rows).round(2)


def save_figure(figure: Figure, path: Path) -> Path:
    """Write ``figure`` to ``path`` as a PNG atomically, then close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI)
    atomic_write_bytes(path, buffer.getvalue())
    plt.close(figure)
    return Path(path)


def write_report_files(folder: Path, files: Mapping[str, Any]) -> list[Path]:
    """Write each ``file name -> content`` into ``folder``, atomically, and return the paths in order.

    A matplotlib figure is written as a PNG (and closed), ``str`` as UTF-8 text, ``bytes`` as they are,
    anything else (dicts, lists) as indented JSON.
    """
    written = []
    for name, content in files.items():
        path = Path(folder) / name
        if isinstance(content, Figure):
            save_figure(content, path)
        elif isinstance(content, str):
            atomic_write_bytes(path, content.encode())
        elif isinstance(content, bytes):
            atomic_write_bytes(path, content)
        else:
            atomic_write_json(path, content)
        written.append(path)
    return written


def overrides_line(overrides: Mapping[str, Any]) -> str:
    """The markdown line of a report header that records the config overrides of its run."""
    return f"Overrides: `{format_overrides(overrides)}`" if overrides else "Overrides: none (the profile as defined)"


def write_report(
    folder: Path,
    results: Mapping[str, Mapping[str, ProtocolResult]],
    extra: dict[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    description: str | None = None,
) -> list[Path]:
    """Write ``results.json``, ``results.md`` and one CMC figure per protocol into ``folder``.

    ``overrides`` (dotted key -> value, see :mod:`csdn.overrides`) are recorded in both files;
    ``description`` (a line naming the run, e.g. :func:`csdn.runs.describe`) heads ``results.md``.
    """
    from csdn.eval.plots import plot_cmc

    frame = results_frame(results)
    overrides = dict(overrides or {})
    header = f"Run: {description}\n\n" if description else ""
    files: dict[str, Any] = {
        "results.json": {
            "summary": frame.to_dict(orient="records"),
            **(extra or {}),
            "overrides": overrides,
            "results": {m: {p: r.to_dict() for p, r in per.items()} for m, per in results.items()},
        },
        "results.md": f"{header}{overrides_line(overrides)}\n\n{frame.to_markdown(index=False)}\n",
    }
    for protocol in sorted({p for per in results.values() for p in per}):
        curves = {model: per[protocol] for model, per in results.items() if protocol in per}
        name = f"cmc_{protocol.replace(' ', '_').replace('>', '').replace('-', '_')}.png"
        files[name] = plot_cmc(curves, title=f"CMC, {protocol}")
    return write_report_files(folder, files)
