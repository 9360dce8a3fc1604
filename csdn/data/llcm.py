"""LLCM reader: training index files, the test identities and both search directions.

Layout (as used by DEEN)::

    root/idx/train_vis.txt, root/idx/train_nir.txt   lines '<path relative to root> <label>'
    root/idx/test_id.txt                             one line of comma-separated test ids
    root/test_vis/cam<N>/<pid:04d>/*                 visible test images
    root/test_nir/cam<N>/<pid:04d>/*                 near-infrared test images

Training records take their ``pid`` from the index label and their camera from the file name's
``_c<N>_`` token (LLCM names files like ``0001_c06_s..._nir.jpg``) or a ``cam<N>`` folder; 0 when
neither is present. Test records take pid and camera from the folders. A test id that a training
path also spells (a ``<pid>_c<N>`` file name or a ``<pid>`` folder) is refused: the index labels are
0-based indices, so the paths are where train and test identities can be compared.

The gallery of a trial is one image per (id, camera) of the gallery modality, drawn like DEEN's
``process_gallery_llcm`` (``random.seed(trial)``, ids ascending, cameras ascending, sorted files,
``random.choice``) but from a private ``random.Random(trial)``. Both directions are built the right
way round: ``"visible->infrared"`` queries with visible images against a near-infrared gallery.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np

from csdn.data.protocol import (
    DatasetError,
    Direction,
    EvalSplit,
    GalleryRules,
    SplitOptions,
    check_disjoint,
    direction_modalities,
    list_images,
    read_id_list,
    read_index_file,
    require_dir,
)
from csdn.data.records import INFRARED, VISIBLE, Record

TEST_FOLDERS = {VISIBLE: "test_vis", INFRARED: "test_nir"}  # modality -> test image folder
TRAIN_INDEX = {VISIBLE: "train_vis.txt", INFRARED: "train_nir.txt"}  # modality -> train index file
UNKNOWN_CAM = 0  # camera of a training image whose name carries none

_CAM_DIR = re.compile(r"^cam(\d+)$")
_CAM_TOKEN = re.compile(r"_c(\d+)(?=[_.])")
_PID_PREFIX = re.compile(r"^(\d+)_c\d+[_.]")


class LLCM:
    """Records of LLCM under ``root``."""

    title = "LLCM"
    rules = GalleryRules(ignore_same_camera_matches=True, dedup_ids=True)  # DEEN's eval_llcm

    def __init__(self, root: str | Path) -> None:
        self.root = require_dir(Path(root).expanduser().absolute(), "the LLCM root with idx/, test_vis/, test_nir/")
        require_dir(self.root / "idx", "LLCM index files train_vis.txt, train_nir.txt, test_id.txt")
        self._train = [r for modality in (VISIBLE, INFRARED) for r in self._read_train(modality)]
        self._cams = {m: self._test_cams(m) for m in (VISIBLE, INFRARED)}
        id_file = self.root / "idx" / "test_id.txt"
        self.test_ids: list[int] = sorted(set(read_id_list(id_file)))
        self._listing: dict[tuple[str, int, int], list[str]] = {}
        self._check_ids_have_images(id_file)
        check_disjoint(id_file, self.test_ids, self._train_pids())

    @classmethod
    def open(cls, root: str | Path, data) -> LLCM:
        """The reader of ``root`` (``data``, a ``DataConfig``, holds no LLCM option)."""
        return cls(root)

    @property
    def train(self) -> list[Record]:
        """Visible then near-infrared training records, in index-file order."""
        return list(self._train)

    def direction_split(self, direction: Direction, trials: tuple[int, ...] = tuple(range(10))) -> EvalSplit:
        """``direction``'s queries against a gallery sampled per trial."""
        return EvalSplit(
            name=direction,
            title=f"LLCM {direction}",
            query=tuple(self.query(direction)),
            gallery_of=lambda trial: self.gallery(direction, trial),
            trials=tuple(trials),
            rules=self.rules,
        )

    def test_splits(self, options: SplitOptions = SplitOptions()) -> list[EvalSplit]:
        """One split per direction of ``options``, each over trials ``0..options.trials-1``."""
        return [self.direction_split(d, tuple(range(options.trials))) for d in options.directions]

    def validation(self) -> None:
        """LLCM has no validation identities."""
        return None

    def query(self, direction: Direction) -> list[Record]:
        """Every test image of the query modality of ``direction``."""
        modality, _ = direction_modalities(direction)
        return [
            self._record(modality, pid, cam, name)
            for pid in self.test_ids
            for cam in self._cams[modality]
            for name in self._files(modality, pid, cam)
        ]

    def gallery(self, direction: Direction, trial: int) -> list[Record]:
        """One random test image per (id, camera) of the gallery modality, seeded by ``trial``."""
        _, modality = direction_modalities(direction)
        if not isinstance(trial, (int, np.integer)) or trial < 0:
            raise ValueError(f"trial must be a non-negative int, got {trial!r}")
        rng = random.Random(trial)
        gallery = []
        for pid in self.test_ids:
            for cam in self._cams[modality]:
                files = self._files(modality, pid, cam)
                if files:
                    gallery.append(self._record(modality, pid, cam, rng.choice(files)))
        return gallery

    # -- internals ---------------------------------------------------------------------------------

    def _read_train(self, modality: str) -> list[Record]:
        path = self.root / "idx" / TRAIN_INDEX[modality]
        records = []
        for entry in read_index_file(path):
            image = self.root / entry.relpath
            if not image.is_file():
                raise DatasetError(f"{path}: line {entry.line} names {entry.relpath}, but {image} does not exist")
            records.append(Record(str(image), entry.label, _train_cam(entry.relpath), modality))
        return records

    def _train_pids(self) -> dict[Path, set[int]]:
        """Each training index file's identity numbers as its paths spell them (the labels are 0-based
        indices, not comparable with test ids); paths that carry no identity number are left out."""
        pids: dict[Path, set[int]] = {}
        for record in self._train:
            pid = _path_pid(Path(os.path.relpath(record.path, self.root)))
            if pid is not None:
                pids.setdefault(self.root / "idx" / TRAIN_INDEX[record.modality], set()).add(pid)
        return pids

    def _test_cams(self, modality: str) -> list[int]:
        folder = require_dir(self.root / TEST_FOLDERS[modality], f"LLCM {modality} test images in cam<N>/<pid:04d>/")
        cams = sorted(int(m.group(1)) for p in folder.iterdir() if p.is_dir() and (m := _CAM_DIR.match(p.name)))
        if not cams:
            raise DatasetError(f"{folder}: no cam<N> folders found (expected cam<N>/<pid:04d>/<images>)")
        return cams

    def _folder(self, modality: str, pid: int, cam: int) -> Path:
        return self.root / TEST_FOLDERS[modality] / f"cam{cam}" / f"{pid:04d}"

    def _files(self, modality: str, pid: int, cam: int) -> list[str]:
        key = (modality, pid, cam)
        if key not in self._listing:
            self._listing[key] = list_images(self._folder(modality, pid, cam))
        return self._listing[key]

    def _record(self, modality: str, pid: int, cam: int, name: str) -> Record:
        return Record(str(self._folder(modality, pid, cam) / name), pid, cam, modality)

    def _check_ids_have_images(self, id_file: Path) -> None:
        missing = [
            pid
            for pid in self.test_ids
            if not any(self._files(m, pid, cam) for m in (VISIBLE, INFRARED) for cam in self._cams[m])
        ]
        if missing:
            shown = ", ".join(str(pid) for pid in missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise DatasetError(
                f"{id_file}: {len(missing)} listed id(s) have no images under test_vis/ or test_nir/"
                f"cam<N>/<pid:04d>/: {shown}. Is the id file from another copy of the dataset?"
            )


def _train_cam(relpath: str) -> int:
    """Camera number from a ``_c<N>_`` file-name token or a ``cam<N>`` folder; 0 if neither."""
    path = Path(relpath)
    token = _CAM_TOKEN.search(path.name)
    if token:
        return int(token.group(1))
    for part in reversed(path.parts[:-1]):
        folder = _CAM_DIR.match(part)
        if folder:
            return int(folder.group(1))
    return UNKNOWN_CAM


def _path_pid(relpath: Path) -> int | None:
    """The identity number a training path spells: a ``<pid>_c<N>`` file-name prefix or the nearest
    all-digit folder (``.../0001/...``); None if neither."""
    prefix = _PID_PREFIX.match(relpath.name)
    if prefix:
        return int(prefix.group(1))
    for part in reversed(relpath.parts[:-1]):
        if part.isascii() and part.isdigit():
            return int(part)
    return None
