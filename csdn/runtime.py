"""Device choice, seeding and mixed precision: the few runtime facts shared by training and evaluation."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from csdn.errors import ConfigError


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


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 (or fp16 where bf16 is unsupported) autocast on CUDA; a no-op elsewhere or when disabled."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)
