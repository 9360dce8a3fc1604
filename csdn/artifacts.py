"""The artifact cache: a directory tree of computed things, safe under concurrent writers.

Every artifact is a directory ``<root>/<kind>/<key>`` produced by :func:`build_once`: the producer
writes into a private temporary directory next to the target, and the finished directory is renamed
into place under a file lock, so a reader never sees a half-written artifact and two processes that
need the same artifact compute it once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

if TYPE_CHECKING:
    from torch import Tensor

COMPLETE_MARKER = ".complete"
# Version of the code that produces trained artifacts (tiny CLIP, frozen-CLIP features, stages 1-3). It is
# part of every one of their cache keys: bump it whenever a change could alter a trained result, so that
# an existing cache never serves the old code's results. 2: shared stem in one call, MSEL, first-view HSE,
# cosine text-side options, stage-3 augmentation settings, training diagnostics.
TRAINING_CODE_VERSION = 2


def default_cache_root() -> Path:
    """``$CSDN_CACHE`` if set, else ``~/.cache/csdn`` (call this at the edge only: CLI, notebooks)."""
    env = os.environ.get("CSDN_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "csdn"


def config_key(payload: Any, length: int = 16) -> str:
    """A short stable hash of a JSON-serialisable payload (e.g. ``dataclasses.asdict(config)``)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()[:length]


def is_complete(path: Path) -> bool:
    """True when ``path`` is an artifact directory that finished writing."""
    return (path / COMPLETE_MARKER).is_file()


def build_once(target: Path, produce: Callable[[Path], None]) -> Path:
    """Return ``target``, calling ``produce(tmp_dir)`` to create it first if it is not complete.

    ``produce`` fills a fresh temporary directory; on success it is renamed to ``target``. On failure
    the temporary directory is removed and nothing is left at ``target``. Concurrent callers (threads
    or processes) wait on a lock file and reuse the finished artifact.
    """
    target = Path(target)
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if is_complete(target):
            return target
        if target.exists():  # an interrupted earlier attempt without the marker
            shutil.rmtree(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            produce(tmp)
            (tmp / COMPLETE_MARKER).write_text("ok\n")
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename (no half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary files a killed :func:`atomic_save_tensors` of ``path`` left behind.

    Only call it where one process writes ``path`` (a run under its lock): a live write's file goes too.
    """
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def atomic_save_tensors(tensors: dict[str, Tensor], path: Path) -> None:
    """Save ``tensors`` (moved to the CPU, made contiguous) as safetensors at ``path`` atomically.

    The file is written under a unique temporary name in the same folder (safe when several processes
    save the same artifact) and renamed into place; if the save fails, the temporary file is removed and
    ``path`` keeps what it held before.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
