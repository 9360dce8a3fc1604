"""The cost of a step of each training stage relative to a stage-3 step: the ratios csdn.plan estimates with.

:func:`csdn.plan.training_plan` measures a few steps of the real stage-3 loop and estimates every other stage
from its epochs, its steps per epoch and :data:`csdn.plan.STEP_COST`, its seconds per step over a stage-3
step's. This script measures those ratios on the demo profile: it pretrains the tiny CLIP and trains stages
1 and 2 for a few epochs in a scratch cache (their histories record each epoch's seconds, the epoch's own
overhead included: stage 1's and 2's diagnostics over every training image), measures a stage-3 step the way
the plan does (longer: ``--steps``), then trains stage 3 for two epochs to check the plan's stage-3 estimate
against the loop's own clock. It prints each stage's seconds per step and its ratio.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_plan.py [--epochs 3] [--steps 25]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from csdn.config import get_profile
from csdn.experiment import Experiment
from csdn.overrides import override
from csdn.plan import STEP_COST, stage3_step_seconds, training_plan
from csdn.synthvi.pretrain import read_history


def per_step(history: list[dict], steps: int) -> float:
    """Mean seconds of a step over the epochs of ``history`` (epochs of ``steps`` steps)."""
    return sum(h["seconds"] for h in history) / (len(history) * steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the tiny CLIP and stages 1-2 (>= 2)")
    parser.add_argument("--steps", type=int, default=25, help="steps of the longer stage-3 timing run (> 5)")
    parser.add_argument("--cache", type=Path, default=None, help="scratch artifact cache (default: a new temp folder)")
    args = parser.parse_args()
    print(f"CPU threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="csdn-bench-plan-") as scratch:
        cache_root = args.cache or Path(scratch)
        e = args.epochs
        short = {"clip.pretrain.epochs": e, "stage1.epochs": e, "stage1.warmup_epochs": 1}
        short |= {"stage2.epochs": e, "stage2.warmup_epochs": 1, "stage3.epochs": 2, "stage3.warmup_epochs": 1}
        short |= {"stage3.milestones": [1], "validate_every": 0}
        cfg = override(get_profile("demo"), short)
        plan = training_plan({"CSDN": cfg}, cache_root, step_seconds=1.0)  # (steps per epoch only)
        steps = {item.stage: item.steps for item in plan.items}
        experiment = Experiment(cfg, cache_root)
        experiment.sii  # noqa: B018 (pretrains the tiny CLIP, trains stages 1 and 2)
        seconds = {}
        folder = next(item.path for item in plan.items if item.stage == "tiny_clip")
        seconds["tiny_clip"] = per_step(read_history(folder), steps["tiny_clip"])
        seconds["stage1"] = per_step(experiment.histories["stage1"], steps["stage1"])
        seconds["stage2"] = per_step(experiment.histories["stage2"], steps["stage2"])
        timing = Experiment(override(cfg, {"clip.weights": "random"}), cache_root, progress=False)
        seconds["stage3"] = stage3_step_seconds(timing, steps=args.steps, base=5)
        print(f"{'stage':>10} {'steps/epoch':>12} {'s/step':>8} {'ratio':>7} {'STEP_COST':>10}")
        for stage, value in seconds.items():
            ratio = value / seconds["stage3"]
            print(f"{stage:>10} {steps[stage]:>12} {value:>8.4f} {ratio:>7.2f} {STEP_COST[stage]:>10.2f}")
        estimate = training_plan({"CSDN": cfg}, cache_root, step_seconds=seconds["stage3"])
        stage3 = next(item for item in estimate.items if item.stage == "stage3")
        experiment.network  # noqa: B018 (stage 3, two epochs)
        measured = sum(h["seconds"] for h in experiment.histories["stage3"])
        print(
            f"stage 3, {stage3.epochs} epochs x {stage3.steps} steps: plan {stage3.seconds:.1f} s, "
            f"the loop's clock {measured:.1f} s"
        )


if __name__ == "__main__":
    main()
