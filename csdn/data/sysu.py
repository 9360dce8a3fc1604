"""SYSU-MM01 reader: train/val/test identities, the infrared query and the per-trial visible gallery.

Layout (the official release)::

    root/cam1..cam6/<pid:04d>/<k:04d>.jpg     RGB cams 1, 2 (indoor), 4, 5; IR cams 3, 6
    root/exp/train_id.txt, val_id.txt, test_id.txt   one line of comma-separated ids each
                                              (wrapped lines are read too; train/val must not hold a test id)
    root/exp/rand_perm_cam.mat                optional: the official gallery permutations

Gallery sampling follows the community code (AGW / CAJ ``process_gallery_sysu``): a generator seeded
with ``trial`` (``random.Random(trial)`` behaves exactly like ``random.seed(trial)``), identities in
ascending order, cameras in order, each (id, cam) folder's files sorted, and ``choice`` of one file
(single-shot). Multi-shot takes ``sample(files, min(shots, len(files)))`` from the same generator
(AGW draws it from NumPy's unseeded global generator, which is not reproducible).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import scipy.io

from csdn.data.protocol import (
    DatasetError,
    EvalSplit,
    GalleryRules,
    SplitOptions,
    check_disjoint,
    list_images,
    read_id_list,
    require_dir,
    require_file,
)
from csdn.data.records import INFRARED, VISIBLE, Record

VISIBLE_CAMS = (1, 2, 4, 5)
INFRARED_CAMS = (3, 6)
ALL_CAMS = (1, 2, 3, 4, 5, 6)
GALLERY_CAMS = {"all": VISIBLE_CAMS, "indoor": (1, 2)}  # search mode -> visible gallery cameras
SHOT_NAMES = {1: "single-shot", 10: "multi-shot"}  # shots per (id, camera) -> protocol wording


class SYSUMM01:
    """Records of SYSU-MM01 under ``root``.

    ``hold_out_val=False`` trains on train+val ids (the standard 395); ``True`` keeps the val ids out
    of ``train`` so that ``validation()`` can select models without touching the test ids.
    """

    title = "SYSU-MM01"
    rules = GalleryRules(ignored_cameras=((3, 2),), dedup_ids=True)  # AGW's eval_sysu

    def __init__(self, root: str | Path, hold_out_val: bool = False) -> None:
        self.root = require_dir(Path(root).expanduser().absolute(), "the SYSU-MM01 root with cam1..cam6 and exp/")
        for cam in ALL_CAMS:
            require_dir(self.root / f"cam{cam}", f"SYSU-MM01 camera {cam}: one folder per 4-digit identity")
        self.hold_out_val = hold_out_val
        self._listing: dict[tuple[int, int], list[str]] = {}
        split, files = {}, {}
        for name in ("train", "val", "test"):
            files[name] = path = self.root / "exp" / f"{name}_id.txt"
            split[name] = sorted(set(read_id_list(path)))
            self._check_ids_have_images(path, split[name])
        check_disjoint(files["test"], split["test"], {files["train"]: split["train"], files["val"]: split["val"]})
        self.train_ids: list[int] = split["train"]
        self.val_ids: list[int] = split["val"]
        self.test_ids: list[int] = split["test"]

    @classmethod
    def open(cls, root: str | Path, data) -> SYSUMM01:
        """The reader of ``root`` with ``data.hold_out_val`` (``data`` is a ``DataConfig``)."""
        return cls(root, hold_out_val=data.hold_out_val)

    @property
    def train(self) -> list[Record]:
        """All six cameras of the train ids (plus the val ids unless ``hold_out_val``)."""
        ids = self.train_ids if self.hold_out_val else sorted(set(self.train_ids) | set(self.val_ids))
        return self._records(ids, ALL_CAMS)

    @property
    def val(self) -> list[Record]:
        """All six cameras of the val ids (available whether or not they are held out)."""
        return self._records(self.val_ids, ALL_CAMS)

    @property
    def query(self) -> list[Record]:
        """Every infrared image (cams 3 and 6) of the test ids: the standard query set."""
        return self._records(self.test_ids, INFRARED_CAMS)

    def gallery(
        self, trial: int, mode: str = "all", shots: int = 1, rand_perm: str | Path | None = None
    ) -> list[Record]:
        """The visible gallery of one trial: ``shots`` images per (test id, camera of ``mode``).

        ``mode`` is ``"all"`` (cams 1, 2, 4, 5) or ``"indoor"`` (cams 1, 2). Without ``rand_perm`` the
        AGW-compatible sampling seeded by ``trial`` is used (see the module docstring). With
        ``rand_perm`` (the official ``rand_perm_cam.mat``) the images are the first ``shots`` entries of
        row ``trial`` (0-based) of ``rand_perm_cam{cam}{pid}``, each entry a 1-based image number
        ``k`` naming ``cam<cam>/<pid:04d>/<k:04d>.jpg``, as the community Python ports read it.
        """
        cams = _gallery_cams(mode)
        _check_trial_and_shots(trial, shots)
        if rand_perm is not None:
            return self._gallery_from_permutation(Path(rand_perm), self.test_ids, cams, trial, shots)
        return self._sample_gallery(self.test_ids, cams, random.Random(trial), shots)

    def search_split(
        self,
        mode: str = "all",
        shots: int = 1,
        trials: tuple[int, ...] = tuple(range(10)),
        rand_perm: str | Path | None = None,
    ) -> EvalSplit:
        """The ``mode``-search protocol with ``shots`` per (id, camera): infrared queries, visible galleries."""
        _gallery_cams(mode)
        _check_trial_and_shots(0, shots)
        extra = {} if rand_perm is None else {"rand_perm": rand_perm}
        return EvalSplit(
            name=f"{mode} {shots}-shot",
            title=f"SYSU-MM01 {mode}-search {SHOT_NAMES.get(shots, f'{shots}-shot')}",
            query=tuple(self.query),
            trials=tuple(trials),
            rules=self.rules,
            gallery_of=lambda trial: self.gallery(trial, mode=mode, shots=shots, **extra),
        )

    def test_splits(self, options: SplitOptions = SplitOptions()) -> list[EvalSplit]:
        """One split per (search mode, shots) of ``options``, each over trials ``0..options.trials-1``."""
        trials = tuple(range(options.trials))
        return [self.search_split(mode, shots, trials) for mode in options.modes for shots in options.shots]

    def validation(self) -> EvalSplit | None:
        """The val ids' infrared images against a single-shot all-search gallery (trial 0), when held out."""
        if not self.hold_out_val:
            return None
        return EvalSplit(
            name="val",
            title="SYSU-MM01 validation (val ids, all-search single-shot)",
            query=tuple(self._records(self.val_ids, INFRARED_CAMS)),
            trials=(0,),
            rules=self.rules,
            gallery_of=lambda trial: self._sample_gallery(self.val_ids, VISIBLE_CAMS, random.Random(trial), shots=1),
        )

    # -- internals ---------------------------------------------------------------------------------

    def _files(self, pid: int, cam: int) -> list[str]:
        key = (pid, cam)
        if key not in self._listing:
            self._listing[key] = list_images(self._folder(pid, cam))
        return self._listing[key]

    def _folder(self, pid: int, cam: int) -> Path:
        return self.root / f"cam{cam}" / f"{pid:04d}"

    def _record(self, pid: int, cam: int, name: str) -> Record:
        modality = INFRARED if cam in INFRARED_CAMS else VISIBLE
        return Record(str(self._folder(pid, cam) / name), pid, cam, modality)

    def _records(self, ids: Iterable[int], cams: Sequence[int]) -> list[Record]:
        return [self._record(pid, cam, name) for pid in sorted(ids) for cam in cams for name in self._files(pid, cam)]

    def _check_ids_have_images(self, path: Path, ids: Sequence[int]) -> None:
        missing = [pid for pid in ids if not any(self._files(pid, cam) for cam in ALL_CAMS)]
        if missing:
            shown = ", ".join(str(pid) for pid in missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise DatasetError(
                f"{path}: {len(missing)} listed id(s) have no images under {self.root}/cam1..cam6/<pid:04d>/: "
                f"{shown}. Is the id file from another copy of the dataset?"
            )

    def _sample_gallery(self, ids: Sequence[int], cams: Sequence[int], rng: random.Random, shots: int) -> list[Record]:
        gallery = []
        for pid in sorted(ids):
            for cam in cams:
                files = self._files(pid, cam)
                if not files:
                    continue
                chosen = [rng.choice(files)] if shots == 1 else rng.sample(files, min(shots, len(files)))
                gallery.extend(self._record(pid, cam, name) for name in chosen)
        return gallery

    def _gallery_from_permutation(
        self, path: Path, ids: Sequence[int], cams: Sequence[int], trial: int, shots: int
    ) -> list[Record]:
        per_cam = _load_rand_perm(path)
        gallery = []
        for pid in sorted(ids):
            for cam in cams:
                per_id = per_cam[cam - 1]
                if pid > len(per_id):
                    raise DatasetError(f"{path}: camera {cam} lists {len(per_id)} ids, id {pid} is beyond it")
                table = np.atleast_2d(np.asarray(per_id[pid - 1]))
                if table.size == 0:
                    continue
                if trial >= table.shape[0]:
                    raise DatasetError(f"{path}: camera {cam}, id {pid} has {table.shape[0]} trials, asked for {trial}")
                files = set(self._files(pid, cam))
                for number in table[trial, :shots].astype(int).tolist():
                    name = f"{number:04d}.jpg"
                    if name not in files:
                        raise DatasetError(
                            f"{path}: names image {name} of id {pid}, camera {cam}, which is not in "
                            f"{self._folder(pid, cam)}"
                        )
                    gallery.append(self._record(pid, cam, name))
        return gallery


def _load_rand_perm(path: Path) -> list[np.ndarray]:
    """The six per-camera cell arrays of ``rand_perm_cam.mat``, each indexed by ``pid - 1``."""
    require_file(path, "the official SYSU-MM01 rand_perm_cam.mat")
    try:
        content = scipy.io.loadmat(str(path))
    except Exception as error:  # scipy raises several types for a corrupt file
        raise DatasetError(f"{path}: not a readable MATLAB file ({error})") from error
    if "rand_perm_cam" not in content:
        raise DatasetError(f"{path}: no variable 'rand_perm_cam' (is this the official rand_perm_cam.mat?)")
    cams = np.asarray(content["rand_perm_cam"], dtype=object).reshape(-1)
    if len(cams) != len(ALL_CAMS):
        raise DatasetError(f"{path}: 'rand_perm_cam' has {len(cams)} camera cells, expected 6")
    return [np.asarray(cell, dtype=object).reshape(-1) for cell in cams]


def _gallery_cams(mode: str) -> tuple[int, ...]:
    if mode not in GALLERY_CAMS:
        raise ValueError(f"mode must be one of {tuple(GALLERY_CAMS)}, got {mode!r}")
    return GALLERY_CAMS[mode]


def _check_trial_and_shots(trial: int, shots: int) -> None:
    if not isinstance(trial, (int, np.integer)) or trial < 0:
        raise ValueError(f"trial must be a non-negative int, got {trial!r}")
    if not isinstance(shots, (int, np.integer)) or shots < 1:
        raise ValueError(f"shots must be a positive int (1 single-shot, 10 multi-shot), got {shots!r}")
