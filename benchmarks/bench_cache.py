"""Per-epoch read time: the memory-mapped uint8 cache vs decoding and resizing every file each epoch.

Writes a temporary tree of generated person-sized JPEGs, builds an :class:`ImageCache` at 128x64 and
288x144, then times one pass over all images through :class:`CachedImages` (what training reads)
against a pass that decodes and resizes every file (what a loader without a cache does). Prints the
median over repeated passes and the speed-up ratio, both measured in this run.

    .venv/bin/python benchmarks/bench_cache.py [--images 300] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from csdn.data.cache import ImageCache, decode_image
from csdn.data.images import CachedImages
from csdn.data.records import VISIBLE, Record

SIZES = ((128, 64), (288, 144))  # (H, W) cache sizes to compare
SOURCE_SIZE = (384, 160)  # (H, W) of the generated JPEGs, about a SYSU-MM01 person crop


def write_images(root: Path, count: int, seed: int = 0) -> list[Record]:
    """``count`` JPEGs with smooth structure plus noise (so they compress like photos, not flat fills)."""
    rng = np.random.default_rng(seed)
    height, width = SOURCE_SIZE
    rows = np.linspace(0, 1, height)[:, None, None]
    cols = np.linspace(0, 1, width)[None, :, None]
    records = []
    for index in range(count):
        base = rng.uniform(40, 200, size=3) * (0.6 + 0.4 * rows) * (0.8 + 0.2 * cols)
        pixels = np.clip(base + rng.normal(0, 12, size=(height, width, 3)), 0, 255).astype(np.uint8)
        path = root / f"{index // 10:04d}" / f"{index:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
        records.append(Record(str(path), index // 10, 1, VISIBLE))
    return records


def median_seconds(run: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cached_epoch(dataset: CachedImages) -> None:
    for index in range(len(dataset)):
        dataset[index]


def decoding_epoch(records: list[Record], size: tuple[int, int]) -> None:
    for record in records:
        torch.from_numpy(np.ascontiguousarray(decode_image(record.path, size).transpose(2, 0, 1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="number of generated JPEGs")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per method (median reported)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="csdn-bench-cache-") as tmp:
        records = write_images(Path(tmp) / "images", args.images)
        print(f"{args.images} JPEGs of {SOURCE_SIZE[0]}x{SOURCE_SIZE[1]}, median of {args.repeats} passes")
        print(f"{'size':>9} | {'build s':>8} | {'cache epoch s':>13} | {'decode epoch s':>14} | {'speed-up':>8}")
        for size in SIZES:
            start = time.perf_counter()
            cache = ImageCache.build(records, size, Path(tmp) / "cache", progress=False)
            build = time.perf_counter() - start
            dataset = CachedImages(cache)
            cached = median_seconds(lambda dataset=dataset: cached_epoch(dataset), args.repeats)
            decoded = median_seconds(lambda size=size: decoding_epoch(records, size), args.repeats)
            label = f"{size[0]}x{size[1]}"
            print(f"{label:>9} | {build:8.3f} | {cached:13.4f} | {decoded:14.4f} | {decoded / cached:7.1f}x")


if __name__ == "__main__":
    main()
