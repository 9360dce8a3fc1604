"""LLCM reader on a tiny tree written in the DEEN layout."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest
from PIL import Image

from csdn.data.llcm import LLCM, UNKNOWN_CAM
from csdn.data.protocol import DatasetError, SplitOptions
from csdn.data.records import INFRARED, VISIBLE, Record

TEST_LAYOUT = {  # (folder, cam, pid) -> number of images
    ("test_vis", 1, 3): 3, ("test_vis", 2, 3): 2, ("test_vis", 10, 3): 4, ("test_vis", 1, 5): 5,
    ("test_nir", 1, 3): 2, ("test_nir", 4, 3): 3, ("test_nir", 4, 5): 6, ("test_nir", 1, 5): 1,
}  # fmt: skip
TRAIN_VIS = ["vis/0001/0001_c01_s1_f1_vis.jpg 0", "vis/0001/0001_c02_s1_f2_vis.jpg 0", "vis/0002/cam4/a.jpg 1"]
TRAIN_NIR = ["nir/0001/0001_c06_s1_f3_nir.jpg 0", "nir/0002/plain.jpg 1"]


def write_jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 8), (90, 90, 200)).save(path)


def make_llcm(root: Path, test_ids: str = "3,5") -> Path:
    (root / "idx").mkdir(parents=True)
    for name, lines in (("train_vis.txt", TRAIN_VIS), ("train_nir.txt", TRAIN_NIR)):
        for line in lines:
            write_jpeg(root / line.split()[0])
        (root / "idx" / name).write_text("\n".join(lines) + "\n")
    for (folder, cam, pid), count in TEST_LAYOUT.items():
        for k in range(count):
            write_jpeg(root / folder / f"cam{cam}" / f"{pid:04d}" / f"{pid:04d}_c{cam:02d}_f{k}.jpg")
    (root / "idx" / "test_id.txt").write_text(test_ids + "\n")
    return root


def deen_process_gallery_llcm(data_path: str, modal: int, trial: int) -> list[str]:
    """DEEN's gallery sampling (1 = visible, 2 = near-infrared), in its global-``random`` style."""
    random.seed(trial)
    folder = "test_vis" if modal == 1 else "test_nir"
    cams = [f"{folder}/cam{c}" for c in ((1, 2, 10) if modal == 1 else (1, 4))]
    with open(os.path.join(data_path, "idx/test_id.txt")) as handle:
        ids = [f"{int(y):04d}" for y in handle.read().splitlines()[0].split(",")]
    files = []
    for pid in sorted(ids):
        for cam in cams:
            img_dir = os.path.join(data_path, cam, pid)
            if os.path.isdir(img_dir):
                files.append(random.choice(sorted(img_dir + "/" + name for name in os.listdir(img_dir))))
    return files


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_llcm(tmp_path / "LLCM")


def test_train_records_parse_labels_and_cameras(root: Path) -> None:
    base = root.absolute()
    assert LLCM(root).train == [
        Record(str(base / "vis/0001/0001_c01_s1_f1_vis.jpg"), 0, 1, VISIBLE),
        Record(str(base / "vis/0001/0001_c02_s1_f2_vis.jpg"), 0, 2, VISIBLE),
        Record(str(base / "vis/0002/cam4/a.jpg"), 1, 4, VISIBLE),
        Record(str(base / "nir/0001/0001_c06_s1_f3_nir.jpg"), 0, 6, INFRARED),
        Record(str(base / "nir/0002/plain.jpg"), 1, UNKNOWN_CAM, INFRARED),
    ]


def test_query_holds_every_test_image_of_the_query_modality(root: Path) -> None:
    data = LLCM(root)
    visible_query = data.query("visible->infrared")
    assert len(visible_query) == 3 + 2 + 4 + 5
    assert {r.modality for r in visible_query} == {VISIBLE}
    assert [(r.pid, r.cam) for r in visible_query][:10] == [(3, 1)] * 3 + [(3, 2)] * 2 + [(3, 10)] * 4 + [(5, 1)]
    infrared_query = data.query("infrared->visible")
    assert len(infrared_query) == 2 + 3 + 6 + 1
    assert {r.modality for r in infrared_query} == {INFRARED}
    first = infrared_query[0]
    assert first == Record(str(root.absolute() / "test_nir/cam1/0003/0003_c01_f0.jpg"), 3, 1, INFRARED)


