"""Running an ablation grid: every (variant, seed) run trained or loaded, measured, in N worker processes.

A run is one :class:`GridJob` (a row name, a seed and the complete configuration). :func:`measure_run`
trains it through :class:`~csdn.experiment.Experiment` (or loads it from the cache) and measures it:

- the dataset's test protocols (R1 / R10 / mAP / mINP in percent, means over the trials);
- its training diagnostics, from the last stage-3 epoch of its history (ID accuracy, HSE cross-entropy per
  modality, the last validation), so a table row shows whether the model fitted its identities;
- the modality gap of its test features (:func:`csdn.analysis.gap.modality_gap`) and infrared->visible
  retrieval over all images of as many training identities as there are test identities (a fixed random
  subset: mAP falls with the gallery's size, so both sets rank the same number of identities) against
  the test identities: what stage 3 learned across modalities against what generalises.

:func:`run_grid` runs the jobs in this process (``jobs=1``) or in ``jobs`` spawned worker processes, each
with ``threads`` torch threads (default: the CPU cores shared out, one each on 2 cores), with one progress
bar. The artifact cache is safe under concurrency (a stage two runs need is trained once, under a file
lock), and each finished measurement is kept in the cache (``<cache>/grid/<key>.json``, keyed by the
trained run's stage-3 key and the evaluation settings), so a killed grid restarts where it stopped:
finished runs are read back, a run killed mid-stage resumes from its last epoch checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, fields
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from csdn.analysis.gap import GapConfig, GapMetrics, cross_modality_retrieval, gap_records, modality_gap
from csdn.artifacts import atomic_write_json, config_key, key_fields
from csdn.config import ExperimentConfig
from csdn.data.records import Record
from csdn.dryrun import is_dry_run
from csdn.errors import ConfigError
from csdn.eval.protocols import once_per_image
from csdn.reports import percent_metrics

ZERO_SHOT = "zero-shot CLIP"  # the reference row: the frozen CLIP image tower, no training
RESULT_FORMAT = 2  # bump when what measure_run records changes: cached measurements are then taken again
TRAIN_SUBSET_SEED = 0  # the training identities of the train/test retrieval: the same subset for every run

# Last-epoch stage-3 history entries copied into a run's row (history key -> column).
DIAGNOSTICS = {
    "acc_gem": "train ID acc",
    "hse_ce_visible": "HSE CE visible",
    "hse_ce_infrared": "HSE CE infrared",
    "norm_proj_visible": "proj norm visible",
    "norm_proj_infrared": "proj norm infrared",
}

# The per-run table's columns, in order (a zero-shot row has no diagnostics: NaN there).
RUN_COLUMNS = (
    *DIAGNOSTICS.values(),
    "val R1",
    "val mAP",
    *(f.name for f in fields(GapMetrics) if not f.name.startswith("n_")),
    *(f"x-mod {metric} {where}" for where in ("train ids", "test ids") for metric in ("R1", "mAP")),
    "seconds",
)


@dataclass(frozen=True)
class GridJob:
    """One run of the grid."""

    name: str  # the row (a variant name, or ZERO_SHOT for the frozen CLIP)
    config: ExperimentConfig  # the complete configuration of the run (its seed included)

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def zero_shot(self) -> bool:
        return self.name == ZERO_SHOT


@dataclass(frozen=True)
class GridResult:
    """The grid's measurements: tidy tables."""

    metrics: pd.DataFrame  # one row per (variant, seed, protocol): R1, R10, mAP, mINP (%)
    runs: pd.DataFrame  # one row per (variant, seed): seconds, diagnostics, gap and train/test retrieval
    seconds: float  # wall time of the whole grid


Measure = Callable[[GridJob, Path], dict[str, Any]]  # (job, cache root) -> measure_run's record


