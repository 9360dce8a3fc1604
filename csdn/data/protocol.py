"""The dataset contract: what every reader provides, and what the readers share.

A reader (:class:`Reader`) is built from a dataset root and yields:

- ``train``: the training :class:`~csdn.data.records.Record` list;
- ``validation()``: an :class:`EvalSplit` on identities held out of training, or ``None``;
- ``test_splits(options)``: its test protocols, each an :class:`EvalSplit` (a name, the queries, the
  gallery of each trial, and the :class:`GalleryRules` its metrics apply).

Everything downstream (the experiment, the metrics, the statistics, the inspector, the gap analysis)
uses only this contract; the registry (:mod:`csdn.data.registry`) maps dataset names to readers.
Every reader reports malformed input as a :class:`DatasetError` that names the file or folder, what
was expected and how to fix it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple, Protocol, get_args

import torch

from csdn.data.records import INFRARED, VISIBLE, Record
from csdn.errors import DataError

Direction = Literal["visible->infrared", "infrared->visible"]
DIRECTIONS: tuple[Direction, ...] = get_args(Direction)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
_ID_SEPARATORS = re.compile(r"[,\s]+")  # between the ids of a split file


class DatasetError(DataError):
    """A dataset on disk does not have the expected layout or content."""


@dataclass(frozen=True)
class GalleryRules:
    """What a protocol removes from each query's ranked gallery, and how its CMC counts identities.

    The rules of the community code: SYSU-MM01 (AGW ``eval_sysu``) ignores every camera-2 image for a
    camera-3 query and deduplicates identities in the CMC; LLCM (DEEN ``eval_llcm``) ignores the
    query's own identity seen by its own camera number, and deduplicates; RegDB removes nothing.
    """

    ignored_cameras: tuple[tuple[int, int], ...] = ()  # (query cam, gallery cam): ignore every such image
    ignore_same_camera_matches: bool = False  # a query ignores its own identity seen by its own camera
    dedup_ids: bool = False  # CMC counts each identity's first image only (mAP/mINP use every positive)

    def removed(
        self, q_pid: torch.Tensor, q_cam: torch.Tensor, g_pid: torch.Tensor, g_cam: torch.Tensor
    ) -> torch.Tensor:
        """Boolean mask of the gallery entries removed for the queries (arguments broadcast together)."""
        terms = [(q_cam == query_cam) & (g_cam == gallery_cam) for query_cam, gallery_cam in self.ignored_cameras]
        if self.ignore_same_camera_matches:
            terms.append((q_pid == g_pid) & (q_cam == g_cam))
        shape = torch.broadcast_shapes(q_pid.shape, q_cam.shape, g_pid.shape, g_cam.shape)
        out = terms[0].expand(shape) if terms else torch.zeros(shape, dtype=torch.bool)
        for term in terms[1:]:
            out = out | term
        return out

    @property
    def removes_nothing(self) -> bool:
        return not self.ignored_cameras and not self.ignore_same_camera_matches

    def removed_between(self, query: Sequence[Record], gallery: Sequence[Record]) -> torch.Tensor:
        """``(len(query), len(gallery))`` boolean mask of the gallery entries removed for each query."""
        q_pid, q_cam = (torch.tensor([getattr(r, f) for r in query], dtype=torch.long) for f in ("pid", "cam"))
        g_pid, g_cam = (torch.tensor([getattr(r, f) for r in gallery], dtype=torch.long) for f in ("pid", "cam"))
        return self.removed(q_pid[:, None], q_cam[:, None], g_pid[None, :], g_cam[None, :])

    def kept(self, query: Record, gallery: Sequence[Record]) -> torch.Tensor:
        """Boolean mask of the ``gallery`` entries ranked for one ``query``."""
        return ~self.removed_between([query], gallery)[0]


@dataclass(frozen=True, eq=False)
class EvalSplit:
    """One evaluation protocol of a dataset: fixed queries against a gallery per trial."""

    name: str  # short key of its results, e.g. "all 1-shot" or "infrared->visible"
    title: str  # protocol name in reports, e.g. "SYSU-MM01 all-search single-shot"
    query: tuple[Record, ...]  # the query images
    gallery_of: Callable[[int], list[Record]]  # trial number -> that trial's gallery
    trials: tuple[int, ...]  # the trial numbers averaged over
    rules: GalleryRules  # what the metrics remove from each ranked gallery

    def __post_init__(self) -> None:
        if not self.trials:
            raise ValueError(f"{self.title}: a split needs at least one trial")

    def gallery(self, trial: int | None = None) -> list[Record]:
        """The gallery of ``trial`` (default: the first trial of the split)."""
        return list(self.gallery_of(self.trials[0] if trial is None else trial))


@dataclass(frozen=True)
class SplitOptions:
    """Which test protocols a reader's ``test_splits`` returns (each reader uses the fields it has)."""

    trials: int = 10  # gallery trials per split (0..n-1); readers with one fixed gallery use their own
    modes: tuple[str, ...] = ("all", "indoor")  # search modes (SYSU-MM01: all-search, indoor-search)
    shots: tuple[int, ...] = (1,)  # gallery images per (identity, camera): 1 single-shot, 10 multi-shot
    directions: tuple[str, ...] = ("infrared->visible", "visible->infrared")  # query -> gallery modality


