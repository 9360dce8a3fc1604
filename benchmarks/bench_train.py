"""Stage-3 training step of the CSDN network on each compute path, against this machine's limit.

For each architecture one training batch of random images is built: P identities x K images, each visible
image in two views plus one infrared image per (identity, instance), i.e. ``3 * P * K`` images per step,
as in stage 3. One step is what ``train_reid`` does per batch (data loading aside): both modality stems,
the shared trunk and both BNNeck heads, the stage-3 losses (ID x2, WRT triplet x2, HSE against fixed text
prototypes, MSEL), backward and the Adam step of ``make_optimizer``. It is timed on each path:

* ``before``: what csdn did before the compute path existed: float32, contiguous images, and open_clip's
  attention pool, which attends from every token of the map although only the mean token's output is used
  (the rest of the network as today, e.g. GeM's backward: the true "before" was a little slower);
* ``fp32``, ``bf16``, ``fp32+cl``, ``bf16+cl``: float32 or bf16 autocast (``csdn.runtime.ComputePath``),
  contiguous or channels-last images, with csdn's mean-query attention pool (and, channels-last on a CPU,
  the narrow BatchNorms contiguous: ``ComputePath.prepare``); ``bf16`` rows only where the
  device has native bf16;
* ``compile`` (``--compile``): ``torch.compile`` of the network on the fp32 path (compilation not timed).

The rounds alternate the paths (one step of each per round) so that all see the same load on a shared
machine; times are medians over rounds, ``x before`` the median over rounds of the ``before`` step time
over the path's. The step's GFLOP (``torch.utils.flop_counter``, forward + backward of the network and
losses, on the fp32 path) over its time gives GFLOP/s, and the same run measures this machine's limit:
the median GFLOP/s of a 2048x2048 matmul in fp32 and bf16. ``default`` marks the path csdn's
``compute.precision=auto`` / ``compute.memory_format=auto`` picks on this device.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_train.py [--device auto|cpu|cuda] [--repeats 5]
        [--warmup 1] [--archs csdn-tiny-rn,csdn-tiny-vit,RN50,ViT-B-16] [--compile]

Defaults: the tiny archs at the demo size 128x64 with 8 ids x 4 (96 images a step); RN50 at 288x144 and
ViT-B-16 at 256x128 with 4 ids x 2 (24 images a step). On a CPU the real sizes take seconds per step, so
use few repeats there.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from open_clip.modified_resnet import AttentionPool2d
from torch.utils.flop_counter import FlopCounterMode

from csdn.clip.loader import ClipSource, load_clip
from csdn.data.records import INFRARED, VISIBLE
from csdn.model.network import CSDNNet
from csdn.runtime import ComputeConfig, ComputePath, bf16_supported, compute_path, pick_device
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


@dataclass(frozen=True)
class Path:
    """One way of computing the step."""

    name: str
    compute: ComputePath
    all_query_pool: bool = False  # open_clip's attention pool (attends from every token), as before
    compiled: bool = False  # torch.compile the network


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Median GFLOP/s of a ``size`` x ``size`` matmul in ``dtype`` on ``device``: the machine's limit."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def paths_for(device: torch.device, resnet: bool, compile_too: bool) -> list[Path]:
    """The paths measured on ``device``: before, fp32 and bf16 (where native) in both layouts, compile."""
    plain = ComputePath(device.type, None, False)
    paths = [Path("before", plain, all_query_pool=resnet), Path("fp32", plain)]
    if resnet:
        paths.append(Path("fp32+cl", ComputePath(device.type, None, True)))
    if bf16_supported(device):
        paths.append(Path("bf16", ComputePath(device.type, torch.bfloat16, False)))
        if resnet:
            paths.append(Path("bf16+cl", ComputePath(device.type, torch.bfloat16, True)))
    if compile_too:
        paths.append(Path("compile", plain, compiled=True))
    return paths


class StepRunner:
    """A network, its optimizer and one batch: one stage-3 step on one path."""

    def __init__(self, setting: Setting, path: Path, device: torch.device) -> None:
        torch.manual_seed(0)
        bundle = load_clip(ClipSource(arch=setting.arch, pretrained=None, image_size=setting.image_size), device)
        if path.all_query_pool:
            bundle.model.visual.attnpool.__class__ = AttentionPool2d
        self.net = path.compute.prepare(CSDNNet(bundle.visual(), NUM_IDS).to(device).train())
        self.model = torch.compile(self.net) if path.compiled else self.net
        self.cfg = ReIDStageConfig()
        self.optimizer = make_optimizer(self.net, self.cfg)
        self.path = path.compute
        g = torch.Generator().manual_seed(0)
        n = setting.ids * setting.instances
        self.x_vis = torch.randn(2 * n, 3, *setting.image_size, generator=g).to(device)
        self.x_ir = torch.randn(n, 3, *setting.image_size, generator=g).to(device)
        per_image = torch.arange(setting.ids).repeat_interleave(setting.instances)
        self.labels = torch.cat([per_image, per_image, per_image]).to(device)
        prototypes = torch.randn(NUM_IDS, self.net.embed_dim, generator=torch.Generator().manual_seed(1))
        self.protos = {VISIBLE: prototypes.to(device), INFRARED: prototypes.to(device)}

    def forward_backward(self) -> None:
        with self.path.autocast():
            out = self.model([(self.path.images(self.x_vis), VISIBLE), (self.path.images(self.x_ir), INFRARED)])
        loss = sum(reid_losses(out, self.labels, len(self.x_vis), self.protos, self.cfg).values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()

    def step(self) -> None:
        self.forward_backward()
        self.optimizer.step()


def step_gflop(runner: StepRunner) -> float:
    """GFLOP of one forward + backward of ``runner`` (matmuls and convolutions, as torch counts them)."""
    counter = FlopCounterMode(display=False)
    with counter:
        runner.forward_backward()
    return counter.get_total_flops() / 1e9


def timed(step: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - start


def bench_arch(setting: Setting, device: torch.device, warmup: int, repeats: int, compile_too: bool) -> None:
    """Print one row per path of ``setting``'s stage-3 step on ``device``."""
    probe = load_clip(ClipSource(arch=setting.arch, pretrained=None, image_size=setting.image_size), "cpu")
    resnet = probe.kind == "resnet"
    paths = paths_for(device, resnet, compile_too)
    runners = {p.name: StepRunner(setting, p, device) for p in paths}
    gflop = step_gflop(runners["fp32"])
    gflops = {p.name: step_gflop(runners["before"]) if p.all_query_pool else gflop for p in paths}
    for runner in runners.values():
        for _ in range(warmup + (1 if runner.model is not runner.net else 0)):  # compiling is not timed
            runner.step()
    rounds = [{name: timed(r.step, device) for name, r in runners.items()} for _ in range(repeats)]
    default = compute_path(ComputeConfig(), device, convolutional=resnet)
    for p in paths:
        seconds = statistics.median(r[p.name] for r in rounds)
        speedup = statistics.median(r["before"] / r[p.name] for r in rounds)
        mark = "  <- default" if p.compute == default and not p.compiled and p.name != "before" else ""
        print(
            f"{setting.arch:<14}{p.name:<9}{1000 * seconds:>9.1f}{setting.images / seconds:>9.1f}"
            f"{gflops[p.name] / seconds:>9.1f}{speedup:>10.2f}{mark}",
            flush=True,
        )
    before = f" (before: {gflops['before']:.2f}, open_clip's pool)" if any(p.all_query_pool for p in paths) else ""
    print(f"{setting.arch:<14}step: {setting.images} images, {gflop:.2f} GFLOP forward + backward{before}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps of each path before timing")
    parser.add_argument("--archs", default=",".join(SETTINGS), help=f"comma-separated subset of {list(SETTINGS)}")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile on the fp32 path")
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
        f"device: {device} ({where}); warm-up {args.warmup}, median of {args.repeats} rounds; "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    limits = [f"fp32 {matmul_gflops(device, torch.float32):.0f}"]
    if bf16_supported(device):
        limits.append(f"bf16 {matmul_gflops(device, torch.bfloat16):.0f}")
    print(f"this machine's limit, 2048x2048 matmul GFLOP/s: {', '.join(limits)}")
    print(f"{'arch':<14}{'path':<9}{'ms/step':>9}{'img/s':>9}{'GFLOP/s':>9}{'x before':>10}")
    for arch in archs:
        bench_arch(SETTINGS[arch], device, args.warmup, args.repeats, args.compile)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
