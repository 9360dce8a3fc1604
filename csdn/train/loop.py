"""The epoch loop every stage shares: progress, per-epoch metrics log, validation, checkpoints, resume.

A stage supplies a :class:`StageState` (what trains and how one epoch goes); :func:`run_epochs` drives it
from the last checkpoint (or epoch 0) to the end of the schedule. Model selection never looks at the test
set: with a validation callback the loop can keep the best validation epoch, otherwise the final epoch is
the result.

Under several processes every rank runs the loop (and resumes from the same checkpoint), but only rank 0
writes: checkpoints, ``history.json``, ``best.safetensors`` and the progress bar.

An :class:`EpochObserver` in :attr:`LoopConfig.observer` hears where a stage starts (0, or the epoch it
resumes from) and each finished epoch's metrics, on rank 0; the loop itself prints nothing.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from csdn.artifacts import atomic_save_tensors, atomic_write_json, load_tensors, remove_stale_temporaries
from csdn.errors import ConfigError, NonFiniteLossError
from csdn.train.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from csdn.train.distributed import SINGLE, DistContext


class EpochObserver(Protocol):
    """Hooks of the loop (e.g. :class:`csdn.runs.StageLog`, the run folder's log of one stage)."""

    def started(self, run_dir: Path, start: int, history: list[dict[str, float]], epochs: int) -> None:
        """The stage starts at epoch ``start`` of ``epochs``: 0, or the checkpoint's epoch it resumed from
        (``history``: the metrics of the epochs before it, from the checkpoint)."""

    def epoch_done(self, metrics: dict[str, float], epochs: int) -> None:
        """An epoch finished with ``metrics`` (its history row: ``epoch``, losses, ``lr``, ``seconds``, ...)."""


@dataclass(frozen=True)
class LoopConfig:
    """How the shared loop runs a stage."""

    epochs: int  # length of the fixed schedule
    checkpoint_every: int = 1  # write a checkpoint every this many epochs (and always at the end)
    keep_checkpoints: int = 2  # how many recent checkpoints stay on disk
    validate_every: int = 0  # run the validation callback every this many epochs (0: never)
    select: str = "final"  # "final" (the fixed schedule's last epoch) or "best_val" (best validation score)
    progress: bool = True  # show tqdm progress bars
    observer: EpochObserver | None = field(default=None, compare=False)  # told of the start and each epoch (rank 0)


@dataclass
class StageState:
    """What a stage hands to the loop."""

    name: str  # stage name for logs ("stage1", ...)
    module: torch.nn.Module  # the trainable module whose weights are checkpointed
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler  # stepped once per epoch (or per step, see below)
    train_epoch: Callable[[int, Callable[[], None]], dict[str, float]]  # (epoch, tick) -> metrics
    steps_per_epoch: int  # for the progress bar
    validate: Callable[[int], dict[str, float]] | None = None  # epoch -> metrics incl. "score"
    extra_state: Callable[[], dict[str, Any]] = field(default=lambda: {})  # e.g. sampler RNG
    load_extra_state: Callable[[dict[str, Any]], None] = field(default=lambda state: None)
    meta: dict[str, Any] = field(default_factory=dict)  # identity of the run (arch, num_ids, config)
    scheduler_per_step: bool = False  # step the scheduler at every tick (after each optimizer step), not per epoch


def check_finite(loss: torch.Tensor, where: str) -> None:
    """Raise :class:`NonFiniteLossError` if ``loss`` is NaN or infinite."""
    if not torch.isfinite(loss.detach()).all():
        raise NonFiniteLossError(
            f"non-finite loss ({loss.detach().float().item()}) in {where}; the run stopped and the last good "
            "checkpoint is kept. Lower the learning rate or check the inputs."
        )


def run_epochs(
    stage: StageState, run_dir: Path, cfg: LoopConfig, resume: bool = True, dist: DistContext = SINGLE
) -> list[dict[str, float]]:
    """Train ``stage`` to the end of its schedule, resuming from ``run_dir``'s last checkpoint if any.

    Returns the per-epoch history (also written to ``run_dir/history.json``). With ``select="best_val"``
    the best validation epoch's weights are loaded into ``stage.module`` at the end. With several
    processes (``dist``) all ranks call this; only rank 0 writes.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if dist.is_main:  # one writer per run: temporaries of a killed run are not live
        remove_stale_temporaries(run_dir / "best.safetensors")
    history, start = _resume(stage, run_dir) if resume else ([], 0)
    dist.barrier()  # every rank has read the checkpoint before rank 0 may write (and prune) the next
    observer = cfg.observer if dist.is_main else None
    if observer is not None:
        observer.started(run_dir, start, list(history), cfg.epochs)
    bar = tqdm(
        total=cfg.epochs * stage.steps_per_epoch,
        initial=start * stage.steps_per_epoch,
        desc=stage.name,
        disable=not (cfg.progress and dist.is_main),
        leave=False,
    )
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        stage.module.train()
        metrics = stage.train_epoch(epoch, lambda: _tick(stage, bar))
        if not stage.scheduler_per_step:
            stage.scheduler.step()
        metrics = {
            "epoch": epoch + 1,
            **metrics,
            "lr": stage.optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - t0,
        }
        if stage.validate is not None and cfg.validate_every and (epoch + 1) % cfg.validate_every == 0:
            metrics.update({f"val_{k}": v for k, v in stage.validate(epoch).items()})
            if dist.is_main:
                _keep_best(stage, run_dir, history, metrics)
        history.append(metrics)
        bar.set_postfix({k: round(v, 4) for k, v in metrics.items() if k.endswith("loss") or k == "val_score"})
        if dist.is_main:
            atomic_write_json(run_dir / "history.json", history)
            if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
                _save(stage, run_dir, epoch + 1, history, cfg.keep_checkpoints)
        if observer is not None:
            observer.epoch_done(metrics, cfg.epochs)
    bar.close()
    dist.barrier()  # rank 0's last checkpoint and best weights are on disk
    if cfg.select == "best_val" and (run_dir / "best.safetensors").is_file():
        best = run_dir / "best.safetensors"
        stage.module.load_state_dict(load_tensors(best, f"delete {run_dir} to train this stage again", checksum=False))
    elif cfg.select not in ("final", "best_val"):
        raise ConfigError(f"select must be 'final' or 'best_val', got {cfg.select!r}")
    return history


def _tick(stage: StageState, bar: tqdm) -> None:
    """One optimizer step is done: advance the progress bar (and a per-step scheduler)."""
    if stage.scheduler_per_step:
        stage.scheduler.step()
    bar.update(1)


def _state(stage: StageState, history: list[dict[str, float]]) -> dict[str, Any]:
    return {
        "optimizer": stage.optimizer.state_dict(),
        "scheduler": stage.scheduler.state_dict(),
        "rng": rng_state(),
        "extra": stage.extra_state(),
        "history": json.dumps(history),
    }


def _save(stage: StageState, run_dir: Path, epoch: int, history: list[dict[str, float]], keep: int) -> None:
    save_checkpoint(run_dir, epoch, stage.module, _state(stage, history), stage.meta, keep=keep)


def _resume(stage: StageState, run_dir: Path) -> tuple[list[dict[str, float]], int]:
    path = latest_checkpoint(run_dir)
    if path is None:
        return [], 0
    expect = {k: v for k, v in stage.meta.items() if not isinstance(v, (dict, list))}
    ckpt = load_checkpoint(path, stage.module, expect=expect)
    state = ckpt.train_state
    stage.optimizer.load_state_dict(state["optimizer"])
    stage.scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    stage.load_extra_state(state["extra"])
    return json.loads(state["history"]), ckpt.epoch


def _keep_best(stage: StageState, run_dir: Path, history: list[dict[str, float]], metrics: dict[str, float]) -> None:
    score = metrics.get("val_score", -math.inf)
    best = max((h.get("val_score", -math.inf) for h in history), default=-math.inf)
    if score > best:
        atomic_save_tensors(stage.module.state_dict(), run_dir / "best.safetensors")