class Reader(Protocol):
    """What every dataset reader provides (see the module docstring); registered in :mod:`csdn.data.registry`."""

    title: ClassVar[str]  # the dataset's name in reports, e.g. "SYSU-MM01"
    rules: ClassVar[GalleryRules]  # the gallery rules of its test protocol
    root: Path  # the dataset folder

    @classmethod
    def open(cls, root: Path, data: Any) -> Reader:
        """The reader of the tree at ``root`` with the options of ``data`` (a ``DataConfig``)."""
        ...

    @property
    def train(self) -> list[Record]: ...

    def validation(self) -> EvalSplit | None: ...

    def test_splits(self, options: SplitOptions = SplitOptions()) -> list[EvalSplit]: ...


class IndexEntry(NamedTuple):
    """One ``<relpath> <label>`` line of an index file."""

    line: int  # 1-based line number in the index file
    relpath: str  # image path relative to the dataset root
    label: int  # the integer label written on the line


def check_direction(direction: str) -> Direction:
    """Return ``direction`` if it is one of :data:`DIRECTIONS`, else raise ``ValueError``."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    return direction  # type: ignore[return-value]


def direction_modalities(direction: str) -> tuple[str, str]:
    """``(query modality, gallery modality)`` of a search direction."""
    check_direction(direction)
    return (VISIBLE, INFRARED) if direction == "visible->infrared" else (INFRARED, VISIBLE)


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a directory, else a :class:`DatasetError` saying what it should hold."""
    if not path.is_dir():
        raise DatasetError(f"{path}: missing folder ({what}). Check the dataset root and its layout.")
    return path


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else a :class:`DatasetError` saying what it should hold."""
    if not path.is_file():
        raise DatasetError(f"{path}: missing file ({what}). Check the dataset root and its layout.")
    return path


def read_text(path: Path) -> str:
    """The text of a dataset's text file; a binary or otherwise undecodable file is a :class:`DatasetError`."""
    try:
        return path.read_text()
    except UnicodeDecodeError as error:
        raise DatasetError(
            f"{path}: not a text file (byte {error.start} cannot be decoded: {error.reason}); "
            "replace it with the dataset's original file"
        ) from error


def read_id_list(path: Path) -> list[int]:
    """Identities from a split file of ids separated by commas and/or whitespace, on any number of lines.

    The official files hold one comma-separated line (``1,2,4,...``); ids wrapped over several lines, or
    one per line, are read too. A token that is not an integer raises a :class:`DatasetError` giving its
    line number; so does a file without ids.
    """
    require_file(path, "comma-separated identity numbers")
    ids: list[int] = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        for token in _ID_SEPARATORS.split(line.strip()):
            if not token:
                continue
            if not token.isascii() or not token.isdigit():
                raise DatasetError(
                    f"{path}: line {number}: {token[:40]!r} is not an identity number (expected integers "
                    f"separated by commas or spaces, e.g. 1,2,4); the line reads {line.strip()[:80]!r}"
                )
            ids.append(int(token))
    if not ids:
        raise DatasetError(f"{path}: expected comma-separated identity numbers, found none")
    return ids


def check_disjoint(test_file: Path, test_ids: Iterable[int], train_files: Mapping[Path, Iterable[int]]) -> None:
    """A :class:`DatasetError` naming both files when an identity of ``test_ids`` is also a training one.

    ``train_files`` maps each file that lists training (or validation) identities to its ids. Training on
    a test identity inflates every test figure silently, so it is refused.
    """
    test = set(test_ids)
    for train_file, train_ids in train_files.items():
        shared = sorted(test.intersection(train_ids))
        if shared:
            shown = ", ".join(map(str, shared[:20])) + (" ..." if len(shared) > 20 else "")
            raise DatasetError(
                f"{train_file} and {test_file} share {len(shared)} identit{'y' if len(shared) == 1 else 'ies'}: "
                f"{shown}. Training on test identities would inflate every test figure; take them out of one "
                "of the files (are the files from different copies of the dataset?)"
            )


def read_index_file(path: Path) -> list[IndexEntry]:
    """The entries of an index file of ``<relpath> <label>`` lines.

    Blank lines are skipped; any other line that is not a path followed by an integer label raises a
    :class:`DatasetError` giving the line number and content.
    """
    require_file(path, "lines of '<relative image path> <integer label>'")
    entries = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(maxsplit=1)
        if len(parts) != 2 or not _is_int(parts[1]):
            raise DatasetError(f"{path}: line {number} is not '<relative image path> <integer label>': {line!r}")
        entries.append(IndexEntry(number, parts[0], int(parts[1])))
    if not entries:
        raise DatasetError(f"{path}: no '<relative image path> <integer label>' lines found")
    return entries


def list_images(folder: Path) -> list[str]:
    """Sorted file names of the images in ``folder`` (empty when the folder does not exist)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
