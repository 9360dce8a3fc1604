"""Learning-rate schedules of the released CSDN / CLIP-ReID code, as ``LambdaLR`` factors per epoch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch


def warmup_multistep_factor(
    epoch: int, warmup_epochs: int, warmup_factor: float, milestones: Sequence[int], gamma: float
) -> float:
    """Linear warm-up from ``warmup_factor`` to 1 over ``warmup_epochs``, then x``gamma`` at each milestone."""
    if epoch < warmup_epochs:
        alpha = epoch / warmup_epochs
        return warmup_factor * (1 - alpha) + alpha
    return gamma ** sum(epoch >= m for m in milestones)


def warmup_cosine_factor(
    epoch: int, warmup_epochs: int, warmup_factor: float, total_epochs: int, min_factor: float = 0.0
) -> float:
    """Linear warm-up from ``warmup_factor`` to 1, then a cosine decay to ``min_factor`` at ``total_epochs``."""
    if epoch < warmup_epochs:
        alpha = epoch / warmup_epochs
        return warmup_factor * (1 - alpha) + alpha
    span = max(1, total_epochs - warmup_epochs)
    progress = min(1.0, (epoch - warmup_epochs) / span)
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    kind: str,
    epochs: int,
    warmup_epochs: int,
    warmup_factor: float,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-epoch scheduler: ``kind`` is ``"multistep"`` or ``"cosine"`` (step it once per epoch)."""
    if kind == "multistep":
        fn = partial(
            warmup_multistep_factor,
            warmup_epochs=warmup_epochs,
            warmup_factor=warmup_factor,
            milestones=tuple(milestones),
            gamma=gamma,
        )
    elif kind == "cosine":
        fn = partial(
            warmup_cosine_factor, warmup_epochs=warmup_epochs, warmup_factor=warmup_factor, total_epochs=epochs
        )
    else:
        raise ValueError(f"unknown schedule {kind!r}: use 'multistep' or 'cosine'")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


def cut_short(name: str, stage: Any) -> str | None:
    """What ``stage`` (a stage config: epochs, warmup_epochs, lr, maybe milestones) never reaches, or None.

    An ``epochs`` shortened alone keeps the warm-up and the steps of the full schedule: the learning rate may
    then never reach ``lr`` or never decay, which says nothing by itself.
    """
    missed, fixes = [], []
    if stage.warmup_epochs >= stage.epochs:
        missed.append(
            f"its warm-up ends ({name}.warmup_epochs={stage.warmup_epochs}; lr {stage.lr:g} is never reached)"
        )
        fixes.append(f"--set {name}.warmup_epochs=...")
    milestones = tuple(getattr(stage, "milestones", ()))
    if any(m >= stage.epochs for m in milestones):
        missed.append(f"its learning-rate steps ({name}.milestones={milestones})")
        fixes.append(f"--set {name}.milestones=...")
    if not missed:
        return None
    return (
        f"{name}.epochs={stage.epochs} ends before {' and before '.join(missed)}; for a complete schedule shorten "
        f"them with the epochs ({' '.join(fixes)})"
    )
