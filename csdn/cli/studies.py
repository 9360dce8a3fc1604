"""``csdn ablate`` and ``csdn gap``: the ablation table and the modality-gap report, written under ``--reports``.

Both build their base configuration like every ``csdn`` command (:func:`csdn.cli.options.experiment_config`:
profile, flags, ``--config`` files, ``--set`` entries) and record its overrides in the report
(:mod:`csdn.analysis.study_reports`).

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
from pathlib import Path

from csdn.analysis.ablation import VARIANTS, collect_features, format_summary, run_ablation, summarize
from csdn.analysis.gap import GapConfig, gap_records, gap_table, modality_gap
from csdn.analysis.projection import METHODS, ProjectionConfig, plot_gap, plot_projections, project_models
from csdn.analysis.study_reports import write_ablation_report, write_gap_report
from csdn.cli.options import EPILOG, add_config_options, config_arguments, experiment_config
from csdn.config import profile_from_env
from csdn.errors import ConfigError
from csdn.overrides import format_overrides


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