def default_threads(jobs: int) -> int:
    """Torch threads per worker: the CPU cores available to this process shared out (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // jobs)


def measure_run(job: GridJob, cache_root: Path, gap: GapConfig = GapConfig()) -> dict[str, Any]:
    """Train (or load) ``job``'s network and measure it (module docstring); a measurement already in the
    cache is read back instead. Returns ``{"name", "seed", "stage3_key", "results", "run"}``: ``results``
    maps each protocol to its R1/R10/mAP/mINP (%), ``run`` holds the seconds, diagnostics and gap metrics."""
    from csdn.experiment import Experiment

    t0 = time.perf_counter()
    experiment = Experiment(job.config, cache_root, progress=False)
    model_key = (
        config_key([experiment.data_identity, experiment.clip_identity, "zero-shot"])
        if job.zero_shot
        else experiment.stage3_key
    )
    key = config_key([model_key, key_fields(job.config.eval), asdict(gap), RESULT_FORMAT])
    path = Path(cache_root) / "grid" / f"{key}.json"
    dry = is_dry_run(job.config)  # a dry run's measurement is never cached either
    if path.is_file() and not dry:
        return {**json.loads(path.read_text()), "name": job.name, "seed": job.seed}
    features_of = once_per_image(experiment.zero_shot_features() if job.zero_shot else experiment.network_features())
    results = {
        name: percent_metrics(result, ranks=(1, 10)) for name, result in experiment.evaluate(features_of).items()
    }
    run: dict[str, Any] = {} if job.zero_shot else _diagnostics(experiment.histories.get("stage3", []))
    test = gap_records(experiment.dataset, job.config.eval.trials)
    test_features = features_of(test)
    run.update({k: v for k, v in modality_gap(test_features, test, gap).to_dict().items() if not k.startswith("n_")})
    train = matched_identities(list(experiment.train_records), len({r.pid for r in test}))
    for where, records, features in (("train ids", train, features_of(train)), ("test ids", test, test_features)):
        retrieval = cross_modality_retrieval(features, records)
        run[f"x-mod R1 {where}"], run[f"x-mod mAP {where}"] = 100 * retrieval["R1"], 100 * retrieval["mAP"]
    run["seconds"] = time.perf_counter() - t0
    record = {"stage3_key": None if job.zero_shot else model_key, "results": results, "run": run}
    if not dry:
        atomic_write_json(path, record)
    return {**record, "name": job.name, "seed": job.seed}


def matched_identities(records: list[Record], count: int, seed: int = TRAIN_SUBSET_SEED) -> list[Record]:
    """The records of ``count`` identities of ``records`` drawn at random with ``seed`` (all of them when
    there are no more than ``count``), in their original order."""
    pids = sorted({r.pid for r in records})
    chosen = set(
        np.random.default_rng(seed).choice(pids, size=count, replace=False).tolist() if len(pids) > count else pids
    )
    return [r for r in records if r.pid in chosen]


def _diagnostics(history: list[dict[str, float]]) -> dict[str, float]:
    """The last stage-3 epoch's diagnostics and the last validation (as %), NaN where absent."""
    last = history[-1] if history else {}
    out = {column: float(last.get(key, math.nan)) for key, column in DIAGNOSTICS.items()}
    validated = [h for h in history if "val_mAP" in h]
    out["val R1"] = 100 * validated[-1]["val_rank1"] if validated else math.nan
    out["val mAP"] = 100 * validated[-1]["val_mAP"] if validated else math.nan
    return out


def _init_worker(threads: int, parent: int) -> None:
    """A worker's start: its torch threads, and a watchdog that ends it when the grid's process ``parent``
    dies (a killed grid must not leave workers training on; their stages resume from checkpoints)."""
    torch.set_num_threads(threads)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="grid-parent-watchdog").start()


def run_grid(
    jobs_list: Sequence[GridJob],
    cache_root: Path,
    jobs: int = 1,
    threads: int | None = None,
    measure: Measure | None = None,
    progress: bool = True,
) -> GridResult:
    """Measure every job (:func:`measure_run`, or ``measure``) in this process (``jobs=1``) or in ``jobs``
    spawned processes with ``threads`` torch threads each (default :func:`default_threads`); the tables
    keep the order of ``jobs_list``. Refuses two different configurations that share a stage-3 run."""
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    measure = measure or measure_run
    t0 = time.perf_counter()
    records: dict[int, dict[str, Any]] = {}
    bar = tqdm(total=len(jobs_list), desc=f"grid runs ({jobs} job{'s' * (jobs > 1)})", disable=not progress)
    if jobs == 1:
        for i, job in enumerate(jobs_list):
            bar.set_postfix_str(f"{job.name}, seed {job.seed}")
            records[i] = measure(job, Path(cache_root))
            bar.update()
    else:
        threads = threads or default_threads(jobs)
        context = get_context("spawn")  # no fork of a process holding torch threads
        with ProcessPoolExecutor(
            jobs, mp_context=context, initializer=_init_worker, initargs=(threads, os.getpid())
        ) as pool:
            futures = {pool.submit(measure, job, Path(cache_root)): i for i, job in enumerate(jobs_list)}
            for future in as_completed(futures):
                records[futures[future]] = future.result()
                job = jobs_list[futures[future]]
                bar.set_postfix_str(f"done: {job.name}, seed {job.seed}")
                bar.update()
    bar.close()
    ordered = [records[i] for i in range(len(jobs_list))]
    check_distinct_runs(jobs_list, ordered)
    return GridResult(*_tables(ordered), seconds=time.perf_counter() - t0)


def check_distinct_runs(jobs_list: Sequence[GridJob], records: Sequence[dict[str, Any]]) -> None:
    """Raise if two different configurations were served by one stage-3 cache entry (the second would have
    silently reused the first one's network)."""
    seen: dict[str, GridJob] = {}
    for job, record in zip(jobs_list, records):
        key = record.get("stage3_key")
        if key is None:
            continue
        other = seen.setdefault(key, job)
        if other.config != job.config:
            raise RuntimeError(
                f"two different configurations ({other.name!r} seed {other.seed} and {job.name!r} seed {job.seed}) "
                f"share the stage-3 cache entry {key}: the second run would reuse the first one's network. "
                "Experiment.stage3_key must depend on everything that changes the trained network."
            )


def _tables(records: Sequence[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    metrics = [
        {"variant": r["name"], "seed": r["seed"], "protocol": protocol, **values}
        for r in records
        for protocol, values in r["results"].items()
    ]
    runs = pd.DataFrame([{"variant": r["name"], "seed": r["seed"], **r["run"]} for r in records])
    known = [c for c in RUN_COLUMNS if c in runs.columns]
    return pd.DataFrame(metrics), runs[["variant", "seed", *known, *sorted(set(runs.columns[2:]) - set(known))]]
