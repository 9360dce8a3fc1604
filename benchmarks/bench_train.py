"""Stage-3 training throughput of the CSDN network against the bare CLIP image tower.

For each architecture one training batch of random images is built on the device: P identities x K
images, each visible image in two views plus one infrared image per (identity, instance), i.e.
``3 * P * K`` images per step, as in stage 3. Two things are timed on that same batch:

* **CSDN step**: what ``train_reid`` does per batch (data loading aside): the network with its two
  modality stems, shared trunk and both BNNeck heads under ``csdn.runtime.autocast``, the stage-3 losses
  (ID x2, WRT triplet x2, HSE against fixed text prototypes), backward and the Adam step of
  ``make_optimizer``. Its forward+backward part is also reported on its own (the optimizer step is what
  the rest of the step costs).
* **baseline**: the bare CLIP image tower (``model.visual``, one stem, no heads) forward + backward
  of a plain loss on the same images, under the same autocast.

After ``--warmup`` untimed steps of each, ``--repeats`` rounds each time one baseline step and then one
CSDN step (alternating, so both see the same load on a shared machine); throughputs are from the median
step times, and ``ratio`` is the median over rounds of CSDN step time / baseline time of the same round,
so the cost of the second stem, the heads, the losses (and the optimizer step, which the baseline lacks;
``fb ratio`` leaves it out) shows. Random weights (``pretrained=None``) suffice for timing.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_train.py [--device auto|cpu|cuda] [--repeats 5]
        [--warmup 1] [--archs csdn-tiny-rn,csdn-tiny-vit,RN50,ViT-B-16]

Defaults: the tiny archs at the demo size 128x64 with 8 ids x 4 (96 images a step); RN50 at 288x144 and
ViT-B-16 at 256x128 with 4 ids x 2 (24 images a step). On a CPU the real sizes take tens of seconds per
step, so use few repeats there.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from csdn.clip.loader import ClipSource, load_clip
from csdn.data.records import INFRARED, VISIBLE
from csdn.model.network import CSDNNet
from csdn.runtime import autocast, pick_device
from csdn.train.reid_stage import ReIDStageConfig, make_optimizer, reid_losses

NUM_IDS = 395  # classifier width: the SYSU-MM01 training identities


@dataclass(frozen=True)
class Setting:
    """One benchmarked architecture and its stage-3 batch."""

    arch: str  # open_clip architecture
    image_size: tuple[int, int]  # (H, W) input
    ids: int  # P identities per batch
    instances: int  # K images per identity and modality

    @property
    def images(self) -> int:
        """Images per step: two views of each visible image + the infrared images."""
        return 3 * self.ids * self.instances


SETTINGS = {
    "csdn-tiny-rn": Setting("csdn-tiny-rn", (128, 64), 8, 4),
    "csdn-tiny-vit": Setting("csdn-tiny-vit", (128, 64), 8, 4),
    "RN50": Setting("RN50", (288, 144), 4, 2),
    "ViT-B-16": Setting("ViT-B-16", (256, 128), 4, 2),
}


@dataclass
class Timing:
    """Median seconds per step of one architecture."""

    baseline: float  # bare tower forward + backward
    csdn_fwd_bwd: float  # CSDN network forward + losses + backward
    csdn_step: float  # the above + Adam step
    fwd_bwd_ratio: float  # median over rounds of CSDN forward+backward / baseline of the same round
    ratio: float  # median over rounds of CSDN step / baseline of the same round
    peak_gib: float | None  # CUDA peak allocated memory, tower and network together (None on CPU)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``step`` takes (device work included)."""
    _sync(device)
    start = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - start