def test_gallery_is_the_other_modality_one_image_per_id_and_camera(root: Path) -> None:
    data = LLCM(root)
    gallery = data.gallery("visible->infrared", trial=0)
    assert [(r.pid, r.cam, r.modality) for r in gallery] == [
        (3, 1, INFRARED), (3, 4, INFRARED), (5, 1, INFRARED), (5, 4, INFRARED),
    ]  # fmt: skip
    gallery = data.gallery("infrared->visible", trial=0)
    assert [(r.pid, r.cam, r.modality) for r in gallery] == [
        (3, 1, VISIBLE), (3, 2, VISIBLE), (3, 10, VISIBLE), (5, 1, VISIBLE),
    ]  # fmt: skip


@pytest.mark.parametrize(("direction", "modal"), [("infrared->visible", 1), ("visible->infrared", 2)])
def test_gallery_matches_deen_sampling(root: Path, direction: str, modal: int) -> None:
    data = LLCM(root)
    for trial in range(10):
        expected = deen_process_gallery_llcm(str(root.absolute()), modal, trial)
        assert [r.path for r in data.gallery(direction, trial)] == expected


def test_gallery_trials_are_deterministic_and_differ(root: Path) -> None:
    data = LLCM(root)
    assert data.gallery("infrared->visible", 4) == LLCM(root).gallery("infrared->visible", 4)
    assert data.gallery("infrared->visible", 0) != data.gallery("infrared->visible", 1)
    with pytest.raises(ValueError, match="trial"):
        data.gallery("infrared->visible", -2)
    with pytest.raises(ValueError, match="direction"):
        data.query("rgb->ir")


def test_missing_root_index_and_test_folders(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="missing folder"):
        LLCM(tmp_path / "nowhere")
    root = make_llcm(tmp_path / "a")
    (root / "idx" / "train_nir.txt").unlink()
    with pytest.raises(DatasetError, match=r"train_nir.txt: missing file"):
        LLCM(root)
    root = make_llcm(tmp_path / "b")
    shutil.rmtree(root / "test_nir")
    with pytest.raises(DatasetError, match=r"test_nir: missing folder"):
        LLCM(root)
    root = make_llcm(tmp_path / "c")
    (root / "idx" / "test_id.txt").unlink()
    with pytest.raises(DatasetError, match=r"test_id.txt: missing file"):
        LLCM(root)


def test_malformed_index_line_and_missing_image(tmp_path: Path) -> None:
    root = make_llcm(tmp_path / "a")
    (root / "idx" / "train_vis.txt").write_text(TRAIN_VIS[0] + "\n" + "vis/0001/x.jpg 0 extra\n")
    with pytest.raises(DatasetError, match=r"train_vis.txt: line 2 .*'vis/0001/x.jpg 0 extra'"):
        LLCM(root)
    root = make_llcm(tmp_path / "b")
    (root / "nir" / "0002" / "plain.jpg").unlink()
    with pytest.raises(DatasetError, match=r"train_nir.txt: line 2 names nir/0002/plain.jpg"):
        LLCM(root)


def test_test_id_absent_from_image_folders(tmp_path: Path) -> None:
    root = make_llcm(tmp_path / "LLCM", test_ids="3,5,9")
    with pytest.raises(DatasetError, match=r"test_id.txt: 1 listed id\(s\) have no images.*9"):
        LLCM(root)


def test_test_ids_over_several_lines_are_all_read(tmp_path: Path) -> None:
    root = make_llcm(tmp_path / "llcm", test_ids="3\n5")
    assert LLCM(root).test_ids == [3, 5]


@pytest.mark.parametrize("extra_id", [1, 2])  # 1: a 0001_c06 file name, 2: a vis/0002/ folder only
def test_a_test_id_that_training_paths_spell_is_refused(tmp_path: Path, extra_id: int) -> None:
    root = make_llcm(tmp_path / "llcm", test_ids=f"3,5,{extra_id}")
    for modality in ("test_vis", "test_nir"):  # the id has test images, so only the overlap is wrong
        write_jpeg(root / modality / "cam1" / f"{extra_id:04d}" / "x.jpg")
    with pytest.raises(DatasetError, match=rf"train_(vis|nir).txt and .*test_id.txt share 1 identity: {extra_id}\."):
        LLCM(root)


def test_test_splits_are_the_directions_over_trials(root: Path) -> None:
    data = LLCM(root)
    splits = data.test_splits(SplitOptions(trials=3, directions=("visible->infrared",)))
    assert [s.name for s in splits] == ["visible->infrared"] and splits[0].title == "LLCM visible->infrared"
    assert splits[0].trials == (0, 1, 2) and splits[0].query == tuple(data.query("visible->infrared"))
    assert splits[0].gallery(2) == data.gallery("visible->infrared", 2)
    assert splits[0].rules == LLCM.rules and splits[0].rules.ignore_same_camera_matches
    assert data.validation() is None
