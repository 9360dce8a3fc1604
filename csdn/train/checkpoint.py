"""Atomic, resumable checkpoints: safetensors for weights, JSON for metadata, weights-only state files.

A checkpoint is a directory ``<run_dir>/checkpoints/epoch_XXXX`` holding

- ``model.safetensors``: the trainable module's ``state_dict``;
- ``train_state.pt``: optimizer, scheduler and RNG states (tensors and plain Python only, so it loads
  with ``torch.load(weights_only=True)``);
- ``meta.json``: epoch, metrics so far, the config that produced the run, and the package version.

Each directory is written to a temporary name and renamed into place, and ``latest.json`` (the pointer
resume reads) is replaced atomically after it, so a run killed at any moment leaves the previous
checkpoint intact and never a half-written one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from csdn import __version__
from csdn.artifacts import atomic_save_tensors, atomic_write_json, load_tensors, temporary_dir, writing
from csdn.errors import CheckpointError

LATEST = "latest.json"


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns."""

    path: Path  # the checkpoint directory
    epoch: int  # the number of completed epochs
    meta: dict[str, Any]  # meta.json contents
    train_state: dict[str, Any]  # optimizer / scheduler / RNG / extra states


def rng_state() -> dict[str, Any]:
    """The global RNG states of Python, NumPy and torch (CPU and CUDA), in weights-only-safe types."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_lists(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(_to_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(obj: Any) -> Any:
    return [_to_lists(x) for x in obj] if isinstance(obj, tuple) else obj


def _to_tuples(obj: Any) -> Any:
    return tuple(_to_tuples(x) for x in obj) if isinstance(obj, list) else obj


def save_checkpoint(
    run_dir: Path,
    epoch: int,
    model: torch.nn.Module,
    train_state: dict[str, Any],
    meta: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``epoch`` atomically, point ``latest.json`` at it, keep the newest ``keep``.

    A write that fails for lack of space or permission raises :class:`~csdn.errors.StorageError` naming
    the file; the previous checkpoint stays the latest.
    """
    ckpt_root = Path(run_dir) / "checkpoints"
    final = ckpt_root / f"epoch_{epoch:04d}"
    with writing(final):
        ckpt_root.mkdir(parents=True, exist_ok=True)
        tmp = temporary_dir(ckpt_root, f".{final.name}.")
        try:
            atomic_save_tensors(model.state_dict(), tmp / "model.safetensors")
            with writing(final / "train_state.pt"):  # torch reports a short write as "unexpected pos"
                torch.save(train_state, tmp / "train_state.pt")
            full_meta = {**meta, "epoch": epoch, "version": __version__}
            (tmp / "meta.json").write_text(json.dumps(full_meta, indent=2, sort_keys=True, default=str))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    atomic_write_json(ckpt_root / LATEST, {"epoch": epoch, "dir": final.name})
    _prune(ckpt_root, keep)
    return final


def _prune(ckpt_root: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints; remove temporary directories of writes that were killed."""
    dirs = sorted(p for p in ckpt_root.glob("epoch_*") if p.is_dir())
    for old in dirs[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in ckpt_root.glob(".epoch_*"):  # one writer per run (the stage lock): none of these is live
        shutil.rmtree(stale, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The directory ``latest.json`` points at, or None when the run has no checkpoint yet."""
    pointer = Path(run_dir) / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text())["dir"]
    except (ValueError, KeyError, TypeError) as error:  # not JSON, not a mapping, or no "dir"
        raise CheckpointError(
            f'{pointer}: not a checkpoint pointer (expected {{"epoch": N, "dir": "epoch_NNNN"}}, '
            f"{type(error).__name__}: {error}); delete it to train this stage from scratch"
        ) from error
    if not isinstance(name, str) or Path(name).name != name:
        raise CheckpointError(f"{pointer}: 'dir' must name a checkpoint folder, got {name!r}; delete {pointer}")
    target = pointer.parent / name
    return target if target.is_dir() else None


# what a mismatch of a meta key most likely means, for the error message
_MISMATCH_HINTS = {
    "num_ids": "a checkpoint of another dataset or split (number of training identities)",
    "arch": "a checkpoint of another architecture",
    "dataset": "a checkpoint of another dataset",
    "stage": "a checkpoint of another training stage",
}


def load_checkpoint(path: Path, model: torch.nn.Module, expect: dict[str, Any] | None = None) -> Checkpoint:
    """Load weights into ``model`` and return the checkpoint's states.

    ``expect`` maps meta keys (e.g. ``"arch"``, ``"num_ids"``) to the values this run needs; a mismatch,
    a different package version, weights that do not fit ``model``, or files that cannot be read (also
    a ``train_state.pt`` that is not weights-only) raise :class:`CheckpointError` naming the difference.
    Nothing is loaded into ``model`` unless every check passes.
    """
    path = Path(path)
    fix = f"delete {path.parent.parent} to train this stage from scratch, or use the matching run"
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise CheckpointError(f"{path} is not a csdn checkpoint (no meta.json)")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{meta_file}: unreadable checkpoint metadata ({error}); {fix}") from error
    if meta.get("version") != __version__:
        raise CheckpointError(
            f"checkpoint {path} was written by csdn {meta.get('version')}, this is {__version__}; "
            "retrain or use the matching version"
        )
    for key, value in (expect or {}).items():
        if meta.get(key) != value:
            hint = _MISMATCH_HINTS.get(key, "a checkpoint of another run")
            raise CheckpointError(
                f"checkpoint {path} has {key}={meta.get(key)!r} but this run needs {key}={value!r} ({hint}); {fix}"
            )
    try:
        weights = load_tensors(path / "model.safetensors", fix, checksum=False)  # checked if it has a checksum
    except Exception as error:  # safetensors raises its own error types for truncated or foreign files
        raise CheckpointError(f"{path / 'model.safetensors'}: unreadable weights ({error}); {fix}") from error
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    mismatched = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"checkpoint {path} does not fit this model (another architecture?): "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatch {mismatched[:5]}"
        )
    try:
        train_state = torch.load(path / "train_state.pt", weights_only=True, map_location="cpu")
    except Exception as error:  # unpickling refused (not weights-only), truncated or missing file
        raise CheckpointError(
            f"{path / 'train_state.pt'}: cannot be loaded as a weights-only training state ({error}); {fix}"
        ) from error
    model.load_state_dict(weights)
    return Checkpoint(path=path, epoch=int(meta["epoch"]), meta=meta, train_state=train_state)
