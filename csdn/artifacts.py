"""The artifact cache: a directory tree of computed things, safe under concurrent writers.

Every artifact is a directory ``<root>/<kind>/<key>`` produced by :func:`build_once`: the producer
writes into a private temporary directory next to the target, and the finished directory is renamed
into place under a file lock, so a reader never sees a half-written artifact and two processes that
need the same artifact compute it once. A finished artifact is read without a lock (a fully built cache
works on a read-only mount), and what is written gets the permissions of the process umask, like any
file the user creates (a shared cache stays shared).

A write that fails for a reason the user can fix (disk full, read-only or not permitted, a file where a
folder is needed) raises :class:`~csdn.errors.StorageError` naming the path and the fix.

What the cache serves carries a checksum (blake2b) of its content, written when it is built and checked
when it is read, so bit rot or a half-copied cache is one :class:`~csdn.errors.CacheError` naming the file
and what to delete, never a silently different result: an artifact directory lists the digests of the
files its builder names (``checksummed``) in its completion marker; a safetensors file holds the digest of
its tensors in its own metadata (:func:`atomic_save_tensors`, :func:`load_tensors`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from csdn.errors import CacheError, StorageError

if TYPE_CHECKING:
    from torch import Tensor

COMPLETE_MARKER = ".complete"
CHECKSUM_KEY = "csdn_blake2b"  # safetensors metadata entry: the digest of the file's tensors (tensors_digest)
# Version of the code that produces trained artifacts (tiny CLIP, frozen-CLIP features, stages 1-3). It is
# part of every one of their cache keys: bump it whenever a change could alter a trained result, so that
# an existing cache never serves the old code's results. 2: shared stem in one call, MSEL, first-view HSE,
# cosine text-side options, stage-3 augmentation settings, training diagnostics. 3: the compute path (bf16
# autocast on CPUs that have it, channels-last images) and the ResNet attention pool attending from its mean
# token only; the resolved path joins the keys too. 4: on the CPU channels-last path, BatchNorms of at most 8
# channels compute on contiguous tensors, GeM's backward reuses the forward's power and the ResNet attention
# pool pools the tokens before projecting them (all three change rounding only).
TRAINING_CODE_VERSION = 4


# What a failed write means, by errno, and what the user can do about it.
_WRITE_FAILURES = {
    errno.ENOSPC: "no space left on the disk; free some space or use a folder on another disk",
    errno.EDQUOT: "the disk quota is exhausted; free some space or use a folder on another disk",
    errno.EROFS: "the file system is read-only; use a writable folder",
    errno.EACCES: "permission denied; use a writable folder or fix the folder's permissions",
    errno.EPERM: "operation not permitted; use a writable folder or fix the folder's permissions",
    errno.ENOTDIR: "a file is in the way where a folder is needed; remove it or choose another folder",
    errno.EEXIST: "a file is in the way where a folder is needed; remove it or choose another folder",
    errno.EISDIR: "a folder is in the way where a file is needed; remove it or choose another folder",
}
# Messages of libraries that report a failed write in their own words (torch's zip writer, safetensors).
_WRITE_FAILURE_TEXTS = {
    "unexpected pos": errno.ENOSPC,  # torch.save's inline_container.cc when a write comes up short
    "No space left on device": errno.ENOSPC,
    "os error 28": errno.ENOSPC,
    "Read-only file system": errno.EROFS,
    "Permission denied": errno.EACCES,
}


def storage_error(error: BaseException, path: str | Path) -> StorageError | None:
    """The :class:`StorageError` that ``error`` (raised writing ``path``) means, or None when it is no such failure."""
    if isinstance(error, StorageError):
        return error
    from safetensors import SafetensorError

    code = error.errno if isinstance(error, OSError) else None
    if code is None and isinstance(error, (RuntimeError, OSError, SafetensorError)):
        code = next((c for text, c in _WRITE_FAILURE_TEXTS.items() if text in str(error)), None)
    if code not in _WRITE_FAILURES:
        return None
    where = getattr(error, "filename", None) or path
    return _storage_error(code, f"cannot write {where}: {_WRITE_FAILURES[code]}")


def _storage_error(code: int, message: str) -> StorageError:
    """A :class:`StorageError` whose text is ``message`` alone and whose ``errno`` is ``code``."""
    error = StorageError(message)
    error.errno = code
    return error


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn a failed write of ``path`` the user can fix into :class:`StorageError`; anything else propagates."""
    try:
        yield
    except Exception as error:  # re-raised unchanged unless storage_error recognises it
        converted = storage_error(error, path)
        if converted is None or converted is error:
            raise
        raise converted from error


