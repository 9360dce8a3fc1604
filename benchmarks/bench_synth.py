"""How fast SynthVI writes the demo SYSU-MM01 tree, against raw rendering in the same run.

    python benchmarks/bench_synth.py [--repeats 3] [--ids N]

Prints, for the full writer (render + caption + JPEG + metadata, into a temp dir) and for the plain
baseline (render_image only, in memory, same images), the median seconds over the repeats and images
per second, and the ratio of the two.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

from csdn.synthvi.cameras import SYSU_CAMERAS
from csdn.synthvi.layouts import write_sysu
from csdn.synthvi.render import render_image
from csdn.synthvi.world import PURPOSE_SYSU, SynthConfig, image_rng, make_identities


def time_writer(cfg: SynthConfig) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        counts = write_sysu(cfg, Path(tmp) / "SYSU-MM01")
        return time.perf_counter() - start, counts["total_images"]


def time_render(cfg: SynthConfig) -> tuple[float, int]:
    pools = make_identities(cfg)
    people = pools["train"] + pools["test"]
    start = time.perf_counter()
    n = 0
    for ident in people:
        for cam in SYSU_CAMERAS:
            for k in range(1, cfg.images_per_cam + 1):
                render_image(
                    ident,
                    cam,
                    image_rng(cfg.seed, PURPOSE_SYSU, ident.pid, 2 * cam.cam, k),
                    height=cfg.height,
                    width=cfg.width,
                )
                n += 1
    return time.perf_counter() - start, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (median reported)")
    parser.add_argument("--ids", type=int, default=0, help="override train_ids (0: demo default)")
    args = parser.parse_args()
    cfg = SynthConfig()
    if args.ids:
        cfg = dataclasses.replace(cfg, train_ids=args.ids, val_ids=min(cfg.val_ids, args.ids - 1))
    print(
        f"config: {cfg.train_ids} train + {cfg.test_ids} test ids, {cfg.images_per_cam} images/cam, "
        f"{cfg.height}x{cfg.width}, {args.repeats} repeats"
    )
    results = {}
    for name, fn in (("render only (baseline)", time_render), ("write_sysu (full tree)", time_writer)):
        runs = [fn(cfg) for _ in range(args.repeats)]
        seconds = statistics.median(r[0] for r in runs)
        images = runs[0][1]
        results[name] = seconds
        print(f"{name:26s} {images:6d} images  {seconds:7.2f} s  {images / seconds:8.1f} images/s")
    base, full = results.values()
    print(f"writer / render-only time ratio: {full / base:.2f}x")


if __name__ == "__main__":
    main()
