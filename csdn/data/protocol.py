"""What the dataset readers share: search directions, the dataset error, and on-disk helpers.

Every reader (SYSU-MM01, RegDB, LLCM, and SynthVI written in their layouts) reports malformed input
as a :class:`DatasetError` that names the file or folder, what was expected and how to fix it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, NamedTuple, get_args

from csdn.data.records import INFRARED, VISIBLE
from csdn.errors import DataError

Direction = Literal["visible->infrared", "infrared->visible"]
DIRECTIONS: tuple[Direction, ...] = get_args(Direction)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class DatasetError(DataError):
    """A dataset on disk does not have the expected layout or content."""


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


def read_id_list(path: Path) -> list[int]:
    """Identities from a split file whose first line is comma-separated ids (e.g. ``1,2,4,...``)."""
    require_file(path, "one line of comma-separated identity numbers")
    lines = path.read_text().splitlines()
    first = lines[0].strip() if lines else ""
    tokens = [t.strip() for t in first.split(",") if t.strip()]
    if not tokens:
        raise DatasetError(f"{path}: expected one line of comma-separated identity numbers, found none")
    try:
        return [int(t) for t in tokens]
    except ValueError:
        raise DatasetError(
            f"{path}: line 1 must be comma-separated integers, got {first[:80]!r}"
        ) from None


def read_index_file(path: Path) -> list[IndexEntry]:
    """The entries of an index file of ``<relpath> <label>`` lines.

    Blank lines are skipped; any other line that is not a path followed by an integer label raises a
    :class:`DatasetError` giving the line number and content.
    """
    require_file(path, "lines of '<relative image path> <integer label>'")
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(maxsplit=1)
        if len(parts) != 2 or not _is_int(parts[1]):
            raise DatasetError(
                f"{path}: line {number} is not '<relative image path> <integer label>': {line!r}"
            )
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
