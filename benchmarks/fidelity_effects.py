"""What the release's training-side switches change on the embedded world, paired by seed.

Trains the demo's CSDN (the grid's 16-epoch stage-3 schedule of the README's ablation) with the switches
of the embedded default and with each release behaviour in turn (``stage3.wrt_weights=agw``: AGW's WRT
weights; ``stage3.param_groups=release``: every head tensor at the classifier rate, BNNeck biases
trained), over seeds, and prints the grid's tables: test metrics, training diagnostics (train ID
accuracy, projected-feature norms: whether each run fits its identities) and the paired effects with
their 95% Student-t intervals (:func:`csdn.analysis.ablation.effects`). Runs are cached like any grid
(``<cache>/grid``): a rerun reads them back.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/fidelity_effects.py [--seeds 3] [--epochs 16] [--cache DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from csdn.analysis.ablation import effects, format_summary, get_variant, summarize
from csdn.analysis.grid import GridJob, run_grid
from csdn.artifacts import default_cache_root
from csdn.config import get_profile
from csdn.overrides import override

# row name -> the release switches it sets on the embedded default's CSDN
ROWS = {
    "csdn": {},
    "csdn wrt=agw": {"stage3.wrt_weights": "agw"},
    "csdn groups=release": {"stage3.param_groups": "release"},
}
COMPARISONS = (
    ("WRT weights: AGW's (release) vs exact", "csdn wrt=agw", "csdn"),
    ("parameter groups: release vs BNNeck", "csdn groups=release", "csdn"),
)


def jobs(seeds: int, epochs: int) -> list[GridJob]:
    """Every (row, seed) run: the demo with the grid's shortened schedule and the row's switches."""
    milestones = [round(epochs * 11 / 16), round(epochs * 14 / 16)]
    base = override(
        get_profile("demo"), {"stage3.epochs": epochs, "stage3.milestones": milestones, "validate_every": 4}
    )
    csdn = get_variant("csdn")
    return [
        GridJob(name, override(csdn.apply(base, seed), switches))
        for seed in range(seeds)
        for name, switches in ROWS.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--cache", type=Path, default=None, help="artifact cache (default: $CSDN_CACHE)")
    args = parser.parse_args()
    result = run_grid(jobs(args.seeds, args.epochs), args.cache or default_cache_root())
    pd.set_option("display.width", 200)
    runs = result.runs
    print(f"{len(runs)} runs in {result.seconds / 60:.1f} min\n")
    print(format_summary(summarize(result.metrics)).to_string(), end="\n\n")
    diagnostics = ["train ID acc", "proj norm visible", "proj norm infrared", "val mAP"]
    print(format_summary(summarize(runs, diagnostics, by=("variant",)), diagnostics).to_string(), end="\n\n")
    table = effects(result.metrics, "mAP", COMPARISONS)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.2f}"))


if __name__ == "__main__":
    main()
