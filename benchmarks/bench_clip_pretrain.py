"""Training-step throughput (images/s) of the tiny CLIP architectures.

For each architecture, times our pretraining step (augmentation, text trimmed to the batch's longest
caption, InfoNCE with attribute-agreement soft targets, fused AdamW) against a plain open_clip step in
the same run (full-length text through ``model(image, text)``, open_clip's ``ClipLoss``, default AdamW)
and prints medians and their ratio. On a machine shared with other jobs, ``--threads 1`` is the
stable figure (two OpenMP threads spin-wait when the cores are oversubscribed).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_clip_pretrain.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from open_clip.loss import ClipLoss

from csdn.clip.adapt import TextEncoder
from csdn.clip.loader import TINY_ARCHS, ClipSource, load_clip
from csdn.synthvi.pool import clip_pool
from csdn.synthvi.pretrain import (
    PretrainConfig,
    attribute_agreement,
    augment_batch,
    pool_attributes,
    pool_groups,
    soft_clip_loss,
)
from csdn.synthvi.world import SynthConfig


def median_seconds(step, repeats: int) -> float:
    step()  # warm-up (allocations, kernel selection)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(arch: str, pool, batch: int, size: tuple[int, int], repeats: int) -> tuple[float, float]:
    torch.manual_seed(0)
    bundle = load_clip(ClipSource(arch, None, size))
    model = bundle.model.train()
    fused = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    default = torch.optim.AdamW(model.parameters(), lr=1e-4)
    text_tower = TextEncoder(model, bundle.tokenizer, frozen=False)
    images = torch.from_numpy(pool.images[:batch])
    tokens = bundle.tokenizer(pool.captions[:batch])
    groups = pool_groups(pool)[:batch]
    codes, observable = (t[:batch] for t in pool_attributes(pool))
    sharpness = PretrainConfig().attribute_targets
    generator = torch.Generator().manual_seed(0)
    plain_loss = ClipLoss()

    def ours():
        x = augment_batch(bundle.to_input(images), 1.0, generator)
        positives = (groups[:, None] == groups[None, :]).float()
        targets = torch.maximum(positives, torch.exp(sharpness * (attribute_agreement(codes, observable) - 1.0)))
        loss = soft_clip_loss(model.encode_image(x), text_tower.encode_tokens(tokens), targets, model.logit_scale)
        fused.zero_grad(set_to_none=True)
        loss.backward()
        fused.step()

    def plain():
        image_features, text_features, scale = model(bundle.to_input(images), tokens)
        loss = plain_loss(image_features, text_features, scale)
        default.zero_grad(set_to_none=True)
        loss.backward()
        default.step()

    return batch / median_seconds(ours, repeats), batch / median_seconds(plain, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch", type=int, default=PretrainConfig().batch_size, help="images per step")
    parser.add_argument("--size", type=int, nargs=2, default=(128, 64), help="input H W (demo size)")
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per measurement (median)")
    parser.add_argument("--archs", nargs="+", default=list(TINY_ARCHS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = tuple(args.size)
    pool = clip_pool(SynthConfig(height=size[0], width=size[1], clip_ids=max(1, args.batch // 8 + 1)))
    print(f"threads={args.threads} batch={args.batch} size={size[0]}x{size[1]} repeats={args.repeats}")
    print(f"{'arch':<16}{'ours img/s':>12}{'plain img/s':>13}{'ratio':>8}")
    for arch in args.archs:
        ours, plain = bench(arch, pool, args.batch, size, args.repeats)
        print(f"{arch:<16}{ours:>12.1f}{plain:>13.1f}{ours / plain:>8.2f}")


if __name__ == "__main__":
    main()
