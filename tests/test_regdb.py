"""RegDB reader on a tiny tree written in the AGW layout."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from csdn.data.protocol import DIRECTIONS, DatasetError
from csdn.data.records import INFRARED, VISIBLE, Record
from csdn.data.regdb import THERMAL_CAM, VISIBLE_CAM, RegDB


def write_jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 8), (10, 120, 40)).save(path)


def make_regdb(root: Path, trial: int = 1) -> Path:
    """Two train and two test identities, two images each per modality."""
    (root / "idx").mkdir(parents=True)
    for split, pids in (("train", (0, 1)), ("test", (0, 1))):
        for kind, folder in (("visible", "Visible"), ("thermal", "Thermal")):
            lines = []
            for pid in pids:
                for k in range(2):
                    rel = f"{folder}/{split}{pid}/{kind[0]}_{k}.bmp"
                    write_jpeg(root / rel)
                    lines.append(f"{rel} {pid}")
            (root / "idx" / f"{split}_{kind}_{trial}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_regdb(tmp_path / "RegDB")


def test_records_are_exact(root: Path) -> None:
    data = RegDB(root, trial=1)
    base = root.absolute()
    assert data.test_visible == [
        Record(str(base / f"Visible/test{pid}/v_{k}.bmp"), pid, VISIBLE_CAM, VISIBLE) for pid in (0, 1) for k in (0, 1)
    ]
    assert data.test_thermal == [
        Record(str(base / f"Thermal/test{pid}/t_{k}.bmp"), pid, THERMAL_CAM, INFRARED) for pid in (0, 1) for k in (0, 1)
    ]
    assert (VISIBLE_CAM, THERMAL_CAM) == (1, 2)
    assert len(data.train) == 8
    assert [r.modality for r in data.train] == [VISIBLE] * 4 + [INFRARED] * 4


def test_direction_splits(root: Path) -> None:
    data = RegDB(root, trial=1)
    assert DIRECTIONS == ("visible->infrared", "infrared->visible")
    split = data.direction_split("visible->infrared")
    assert (list(split.query), split.gallery()) == (data.test_visible, data.test_thermal)
    split = data.direction_split("infrared->visible")
    assert (list(split.query), split.gallery()) == (data.test_thermal, data.test_visible)
    assert split.trials == (1,) and split.title == "RegDB infrared->visible trial 1" and split.rules == RegDB.rules
    with pytest.raises(ValueError, match="direction"):
        data.direction_split("thermal->visible")
    assert [s.name for s in data.test_splits()] == ["infrared->visible", "visible->infrared"]
    assert data.validation() is None


def test_trial_selects_its_own_index_files(tmp_path: Path) -> None:
    root = make_regdb(tmp_path / "RegDB", trial=3)
    assert len(RegDB(root, trial=3).test_visible) == 4
    with pytest.raises(DatasetError, match=r"train_visible_1.txt: missing file"):
        RegDB(root, trial=1)
    with pytest.raises(ValueError, match="1..10"):
        RegDB(root, trial=0)


def test_missing_root_and_folders(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="missing folder"):
        RegDB(tmp_path / "nowhere", trial=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"idx: missing folder"):
        RegDB(tmp_path / "empty", trial=1)


def test_malformed_index_line_names_file_line_and_content(root: Path) -> None:
    index = root / "idx" / "test_thermal_1.txt"
    lines = index.read_text().splitlines()
    lines.insert(2, "Thermal/test0/t_0.bmp zero")
    index.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"test_thermal_1.txt: line 3 .*'Thermal/test0/t_0.bmp zero'"):
        RegDB(root, trial=1)
    index.write_text("just-a-path.bmp\n")
    with pytest.raises(DatasetError, match=r"line 1"):
        RegDB(root, trial=1)


def test_referenced_image_missing(root: Path) -> None:
    (root / "Visible" / "train1" / "v_1.bmp").unlink()
    with pytest.raises(DatasetError, match=r"train_visible_1.txt: line 4 names Visible/train1/v_1.bmp"):
        RegDB(root, trial=1)
