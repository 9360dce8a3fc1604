"""The grid runner: real smoke runs measured in-process and in worker processes, resumable, workers that
die with the grid."""

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from csdn.analysis.ablation import grid_jobs, run_ablation
from csdn.analysis.grid import ZERO_SHOT, default_threads, measure_run, run_grid
from csdn.config import get_profile
from csdn.overrides import override

# random CLIP weights (no tiny-CLIP pretraining), one stage-3 epoch, no validation: seconds per run
BASE = override(get_profile("smoke"), {"clip.weights": "random", "stage3.epochs": 1, "validate_every": 0})


def test_measure_run_records_metrics_diagnostics_and_gap(tmp_path: Path):
    job = grid_jobs(BASE, seeds=(0,), variants=["csdn"], zero_shot=False)[0]
    record = measure_run(job, tmp_path)
    assert (record["name"], record["seed"]) == ("csdn", 0) and len(record["stage3_key"]) == 16
    assert set(record["results"]) == {"all 1-shot", "indoor 1-shot"}
    assert set(record["results"]["all 1-shot"]) == {"R1", "R10", "mAP", "mINP"}
    run = record["run"]
    assert 0 <= run["train ID acc"] <= 1 and run["HSE CE visible"] > 0  # the last stage-3 epoch
    assert -2 <= run["margin"] <= 2 and 0 <= run["other_modality_nn"] <= 1 and 0.5 <= run["modality_accuracy"] <= 1
    assert 0 < run["x-mod mAP train ids"] <= 100 and 0 < run["x-mod mAP test ids"] <= 100
    assert list((tmp_path / "grid").glob("*.json"))  # the measurement is kept for a restarted grid


def test_a_restarted_grid_reads_finished_runs_back(tmp_path: Path, monkeypatch):
    jobs = grid_jobs(BASE, seeds=(0,), variants=["vision-only"])
    first = run_grid(jobs, tmp_path, progress=False)
    from csdn.experiment import Experiment

    def no_training(self):
        raise AssertionError("a finished run was trained or evaluated again")

    monkeypatch.setattr(Experiment, "network_features", no_training)
    monkeypatch.setattr(Experiment, "zero_shot_features", no_training)
    again = run_grid(jobs, tmp_path, progress=False)
    assert again.metrics.equals(first.metrics) and again.runs.equals(first.runs)
    assert list(first.runs.variant) == [ZERO_SHOT, "vision-only"]
    # another evaluation setting is another measurement (the trained network itself is reused)
    fewer_trials = [dataclasses.replace(j, config=override(j.config, {"eval.trials": 1})) for j in jobs]
    with pytest.raises(AssertionError, match="trained or evaluated again"):
        run_grid(fewer_trials, tmp_path, progress=False)


@pytest.mark.slow  # two spawned workers import torch: about 20-40 s
def test_two_workers_give_the_tables_of_one_process(tmp_path: Path):
    parallel = run_ablation(BASE, (0, 1), ["vision-only", "csdn"], cache_root=tmp_path, jobs=2, progress=False)
    assert list(parallel.runs.variant) == [ZERO_SHOT, "vision-only", "csdn", "vision-only", "csdn"]
    assert list(parallel.runs.seed) == [0, 0, 0, 1, 1]  # the job order, not the finishing order
    assert parallel.runs["train ID acc"].notna().sum() == 4
    serial = run_ablation(BASE, (0, 1), ["vision-only", "csdn"], cache_root=tmp_path, progress=False)
    assert serial.metrics.equals(parallel.metrics)  # read back from what the workers measured


def test_grid_options_are_checked(tmp_path: Path):
    with pytest.raises(ValueError, match="--threads must be >= 1"):
        run_grid(grid_jobs(BASE, (0,), ["csdn"]), tmp_path, jobs=2, threads=0)
    assert default_threads(1) >= 1 and default_threads(10_000) == 1


@pytest.mark.slow  # starts `csdn ablate --jobs 2` and kills it: about 15-30 s
def test_workers_end_when_the_grid_is_killed(tmp_path: Path):
    psutil = pytest.importorskip("psutil")
    command = [sys.executable, "-m", "csdn", "--cache", str(tmp_path / "cache"), "ablate", "--profile", "smoke"]
    command += ["--seeds", "3", "--jobs", "2", "--set", "clip.weights=random", "--reports", str(tmp_path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    grid = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        parent = psutil.Process(grid.pid)
        deadline = time.monotonic() + 60
        while len(workers := [p for p in parent.children() if "spawn_main" in " ".join(p.cmdline())]) < 2:
            assert time.monotonic() < deadline, "the grid started no workers"
            time.sleep(0.2)
        grid.send_signal(signal.SIGKILL)
        grid.wait()
        # a worker still importing torch when the grid dies checks on its parent as soon as it starts
        gone, alive = psutil.wait_procs(workers, timeout=120)
        assert not alive, f"workers outlived the grid: {alive}"
    finally:
        if grid.poll() is None:
            grid.kill()


def test_matched_identities_draws_whole_identities_reproducibly():
    from csdn.analysis.grid import matched_identities
    from csdn.data.records import VISIBLE, Record

    records = [Record(f"/x/{pid}_{k}.jpg", pid, 1, VISIBLE) for pid in range(10) for k in range(3)]
    subset = matched_identities(records, 4)
    pids = {r.pid for r in subset}
    assert len(pids) == 4 and len(subset) == 12  # every image of the 4 identities drawn
    assert subset == [r for r in records if r.pid in pids]  # original order
    assert matched_identities(records, 4) == subset  # the same subset for every run
    assert matched_identities(records, 20) == records
