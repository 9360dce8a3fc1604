"""SYSU-MM01 reader on tiny trees written in the official layout."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from csdn.data.protocol import DatasetError, SplitOptions
from csdn.data.records import INFRARED, VISIBLE, Record
from csdn.data.sysu import SYSUMM01

# (pid, cam) -> number of images; pids 1, 2 train, 3 val, 4, 5 test.
LAYOUT = {
    (1, 1): 2, (1, 3): 2, (1, 4): 1,
    (2, 2): 3, (2, 6): 1,
    (3, 1): 2, (3, 3): 1, (3, 5): 2,
    (4, 1): 5, (4, 2): 4, (4, 3): 3, (4, 4): 6, (4, 5): 5, (4, 6): 2,
    (5, 1): 12, (5, 2): 7, (5, 3): 1, (5, 5): 3, (5, 6): 4,
}  # fmt: skip


def write_jpeg(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 8), colour).save(path)


def make_sysu(root: Path, layout: dict = LAYOUT, ids: dict | None = None) -> Path:
    for cam in range(1, 7):
        (root / f"cam{cam}").mkdir(parents=True, exist_ok=True)
    for (pid, cam), count in layout.items():
        for k in range(1, count + 1):
            write_jpeg(root / f"cam{cam}" / f"{pid:04d}" / f"{k:04d}.jpg")
    ids = ids or {"train": "1,2", "val": "3", "test": "4,5"}
    (root / "exp").mkdir(exist_ok=True)
    for name, line in ids.items():
        (root / "exp" / f"{name}_id.txt").write_text(line + "\n")
    return root


def agw_process_gallery_sysu(data_path: str, mode: str = "all", trial: int = 0, shots: int = 1) -> list[str]:
    """The community (AGW/CAJ) gallery sampling, re-written here in its own global-``random`` style."""
    random.seed(trial)
    rgb_cameras = ["cam1", "cam2", "cam4", "cam5"] if mode == "all" else ["cam1", "cam2"]
    with open(os.path.join(data_path, "exp/test_id.txt")) as handle:
        ids = [f"{int(y):04d}" for y in handle.read().splitlines()[0].split(",")]
    files_rgb = []
    for pid in sorted(ids):
        for cam in rgb_cameras:
            img_dir = os.path.join(data_path, cam, pid)
            if os.path.isdir(img_dir):
                new_files = sorted(img_dir + "/" + name for name in os.listdir(img_dir))
                if shots == 1:
                    files_rgb.append(random.choice(new_files))
                else:
                    files_rgb.extend(random.sample(new_files, min(shots, len(new_files))))
    return files_rgb


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_sysu(tmp_path / "SYSU-MM01")


def image_count(pids, cams) -> int:
    return sum(n for (pid, cam), n in LAYOUT.items() if pid in pids and cam in cams)


def test_train_val_query_counts_and_modalities(root: Path) -> None:
    data = SYSUMM01(root)
    assert (data.train_ids, data.val_ids, data.test_ids) == ([1, 2], [3], [4, 5])
    assert len(data.train) == image_count({1, 2, 3}, range(1, 7)) == 14
    assert len(SYSUMM01(root, hold_out_val=True).train) == image_count({1, 2}, range(1, 7)) == 9
    assert len(data.val) == 5
    assert len(data.query) == image_count({4, 5}, {3, 6}) == 10
    assert {r.modality for r in data.query} == {INFRARED}
    assert all((r.cam in (3, 6)) == (r.modality == INFRARED) for r in data.train)


def test_records_are_exact_and_ordered(root: Path) -> None:
    data = SYSUMM01(root)
    base = root.absolute()
    expected_val = [
        Record(str(base / "cam1/0003/0001.jpg"), 3, 1, VISIBLE),
        Record(str(base / "cam1/0003/0002.jpg"), 3, 1, VISIBLE),
        Record(str(base / "cam3/0003/0001.jpg"), 3, 3, INFRARED),
        Record(str(base / "cam5/0003/0001.jpg"), 3, 5, VISIBLE),
        Record(str(base / "cam5/0003/0002.jpg"), 3, 5, VISIBLE),
    ]
    assert data.val == expected_val
    assert data.query[:4] == [Record(str(base / f"cam3/0004/{k:04d}.jpg"), 4, 3, INFRARED) for k in (1, 2, 3)] + [
        Record(str(base / "cam6/0004/0001.jpg"), 4, 6, INFRARED)
    ]
    assert all(Path(r.path).is_absolute() for r in data.train)


def test_single_shot_gallery_has_one_image_per_id_and_camera(root: Path) -> None:
    data = SYSUMM01(root)
    all_search = data.gallery(trial=0)
    assert [(r.pid, r.cam) for r in all_search] == [(4, 1), (4, 2), (4, 4), (4, 5), (5, 1), (5, 2), (5, 5)]
    assert {r.modality for r in all_search} == {VISIBLE}
    indoor = data.gallery(trial=0, mode="indoor")
    assert [(r.pid, r.cam) for r in indoor] == [(4, 1), (4, 2), (5, 1), (5, 2)]


def test_gallery_is_deterministic_per_trial_and_varies_across_trials(root: Path) -> None:
    data = SYSUMM01(root)
    assert data.gallery(trial=3) == SYSUMM01(root).gallery(trial=3)
    assert data.gallery(trial=0) != data.gallery(trial=1)
    assert data.gallery(trial=0, shots=10) != data.gallery(trial=1, shots=10)


@pytest.mark.parametrize("mode", ["all", "indoor"])
@pytest.mark.parametrize("shots", [1, 10])
def test_gallery_matches_agw_sampling(root: Path, mode: str, shots: int) -> None:
    data = SYSUMM01(root)
    for trial in range(10):
        expected = agw_process_gallery_sysu(str(root.absolute()), mode=mode, trial=trial, shots=shots)
        assert [r.path for r in data.gallery(trial, mode=mode, shots=shots)] == expected


def test_multi_shot_takes_ten_distinct_images_or_all_when_fewer(root: Path) -> None:
    gallery = SYSUMM01(root).gallery(trial=2, shots=10)
    per_folder: dict[tuple[int, int], list[str]] = {}
    for r in gallery:
        per_folder.setdefault((r.pid, r.cam), []).append(r.path)
    assert {key: len(paths) for key, paths in per_folder.items()} == {
        (4, 1): 5, (4, 2): 4, (4, 4): 6, (4, 5): 5, (5, 1): 10, (5, 2): 7, (5, 5): 3,
    }  # fmt: skip
    assert all(len(set(paths)) == len(paths) for paths in per_folder.values())


def write_rand_perm(path: Path, n_ids: int = 5, trials: int = 10) -> None:
    """A rand_perm_cam.mat in the official nesting: 6x1 cell of (n_ids x 1) cells of trials x n arrays."""
    rng = np.random.default_rng(0)
    cams = np.empty((6, 1), dtype=object)
    for cam in range(1, 7):
        per_id = np.empty((n_ids, 1), dtype=object)
        for pid in range(1, n_ids + 1):
            n = LAYOUT.get((pid, cam), 0)
            per_id[pid - 1, 0] = (
                np.stack([rng.permutation(n) + 1 for _ in range(trials)]).astype(float) if n else np.zeros((0, 0))
            )
        cams[cam - 1, 0] = per_id
    scipy.io.savemat(str(path), {"rand_perm_cam": cams})


def test_official_permutation_picks_the_first_entries_of_the_trial_row(root: Path) -> None:
    perm_path = root / "exp" / "rand_perm_cam.mat"
    write_rand_perm(perm_path)
    table = scipy.io.loadmat(str(perm_path))["rand_perm_cam"]
    data = SYSUMM01(root)
    for trial in (0, 7):
        gallery = data.gallery(trial, shots=1, rand_perm=perm_path)
        assert [(r.pid, r.cam) for r in gallery] == [(4, 1), (4, 2), (4, 4), (4, 5), (5, 1), (5, 2), (5, 5)]
        for r in gallery:
            number = int(table[r.cam - 1, 0][r.pid - 1, 0][trial, 0])
            assert r.path == str(root.absolute() / f"cam{r.cam}" / f"{r.pid:04d}" / f"{number:04d}.jpg")
    multi = data.gallery(1, mode="indoor", shots=10, rand_perm=perm_path)
    first = [r for r in multi if (r.pid, r.cam) == (5, 1)]
    expected = table[0, 0][4, 0][1, :10].astype(int)
    assert [Path(r.path).name for r in first] == [f"{k:04d}.jpg" for k in expected]


def test_permutation_file_errors(root: Path) -> None:
    data = SYSUMM01(root)
    with pytest.raises(DatasetError, match="rand_perm_cam.mat"):
        data.gallery(0, rand_perm=root / "exp" / "rand_perm_cam.mat")
    other = root / "exp" / "other.mat"
    scipy.io.savemat(str(other), {"something_else": np.zeros(3)})
    with pytest.raises(DatasetError, match="no variable 'rand_perm_cam'"):
        data.gallery(0, rand_perm=other)
    short = root / "exp" / "short.mat"
    write_rand_perm(short, trials=2)
    with pytest.raises(DatasetError, match="has 2 trials"):
        data.gallery(5, rand_perm=short)


def test_validation_uses_val_ids_only(root: Path) -> None:
    data = SYSUMM01(root, hold_out_val=True)
    split = data.validation()
    assert [(r.pid, r.cam) for r in split.query] == [(3, 3)]
    assert [(r.pid, r.cam) for r in split.gallery()] == [(3, 1), (3, 5)]
    assert split.trials == (0,) and split.gallery(0) == data.validation().gallery(0)
    assert split.rules == SYSUMM01.rules
    assert 3 not in {r.pid for r in data.train}
    assert SYSUMM01(root, hold_out_val=False).validation() is None  # the val ids are trained on


def test_test_splits_follow_the_options(root: Path) -> None:
    data = SYSUMM01(root)
    splits = data.test_splits(SplitOptions(trials=2, modes=("all", "indoor"), shots=(1, 10)))
    assert [s.name for s in splits] == ["all 1-shot", "all 10-shot", "indoor 1-shot", "indoor 10-shot"]
    assert splits[2].title == "SYSU-MM01 indoor-search single-shot" and splits[1].title.endswith("multi-shot")
    assert all(s.trials == (0, 1) and s.query == tuple(data.query) for s in splits)
    assert splits[2].gallery(1) == data.gallery(1, mode="indoor")
    assert splits[1].gallery(0) == data.gallery(0, mode="all", shots=10)
    with pytest.raises(ValueError, match="mode"):
        data.search_split("outdoor")


def test_missing_root_and_camera_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="missing folder"):
        SYSUMM01(tmp_path / "nowhere")
    root = make_sysu(tmp_path / "sysu")
    shutil.rmtree(root / "cam4")
    with pytest.raises(DatasetError, match=r"cam4: missing folder"):
        SYSUMM01(root)


def test_missing_and_malformed_id_files(tmp_path: Path) -> None:
    root = make_sysu(tmp_path / "sysu")
    (root / "exp" / "val_id.txt").unlink()
    with pytest.raises(DatasetError, match=r"val_id.txt: missing file"):
        SYSUMM01(root)
    (root / "exp" / "val_id.txt").write_text("3;4\n")
    with pytest.raises(DatasetError, match=r"val_id.txt: line 1: '3;4' is not an identity number"):
        SYSUMM01(root)
    (root / "exp" / "val_id.txt").write_text("3\n\n7,x\n")
    with pytest.raises(DatasetError, match=r"val_id.txt: line 3: 'x' is not an identity number"):
        SYSUMM01(root)
    (root / "exp" / "val_id.txt").write_text("\n")
    with pytest.raises(DatasetError, match=r"val_id.txt: expected comma-separated identity numbers, found none"):
        SYSUMM01(root)


@pytest.mark.parametrize("test_ids", ["4,\n5\n", "4\n5", "4, 5", "4 5\n", "4,\r\n5,\n\n"])
def test_id_files_split_over_lines_keep_every_id(tmp_path: Path, test_ids: str) -> None:
    root = make_sysu(tmp_path / "sysu", ids={"train": "1,2", "val": "3", "test": test_ids})
    reader = SYSUMM01(root)
    assert reader.test_ids == [4, 5]
    assert {r.pid for r in reader.query} == {4, 5}


@pytest.mark.parametrize("name", ["train", "val"])
def test_a_test_id_in_the_training_files_is_refused(tmp_path: Path, name: str) -> None:
    ids = {"train": "1,2", "val": "3", "test": "4,5"}
    ids[name] += ",5"
    root = make_sysu(tmp_path / "sysu", ids=ids)
    with pytest.raises(DatasetError, match=rf"{name}_id.txt and .*test_id.txt share 1 identity: 5\."):
        SYSUMM01(root)


def test_id_file_naming_absent_ids(tmp_path: Path) -> None:
    root = make_sysu(tmp_path / "sysu", ids={"train": "1,2", "val": "3", "test": "4,5,77"})
    with pytest.raises(DatasetError, match=r"test_id.txt: 1 listed id\(s\) have no images.*77"):
        SYSUMM01(root)


def test_bad_gallery_arguments(root: Path) -> None:
    data = SYSUMM01(root)
    with pytest.raises(ValueError, match="mode"):
        data.gallery(0, mode="outdoor")
    with pytest.raises(ValueError, match="shots"):
        data.gallery(0, shots=0)
    with pytest.raises(ValueError, match="trial"):
        data.gallery(-1)
