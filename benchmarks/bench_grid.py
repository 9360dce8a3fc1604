"""Benchmark ``csdn ablate --jobs N``: the same small grid trained from scratch with 1 and with N worker
processes, on the demo world.

Each trial trains and measures every (variant, seed) run into a fresh artifact cache that holds only the
shared inputs (the SynthVI world, the tiny CLIP, the image caches: hard links to a prepared source
cache), so every stage is really trained. ``--jobs 1`` runs in this process with the default torch
threads (all cores: the plain baseline); ``--jobs N`` runs N spawned workers with the cores shared out
(one thread each on 2 cores). Trials of the two alternate, so both see the same machine load; the
median wall time of each and their ratio are printed.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_grid.py [--jobs 2] [--repeats 1] [--seeds 2]
        [--variants vision-only,csdn] [--epochs 2] [--source-cache DIR]

The source cache (default: ``$CSDN_CACHE`` or ``~/.cache/csdn``) is prepared first when it lacks the
demo world or the tiny CLIP (about 2.5 minutes once).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from csdn.analysis.ablation import run_ablation
from csdn.artifacts import default_cache_root
from csdn.config import get_profile
from csdn.experiment import Experiment
from csdn.overrides import override

SHARED = ("synthvi", "tiny_clip", "images", "features")  # cache folders every run only reads


def prepare(base, source: Path) -> None:
    """Generate the world, pretrain the tiny CLIP and build the training image cache in ``source``."""
    experiment = Experiment(base, source, progress=False)
    experiment.clip  # noqa: B018 (pretrains the tiny CLIP if missing)
    experiment.train_cache  # noqa: B018
    experiment.check_test_images()


def fresh_cache(source: Path, root: Path) -> Path:
    """A cache with hard links to ``source``'s shared inputs and no trained stage."""
    target = Path(tempfile.mkdtemp(prefix="grid-", dir=root))
    for name in SHARED:
        if (source / name).exists():
            shutil.copytree(source / name, target / name, copy_function=os.link)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes of the parallel trial")
    parser.add_argument("--repeats", type=int, default=1, help="trials of each")
    parser.add_argument("--seeds", type=int, default=2, help="seeds of the grid")
    parser.add_argument("--variants", default="vision-only,csdn", help="comma-separated ablation rows")
    parser.add_argument("--epochs", type=int, default=2, help="stage-3 epochs of every run")
    parser.add_argument("--source-cache", type=Path, default=default_cache_root(), help="prepared inputs")
    args = parser.parse_args()
    base = override(
        get_profile("demo"),
        {
            "stage3.epochs": args.epochs,
            "stage3.warmup_epochs": 1,
            "stage3.milestones": [args.epochs],
            "validate_every": 0,
        },
    )
    variants, seeds = args.variants.split(","), list(range(args.seeds))
    t0 = time.perf_counter()
    prepare(base, args.source_cache)
    print(f"source cache {args.source_cache} ready in {time.perf_counter() - t0:.0f} s")
    print(f"grid: {len(variants)} variants x {len(seeds)} seeds, {args.epochs} stage-3 epochs, {os.cpu_count()} CPUs")
    seconds: dict[int, list[float]] = {1: [], args.jobs: []}
    with tempfile.TemporaryDirectory(prefix="bench-grid-") as scratch:
        for repeat in range(args.repeats):
            for jobs in (1, args.jobs):
                cache = fresh_cache(args.source_cache, Path(scratch))
                t = time.perf_counter()
                run_ablation(base, seeds, variants, zero_shot=False, cache_root=cache, jobs=jobs, progress=False)
                seconds[jobs].append(time.perf_counter() - t)
                threads = torch.get_num_threads() if jobs == 1 else "shared out"
                print(f"  trial {repeat + 1}: --jobs {jobs} ({threads} threads): {seconds[jobs][-1]:.1f} s")
                shutil.rmtree(cache)
    one, many = statistics.median(seconds[1]), statistics.median(seconds[args.jobs])
    runs = len(variants) * len(seeds)
    print(
        f"--jobs 1: {one:.1f} s ({one / runs:.1f} s a run); --jobs {args.jobs}: {many:.1f} s; "
        f"speed-up {one / many:.2f}x"
    )


if __name__ == "__main__":
    main()
