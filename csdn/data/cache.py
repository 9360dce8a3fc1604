"""The uint8 image cache: every image decoded and resized once, then read memory-mapped every epoch.

An :class:`ImageCache` is an artifact directory ``<cache_dir>/images/<key>`` (made with
:func:`csdn.artifacts.build_once`, so concurrent builders compute it once and nobody sees it half
written) holding

* ``images.npy``: one ``N x H x W x 3`` uint8 array (RGB, squash-resized to exactly ``H x W`` with
  PIL's bilinear filter), opened with ``np.load(mmap_mode="r")`` so memory does not grow with N;
* ``records.json``: the records, in array order;
* ``meta.json``: size, count, the common root of the image paths and the key;
* ``.complete``: the checksums of ``images.npy`` and ``records.json``, checked whenever the cache is opened
  (a damaged file is a :class:`~csdn.errors.CacheError` naming it; a cache of a csdn without checksums is
  built again).

Images are decoded to 8-bit RGB: 16-bit grayscale (thermal cameras) is scaled, not clipped; a
floating-point image or a decompression bomb is a :class:`DatasetError` naming the file.

The key hashes each image file's *contents* (blake2b), its path relative to the images' common root,
its record fields and the size. A changed file therefore gives a new key (never a stale array), while
moving the whole dataset to another folder reuses the cache. Contents are hashed in a first, fast pass
(the key must be known before building), and hashed again as each file is decoded, so a file that
changes in between is reported instead of cached.

An unreadable or undecodable image stops the build with a :class:`DatasetError` naming it, unless the
caller asks to skip bad files (``skip_bad=True``): the cache then holds the readable images only and
lists the others, with the reason, in ``skipped.json`` (:attr:`ImageCache.skipped`). The key does not
depend on that choice: a later build that does not skip reports the images such a cache lists.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from csdn.artifacts import atomic_write_json, build_once, config_key, is_complete, verify_artifact
from csdn.data.protocol import DatasetError
from csdn.data.records import Record
from csdn.errors import CacheError

CACHE_FORMAT = 1  # bump when decoding or layout changes, so old caches are not reused
# How a file is resized into the cache: bilinear (the default), or LANCZOS as the release's test loader and
# AGW's SYSU-MM01 pre-processing script do (PIL's ``Image.ANTIALIAS``, renamed LANCZOS).
RESIZE_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "lanczos": Image.Resampling.LANCZOS}
DEFAULT_FILTER = "bilinear"  # caches built before the choice existed: their keys do not name a filter
ARRAY_FILE = "images.npy"
RECORDS_FILE = "records.json"
META_FILE = "meta.json"
SKIPPED_FILE = "skipped.json"
UNREADABLE = "unreadable"  # the digest recorded for a file that cannot be read (skip_bad builds only)
CHECKSUMMED = (ARRAY_FILE, RECORDS_FILE)  # checked each time a cache is opened (csdn.artifacts.verify_artifact)

T = TypeVar("T")
R = TypeVar("R")


class ImageCache:
    """Decoded images of a record list: ``cache[i]`` is the ``H x W x 3`` uint8 image of ``records[i]``."""

    def __init__(self, directory: str | Path, records: Sequence[Record] | None = None) -> None:
        """Open a finished cache directory; ``records`` defaults to the stored ``records.json``."""
        self.directory = Path(directory)
        if not is_complete(self.directory):
            raise FileNotFoundError(f"{self.directory}: not a finished image cache (build it with ImageCache.build)")
        self.array: np.ndarray = _open_array(self.directory / ARRAY_FILE)
        verify_artifact(self.directory)  # bit rot or a half-copied cache is an error, never a different result
        self.records: list[Record] = list(records) if records is not None else _load_records(self.directory)
        if len(self.records) != len(self.array):
            raise ValueError(f"{self.directory}: {len(self.array)} cached images but {len(self.records)} records")

    @classmethod
    def open(cls, directory: str | Path) -> ImageCache:
        """The cache stored in ``directory``, with the records stored alongside."""
        return cls(directory)

    @classmethod
    def build(
        cls,
        records: Sequence[Record],
        size: tuple[int, int],
        cache_dir: str | Path,
        workers: int = 0,
        progress: bool = True,
        skip_bad: bool = False,
        resize_filter: str = DEFAULT_FILTER,
    ) -> ImageCache:
        """Decode and resize ``records`` to ``size = (H, W)`` (``resize_filter``, a :data:`RESIZE_FILTERS`
        name) once under ``cache_dir/images/<key>``.

        Reuses the finished cache when the key matches. ``workers > 0`` hashes and decodes with that
        many threads (PIL releases the GIL while decoding). An unreadable or missing image raises a
        :class:`DatasetError` naming it, and nothing is left in the cache. With ``skip_bad=True`` such
        images are left out instead: the returned cache's ``records`` are the readable ones and
        :attr:`skipped` lists the others (also written to ``skipped.json`` in the cache directory).
        """
        records = list(records)
        height, width = _check_size(size)
        _check_filter(resize_filter)
        paths, digests, root, key = _content(records, (height, width), workers, progress, skip_bad, resize_filter)

        def produce(tmp: Path) -> None:
            skipped = _write_array(
                tmp / ARRAY_FILE, paths, digests, (height, width), workers, progress, skip_bad, resize_filter
            )
            bad = {entry["index"] for entry in skipped}
            kept = [r for i, r in enumerate(records) if i not in bad]
            atomic_write_json(tmp / RECORDS_FILE, [asdict(r) for r in kept])
            if skipped:
                atomic_write_json(tmp / SKIPPED_FILE, skipped)
            meta = {"format": CACHE_FORMAT, "size": [height, width], "count": len(kept), "root": root, "key": key}
            atomic_write_json(tmp / META_FILE, meta)

        directory = build_once(Path(cache_dir) / "images" / key, produce, checksummed=CHECKSUMMED)
        skipped = _load_skipped(directory)
        if skipped and not skip_bad:
            raise DatasetError(
                f"{skipped[0]['reason']} ({len(skipped)} unreadable image(s) in all, listed in "
                f"{directory / SKIPPED_FILE}; or build with skip_bad=True to leave them out)"
            )
        bad = {entry["index"] for entry in skipped}
        return cls(directory, [r for i, r in enumerate(records) if i not in bad])

    @property
    def key(self) -> str:
        """The content key this cache was built under (see :func:`content_key`)."""
        return json.loads((self.directory / META_FILE).read_text())["key"]

    @property
    def skipped(self) -> list[dict]:
        """Images a ``skip_bad`` build left out: ``{"index", "path", "reason"}`` (index into its records)."""
        return _load_skipped(self.directory)

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of every cached image."""
        return int(self.array.shape[1]), int(self.array.shape[2])

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index: int) -> np.ndarray:
        """The ``H x W x 3`` uint8 RGB image ``index`` (a read-only view; copy before modifying)."""
        return self.array[index]

    def __repr__(self) -> str:
        height, width = self.size
        return f"ImageCache({len(self)} images of {height}x{width} at {self.directory})"


