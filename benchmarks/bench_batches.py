"""Milliseconds per stage-3 batch: the per-image augmentation against the batched one, on the demo's cache.

Builds the demo profile's training image cache (SynthVI; the tiny CLIP with random weights, so nothing is
pretrained: only its input statistics are read) and times ``PairedBatches[key]`` for the epoch's
:class:`BatchKey` s, as training assembles them: P x K visible images in two views (plain, channel-exchanged)
plus P x K infrared ones, each augmented under its own seed. ``batched=False`` runs ``train_transform`` image
by image (what stage 3 did before); the default runs :class:`~csdn.data.transforms.BatchTrainTransform` a
view at a time. Both give the same tensors, checked here on the first keys before timing.

The two are timed in alternating rounds (the order flips every round, so a change of machine load hits
both); each round times ``--batches`` keys with each, and the figure is the median over rounds of the
round's median ms per batch, with the ratio's median over rounds. Run once per thread count (``--threads``:
torch's intra-op threads); the machine's load average is printed beside each set.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_batches.py [--cache DIR]
        [--rounds 7] [--batches 10] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from csdn.artifacts import default_cache_root
from csdn.config import get_profile
from csdn.data.records import INFRARED, VISIBLE
from csdn.data.sampler import CrossModalitySampler
from csdn.experiment import Experiment
from csdn.overrides import override
from csdn.train.reid_batches import BatchKey, PairedBatches


def demo_batches(cache_root: Path) -> tuple[dict[str, PairedBatches], list[BatchKey], str]:
    """The per-image and batched assemblies of the demo's stage 3 and epoch 0's keys."""
    exp = Experiment(override(get_profile("demo"), {"clip.weights": "random"}), cache_root, progress=False)
    cache, cfg, tcfg = exp.train_cache, exp.cfg.stage3, exp.transforms
    labels = [exp.labels[r.pid] for r in cache.records]
    vis = [i for i, r in enumerate(cache.records) if r.modality == VISIBLE]
    ir = [i for i, r in enumerate(cache.records) if r.modality == INFRARED]
    vis_labels, ir_labels = [labels[i] for i in vis], [labels[i] for i in ir]
    sampler = CrossModalitySampler(vis_labels, ir_labels, cfg.ids_per_batch, cfg.instances, seed=0)
    keys = [BatchKey(v, i, 0, 0, step, sampler.offset) for step, (v, i) in enumerate(sampler)]
    batches = {
        name: PairedBatches(
            cache, vis, ir, vis_labels, ir_labels, tcfg, cfg.channel_exchange_view, batched=name == "batched"
        )
        for name in ("per-image", "batched")
    }
    images = len(keys[0].visible) * cfg.views + len(keys[0].infrared)
    about = (
        f"demo: {len(cache)} cached images of {tcfg.height}x{tcfg.width}, {len(keys)} batches an epoch of "
        f"{images} images (pad {tcfg.pad}, erasing p {tcfg.erasing_p}, {cfg.views} visible views)"
    )
    return batches, keys, about


def ms_per_batch(batches: PairedBatches, keys: list[BatchKey]) -> float:
    times = []
    for key in keys:
        start = time.perf_counter()
        batches[key]
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=default_cache_root(), help="artifact cache (SynthVI, images)")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (medians over these)")
    parser.add_argument("--batches", type=int, default=10, help="keys timed per round and assembly")
    parser.add_argument("--threads", default="1,2", help="torch intra-op thread counts, one set of rounds each")
    args = parser.parse_args()
    batches, keys, about = demo_batches(args.cache)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU(s); {about}")
    for key in keys[:3]:
        a, b = (batches[name][key] for name in ("per-image", "batched"))
        if not all(torch.equal(a[k], b[k]) for k in a):
            raise SystemExit(f"the batched assembly differs from the per-image one at step {key.step}")
    print("the batched and per-image batches are identical (first 3 keys)")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for name in batches:  # warm-up
            ms_per_batch(batches[name], keys[:2])
        before = load()
        rounds: dict[str, list[float]] = {name: [] for name in batches}
        for r in range(args.rounds):
            window = [keys[(r * args.batches + i) % len(keys)] for i in range(args.batches)]
            for name in list(batches)[:: 1 if r % 2 == 0 else -1]:
                rounds[name].append(ms_per_batch(batches[name], window))
        per_image, batched = (statistics.median(rounds[name]) for name in ("per-image", "batched"))
        ratio = statistics.median(p / b for p, b in zip(rounds["per-image"], rounds["batched"]))
        spread = {name: f"{min(v):.1f}-{max(v):.1f}" for name, v in rounds.items()}
        print(
            f"{threads} thread(s): per-image {per_image:.1f} ms/batch (rounds {spread['per-image']}), "
            f"batched {batched:.1f} ms/batch (rounds {spread['batched']}); {ratio:.1f}x faster "
            f"(median of {args.rounds} rounds x {args.batches} batches); load average {before} -> {load()}"
        )


if __name__ == "__main__":
    main()
