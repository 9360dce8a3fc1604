"""How an :class:`~csdn.experiment.Experiment` runs a stage: loaded from the artifact cache when finished,
otherwise trained under a file lock into its run folder (checkpointed every epoch, so a killed run resumes),
its weights and record written atomically by rank 0; a dry run trains in a scratch folder, and
``trained_only`` refuses to train.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from filelock import FileLock
from torch import nn

from csdn.artifacts import atomic_save_tensors, atomic_write_json, load_tensors, remove_stale_temporaries, writing
from csdn.config import ExperimentConfig
from csdn.dryrun import is_dry_run
from csdn.errors import CheckpointError
from csdn.experiment.records import (
    DONE,
    FINAL,
    WEIGHTS_SETTINGS,
    is_finished,
    load_weights,
    read_done,
    read_history,
    stage3_weights_settings,
)
from csdn.runtime import seed_everything
from csdn.train.distributed import DistContext
from csdn.train.loop import EpochObserver, LoopConfig


class NotTrainedError(CheckpointError):
    """A trained artifact is not in the cache and the :class:`Experiment` may not train (``trained_only``)."""


class RunObserver(Protocol):
    """What an :class:`Experiment` tells its ``logger`` about the stages (on rank 0)."""

    def stage(self, name: str) -> EpochObserver:
        """The observer of stage ``name``'s training loop (its start or resume epoch, each epoch)."""

    def stage_done(self, name: str, run_dir: Path, history: list[dict[str, float]], loaded: bool) -> None:
        """Stage ``name`` is in ``run_dir`` with ``history``; ``loaded``: it was already in the cache."""


class StageCache:
    """The stage-running half of an :class:`Experiment` (it sets the attributes annotated here)."""

    cfg: ExperimentConfig
    cache_root: Path
    dist: DistContext
    progress: bool
    logger: RunObserver | None
    trained_only: bool
    num_ids: int

    def run_dir(self, name: str, key: str) -> Path:
        """The cache's run folder of stage ``name`` with cache key ``key``."""
        return self.cache_root / "runs" / f"{name}-{key}"

    def _run(self, name: str, key: str, module: nn.Module, train) -> nn.Module:
        """Load stage ``name``'s cached result into ``module``, or train it (under a lock) and cache it.

        A finished stage is read without a lock or any write (a warm cache works on a read-only mount).
        """
        run_dir = self.run_dir(name, key)
        if self.trained_only:  # never trains: a stage missing from the cache is refused
            self._require_done(name, run_dir)
            loaded = True
        elif is_dry_run(self.cfg):  # trained in a scratch folder, never cached as finished
            return self._dry_run_stage(name, key, module, train)
        else:
            loaded = self.dist.agree(is_finished(run_dir))
            if not loaded:
                self._train_stage(run_dir, key, module, train)
        fix = f"delete the folder {run_dir} to train this stage again"
        module.load_state_dict(load_tensors(run_dir / FINAL, fix))
        self.histories[name] = read_history(run_dir / DONE, fix)
        if self.logger is not None:
            self.logger.stage_done(name, run_dir, self.histories[name], loaded)
        return module.to(self.device)

    def _dry_run_stage(self, name: str, key: str, module: nn.Module, train) -> nn.Module:
        """Train stage ``name`` of a dry run (:mod:`csdn.dryrun`) from scratch in ``<cache>/dry-runs/``: its
        checkpoints stay there for a look, but no ``done.json`` is written and nothing reads it back."""
        run_dir = self.cache_root / "dry-runs" / f"{name}-{key}"
        with writing(run_dir):
            if self.dist.is_main:
                shutil.rmtree(run_dir, ignore_errors=True)
            self.dist.barrier()
            seed_everything(self.cfg.seed)
            self.histories[name] = train(run_dir)
        if self.logger is not None:
            self.logger.stage_done(name, run_dir, self.histories[name], False)
        return module.to(self.device)

    def _require_done(self, name: str, run_dir: Path) -> None:
        """:class:`NotTrainedError` unless ``run_dir`` holds a finished run of stage ``name``."""
        if not (run_dir / DONE).is_file():
            raise NotTrainedError(
                f"{name} of this config is not trained: no finished run {run_dir} in the cache "
                f"{self.cache_root} (training does not run here: train it first, or evaluate a weights file)"
            )

    def _load_run(self, name: str, run_dir: Path, module: nn.Module) -> nn.Module:
        """Stage ``name``'s finished result from ``run_dir`` into ``module``; :class:`NotTrainedError` if absent."""
        self._require_done(name, run_dir)
        load_weights(module, run_dir / FINAL)
        self.histories[name] = read_done(run_dir)["history"]
        if self.logger is not None:
            self.logger.stage_done(name, run_dir, self.histories[name], True)
        return module.to(self.device)

    def _train_stage(self, run_dir: Path, key: str, module: nn.Module, train) -> None:
        """Train a stage into ``run_dir`` under its lock (unless another process finished it meanwhile)."""
        d = self.dist  # several ranks: all train, rank 0 holds the lock and writes, all load the result
        lock = FileLock(str(run_dir) + ".lock") if d.is_main else contextlib.nullcontext()
        with writing(run_dir):  # a read-only or full cache: one clear error naming the folder
            run_dir.mkdir(parents=True, exist_ok=True)
            with lock:
                if not d.agree(is_finished(run_dir)):
                    if d.is_main and (run_dir / DONE).is_file():  # final.safetensors without a checksum
                        print(
                            f"note: {run_dir / FINAL} was written by a csdn without checksums; training the stage "
                            "again (from its last checkpoint, where one is kept)",
                            file=sys.stderr,
                        )
                        (run_dir / DONE).unlink()
                    seed_everything(self.cfg.seed)
                    history = train(run_dir)
                    if d.is_main:
                        remove_stale_temporaries(run_dir / FINAL)  # under the lock: no other writer is live
                        atomic_save_tensors(
                            module.state_dict(), run_dir / FINAL, metadata=self._final_metadata(run_dir)
                        )
                        record = {"history": history, "config_key": key, "world_size": d.world_size}
                        atomic_write_json(run_dir / DONE, record)
                d.barrier()

    def _final_metadata(self, run_dir: Path) -> dict[str, str] | None:
        """A stage-3 ``final.safetensors`` records the settings its weights need (:func:`stage3_weights_settings`)."""
        if not run_dir.name.startswith("stage3-"):
            return None
        return {WEIGHTS_SETTINGS: json.dumps(stage3_weights_settings(self.cfg))}

    @cached_property
    def histories(self) -> dict[str, list[dict[str, float]]]:
        """Per-epoch metrics of each stage that ran or was loaded."""
        return {}

    def _loop(self, name: str, epochs: int, **kw: Any) -> LoopConfig:
        """The loop settings of stage ``name``, observed by the ``logger`` when there is one."""
        observer = self.logger.stage(name) if self.logger is not None else None
        return LoopConfig(epochs=epochs, progress=self.progress, observer=observer, **kw)

    def _meta(self, stage: str, key: str) -> dict[str, Any]:
        """What a stage's checkpoints must match to be resumed (checked in this order, most telling first)."""
        return {
            "arch": self.cfg.clip.arch,
            "dataset": self.cfg.data.dataset,
            "num_ids": self.num_ids,
            "stage": stage,
            "key": key,
        }
