"""What checking the cache's checksums costs: every image cache, tiny CLIP, feature file and stage weights.

A run checks each artifact it opens once: an image cache's ``images.npy`` and ``records.json`` and the tiny
CLIP's files (blake2b of their bytes, :func:`csdn.artifacts.verify_artifact`), and each safetensors file's
tensors (:func:`csdn.artifacts.tensors_digest`, beside the load a run does anyway). This times those checks
on an existing cache (e.g. a warm ``make demo`` cache), repeated, and prints the median seconds per kind and
in all, with the bytes read. Compare the total with the wall time of a warm run of the same cache.

    .venv/bin/python benchmarks/bench_checksums.py [--cache DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from csdn.artifacts import default_cache_root, is_complete, load_tensors, tensors_digest, verify_artifact


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def folders(cache: Path, kind: str) -> list[Path]:
    return sorted(p for p in (cache / kind).glob("*") if p.is_dir() and is_complete(p))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=default_cache_root())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    total = 0.0
    rows = []
    for kind in ("images", "tiny_clip"):
        for folder in folders(args.cache, kind):
            size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
            rows.append(
                (f"{kind}/{folder.name}", size, median_seconds(lambda f=folder: verify_artifact(f), args.repeats))
            )
    tensor_files = [*args.cache.glob("features/*.safetensors"), *args.cache.glob("runs/stage*-*/final.safetensors")]
    for path in sorted(tensor_files):
        tensors = load_tensors(path, "", checksum=False)  # loaded by the run anyway: only the digest is extra
        seconds = median_seconds(lambda t=tensors: tensors_digest(t), args.repeats)
        rows.append((str(path.relative_to(args.cache)), path.stat().st_size, seconds))
    for name, size, seconds in rows:
        total += seconds
        print(f"{name:70s} {size / 2**20:8.1f} MiB {seconds:7.3f} s")
    size = sum(size for _, size, _ in rows)
    print(f"\nall checks: {len(rows)} artifacts, {size / 2**20:.1f} MiB, {total:.2f} s (median of {args.repeats})")


if __name__ == "__main__":
    main()
