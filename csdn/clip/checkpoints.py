"""CLIP weights files read into plain state dicts, and the errors of weights that are missing, unreadable or
do not fit.

A file is ``.safetensors``, or ``.pt``/``.pth``/``.bin`` read with ``weights_only=True``; OpenAI's TorchScript
archives are read with ``torch.jit.load``. ``module.`` prefixes and ``{"state_dict": ...}``/``{"model": ...}``
wrappers are unwrapped (:func:`read_state_dict`).
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from csdn.errors import ClipWeightsError

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
_OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")


class CheckpointMismatchError(ClipWeightsError, ValueError):
    """A checkpoint does not fit the architecture it is loaded into."""


class ClipWeightsNotFound(ClipWeightsError, FileNotFoundError):
    """A CLIP weights file or ``local-dir:`` folder (or a file it needs) does not exist."""


class ClipWeightsInvalid(ClipWeightsError, ValueError):
    """A CLIP weights file, ``local-dir:`` config or pretrained tag that cannot be read or is unknown."""


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def folder_given(path: Path) -> str:
    """The error message for a folder given where a weights file belongs."""
    return (
        f"CLIP weights: {path} is a folder, not a weights file; for an open_clip folder (open_clip_config.json "
        f"and weights) write local-dir:{path} (csdn train --clip local-dir:{path}), else give the weights file"
    )


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], bool]:
    """Read a weights file into a plain state dict; also say whether it carries OpenAI's markers.

    Unwraps ``{"state_dict": ...}``, ``{"model": ...}``, ``{"model_state_dict": ...}`` and strips
    ``module.`` / ``_orig_mod.`` prefixes (DataParallel, torch.compile).
    """
    path = Path(path)
    if path.is_dir():
        raise ClipWeightsInvalid(folder_given(path))
    if not path.is_file():
        raise ClipWeightsNotFound(f"CLIP weights file not found: {path}")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ClipWeightsInvalid(f"{path}: expected a {'/'.join(WEIGHT_SUFFIXES)} weights file")
    torchscript = False
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(str(path), device="cpu")
        elif _is_torchscript_archive(path):
            torchscript = True
            with warnings.catch_warnings():  # torch.jit.load is deprecated, yet OpenAI's releases need it
                warnings.simplefilter("ignore", FutureWarning)
                raw = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ClipWeightsInvalid(f"{path}: could not read CLIP weights ({type(error).__name__}: {error})") from error
    state = _unwrap(raw, path)
    openai_marker = torchscript or any(key in state for key in _OPENAI_META_KEYS)
    state = {k: v for k, v in state.items() if k not in _OPENAI_META_KEYS}
    return state, openai_marker


def _unwrap(raw: Any, path: Path) -> dict[str, torch.Tensor]:
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(raw, dict) and isinstance(raw.get(wrapper), dict):
            raw = raw[wrapper]
            break
    if not isinstance(raw, dict) or not raw:
        raise ClipWeightsInvalid(f"{path}: expected a state dict (name -> tensor), got {type(raw).__name__}")
    state = {}
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            raise ClipWeightsInvalid(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix) :]
        state[key] = value
    return state


def describe_state_dict(state: dict[str, torch.Tensor]) -> str:
    """A one-line guess of the architecture a CLIP state dict belongs to (for error messages)."""
    if "visual.conv1.weight" in state and "visual.proj" in state:
        conv = state["visual.conv1.weight"]
        layers = len({k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")})
        return f"a ViT CLIP (width {conv.shape[0]}, patch {conv.shape[-1]}, {layers} layers)"
    if "visual.attnpool.c_proj.weight" in state:
        blocks = [len({k.split(".")[2] for k in state if k.startswith(f"visual.layer{b}.")}) for b in range(1, 5)]
        return f"a ModifiedResNet CLIP (layers {blocks}, embed dim {state['visual.attnpool.c_proj.weight'].shape[0]})"
    return f"not an open_clip CLIP state dict (first keys: {list(state)[:3]})"
