"""Result tables and report folders shared by the CLI and the notebooks."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from csdn.artifacts import atomic_write_bytes, atomic_write_json
from csdn.eval.protocols import ProtocolResult

SUMMARY_COLUMNS = ("R1", "R10", "mAP", "mINP")


def results_frame(results: Mapping[str, Mapping[str, ProtocolResult]]) -> pd.DataFrame:
    """One row per (model, protocol): mean R1, R10, mAP and mINP in percent over trials."""
    rows = []
    for model, per_protocol in results.items():
        for protocol, result in per_protocol.items():
            rows.append({"model": model, "protocol": protocol, "trials": len(result.trials),
                         "R1": 100 * result.rank(1), "R10": 100 * result.rank(10),
                         "mAP": 100 * result.mAP, "mINP": 100 * result.mINP})
    return pd.DataFrame(rows).round(2)


def write_report(folder: Path, results: Mapping[str, Mapping[str, ProtocolResult]],
                 extra: dict[str, Any] | None = None) -> list[Path]:
    """Write ``results.json``, ``results.md`` and one CMC figure per protocol into ``folder``."""
    from csdn.eval.plots import plot_cmc

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frame = results_frame(results)
    written = [folder / "results.json", folder / "results.md"]
    atomic_write_json(written[0], {"summary": frame.to_dict(orient="records"), **(extra or {}),
                                   "results": {m: {p: r.to_dict() for p, r in per.items()} for m, per in results.items()}})
    atomic_write_bytes(written[1], (frame.to_markdown(index=False) + "\n").encode())
    protocols = sorted({p for per in results.values() for p in per})
    for protocol in protocols:
        curves = {model: per[protocol] for model, per in results.items() if protocol in per}
        fig = plot_cmc(curves, title=f"CMC, {protocol}")
        path = folder / f"cmc_{protocol.replace(' ', '_').replace('>', '').replace('-', '_')}.png"
        fig.savefig(path, dpi=120)
        written.append(path)
    return written
