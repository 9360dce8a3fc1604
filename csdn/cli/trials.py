"""``csdn train --trial all`` and ``csdn eval --trial all``: every RegDB trial (:mod:`csdn.trials`) into one run
folder, the tables per direction printed."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from csdn.cli.options import experiment_config
from csdn.config import ExperimentConfig
from csdn.errors import ConfigError
from csdn.trials import direction_table, run_trials, trial_numbers, write_trials_report


def all_trials(args: argparse.Namespace, trained_only: bool) -> int:
    """``--trial all``: every RegDB trial's model, its results, the mean and sd (:mod:`csdn.trials`)."""
    if args.trial != "all":
        raise ConfigError("--jobs trains RegDB trials in parallel: it goes with --trial all")
    if getattr(args, "weights", None) or getattr(args, "run", None) or getattr(args, "zero_shot", None):
        raise ConfigError(
            "--trial all evaluates each trial's own cached model: leave out --weights, --run, --zero-shot"
        )
    args.trial = None  # the trials are set one by one
    cfg, overrides = experiment_config(args)
    return _run_all_trials(args, cfg, overrides, trained_only)


def _run_all_trials(
    args: argparse.Namespace, cfg: ExperimentConfig, overrides: dict[str, Any], trained_only: bool
) -> int:
    """The ``--trial all`` command: every trial into one run folder (``<default name>-trials`` or ``--out``)."""
    from tqdm.auto import tqdm

    from csdn.dryrun import dry_run_note, is_dry_run
    from csdn.runs import RunFolder, default_run_name, describe

    numbers = trial_numbers(cfg)  # refuses other layouts before anything is written
    folder = Path(args.out) if args.out else Path(args.reports) / f"{default_run_name(cfg, overrides)}-trials"
    run = RunFolder(folder, echo=tqdm.write)
    run.start(args.command, cfg, overrides, getattr(args, "argv", []), args.cache)
    try:
        run.line(f"{len(numbers)} RegDB trials ({numbers[0]}..{numbers[-1]}), {args.jobs or 1} at a time")
        result = run_trials(cfg, args.cache, jobs=args.jobs or 1, trained_only=trained_only)
        header = f"Run: {describe(cfg)}" + (f"\n\n{dry_run_note(cfg)}" if is_dry_run(cfg) else "")
        extra = {"profile": cfg.name, "trials": list(numbers), "jobs": args.jobs or 1, "overrides": overrides}
        written = run.finished(lambda: write_trials_report(run.path, result, header, extra))
        for direction in result.summary.direction:
            print(f"\n{direction}\n{direction_table(result, direction).to_string(index=False)}")
        run.line(
            f"finished in {result.seconds:.1f}s; run folder {run.path}; report: {', '.join(p.name for p in written)}"
        )
    except BaseException as error:
        run.failed(error)
        raise
    finally:
        run.close()
    return 0
