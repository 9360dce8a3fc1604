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
    DatasetError,
    Direction,
    EvalSplit,
    GalleryRules,
    SplitOptions,
    check_direction,
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

    title = "RegDB"
    rules = GalleryRules()  # AGW's eval_regdb: nothing removed, plain CMC

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

    @classmethod
    def open(cls, root: str | Path, data) -> RegDB:
        """The reader of trial ``data.regdb_trial`` (``data`` is a ``DataConfig``)."""
        return cls(root, trial=data.regdb_trial)

    @property
    def train(self) -> list[Record]:
        """Visible then thermal training records of this trial."""
        return self._train_visible + self._train_thermal

    def direction_split(self, direction: Direction) -> EvalSplit:
        """The test images of the query modality against all of the other one (this trial's split)."""
        query_modality, _ = direction_modalities(check_direction(direction))
        query, gallery = (
            (self.test_visible, self.test_thermal)
            if query_modality == VISIBLE
            else (self.test_thermal, self.test_visible)
        )
        return EvalSplit(
            name=direction,
            title=f"RegDB {direction} trial {self.trial}",
            query=tuple(query),
            gallery_of=lambda trial: list(gallery),
            trials=(self.trial,),
            rules=self.rules,
        )

    def test_splits(self, options: SplitOptions = SplitOptions()) -> list[EvalSplit]:
        """One split per direction of ``options``; the trial is this reader's own split."""
        return [self.direction_split(d) for d in options.directions]

    def validation(self) -> None:
        """RegDB has no validation identities."""
        return None

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
