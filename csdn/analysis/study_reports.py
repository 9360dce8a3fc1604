"""The reports of ``csdn ablate`` and ``csdn gap``: markdown with the command, the
overrides and the wall time; CSV tables; bar charts and projections as PNGs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from csdn.analysis.ablation import VARIANTS, describe_effects, effects, format_summary, summarize, variants_frame
from csdn.analysis.grid import GridResult
from csdn.analysis.projection import plot_ablation
from csdn.reports import overrides_line, write_report_files

# Per-run columns of the report: training diagnostics, and the modality gap of the test features.
DIAGNOSTIC_COLUMNS = ("train ID acc", "HSE CE visible", "HSE CE infrared", "val R1", "val mAP")
GAP_COLUMNS = (
    "margin",
    "other_modality_nn",
    "nn_cross",
    "modality_accuracy",
    "centroid_ratio",
    "x-mod mAP train ids",
    "x-mod mAP test ids",
)
GAP_PLOT = ("margin", "nn_cross", "x-mod mAP train ids", "x-mod mAP test ids")


def write_ablation_report(
    folder: Path, result: GridResult, command: str, overrides: Mapping[str, Any] | None = None
) -> list[Path]:
    """``ablation.md`` and the CSV tables and bar charts of an ablation ``result``; ``overrides`` (of the
    base configuration) are recorded in ``ablation.md``'s header."""
    metrics, runs = result.metrics, result.runs
    summary = summarize(metrics)
    seeds = sorted(set(metrics["seed"]))
    variants = [v for v in VARIANTS if v.name in set(metrics["variant"])]
    effect = effects(metrics, "mAP")
    trained = runs.dropna(subset=["train ID acc"]) if "train ID acc" in runs else runs.iloc[:0]
    diagnostic_columns = [c for c in DIAGNOSTIC_COLUMNS if c in runs]
    gap_columns = [c for c in GAP_COLUMNS if c in runs]
    diagnostics = summarize(trained, diagnostic_columns, by=("variant",))
    gap = summarize(runs, gap_columns, by=("variant",))
    gap_effect = effects(runs.assign(protocol="test ids"), "margin")
    lines = [
        f"# Ablation ({len(seeds)} seed{'s' * (len(seeds) != 1)}: {seeds})",
        "",
        f"Command: `{command}`  ",
        f"{overrides_line(overrides or {})}  ",
        f"Wall time: {result.seconds:.0f} s (runs already measured or trained in the cache are read back)",
        "",
        "## R1 / mAP / mINP (%), mean ± sample sd over seeds",
        "",
        format_summary(summary).to_markdown(),
        "",
        "## Effects on mAP (paired by seed; ci = half-width of the 95% Student-t interval)",
        "",
        effect.round(2).to_markdown(index=False) if len(effect) else "(no comparison has both its rows)",
        "",
        *[f"- {describe_effects(effect, p)}" for p in dict.fromkeys(effect.get("protocol", []))],
        "",
        "## Did each model learn? Last stage-3 epoch, mean ± sd over seeds",
        "",
        "train ID acc: ID accuracy of the GeM head on the training batches (fraction); HSE CE: image-to-text "
        "cross-entropy per modality (chance: ln of the training identities); val: the last validation (%).",
        "",
        format_summary(diagnostics, diagnostic_columns, 3).to_markdown() if len(diagnostics) else "(no trained run)",
        "",
        "## Modality gap of the test features, mean ± sd over seeds",
        "",
        "margin: mean cos(same identity, other modality) - mean cos(other identities, same modality); "
        "other_modality_nn: nearest neighbour among both modalities is of the other modality (fraction); "
        "nn_cross: nearest other-modality neighbour has the same identity (fraction); modality_accuracy: "
        "balanced accuracy of a linear modality classifier (0.5: inseparable); x-mod mAP: infrared->visible "
        "mAP (%) over all images of as many training identities as test identities (a fixed random subset) "
        "and of the test identities.",
        "",
        format_summary(gap, gap_columns, 3).to_markdown(),
        "",
        "## Effects on the identity-modality margin (paired by seed)",
        "",
        gap_effect.round(3).to_markdown(index=False) if len(gap_effect) else "(no comparison has both its rows)",
        "",
        "## Variants",
        "",
        variants_frame(variants).to_markdown(),
        "",
    ]
    files: dict[str, Any] = {
        "ablation.md": "\n".join(lines),
        "ablation_metrics.csv": metrics.round(4).to_csv(index=False),
        "ablation_runs.csv": runs.round(5).to_csv(index=False),
        "ablation_summary.csv": summary.round(4).to_csv(),
        "ablation_gap_summary.csv": gap.round(5).to_csv(),
    }
    for protocol in dict.fromkeys(metrics["protocol"]):
        files[f"ablation_{_slug(protocol)}.png"] = plot_ablation(metrics, protocol=protocol)
    plotted = [c for c in GAP_PLOT if c in runs]
    files["ablation_gap.png"] = plot_ablation(runs, plotted, title="modality gap of the test features")
    return write_report_files(folder, files)


def write_gap_report(
    folder: Path,
    table: pd.DataFrame,
    figures: dict[str, Figure],
    command: str,
    seconds: float,
    overrides: Mapping[str, Any] | None = None,
) -> list[Path]:
    """``gap.md``, ``gap.csv`` and each of ``figures`` (file name -> figure) as a PNG; ``overrides`` (of the
    base configuration) are recorded in ``gap.md``'s header."""
    lines = [
        "# Modality gap of the test features",
        "",
        f"Command: `{command}`  ",
        f"{overrides_line(overrides or {})}  ",
        f"Wall time: {seconds:.0f} s",
        "",
        "id-modality margin: mean cos(same identity, other modality) - mean cos(other identities, same "
        "modality), > 0 when identity outweighs modality; other-modality NN: the nearest neighbour among both "
        "modalities is of the other modality (ideal: the rate of a modality-blind, identity-perfect embedding); "
        "NN intra / cross: nearest neighbour in the same / other modality has the same identity; "
        "centroid ratio: distance between the modality centroids / RMS distance to the own centroid; "
        "modality clf acc: balanced accuracy of a 5-fold (identity-grouped) linear classifier, 50% = inseparable "
        "(on SynthVI it separates every model: infrared images carry no colour). "
        "`csdn ablate` reports the same metrics for every row over seeds.",
        "",
        table.round(3).to_markdown(),
        "",
        *[f"![{name}]({name})" for name in figures],
        "",
    ]
    return write_report_files(folder, {"gap.md": "\n".join(lines), "gap.csv": table.round(5).to_csv(), **figures})


def _slug(protocol: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in protocol).strip("_")