def content_key(
    records: Sequence[Record],
    size: tuple[int, int],
    workers: int = 0,
    progress: bool = False,
    skip_bad: bool = False,
    resize_filter: str = DEFAULT_FILTER,
) -> str:
    """The key :meth:`ImageCache.build` gives ``records`` at ``size``, without building: a hash of each file's
    bytes, its path relative to the images' common root, its record fields, the size and the resize filter
    (so the same images under another root folder have the same key, and an image rewritten in place a new one)."""
    _check_filter(resize_filter)
    return _content(list(records), _check_size(size), workers, progress, skip_bad, resize_filter)[3]


def _check_filter(resize_filter: str) -> None:
    if resize_filter not in RESIZE_FILTERS:
        raise ValueError(f"resize_filter must be one of {tuple(RESIZE_FILTERS)}, got {resize_filter!r}")


def _content(
    records: list[Record],
    size: tuple[int, int],
    workers: int,
    progress: bool,
    skip_bad: bool,
    resize_filter: str = DEFAULT_FILTER,
) -> tuple[list[str], list[str], str, str]:
    """``(absolute paths, file digests, common root, key)`` of ``records`` at ``size``."""
    if not records:
        raise ValueError("cannot build an image cache from an empty record list")
    paths = [os.path.abspath(r.path) for r in records]
    digest = _digest_or_unreadable if skip_bad else _file_digest
    digests = list(_parallel_map(digest, paths, workers, "hash images" if progress else None))
    root = _common_root(paths)
    images = [[os.path.relpath(p, root), d, r.pid, r.cam, r.modality] for p, d, r in zip(paths, digests, records)]
    payload = {"format": CACHE_FORMAT, "size": list(size), "images": images}
    if resize_filter != DEFAULT_FILTER:  # the keys of bilinear caches predate the choice
        payload["resize_filter"] = resize_filter
    return paths, digests, root, config_key(payload)


