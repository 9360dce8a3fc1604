"""RegDB reader: one of the ten fixed train/test splits ("trials") and its two search directions.

Layout (as used by AGW / CAJ / DEEN)::

    root/Visible/..., root/Thermal/...                         the images
    root/idx/{train,test}_{visible,thermal}_{trial}.txt        lines '<path relative to root> <label>'

The label of an index line is the record's ``pid`` (train and test labels are separate numberings:
never mix train and test records). RegDB has one visible and one thermal camera; records carry
``cam = 1`` (visible) and ``cam = 2`` (thermal, the infrared modality). Evaluation uses no camera
filtering.
"""

from __future__ import annotations

from pathlib import Path

from csdn.data.protocol import (
    DIRECTIONS,
    Direction,
    DatasetError,
    direction_modalities,
    read_index_file,
    require_dir,
)
from csdn.data.records import INFRARED, VISIBLE, Record

__all__ = ["DIRECTIONS", "Direction", "RegDB", "TRIALS", "VISIBLE_CAM", "THERMAL_CAM"]

TRIALS = tuple(range(1, 11))  # the ten official splits
VISIBLE_CAM = 1  # camera number given to visible records
THERMAL_CAM = 2  # camera number given to thermal (infrared) records


class RegDB:
    """Records of RegDB split ``trial`` (1..10) under ``root``."""

    def __init__(self, root: str | Path, trial: int) -> None:
        if trial not in TRIALS:
            raise ValueError(f"RegDB trial must be one of 1..10, got {trial!r}")
        self.root = require_dir(Path(root).expanduser().absolute(), "the RegDB root with Visible/, Thermal/ and idx/")
        require_dir(self.root / "idx", "RegDB index files {train,test}_{visible,thermal}_<trial>.txt")
        require_dir(self.root / "Visible", "RegDB visible images")
        require_dir(self.root / "Thermal", "RegDB thermal images")
        self.trial = trial
        self._train_visible = self._read("train", "visible")
        self._train_thermal = self._read("train", "thermal")
        self.test_visible: list[Record] = self._read("test", "visible")
        self.test_thermal: list[Record] = self._read("test", "thermal")

    @property
    def train(self) -> list[Record]:
        """Visible then thermal training records of this trial."""
        return self._train_visible + self._train_thermal

    def query_gallery(self, direction: Direction) -> tuple[list[Record], list[Record]]:
        """``(query, gallery)``: the test images of the query modality against all of the other one."""
        query_modality, _ = direction_modalities(direction)
        if query_modality == VISIBLE:
            return list(self.test_visible), list(self.test_thermal)
        return list(self.test_thermal), list(self.test_visible)

    def _read(self, split: str, kind: str) -> list[Record]:
        path = self.root / "idx" / f"{split}_{kind}_{self.trial}.txt"
        modality, cam = (VISIBLE, VISIBLE_CAM) if kind == "visible" else (INFRARED, THERMAL_CAM)
        records = []
        for entry in read_index_file(path):
            image = self.root / entry.relpath
            if not image.is_file():
                raise DatasetError(f"{path}: line {entry.line} names {entry.relpath}, but {image} does not exist")
            records.append(Record(str(image), entry.label, cam, modality))
        return records
