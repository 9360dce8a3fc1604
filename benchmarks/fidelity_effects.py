"""What a switch changes on the embedded world, paired by seed: the release's training-side switches, or
the compute path.

Trains the demo's CSDN (the grid's 16-epoch stage-3 schedule of the README's ablation) with the switches
of the embedded default and with each alternative in turn, over seeds, and prints the grid's tables: test
metrics, training diagnostics (train ID accuracy, projected-feature norms: whether each run fits its
identities, and each run's wall seconds) and the paired effects with their 95% Student-t intervals
(:func:`csdn.analysis.ablation.effects`). Runs are cached like any grid (``<cache>/grid``): a rerun reads
them back. The switch sets (``--switches``):

* ``release`` (default): ``stage3.wrt_weights=agw`` (AGW's WRT weights) and ``stage3.param_groups=release``
  (every head tensor at the classifier rate, BNNeck biases trained);
* ``compute``: ``compute.precision=fp32`` against the default path (bf16 autocast and channels-last images
  on a CPU with native bf16): whether the fast path holds the accuracy.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/fidelity_effects.py [--switches release|compute] [--seeds 3]
        [--epochs 16] [--jobs 1] [--cache DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from csdn.analysis.ablation import effects, format_summary, get_variant, summarize
from csdn.analysis.grid import GridJob, run_grid
from csdn.artifacts import default_cache_root
from csdn.config import get_profile
from csdn.data.records import INFRARED, VISIBLE
from csdn.data.sampler import CrossModalitySampler
from csdn.experiment import Experiment
from csdn.losses import pairwise_euclidean, triplet_wrt
from csdn.overrides import override
from csdn.train.reid_batches import BatchKey, PairedBatches

# switch set -> (row name -> the switches it sets on the embedded default's CSDN, paired comparisons)
SWITCHES = {
    "release": (
        {
            "csdn": {},
            "csdn wrt=agw": {"stage3.wrt_weights": "agw"},
            "csdn groups=release": {"stage3.param_groups": "release"},
        },
        (
            ("WRT weights: AGW's (release) vs exact", "csdn wrt=agw", "csdn"),
            ("parameter groups: release vs BNNeck", "csdn groups=release", "csdn"),
        ),
    ),
    "compute": (
        {"csdn": {}, "csdn fp32": {"compute.precision": "fp32"}},
        (("compute path: default vs fp32", "csdn", "csdn fp32"),),
    ),
}


def jobs(seeds: int, epochs: int, switches: str = "release") -> list[GridJob]:
    """Every (row, seed) run: the demo with the grid's shortened schedule and the row's switches."""
    milestones = [round(epochs * 11 / 16), round(epochs * 14 / 16)]
    base = override(
        get_profile("demo"), {"stage3.epochs": epochs, "stage3.milestones": milestones, "validate_every": 4}
    )
    csdn = get_variant("csdn")
    return [
        GridJob(name, override(csdn.apply(base, seed), changes))
        for seed in range(seeds)
        for name, changes in SWITCHES[switches][0].items()
    ]


@torch.no_grad()
def distances(job: GridJob, cache_root: Path, steps: int = 10) -> dict[str, float]:
    """Median negative distance and AGW-vs-exact WRT relative difference of a trained run's features, per head."""
    experiment = Experiment(job.config, cache_root, progress=False, trained_only=True)
    net, cfg = experiment.network.train(), job.config.stage3
    cache = experiment.train_cache
    labels = [experiment.labels[r.pid] for r in cache.records]
    rows = {m: [i for i, r in enumerate(cache.records) if r.modality == m] for m in (VISIBLE, INFRARED)}
    row_labels = {m: [labels[i] for i in rows[m]] for m in rows}
    sampler = CrossModalitySampler(row_labels[VISIBLE], row_labels[INFRARED], cfg.ids_per_batch, cfg.instances)
    batches = PairedBatches(
        cache, rows[VISIBLE], rows[INFRARED], row_labels[VISIBLE], row_labels[INFRARED], experiment.transforms, True
    )
    found: dict[str, list[float]] = {}
    for step, (v, i) in zip(range(steps), sampler):
        batch = batches[BatchKey(v, i, 0, 0, step, 0)]
        out = net([(batch["visible"], VISIBLE), (batch["infrared"], INFRARED)])
        y = torch.cat([batch["visible_labels"], batch["infrared_labels"]])
        for head, feats in (("gem", out.gem), ("proj", out.proj)):
            negatives = pairwise_euclidean(feats, feats)[y[:, None] != y[None, :]]
            exact, agw = triplet_wrt(feats, y, weights="exact"), triplet_wrt(feats, y, weights="agw")
            found.setdefault(f"{head} median negative distance", []).append(negatives.median().item())
            found.setdefault(f"{head} WRT agw/exact - 1", []).append((agw / exact - 1).item())
    return {k: sum(v) / len(v) for k, v in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--switches", choices=sorted(SWITCHES), default="release", help="which switches to compare")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (one thread each when > 1)")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--cache", type=Path, default=None, help="artifact cache (default: $CSDN_CACHE)")
    parser.add_argument("--distances", action="store_true", help="feature distances of the trained csdn runs")
    args = parser.parse_args()
    if args.distances:
        cache = args.cache or default_cache_root()
        table = {job.seed: distances(job, cache) for job in jobs(args.seeds, args.epochs) if job.name == "csdn"}
        print(pd.DataFrame(table).T.to_string(float_format=lambda x: f"{x:.4g}"))
        return
    result = run_grid(jobs(args.seeds, args.epochs, args.switches), args.cache or default_cache_root(), jobs=args.jobs)
    pd.set_option("display.width", 200)
    runs = result.runs
    print(f"{len(runs)} runs in {result.seconds / 60:.1f} min\n")
    print(format_summary(summarize(result.metrics)).to_string(), end="\n\n")
    diagnostics = ["train ID acc", "proj norm visible", "proj norm infrared", "val mAP", "seconds"]
    print(format_summary(summarize(runs, diagnostics, by=("variant",)), diagnostics).to_string(), end="\n\n")
    table = effects(result.metrics, "mAP", SWITCHES[args.switches][1])
    print(table.to_string(index=False, float_format=lambda x: f"{x:.2f}"))


if __name__ == "__main__":
    main()
