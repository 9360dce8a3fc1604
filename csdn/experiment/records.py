"""A stage's files: the finished run folder (``final.safetensors`` + ``done.json``) and weights files.

A finished stage's folder holds its weights (:data:`FINAL`, with a checksum) and its record (:data:`DONE`: the
per-epoch history, the config key, the world size). A stage-3 weights file also records, in its safetensors
metadata, the settings its weights need (:func:`stage3_weights_settings`), so a file evaluated or embedded on its
own gets the preprocessing it was trained with.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import safe_open
from torch import Tensor, nn

from csdn.artifacts import lacks_checksum, load_tensors
from csdn.clip.loader import state_dict_differences
from csdn.config import ExperimentConfig
from csdn.errors import CacheError, CheckpointError, ConfigError
from csdn.overrides import override, setting

FINAL = "final.safetensors"
DONE = "done.json"


def is_finished(run_dir: Path) -> bool:
    """A stage's run folder is done, its final.safetensors with a checksum (or unreadable: said when loaded)."""
    return (run_dir / DONE).is_file() and not lacks_checksum(run_dir / FINAL)


def read_history(done: Path, fix: str) -> list[dict[str, float]]:
    """The per-epoch history a finished stage's ``done.json`` holds (garbage there is a :class:`CacheError`)."""
    try:
        return json.loads(done.read_text())["history"]
    except (ValueError, KeyError, TypeError) as error:  # not JSON (or not UTF-8), not a mapping, no "history"
        raise CacheError(f"{done}: not a finished stage's record ({type(error).__name__}: {error}); {fix}") from error


def file_digest(path: Path) -> str:
    """blake2b of a file's bytes, read in chunks (CLIP weights files are hundreds of MB)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def read_done(run_dir: Path) -> dict[str, Any]:
    """The ``done.json`` of a finished run folder (history, config_key, world_size)."""
    path = Path(run_dir) / DONE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {path} ({error}): not a finished run folder of csdn") from error


def check_run_folder(run_dir: Path) -> None:
    """:class:`CheckpointError` unless ``run_dir`` is a finished stage-3 run folder (``done.json``)."""
    run_dir = Path(run_dir)
    if run_dir.is_symlink() and not run_dir.exists():  # a run folder's stages/stage3 after the cache went
        raise CheckpointError(
            f"{run_dir}: a link to {os.readlink(run_dir)}, which no longer exists (the artifact cache it "
            "pointed into was deleted or moved); train that stage again, or pass its folder or weights "
            "file where they are now"
        )
    if not (run_dir / DONE).is_file():
        raise CheckpointError(
            f"{run_dir} is not a finished stage-3 run folder (no {DONE}); pass a folder "
            "$CSDN_CACHE/runs/stage3-<key> whose training finished, or its weights file with --weights"
        )


def check_weights_file(path: Path) -> None:
    """:class:`CheckpointError` unless ``path`` is an existing ``.safetensors`` file."""
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.suffix != ".safetensors":
        raise CheckpointError(
            f"{path} is not a .safetensors file: evaluate this package's final.safetensors / best.safetensors, "
            "or convert the authors' release checkpoint first (csdn convert-release IN.pth OUT.safetensors)"
        )


WEIGHTS_SETTINGS = "csdn.settings"  # safetensors metadata: JSON of the config settings the weights need
STAGE3_RECORDED = ("data.height", "data.width", "data.resize_filter", "clip.input_stats", "model.release_stem")


def stage3_weights_settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """What a stage-3 ``final.safetensors`` records it needs (:data:`STAGE3_RECORDED`): the input size and
    preprocessing it was trained with, so ``csdn embed`` / ``eval --weights`` of the file apply them. Metadata
    only: the cache keys are unchanged."""
    return {dotted: setting(cfg, dotted) for dotted in STAGE3_RECORDED}


def weights_settings(path: str | Path) -> dict[str, Any]:
    """The settings a weights file records it needs (dotted config paths -> values; e.g. a converted release
    checkpoint's stem and preprocessing), ``{}`` when it records none."""
    path = Path(path)
    check_weights_file(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            recorded = (handle.metadata() or {}).get(WEIGHTS_SETTINGS)
        return json.loads(recorded) if recorded else {}
    except Exception as error:  # safetensors' own error types for a damaged file, or garbage metadata
        raise CheckpointError(f"cannot read weights file {path}: {error}") from error


def config_for_weights(
    cfg: ExperimentConfig, path: str | Path, given: Mapping[str, Any] | None = None
) -> tuple[ExperimentConfig, dict[str, Any], dict[str, Any]]:
    """``cfg`` with the settings the weights file ``path`` records it needs, and ``(recorded, changes)``: all it
    records, and those that changed ``cfg`` (the rest it had already). A setting of ``given`` (what the user
    set) that contradicts the file is a :class:`ConfigError`."""
    recorded = weights_settings(path)
    for key, value in recorded.items():
        if key in (given or {}) and setting(cfg, key) != value:
            raise ConfigError(
                f"{path} records that its weights need {key}={json.dumps(value)} (the preprocessing they were "
                f"trained with), but the command sets {key}={json.dumps(setting(cfg, key))}: leave that setting out"
            )
    changes = {key: value for key, value in recorded.items() if setting(cfg, key) != value}
    return (override(cfg, changes) if changes else cfg), recorded, changes


def load_weights(module: nn.Module, path: Path) -> None:
    """Load the safetensors file ``path`` into ``module`` strictly; :class:`CheckpointError` naming it otherwise."""
    path = Path(path)
    check_weights_file(path)
    try:
        state = load_tensors(path, "replace it with an intact copy", checksum=False)  # checked if it has a checksum
    except CacheError as error:
        raise CheckpointError(f"cannot read weights file {error}") from error
    problems = state_dict_mismatch(module.state_dict(), state)
    if problems:
        raise CheckpointError(
            f"weights file {path} does not fit the network of this config ({problems}); was it trained with "
            "another profile, architecture, variant or number of identities?"
        )
    module.load_state_dict(state)


def state_dict_mismatch(expected: dict[str, Tensor], found: dict[str, Tensor], show: int = 3) -> str:
    """What keeps ``found`` from loading strictly where ``expected`` is the target's state_dict ("" if nothing)."""

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:show]) + (f", ... ({len(keys)} in all)" if len(keys) > show else "")

    missing, unexpected, differ = state_dict_differences(expected, found)
    shapes = [f"{k} {tuple(found[k].shape)} instead of {tuple(expected[k].shape)}" for k in differ]
    parts = [
        f"missing {some(missing)}" if missing else "",
        f"unexpected {some(unexpected)}" if unexpected else "",
        f"shape {some(shapes)}" if shapes else "",
    ]
    return "; ".join(p for p in parts if p)
