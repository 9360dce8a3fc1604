"""Throughput of the feature extractor (``csdn embed`` / :func:`csdn.embed.load_extractor`) on CPU.

Images per second of ``FeatureExtractor.embed`` on ``--images`` JPEG files (random content, 256x128, as
files on disk: decoding, the squash-resize of the model's ``data.resize_filter``, normalisation, the network
and the flip test-time augmentation are all inside the measurement; loading the model is not), for two
networks built from weights files with random values (speed does not depend on the values):

- the embedded default's network (demo profile: CSDN on csdn-tiny-rn at 128x64);
- the real-data network (sysu-rn50: CSDN on RN50 at 288x144, the release's preprocessing).

Median and spread over ``--repeats`` runs each; the machine's load average is printed beside the figures.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_embed.py [--images 256] [--repeats 3] [--threads 2]
        [--models demo,sysu-rn50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from csdn.artifacts import atomic_save_tensors
from csdn.config import get_profile
from csdn.embed import load_extractor
from csdn.experiment import Experiment
from csdn.overrides import override

PROFILES = {"demo": None, "sysu-rn50": "/data/SYSU-MM01"}  # profile -> a data root to name (never read)


def write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` random 256x128 JPEG files."""
    rng = np.random.default_rng(seed)
    files = []
    for i in range(count):
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(rng.integers(0, 256, (256, 128, 3), dtype=np.uint8)).save(path, quality=90)
        files.append(path)
    return files


def extractor_for(profile: str, folder: Path):
    """A feature extractor of the profile's CSDN network (random weights, saved and loaded as a weights file)."""
    cfg = override(get_profile(profile, PROFILES[profile]), {"clip.weights": "random"})
    net = Experiment(cfg, folder, progress=False, trained_only=True).build_network(num_ids=395)
    weights = folder / f"{profile}.safetensors"
    atomic_save_tensors(net.state_dict(), weights)
    t0 = time.perf_counter()
    extractor = load_extractor(cfg, folder, weights=weights)
    return extractor, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="demo,sysu-rn50")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPU(s); load average before: "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = write_images(folder, args.images)
        for profile in args.models.split(","):
            extractor, load_s = extractor_for(profile, folder)
            p = extractor.preprocessing
            extractor.embed(files[:8], "infrared")  # warm-up
            rates = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                features = extractor.embed(files, "infrared")
                rates.append(len(files) / (time.perf_counter() - t0))
            print(
                f"{profile}: {p.size[0]}x{p.size[1]}, flip {p.flip} ({p.flip_fusion}), {p.resize_filter}; "
                f"{features.shape[1]}-d features; model load {load_s:.1f} s; "
                f"{statistics.median(rates):.1f} images/s median (min {min(rates):.1f}, max {max(rates):.1f}, "
                f"{args.repeats} runs of {len(files)} images)"
            )
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
