"""The record protocol every dataset reader yields: ``(path, pid, cam, modality)``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

VISIBLE = "visible"
INFRARED = "infrared"
MODALITIES = (VISIBLE, INFRARED)


@dataclass(frozen=True, order=True)
class Record:
    """One image of a re-ID dataset."""

    path: str  # absolute path of the image file
    pid: int  # identity as named by the dataset (not a contiguous training label)
    cam: int  # camera number as named by the dataset
    modality: str  # VISIBLE or INFRARED

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r} for {self.path}")


def label_map(records: Iterable[Record]) -> dict[int, int]:
    """Map each pid to a contiguous training label 0..N-1 (pids sorted ascending)."""
    return {pid: label for label, pid in enumerate(sorted({r.pid for r in records}))}


def by_modality(records: Sequence[Record], modality: str) -> list[Record]:
    """The records of one modality, order kept."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    return [r for r in records if r.modality == modality]


def count_summary(records: Sequence[Record]) -> dict[str, int]:
    """Images, identities and cameras, per modality and in total."""
    out: dict[str, int] = {"images": len(records), "ids": len({r.pid for r in records})}
    for m in MODALITIES:
        sub = by_modality(records, m)
        out[f"{m}_images"] = len(sub)
        out[f"{m}_ids"] = len({r.pid for r in sub})
        out[f"{m}_cams"] = len({r.cam for r in sub})
    return out
