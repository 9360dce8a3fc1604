"""Which layers pay for channels-last on this CPU: BatchNorm by width, and the stage-3 step with and without
the narrow BatchNorms computed contiguous (``ComputePath.prepare``).

Part 1 times forward + backward of one ``BatchNorm2d`` in training mode (batch statistics) on a tensor of the
tiny ResNet's shapes at the demo size, channels-last against contiguous (input and gradient in the same
layout), in float32 and, where the CPU has it, bf16. PyTorch's CPU channels-last BatchNorm vectorises
across channels, so with 4-8 channels (the tiny RN's stem and first block) it is many times slower than over
a contiguous tensor; from 32 channels on the two layouts are about even. This is what
``csdn.runtime.SMALL_BATCHNORM_CHANNELS`` rests on.

Part 2 times the whole stage-3 step of ``bench_train.py`` (tiny RN, 96 images at 128x64, network, losses,
backward, Adam) on the default channels-last path, with the network prepared as csdn trains it and
unprepared (every BatchNorm channels-last), alternating the two each round; medians over rounds.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_layout.py [--repeats 15] [--step-repeats 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from bench_clip_pretrain import median_seconds
from bench_train import SETTINGS, Path, StepRunner

from csdn.runtime import ComputePath, bf16_supported

# (N, C, H, W) of BatchNorm inputs in the tiny RN at 128x64: the visible stem (64 images = 32 x 2 views), the
# first block, and wider layers, with C from 4 to 64
SHAPES = [(64, 4, 64, 32), (64, 8, 64, 32), (96, 8, 32, 16), (96, 16, 32, 16), (96, 32, 32, 16), (96, 64, 16, 8)]


def batchnorm_step(shape: tuple[int, ...], dtype: torch.dtype, channels_last: bool) -> Callable[[], None]:
    """Forward + backward of a training-mode BatchNorm2d on a ``shape`` tensor in one layout."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    layer = torch.nn.BatchNorm2d(shape[1])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(dtype).contiguous(memory_format=layout).requires_grad_()
    grad = torch.randn(shape, generator=g).to(dtype).contiguous(memory_format=layout)

    def step() -> None:
        layer(x).backward(grad)

    return step


def bench_batchnorm(repeats: int) -> None:
    dtypes = [torch.float32] + ([torch.bfloat16] if bf16_supported(torch.device("cpu")) else [])
    print("BatchNorm2d forward + backward (training mode), ms, median of", repeats)
    print(f"{'shape':>18} {'dtype':>9} {'channels-last':>14} {'contiguous':>11} {'cl / contiguous':>16}")
    for shape in SHAPES:
        for dtype in dtypes:
            cl = 1e3 * median_seconds(batchnorm_step(shape, dtype, True), repeats)
            plain = 1e3 * median_seconds(batchnorm_step(shape, dtype, False), repeats)
            name = str(dtype).removeprefix("torch.")
            print(f"{str(shape):>18} {name:>9} {cl:14.2f} {plain:11.2f} {cl / plain:16.2f}")


def bench_step(repeats: int) -> None:
    """The stage-3 step on the channels-last path, prepared (narrow BatchNorms contiguous) and not."""
    dtype = torch.bfloat16 if bf16_supported(torch.device("cpu")) else None
    path = ComputePath("cpu", dtype, True)
    setting = SETTINGS["csdn-tiny-rn"]
    prepared = StepRunner(setting, Path("prepared", path), torch.device("cpu"))
    unprepared = StepRunner(setting, Path("unprepared", path), torch.device("cpu"))
    for layer in unprepared.net.modules():  # undo prepare(): every BatchNorm on channels-last tensors
        layer._forward_pre_hooks.clear()
        layer._forward_hooks.clear()
    runners = {"narrow BatchNorms contiguous (csdn)": prepared, "every BatchNorm channels-last": unprepared}
    for runner in runners.values():
        runner.step()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, runner in runners.items():
            start = time.perf_counter()
            runner.step()
            times[name].append(time.perf_counter() - start)
    precision = "bf16" if dtype else "fp32"
    print(f"\nstage-3 step, tiny RN, 96 images at 128x64, {precision} channels-last, median of {repeats} rounds")
    base = statistics.median(times["every BatchNorm channels-last"])
    for name, values in times.items():
        ms = statistics.median(values) * 1e3
        print(f"{name:>36} {ms:7.1f} ms  x{base / statistics.median(values):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15, help="timed BatchNorm steps per layout")
    parser.add_argument("--step-repeats", type=int, default=9, help="alternating rounds of the stage-3 step")
    args = parser.parse_args()
    print(f"cpu, {torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    bench_batchnorm(args.repeats)
    bench_step(args.step_repeats)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
