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


def release_cosine_factor(
    epoch: int, warmup_epochs: int, warmup_factor: float, total_epochs: int, min_factor: float
) -> float:
    """The release's stage-1/2 schedule (timm's cosine, ``warmup_prefix=False``, one cycle): a linear warm-up
    from ``warmup_factor``, and a cosine to ``min_factor`` counted from epoch 0, not from the warm-up's end
    (so it starts below 1 when the warm-up ends), held at ``min_factor`` from ``total_epochs`` on."""
    if epoch < warmup_epochs:
        return warmup_factor + epoch * (1 - warmup_factor) / warmup_epochs
    if epoch >= total_epochs:
        return min_factor
    return min_factor + 0.5 * (1 - min_factor) * (1 + math.cos(math.pi * epoch / total_epochs))


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    kind: str,
    epochs: int,
    warmup_epochs: int,
    warmup_factor: float,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    min_factor: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-epoch scheduler (step it once per epoch): ``kind`` is ``"multistep"``, ``"cosine"`` (the cosine
    starts after the warm-up) or ``"release_cosine"`` (:func:`release_cosine_factor`, floor ``min_factor``)."""
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
    elif kind == "release_cosine":
        fn = partial(
            release_cosine_factor,
            warmup_epochs=warmup_epochs,
            warmup_factor=warmup_factor,
            total_epochs=epochs,
            min_factor=min_factor,
        )
    else:
        raise ValueError(f"unknown schedule {kind!r}: use 'multistep', 'cosine' or 'release_cosine'")
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