def process_umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temporary_file(folder: Path, prefix: str, suffix: str = "") -> tuple[int, str]:
    """``tempfile.mkstemp`` in ``folder`` with the permissions of an ordinary file (0666 less the umask)."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    os.chmod(tmp, 0o666 & ~process_umask())
    return fd, tmp


def temporary_dir(folder: Path, prefix: str) -> Path:
    """``tempfile.mkdtemp`` in ``folder`` with the permissions of an ordinary folder (0777 less the umask)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=folder))
    os.chmod(tmp, 0o777 & ~process_umask())
    return tmp


def check_folder(folder: str | Path, what: str, writable: bool = True) -> None:
    """Fail early, with :class:`StorageError`, when ``folder`` cannot be used as ``what``.

    ``folder`` need not exist; its nearest existing ancestor must be a folder and (``writable``) accept a
    new file, which is created and removed again. Nothing else is created.
    """
    folder = Path(folder).expanduser().absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise _storage_error(errno.ENOTDIR, f"{what} {folder}: {existing} is a file, not a folder; choose a folder")
    if not writable:
        return
    try:
        fd, probe = tempfile.mkstemp(prefix=".csdn-write-check.", dir=existing)
    except OSError as error:
        converted = storage_error(error, existing)
        if converted is None:
            raise
        raise _storage_error(converted.errno, f"{what} {folder}: {_WRITE_FAILURES[converted.errno]}") from error
    os.close(fd)
    os.unlink(probe)


def default_cache_root() -> Path:
    """``$CSDN_CACHE`` if set, else ``~/.cache/csdn`` (call this at the edge only: CLI, notebooks)."""
    env = os.environ.get("CSDN_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "csdn"


def key_fields(cfg: Any) -> dict[str, Any]:
    """``dataclasses.asdict(cfg)`` less the fields added after caches existed, where they hold the value every
    earlier run had (the class's ``KEY_LEGACY`` map): a new switch left at its old behaviour keeps the keys."""
    legacy = getattr(type(cfg), "KEY_LEGACY", {})
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in legacy or legacy[k] != v}


def config_key(payload: Any, length: int = 16) -> str:
    """A short stable hash of a JSON-serialisable payload (e.g. ``dataclasses.asdict(config)``)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()[:length]


def is_complete(path: Path) -> bool:
    """True when ``path`` is an artifact directory that finished writing."""
    return (path / COMPLETE_MARKER).is_file()


def file_digest(path: str | Path) -> str:
    """blake2b (16 bytes, hex) of a file's bytes, read in chunks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def stored_checksums(target: Path) -> dict[str, str] | None:
    """The file digests a finished artifact's marker lists; None for a marker of a csdn without checksums."""
    text = (Path(target) / COMPLETE_MARKER).read_text()
    if text.strip() == "ok":  # the marker csdn wrote before checksums
        return None
    try:
        return dict(json.loads(text)["blake2b"])
    except (ValueError, KeyError, TypeError) as error:
        raise CacheError(
            f"{Path(target) / COMPLETE_MARKER}: not a completion marker of csdn ({error}); delete the folder "
            f"{target} to build it again"
        ) from error


def verify_artifact(target: Path) -> None:
    """:class:`CacheError` naming the first file of ``target`` whose content no longer matches its checksum."""
    target = Path(target)
    for name, expected in (stored_checksums(target) or {}).items():
        path = target / name
        try:
            found = file_digest(path)
        except OSError as error:
            found = f"unreadable: {error.strerror or error}"
        if found != expected:
            raise CacheError(
                f"{path}: damaged (its content no longer matches the checksum written when it was built: {found} "
                f"instead of {expected}); delete the folder {target} to build it again"
            )