def _batch(setting: Setting, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random normalised images (visible: two views) and labels, visible rows first."""
    g = torch.Generator().manual_seed(0)
    n = setting.ids * setting.instances
    x_vis = torch.randn(2 * n, 3, *setting.image_size, generator=g)
    x_ir = torch.randn(n, 3, *setting.image_size, generator=g)
    per_image = torch.arange(setting.ids).repeat_interleave(setting.instances)
    labels = torch.cat([per_image, per_image, per_image])
    return x_vis.to(device), x_ir.to(device), labels.to(device)


def bench_arch(setting: Setting, device: torch.device, warmup: int, repeats: int) -> Timing:
    """Time the bare tower and the CSDN step of one architecture on one batch, alternating the two."""
    torch.manual_seed(0)
    bundle = load_clip(ClipSource(arch=setting.arch, pretrained=None, image_size=setting.image_size), device)
    x_vis, x_ir, labels = _batch(setting, device)
    cfg = ReIDStageConfig()
    tower = bundle.model.visual.train()
    everything = torch.cat([x_vis, x_ir])
    net = CSDNNet(bundle.visual(), NUM_IDS).to(device).train()  # its own copies of the stems and trunk
    prototypes = torch.randn(NUM_IDS, net.embed_dim, generator=torch.Generator().manual_seed(1)).to(device)
    protos = {VISIBLE: prototypes, INFRARED: prototypes}
    optimizer = make_optimizer(net, cfg)

    def baseline_step() -> None:
        with autocast(device, cfg.amp):
            features = tower(everything)
        tower.zero_grad(set_to_none=True)
        features.float().square().mean().backward()

    def csdn_step() -> float:
        """One stage-3 step; returns the seconds of its forward + losses + backward part."""
        start = time.perf_counter()
        with autocast(device, cfg.amp):
            out = net([(x_vis, VISIBLE), (x_ir, INFRARED)])
        loss = sum(reid_losses(out, labels, len(x_vis), protos, cfg).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _sync(device)
        seconds = time.perf_counter() - start
        optimizer.step()
        return seconds

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        baseline_step()
        csdn_step()
    rounds = []  # (baseline, csdn forward+backward, csdn step) seconds; alternating shares any load drift
    for _ in range(repeats):
        baseline = _timed(baseline_step, device)
        fwd_bwd: list[float] = []
        step = _timed(lambda fwd_bwd=fwd_bwd: fwd_bwd.append(csdn_step()), device)
        rounds.append((baseline, fwd_bwd[0], step))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    baseline, fwd_bwd, step = (statistics.median(column) for column in zip(*rounds))
    ratio = statistics.median(s / b for b, _, s in rounds)
    fb_ratio = statistics.median(f / b for b, f, _ in rounds)
    return Timing(baseline, fwd_bwd, step, fb_ratio, ratio, peak)


def _row(setting: Setting, t: Timing) -> str:
    size = f"{setting.image_size[0]}x{setting.image_size[1]}"
    batch = f"{setting.ids}x{setting.instances}x3={setting.images}"
    rate = lambda seconds: setting.images / seconds  # noqa: E731
    peak = f"{t.peak_gib:10.2f}" if t.peak_gib is not None else f"{'-':>10}"
    return (
        f"{setting.arch:<14}{size:>9}{batch:>12}{rate(t.baseline):>13.1f}{rate(t.csdn_fwd_bwd):>14.1f}"
        f"{rate(t.csdn_step):>12.1f}{t.fwd_bwd_ratio:>10.2f}{t.ratio:>8.2f}{peak}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per measurement (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--archs", default=",".join(SETTINGS), help=f"comma-separated subset of {list(SETTINGS)}")
    args = parser.parse_args()
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = [a for a in archs if a not in SETTINGS]
    if unknown:
        parser.error(f"unknown arch(s) {unknown}; choose from {list(SETTINGS)}")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    device = pick_device(args.device)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"device: {device} ({where}); autocast: {device.type == 'cuda'}; warm-up {args.warmup}, "
        f"median of {args.repeats} steps; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    print(
        "img/s = images per second (batch = P ids x K x (2 visible views + 1 infrared)); "
        "ratio = CSDN time / bare-tower time"
    )
    print(
        f"{'arch':<14}{'size':>9}{'batch':>12}{'tower img/s':>13}{'fwd+bwd img/s':>14}{'step img/s':>12}"
        f"{'fb ratio':>10}{'ratio':>8}{'peak GiB':>10}"
    )
    for arch in archs:
        print(_row(SETTINGS[arch], bench_arch(SETTINGS[arch], device, args.warmup, args.repeats)), flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