def decode_image(path: str | Path, size: tuple[int, int], resize_filter: str = DEFAULT_FILTER) -> np.ndarray:
    """One image file decoded to RGB and squash-resized (``resize_filter``) to ``size = (H, W)``, as cached."""
    _check_filter(resize_filter)
    return _decode_bytes(_read_bytes(str(path)), str(path), _check_size(size), resize_filter)


def _write_array(
    target: Path,
    paths: list[str],
    digests: list[str],
    size: tuple[int, int],
    workers: int,
    progress: bool,
    skip_bad: bool = False,
    resize_filter: str = DEFAULT_FILTER,
) -> list[dict]:
    """Decode into ``target`` in order; returns the skipped images (``skip_bad``), which the array omits."""
    out = np.lib.format.open_memmap(target, mode="w+", dtype=np.uint8, shape=(len(paths), *size, 3))
    _reserve(target)

    def decode(item: tuple[str, str]) -> np.ndarray | str:
        """The image, or (``skip_bad``) the reason it cannot be read, which names the path."""
        path, digest = item
        try:
            data = _read_bytes(path)
        except DatasetError as error:
            if skip_bad:
                return str(error)
            raise
        if _digest(data) != digest:
            raise DatasetError(f"{path}: the file changed while the image cache was being built; build it again")
        try:
            return _decode_bytes(data, path, size, resize_filter)
        except DatasetError as error:
            if skip_bad:
                return str(error)
            raise

    skipped: list[dict] = []
    images = _parallel_map(decode, zip(paths, digests), workers, "decode images" if progress else None)
    for index, image in enumerate(images):
        if isinstance(image, str):
            skipped.append({"index": index, "path": paths[index], "reason": image})
        else:
            out[index - len(skipped)] = image
    out.flush()
    del out
    kept = len(paths) - len(skipped)
    if kept == 0:
        raise DatasetError(f"none of the {len(paths)} images could be read; the first: {skipped[0]['reason']}")
    if skipped:
        _truncate(target, kept)
    return skipped


def _truncate(target: Path, rows: int) -> None:
    """Keep the first ``rows`` images of the array file ``target`` (copied in chunks, then renamed)."""
    full = np.load(target, mmap_mode="r")
    part = target.with_name(f".{target.name}.part")
    out = np.lib.format.open_memmap(part, mode="w+", dtype=full.dtype, shape=(rows, *full.shape[1:]))
    _reserve(part)
    for start in range(0, rows, 1024):
        stop = min(rows, start + 1024)
        out[start:stop] = full[start:stop]
    out.flush()
    del out, full
    os.replace(part, target)


