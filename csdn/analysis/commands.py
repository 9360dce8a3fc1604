"""``csdn ablate`` and ``csdn gap``: the ablation table and the modality-gap report, written under ``--reports``.

``add_commands(subparsers)`` adds both to the ``csdn`` console script; each command function receives
the parsed arguments with ``args.cache`` set to the artifact cache root. Both build their base
configuration like every ``csdn`` command (:func:`csdn.cli.experiment_config`: profile, flags,
``--config`` files, ``--set`` entries) and record its overrides in the report.

- ``csdn ablate --profile demo --seeds 3 --jobs 2 --reports reports`` trains (or loads) every ablation
  variant for seeds 0..2 in two worker processes and writes ``reports/demo/ablation/``: ``ablation.md``
  (mean ± sd tables of the test metrics, the training diagnostics and the modality gap; paired effects;
  the variant table; the command and wall time), ``ablation_metrics.csv`` (one row per variant, seed and
  protocol), ``ablation_runs.csv`` (one row per variant and seed: diagnostics and gap metrics), the
  summaries, one bar chart per protocol and one of the gap metrics.
- ``csdn gap --profile demo --reports reports`` measures the modality gap of the zero-shot CLIP, the
  vision-only and CLIP-ReID baselines and CSDN on the test images and writes ``reports/demo/gap/``:
  ``gap.md``, ``gap.csv``, ``gap.png`` (the metrics as bars) and ``projections.png`` (t-SNE and UMAP
  side by side).
"""

from __future__ import annotations

import argparse
import shlex
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from csdn.analysis.ablation import (
    VARIANTS,
    collect_features,
    describe_effects,
    effects,
    format_summary,
    run_ablation,
    summarize,
    variants_frame,
)
from csdn.analysis.gap import GapConfig, gap_records, gap_table, modality_gap
from csdn.analysis.grid import GridResult
from csdn.analysis.projection import (
    METHODS,
    ProjectionConfig,
    plot_ablation,
    plot_gap,
    plot_projections,
    project_models,
)
from csdn.cli import EPILOG, add_config_options, config_arguments, experiment_config
from csdn.config import profile_from_env
from csdn.errors import ConfigError
from csdn.overrides import format_overrides
from csdn.reports import overrides_line, write_report_files


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``ablate`` and ``gap`` to the ``csdn`` subcommands."""
    p = subparsers.add_parser(
        "ablate",
        help="ablation of CSDN's components over seeds (table + bar charts)",
        description=cmd_ablate.__doc__,
        epilog=EPILOG,
    )
    _common_options(p)
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (first-seed, first-seed + 1, ...)")
    p.add_argument("--first-seed", type=int, default=0, help="first seed")
    p.add_argument(
        "--variants", help="comma-separated variant names (default: all): " + ", ".join(v.name for v in VARIANTS)
    )
    p.add_argument("--no-zero-shot", action="store_true", help="leave out the zero-shot CLIP reference row")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in its own worker process")
    p.add_argument(
        "--threads", type=int, help="torch threads per worker (default: the CPU cores shared out among the jobs)"
    )
    p.set_defaults(func=cmd_ablate)
    p = subparsers.add_parser(
        "gap",
        help="modality-gap metrics and t-SNE/UMAP of zero-shot CLIP, baselines, CSDN",
        description=cmd_gap.__doc__,
        epilog=EPILOG,
    )
    _common_options(p)
    p.add_argument(
        "--seed", type=int, help="seed of the trained models and of the projections (default: the profile's, 0)"
    )
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated projections ({', '.join(METHODS)})")
    p.set_defaults(func=cmd_gap)


def _common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default=profile_from_env(), help="named profile (smoke, demo, sysu-rn50, ...)")
    p.add_argument("--data", help="dataset root for real-data profiles")
    p.add_argument("--clip", help="CLIP weights: tiny-synthvi, openai, a weights file, local-dir:<folder>, random")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--reports", default="reports", help="folder for result tables and figures")
    add_config_options(p)


def _command(name: str, args: argparse.Namespace, options: dict[str, object]) -> str:
    """The command line that reproduces this run (for the report)."""
    words = ["csdn", name, "--profile", args.profile]
    for option, value in options.items():
        if value is not None and value is not False:
            words += [option] if value is True else [option, str(value)]
    words += [*config_arguments(args), "--reports", str(args.reports)]
    return " ".join(shlex.quote(w) for w in words)


def cmd_ablate(args: argparse.Namespace) -> int:
    """Train (or load from the cache) every ablation variant for each seed, in ``--jobs`` worker processes,
    and write the ablation report (a killed grid, run again, restarts where it stopped)."""
    base, overrides = experiment_config(args)
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    names = [n.strip() for n in args.variants.split(",") if n.strip()] if args.variants else None
    result = run_ablation(
        base,
        seeds,
        names,
        zero_shot=not args.no_zero_shot,
        cache_root=Path(args.cache),
        jobs=args.jobs,
        threads=args.threads,
    )
    command = _command(
        "ablate",
        args,
        {
            "--data": args.data,
            "--clip": args.clip,
            "--seeds": args.seeds,
            "--first-seed": args.first_seed or None,
            "--variants": args.variants,
            "--no-zero-shot": args.no_zero_shot,
            "--jobs": args.jobs if args.jobs != 1 else None,
            "--threads": args.threads,
        },
    )
    folder = Path(args.reports) / base.name / "ablation"
    written = write_ablation_report(folder, result, command, overrides)
    print(format_summary(summarize(result.metrics)).to_string())
    print(
        f"\nablation of {result.runs['variant'].nunique()} rows x {len(seeds)} seeds in {result.seconds:.0f}s "
        f"with {args.jobs} job(s) (overrides: {format_overrides(overrides)}); "
        f"report: {', '.join(str(p) for p in written)}"
    )
    return 0


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


def cmd_gap(args: argparse.Namespace) -> int:
    """Measure the modality gap of zero-shot CLIP, the baselines and CSDN; write tables and t-SNE/UMAP."""
    from csdn.experiment import Experiment

    base, overrides = experiment_config(args)
    projection = ProjectionConfig(methods=tuple(m.strip() for m in args.methods.split(",")), seed=base.seed)
    t0 = time.perf_counter()
    records = gap_records(Experiment(base, Path(args.cache)).dataset, base.eval.trials)
    features = collect_features(base, records, Path(args.cache), progress=True)
    table = gap_table({name: modality_gap(f, records, GapConfig(seed=base.seed)) for name, f in features.items()})
    figure = plot_projections(
        project_models(features, projection),
        records,
        projection,
        title=f"{base.name}: test features (colour: modality, marker: identity)",
    )
    seconds = time.perf_counter() - t0
    methods = None if projection.methods == METHODS else args.methods
    command = _command(
        "gap", args, {"--data": args.data, "--clip": args.clip, "--seed": base.seed, "--methods": methods}
    )
    folder = Path(args.reports) / base.name / "gap"
    figures = {"gap.png": plot_gap(table, title=f"{base.name}: modality gap"), "projections.png": figure}
    written = write_gap_report(folder, table, figures, command, seconds, overrides)
    print(table.round(3).to_string())
    print(
        f"\nmodality gap of {len(features)} models on {len(records)} test images in {seconds:.0f}s "
        f"(overrides: {format_overrides(overrides)}); report: {', '.join(str(p) for p in written)}"
    )
    return 0


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