def build_once(target: Path, produce: Callable[[Path], None], checksummed: tuple[str, ...] = ()) -> Path:
    """Return ``target``, calling ``produce(tmp_dir)`` to create it first if it is not complete.

    ``produce`` fills a fresh temporary directory; on success the digests of its files ``checksummed``
    go into the completion marker (see :func:`verify_artifact`) and it is renamed to ``target``. On
    failure the temporary directory is removed and nothing is left at ``target``. Concurrent callers
    (threads or processes) wait on a lock file and reuse the finished artifact. A finished artifact whose
    marker predates checksums (``checksummed`` given) is built again, with a note saying why.
    """
    target = Path(target)
    if _usable(target, checksummed):  # read without a lock: a finished cache is usable on a read-only mount
        return target
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):
            if _usable(target, checksummed):
                return target
            if is_complete(target):
                print(f"note: {target} was built by a csdn without checksums; building it again", file=sys.stderr)
            if target.exists():  # an interrupted earlier attempt without the marker, or one without checksums
                shutil.rmtree(target)
            tmp = temporary_dir(target.parent, f".{target.name}.")
            try:
                produce(tmp)
                digests = {name: file_digest(tmp / name) for name in checksummed}
                (tmp / COMPLETE_MARKER).write_text(json.dumps({"blake2b": digests}, indent=2, sort_keys=True) + "\n")
                os.replace(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    return target


def _usable(target: Path, checksummed: tuple[str, ...]) -> bool:
    """Finished, and (when files are to be checksummed) written by a csdn that checksums them."""
    return is_complete(target) and (not checksummed or stored_checksums(target) is not None)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename (no half-written file)."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temporary_file(path.parent, f".{path.name}.")
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


def tensors_digest(tensors: dict[str, Tensor]) -> str:
    """blake2b (16 bytes, hex) of named tensors: each name, dtype, shape and bytes, in name order."""
    import torch

    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def stored_tensors_digest(path: str | Path) -> str | None:
    """The digest a safetensors file written by :func:`atomic_save_tensors` holds; None for any other file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get(CHECKSUM_KEY)
    except (SafetensorError, OSError):  # unreadable: load_tensors says so
        return None


def lacks_checksum(path: str | Path) -> bool:
    """Whether ``path`` is a readable safetensors file without a checksum (one an older csdn wrote)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return CHECKSUM_KEY not in (handle.metadata() or {})
    except (SafetensorError, OSError):  # missing or unreadable: not a file to upgrade
        return False


def load_tensors(path: str | Path, fix: str, checksum: bool = True) -> dict[str, Tensor]:
    """The tensors of the safetensors file ``path``, checked against the checksum it holds.

    A truncated, foreign or damaged file is a :class:`CacheError` ending in ``fix``; so is one without a
    checksum unless ``checksum=False`` (a file csdn did not write, checked when it carries one).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:  # truncated or foreign (SafetensorError), missing (OSError)
        raise CacheError(f"{path}: unreadable (truncated or not a safetensors file: {error}); {fix}") from error
    expected = stored_tensors_digest(path)
    if expected is None and checksum:
        raise CacheError(f"{path}: no checksum (written by an older csdn or another program); {fix}")
    if expected is not None and tensors_digest(tensors) != expected:
        raise CacheError(f"{path}: damaged (its tensors no longer match the checksum written with them); {fix}")
    return tensors


def remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary files a killed :func:`atomic_save_tensors` of ``path`` left behind.

    Only call it where one process writes ``path`` (a run under its lock): a live write's file goes too.
    """
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def atomic_save_tensors(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Save ``tensors`` (moved to the CPU, made contiguous) as safetensors at ``path`` atomically, with the
    string ``metadata`` in the file's header.

    The file holds the checksum of its tensors (:func:`load_tensors` checks it). It is written under a
    unique temporary name in the same folder (safe when several processes save the same artifact) and renamed
    into place; if the save fails, the temporary file is removed and ``path`` keeps what it held before.
    """
    from safetensors.torch import save_file

    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temporary_file(path.parent, f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
            save_file(tensors, tmp, metadata={**(metadata or {}), CHECKSUM_KEY: tensors_digest(tensors)})
            os.chmod(tmp, 0o666 & ~process_umask())  # safetensors writes a file of its own (mode 0600)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
