"""Device choice, seeding and the compute path: the few runtime facts shared by training and evaluation.

The compute path (:class:`ComputeConfig`, resolved per device and tower by :func:`compute_path`) is how
every stage and feature extraction runs its towers: under bf16 autocast where the device computes bf16
natively and it pays (CUDA with bf16; on CPUs with AVX512-BF16 or AMX, the convolutional towers), else in
fp32, with images in channels-last layout for convolutional towers under bf16. The same ``torch.autocast``
serves CPU and CUDA, so the mixed-precision code runs (and is tested) on any machine whose CPU has bf16.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from csdn.errors import ConfigError, check_choice

PRECISIONS = ("auto", "bf16", "fp32")  # compute.precision choices
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")  # compute.memory_format choices


def pick_device(preference: str = "auto") -> torch.device:
    """``"auto"`` gives CUDA when available, else CPU; any other string is passed to ``torch.device``."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(preference)
    except RuntimeError as error:
        raise ConfigError(f"device {preference!r} is not a device name (auto, cpu, cuda, cuda:1, ...)") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {preference!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (each component also keeps its own RNG)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass(frozen=True)
class ComputeConfig:
    """How the towers compute: precision and image memory layout (speed; the resolved path joins cache keys)."""

    precision: str = "auto"  # "auto": bf16 autocast where the device computes bf16 natively and it pays (CUDA
    # with bf16; on CPUs with AVX512-BF16/AMX, convolutional towers only), else fp32; "bf16": bf16 autocast
    # (refused where unsupported); "fp32": none
    memory_format: str = "auto"  # image batches' layout: "auto" (channels-last for ResNet towers under bf16),
    # "channels_last" or "contiguous" (the weights keep theirs; convolutions follow the input's layout)

    def __post_init__(self) -> None:
        check_choice("compute.precision", self.precision, PRECISIONS)
        check_choice("compute.memory_format", self.memory_format, MEMORY_FORMATS)


@dataclass(frozen=True)
class ComputePath:
    """A :class:`ComputeConfig` resolved for one device and tower."""

    device_type: str  # "cpu" or "cuda"
    dtype: torch.dtype | None  # autocast dtype (None: plain fp32)
    channels_last: bool  # image batches in channels-last layout

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of this path (a no-op for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (N, C, H, W) in this path's memory layout."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def prepare(self, module: nn.Module) -> nn.Module:
        """Fit ``module``'s layers to this path, in place (returns it): on a CPU channels-last path its
        BatchNorm2d layers of at most :data:`SMALL_BATCHNORM_CHANNELS` channels compute on contiguous
        tensors (their input and gradient change layout explicitly, both ways). Idempotent; parameter
        names and values are untouched."""
        if self.channels_last and self.device_type == "cpu":
            for layer in module.modules():
                if isinstance(layer, nn.BatchNorm2d) and layer.num_features <= SMALL_BATCHNORM_CHANNELS:
                    _compute_contiguous(layer)
        return module

    def identity(self) -> dict[str, str]:
        """What the path contributes to cache keys of trained artifacts (it changes their numerics)."""
        precision = "fp32" if self.dtype is None else str(self.dtype).removeprefix("torch.")
        return {"precision": precision, "layout": "channels_last" if self.channels_last else "contiguous"}


# PyTorch's CPU BatchNorm over channels-last tensors vectorises across channels: with 4-8 channels (the tiny
# ResNet's stem and first block) forward + backward measured 5-9x slower in bf16 than over contiguous
# tensors, with 32 and more as fast or faster (benchmarks/bench_layout.py). Layers up to 8 run contiguous.
SMALL_BATCHNORM_CHANNELS = 8


class _ChangeLayout(torch.autograd.Function):
    """``x`` in memory layout ``to``; its gradient goes back in layout ``back`` (that of ``x``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, to: torch.memory_format, back: torch.memory_format) -> torch.Tensor:
        ctx.back = back
        return x.contiguous(memory_format=to)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad.contiguous(memory_format=ctx.back), None, None


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _to_contiguous(layer: nn.Module, args: tuple) -> tuple | None:
    x = args[0]
    if not _is_channels_last(x):
        return None
    layer._csdn_layout_back = True
    return (_ChangeLayout.apply(x, torch.contiguous_format, torch.channels_last), *args[1:])


def _back_to_channels_last(layer: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    if not layer.__dict__.pop("_csdn_layout_back", False):
        return None
    return _ChangeLayout.apply(output, torch.channels_last, torch.contiguous_format)


def _compute_contiguous(layer: nn.Module) -> None:
    """Hooks that run ``layer`` on a contiguous copy of a channels-last input and give its output back in
    channels-last (once per layer)."""
    if getattr(layer, "_csdn_contiguous", False):
        return
    layer.register_forward_pre_hook(_to_contiguous)
    layer.register_forward_hook(_back_to_channels_last)
    layer._csdn_contiguous = True


FP32 = ComputePath("cpu", None, False)  # the plain path (tests, tools that want exact float32)


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (CUDA with bf16; a CPU with AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(torch.backends.mkldnn.is_available()) and _cpu_has_bf16()


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without the probe: take the safe path
        return False


def compute_path(cfg: ComputeConfig, device: torch.device, convolutional: bool) -> ComputePath:
    """Resolve ``cfg`` for ``device`` and a tower (``convolutional``: a ResNet); refuses an explicit bf16
    where the device lacks it, with the way out."""
    device = torch.device(device)
    native = bf16_supported(device)
    if cfg.precision == "bf16" and not native:
        raise ConfigError(
            f"compute.precision=bf16 but {device} has no native bf16 (CUDA with bf16, or a CPU with AVX512-BF16 "
            "or AMX); use compute.precision=auto or fp32"
        )
    # auto: bf16 on CUDA; on a CPU only for convolutional towers, where it measured faster (transformer
    # towers of the embedded size measured slower in bf16 than in fp32 on the CPU: benchmarks/bench_train.py)
    auto_bf16 = native and (device.type == "cuda" or convolutional)
    dtype = torch.bfloat16 if cfg.precision == "bf16" or (cfg.precision == "auto" and auto_bf16) else None
    if cfg.memory_format == "auto":
        channels_last = convolutional and dtype is not None
    else:
        channels_last = cfg.memory_format == "channels_last"
    return ComputePath(device.type, dtype, channels_last)