def _reserve(path: Path) -> None:
    """Allocate the disk space of the (sparse) array file ``path`` now.

    A full disk is then an ``OSError`` (ENOSPC) naming the file, instead of a SIGBUS that kills the process
    without a word when a page of the memory map is first written.
    """
    if not hasattr(os, "posix_fallocate"):  # not on macOS or Windows
        return
    with open(path, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
        except OSError as error:
            if error.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # a file system without it
                return
            raise OSError(error.errno, error.strerror, str(path)) from error


def _open_array(path: Path) -> np.ndarray:
    """The cached ``N x H x W x 3`` array, memory-mapped; a truncated or foreign file is a :class:`CacheError`."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as error:  # numpy: bad header (ValueError), file too short (OSError, ...)
        raise CacheError(
            f"{path}: unreadable image cache array (truncated or damaged: {error}); "
            f"delete the folder {path.parent} to rebuild it"
        ) from error
    if array.ndim != 4 or array.dtype != np.uint8:
        raise CacheError(f"{path}: not an image cache array ({array.dtype}, {array.shape}); delete {path.parent}")
    return array


def _read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise DatasetError(f"{path}: cannot read the image file ({error.strerror or error})") from error


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _file_digest(path: str) -> str:
    return _digest(_read_bytes(path))


def _digest_or_unreadable(path: str) -> str:
    try:
        return _file_digest(path)
    except DatasetError:
        return UNREADABLE


def _load_skipped(directory: Path) -> list[dict]:
    path = directory / SKIPPED_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def _decode_bytes(data: bytes, path: str, size: tuple[int, int], resize_filter: str = DEFAULT_FILTER) -> np.ndarray:
    height, width = size
    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = _eight_bit(image, path).convert("RGB").resize((width, height), RESIZE_FILTERS[resize_filter])
    except Image.DecompressionBombError as error:
        raise DatasetError(
            f"{path}: a damaged file or a decompression bomb, not decoded ({error}); replace or remove it, then rebuild"
        ) from error
    except (OSError, SyntaxError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
        raise DatasetError(f"{path}: not a readable image ({error}); replace or remove it, then rebuild") from error
    return np.asarray(rgb, dtype=np.uint8)


def _eight_bit(image: Image.Image, path: str) -> Image.Image:
    """``image`` with 8 bits per channel: 16-bit grayscale scaled (``value / 257``), not clipped to 255 as
    PIL's ``convert`` would; a floating-point image (no known range) is a :class:`DatasetError`."""
    if image.mode == "F":
        raise DatasetError(
            f"{path}: a floating-point image (PIL mode F), whose value range is unknown, so it cannot be read "
            "as 8 bits faithfully; save it with 8 or 16 bits per channel, or remove it"
        )
    if not (image.mode == "I" or image.mode.startswith("I;16")):
        return image  # 8-bit modes; PIL already reads 16-bit RGB by its high bytes
    values = np.asarray(image).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise DatasetError(
            f"{path}: a 32-bit integer image with values outside 0..65535, which cannot be read as 8 bits "
            "faithfully; save it with 8 or 16 bits per channel, or remove it"
        )
    return Image.fromarray(np.rint(values / 257).astype(np.uint8), "L")


def _parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int, desc: str | None) -> Iterator[R]:
    """``map(fn, items)`` in order, on ``workers`` threads in bounded chunks, with an optional progress bar."""
    items = list(items)
    bar = tqdm(total=len(items), desc=desc, disable=desc is None, leave=False)
    try:
        if workers <= 0:
            for item in items:
                yield fn(item)
                bar.update()
            return
        chunk = max(1, workers * 16)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(items), chunk):
                for result in pool.map(fn, items[start : start + chunk]):
                    yield result
                    bar.update()
    finally:
        bar.close()


def _common_root(paths: Sequence[str]) -> str:
    return os.path.commonpath([os.path.dirname(p) for p in paths])


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size):
        raise ValueError(f"size must be (height, width) of positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def _load_records(directory: Path) -> list[Record]:
    with open(directory / RECORDS_FILE) as handle:
        return [Record(**entry) for entry in json.load(handle)]
