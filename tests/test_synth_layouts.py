"""SynthVI writers: the SYSU-MM01, RegDB and LLCM trees on disk match what the writers report."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import csdn.synthvi.layouts as layouts
from csdn.synthvi.layouts import load_metadata, write_layout, write_llcm, write_regdb, write_sysu
from csdn.synthvi.world import COLOR_WORDS, SynthConfig, make_identities

TINY = SynthConfig(
    seed=1,
    height=32,
    width=16,
    clip_ids=2,
    train_ids=5,
    val_ids=2,
    test_ids=4,
    images_per_cam=2,
    llcm_cams_per_id=2,
    regdb_images=2,
    regdb_trials=3,
)
ID_LINE = re.compile(r"^[1-9]\d*(,[1-9]\d*)*\n?$")


def files(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.glob(pattern) if p.is_file())


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_ids(path: Path) -> list[int]:
    text = path.read_text()
    assert ID_LINE.match(text), f"{path}: {text!r}"
    return [int(x) for x in text.strip().split(",")]


def read_idx(path: Path) -> list[tuple[str, int]]:
    rows = []
    for line in path.read_text().splitlines():
        rel, label = line.split(" ")
        rows.append((rel, int(label)))
    return rows


@pytest.fixture(scope="module")
def sysu(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("w") / "SYSU-MM01"
    return root, write_sysu(TINY, root)


@pytest.fixture(scope="module")
def regdb(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("w") / "RegDB"
    return root, write_regdb(TINY, root)


@pytest.fixture(scope="module")
def llcm(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("w") / "LLCM"
    return root, write_llcm(TINY, root)


def test_sysu_tree_matches_counts_and_id_files(sysu):
    root, counts = sysu
    splits = {s: read_ids(root / "exp" / f"{s}_id.txt") for s in ("train", "val", "test")}
    pools = make_identities(TINY)
    assert set(splits["train"]).isdisjoint(splits["val"])
    assert sorted(splits["train"] + splits["val"]) == [i.pid for i in pools["train"]]
    assert splits["test"] == [i.pid for i in pools["test"]]
    assert counts["ids"] == {"train": 3, "val": 2, "test": 4}
    for split, pids in splits.items():
        on_disk = {
            f"cam{c}": sum(len(files(root / f"cam{c}" / f"{p:04d}", "*.jpg")) for p in pids) for c in range(1, 7)
        }
        assert on_disk == counts["images"][split]
        ir = on_disk["cam3"] + on_disk["cam6"]
        assert counts["modality_images"][split] == {"visible": sum(on_disk.values()) - ir, "infrared": ir}
    for pid in splits["test"]:  # complete galleries and queries
        for c in range(1, 7):
            names = [p.name for p in files(root / f"cam{c}" / f"{pid:04d}", "*")]
            assert names == ["0001.jpg", "0002.jpg"]
    assert len(files(root, "cam*/*/*.jpg")) == counts["total_images"] == 9 * 6 * 2


def test_sysu_images_and_metadata(sysu):
    root, counts = sysu
    img = Image.open(root / "cam3" / "0001" / "0001.jpg")
    assert img.format == "JPEG" and img.size == (16, 32) and img.mode == "RGB"
    meta = load_metadata(root)
    assert meta["layout"] == "sysu" and meta["counts"] == counts
    assert meta["config"] == dataclasses.asdict(TINY)
    assert sorted(meta["captions"]) == sorted(str(p.relative_to(root)) for p in files(root, "cam*/*/*.jpg"))
    assert set(meta["identities"]) == {str(p) for p in range(1, 10)}
    for rel, text in meta["captions"].items():
        if rel.startswith(("cam3/", "cam6/")):
            assert not (set(re.findall(r"[a-z]+", text)) & COLOR_WORDS), text


def test_sysu_is_deterministic(tmp_path, sysu):
    root, _ = sysu
    again = tmp_path / "again"
    write_sysu(TINY, again)
    assert digest(again) == digest(root)
    other = tmp_path / "other"
    write_sysu(dataclasses.replace(TINY, seed=2), other)
    assert (other / "cam1/0001/0001.jpg").read_bytes() != (root / "cam1/0001/0001.jpg").read_bytes()


def test_regdb_tree_and_trial_files(regdb):
    root, counts = regdb
    pids = list(range(1, 10))
    assert counts["ids"] == 9 and counts["images"] == {"visible": 18, "infrared": 18}
    assert len(files(root, "Visible/*/*.bmp")) == len(files(root, "Thermal/*/*.bmp")) == 18
    splits = []
    for t in range(1, TINY.regdb_trials + 1):
        part_pids = {}
        for part in ("train", "test"):
            vis = read_idx(root / "idx" / f"{part}_visible_{t}.txt")
            th = read_idx(root / "idx" / f"{part}_thermal_{t}.txt")
            for rows, folder in ((vis, "Visible"), (th, "Thermal")):
                assert all((root / rel).is_file() and rel.startswith(folder + "/") for rel, _ in rows)
                folder_pids = [int(rel.split("/")[1]) for rel, _ in rows]
                expected = {pid: i for i, pid in enumerate(sorted(set(folder_pids)))}
                assert [label for _, label in rows] == [expected[p] for p in folder_pids]
                assert Counter(folder_pids) == {p: TINY.regdb_images for p in expected}
            assert [int(r.split("/")[1]) for r, _ in vis] == [int(r.split("/")[1]) for r, _ in th]
            part_pids[part] = {int(rel.split("/")[1]) for rel, _ in vis}
            assert counts["trials"][str(t)][f"{part}_visible"] == len(vis)
            assert counts["trials"][str(t)][f"{part}_thermal"] == len(th)
        assert part_pids["train"].isdisjoint(part_pids["test"])
        assert sorted(part_pids["train"] | part_pids["test"]) == pids
        assert len(part_pids["train"]) == 4 and counts["trials"][str(t)]["train_ids"] == 4
        splits.append(part_pids["train"])
    assert len({frozenset(s) for s in splits}) > 1  # trials differ


def test_regdb_images_are_bitmaps(regdb):
    root, _ = regdb
    vis = np.asarray(Image.open(root / "Visible/0001/01.bmp"))
    th = np.asarray(Image.open(root / "Thermal/0001/01.bmp"))
    assert vis.shape == th.shape == (32, 16, 3)
    assert np.array_equal(th[..., 0], th[..., 2])


def test_llcm_tree_matches_counts_and_idx(llcm):
    root, counts = llcm
    pools = make_identities(TINY)
    train_pids, test_pids = [i.pid for i in pools["train"]], [i.pid for i in pools["test"]]
    assert read_ids(root / "idx" / "test_id.txt") == test_pids
    assert counts["ids"] == {"train": 5, "test": 4}
    for folder, n_cams in (("train_vis", 9), ("train_nir", 8), ("test_vis", 9), ("test_nir", 8)):
        on_disk = Counter(p.parts[-3] for p in files(root / folder, "cam*/*/*.jpg"))
        assert {k: v for k, v in counts["images"][folder].items() if v} == dict(on_disk)
        assert len(counts["images"][folder]) == n_cams
        split = folder.split("_")[0]
        pids = train_pids if split == "train" else test_pids
        per_id = Counter(int(p.parts[-2]) for p in files(root / folder, "cam*/*/*.jpg"))
        assert per_id == {p: TINY.llcm_cams_per_id * TINY.images_per_cam for p in pids}
        rows = read_idx(root / "idx" / f"{folder}.txt")
        on_disk_paths = [str(p.relative_to(root)) for p in files(root / folder, "cam*/*/*.jpg")]
        assert sorted(r for r, _ in rows) == sorted(on_disk_paths)
        label = {pid: i for i, pid in enumerate(sorted(pids))}
        assert all(lab == label[int(rel.split("/")[2])] for rel, lab in rows)
    assert not (root / "train_nir" / "cam3").exists() and not (root / "test_nir" / "cam3").exists()
    name = files(root / "test_nir", "cam*/*/*.jpg")[0]
    pid, cam = int(name.parts[-2]), int(name.parts[-3][3:])
    assert re.fullmatch(rf"{pid:04d}_c{cam:02d}_s\d{{6}}_f\d{{4}}_nir\.jpg", name.name)
    assert sum(sum(v.values()) for v in counts["images"].values()) == counts["total_images"]


def test_failed_write_leaves_no_tree(tmp_path, monkeypatch):
    calls = []
    real = layouts.render_image

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) > 5:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(layouts, "render_image", flaky)
    root = tmp_path / "SYSU-MM01"
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_sysu(TINY, root)
    assert not root.exists()
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []


def test_finished_tree_is_reused_and_other_config_refused(tmp_path, monkeypatch, sysu):
    root, counts = sysu
    monkeypatch.setattr(layouts, "render_image", lambda *a, **k: pytest.fail("re-rendered a finished tree"))
    assert write_sysu(TINY, root) == counts
    with pytest.raises(FileExistsError, match="another config"):
        write_sysu(dataclasses.replace(TINY, seed=9), root)
    with pytest.raises(FileExistsError, match="another config"):
        write_regdb(TINY, root)


def test_existing_foreign_directory_is_left_alone(tmp_path):
    root = tmp_path / "mydata"
    root.mkdir()
    (root / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a finished SynthVI tree"):
        write_llcm(TINY, root)
    assert (root / "precious.txt").read_text() == "keep me"


def test_load_metadata_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="synthvi.json"):
        load_metadata(tmp_path)
    (tmp_path / "synthvi.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_metadata(tmp_path)
    (tmp_path / "synthvi.json").write_text('{"layout": "sysu"}')
    with pytest.raises(ValueError, match="not SynthVI metadata"):
        load_metadata(tmp_path)


def test_write_layout_dispatches_and_rejects_unknown(tmp_path):
    with pytest.raises(ValueError, match="unknown SynthVI layout"):
        write_layout("market1501", TINY, tmp_path / "x")
    small = dataclasses.replace(TINY, train_ids=2, val_ids=1, test_ids=2, regdb_trials=1)
    assert write_layout("regdb", small, tmp_path / "r")["ids"] == 4


def test_describe_counts_says_what_the_config_numbers_become(sysu, llcm):
    text = layouts.describe_counts(sysu[1], TINY)
    assert text.startswith("identities: train 3, val 2, test 4 (the config's train_ids=5 counts training and")
    assert text.index("  train:") < text.index("  val:") < text.index("  test:")
    assert text.endswith(f"{sysu[1]['total_images']} images in all")
    counts = dict(llcm[1], images={**llcm[1]["images"], "train_vis": {**llcm[1]["images"]["train_vis"], "cam9": 0}})
    text = layouts.describe_counts(counts, TINY)
    note = next(line for line in text.splitlines() if line.startswith("no images in "))
    assert "train_vis cam9" in note and "each identity is seen by llcm_cams_per_id=2" in note
    assert "no images in" not in layouts.describe_counts({**llcm[1], "images": {"train_vis": {"cam1": 2}}}, TINY)
