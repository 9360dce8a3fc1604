"""RegDB's protocol in one command: one model per trial, every trial's result, the mean and sd over trials.

The community trains and evaluates one model per RegDB split ("trial", ``data.regdb_trial``) and reports the
mean over the ten, in both directions (visible->thermal and thermal->visible; here ``visible->infrared`` and
``infrared->visible``). ``csdn train --trial all`` (and ``csdn eval --trial all``, which never trains) runs
:func:`run_trials`: each trial is its own configuration, so its stages are cached under their own keys and
a killed run resumes where it stopped (finished trials load, an unfinished stage resumes from its last
epoch); ``--jobs N`` trains N trials at once in worker processes (:func:`csdn.analysis.grid.run_grid`).
The trials are RegDB's ten (``idx/*_<t>.txt``), or SynthVI's ``synth.regdb_trials`` when SynthVI is written in
the RegDB layout (10 in the demo world, 2 in the smoke world).

:func:`write_trials_report` writes into one run folder ``trials.md`` (a table per direction: every trial,
then the mean and the sample standard deviation), ``trials.csv`` (one row per trial and direction) and
``results.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from csdn.analysis.grid import GridJob, run_grid
from csdn.config import ExperimentConfig
from csdn.data.regdb import TRIALS
from csdn.errors import ConfigError
from csdn.overrides import override
from csdn.reports import percent_metrics, write_report_files

METRICS = ("R1", "R10", "R20", "mAP", "mINP")  # the columns of the tables, in percent


@dataclass(frozen=True)
class TrialsResult:
    """Every trial's results and the summary over trials."""

    per_trial: pd.DataFrame  # one row per (trial, direction): METRICS in percent
    summary: pd.DataFrame  # one row per direction: trials, <metric> mean, <metric> std (ddof 1)
    stage3_keys: dict[int, str]  # trial -> the cache key of its stage-3 model
    seconds: float  # wall time of all trials


def trial_numbers(cfg: ExperimentConfig) -> tuple[int, ...]:
    """The RegDB trials of ``cfg``'s data (ten for RegDB, ``synth.regdb_trials`` for SynthVI in its layout)."""
    if cfg.data.layout != "regdb":
        raise ConfigError(
            f"--trial all runs RegDB's trials, but the data is {cfg.data.dataset} in the "
            f"{cfg.data.layout} layout: choose a regdb profile (or --layout regdb for SynthVI)"
        )
    return tuple(range(1, cfg.data.synth.regdb_trials + 1)) if cfg.data.synthetic else TRIALS


def trial_jobs(cfg: ExperimentConfig) -> list[GridJob]:
    """One grid job per trial: ``cfg`` with ``data.regdb_trial`` set."""
    return [GridJob(f"trial {t}", override(cfg, {"data.regdb_trial": t})) for t in trial_numbers(cfg)]


def measure_trial(job: GridJob, cache_root: Path, trained_only: bool = False) -> dict[str, Any]:
    """Train (unless ``trained_only``) or load the trial's network and evaluate both directions."""
    from csdn.experiment import Experiment

    t0 = time.perf_counter()
    experiment = Experiment(job.config, cache_root, progress=False, trained_only=trained_only)
    if not trained_only:
        experiment.check_test_images()  # an unreadable test image stops the trial before it trains
    results = {name: percent_metrics(result) for name, result in experiment.evaluate().items()}
    seconds = time.perf_counter() - t0
    key = experiment.stage3_key
    return {
        "name": job.name,
        "seed": job.seed,
        "stage3_key": key,
        "results": results,
        "run": {"seconds": seconds, "stage3_key": key},
    }


def run_trials(
    cfg: ExperimentConfig, cache_root: Path, jobs: int = 1, trained_only: bool = False, progress: bool = True
) -> TrialsResult:
    """Every trial of ``cfg`` trained (or loaded) and evaluated, ``jobs`` at a time; see the module docstring."""
    job_list = trial_jobs(cfg)
    grid = run_grid(
        job_list, cache_root, jobs=jobs, measure=partial(measure_trial, trained_only=trained_only), progress=progress
    )
    per_trial = grid.metrics.rename(columns={"protocol": "direction"})
    per_trial.insert(0, "trial", [int(name.split()[-1]) for name in per_trial.pop("variant")])
    per_trial = per_trial.drop(columns="seed")[["trial", "direction", *METRICS]]
    keys = dict(zip((job.config.data.regdb_trial for job in job_list), grid.runs["stage3_key"]))
    return TrialsResult(per_trial, summarize_trials(per_trial), keys, grid.seconds)


def summarize_trials(per_trial: pd.DataFrame) -> pd.DataFrame:
    """Per direction: the number of trials and each metric's mean and sample standard deviation over trials."""
    grouped = per_trial.groupby("direction", sort=False)
    out = grouped.size().rename("trials").to_frame()
    for metric in METRICS:
        out[f"{metric} mean"] = grouped[metric].mean()
        out[f"{metric} std"] = grouped[metric].std(ddof=1)
    return out.reset_index()


def direction_table(result: TrialsResult, direction: str) -> pd.DataFrame:
    """One direction as the community reports it: a row per trial, then ``mean`` and ``std`` rows."""
    rows = result.per_trial[result.per_trial.direction == direction].drop(columns="direction")
    rows = rows.assign(trial=rows.trial.astype(str))
    summary = result.summary.set_index("direction").loc[direction]
    stats = [{"trial": s, **{m: summary[f"{m} {s}"] for m in METRICS}} for s in ("mean", "std")]
    return pd.concat([rows, pd.DataFrame(stats)], ignore_index=True).round(2)


def write_trials_report(folder: Path, result: TrialsResult, header: str, extra: dict[str, Any]) -> list[Path]:
    """``trials.md``, ``trials.csv`` and ``results.json`` of all trials into ``folder``."""
    tables = [f"## {d}\n\n{direction_table(result, d).to_markdown(index=False)}\n" for d in result.summary.direction]
    text = (
        f"{header}\n\nRegDB protocol: one model per trial, {len(result.stage3_keys)} trials; mean and sample "
        f"standard deviation over trials; wall time {result.seconds:.0f} s.\n\n" + "\n".join(tables)
    )
    return write_report_files(
        folder,
        {
            "trials.md": text,
            "trials.csv": result.per_trial.round(4).to_csv(index=False),
            "results.json": {
                **extra,
                "per_trial": result.per_trial.to_dict(orient="records"),
                "summary": result.summary.to_dict(orient="records"),
                "stage3_keys": {str(t): k for t, k in result.stage3_keys.items()},
                "seconds": result.seconds,
            },
        },
    )
