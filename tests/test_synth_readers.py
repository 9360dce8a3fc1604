"""The real dataset readers read SynthVI trees exactly as the writers intended."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from csdn.data.llcm import LLCM
from csdn.data.records import INFRARED, VISIBLE, count_summary
from csdn.data.regdb import RegDB
from csdn.data.sysu import SYSUMM01
from csdn.synthvi.layouts import load_metadata, regdb_split, write_llcm, write_regdb, write_sysu
from csdn.synthvi.world import SynthConfig, make_identities

TINY = SynthConfig(
    seed=5,
    height=32,
    width=16,
    clip_ids=2,
    train_ids=6,
    val_ids=2,
    test_ids=5,
    images_per_cam=3,
    llcm_cams_per_id=3,
    regdb_images=2,
    regdb_trials=2,
)
K = TINY.images_per_cam


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    base = tmp_path_factory.mktemp("synthvi")
    return {
        name: (base / name, writer(TINY, base / name))
        for name, writer in (("sysu", write_sysu), ("regdb", write_regdb), ("llcm", write_llcm))
    }


def per_cam(records) -> dict[str, int]:
    return {f"cam{c}": n for c, n in sorted(Counter(r.cam for r in records).items())}


def test_sysu_reader_splits_and_counts(trees):
    root, counts = trees["sysu"]
    meta = load_metadata(root)
    data = SYSUMM01(root)
    assert (data.train_ids, data.val_ids, data.test_ids) == (
        meta["splits"]["train"],
        meta["splits"]["val"],
        meta["splits"]["test"],
    )
    train = data.train  # train + val ids
    expected_train = {c: counts["images"]["train"][c] + counts["images"]["val"][c] for c in counts["images"]["train"]}
    assert per_cam(train) == expected_train
    assert count_summary(train)["ids"] == counts["ids"]["train"] + counts["ids"]["val"]
    held = SYSUMM01(root, hold_out_val=True)
    assert per_cam(held.train) == counts["images"]["train"]
    assert per_cam(held.val) == counts["images"]["val"]
    assert {r.pid for r in held.train}.isdisjoint({r.pid for r in held.val})


def test_sysu_reader_query_and_galleries(trees):
    root, counts = trees["sysu"]
    data = SYSUMM01(root)
    n_test = counts["ids"]["test"]
    query = data.query
    assert len(query) == counts["modality_images"]["test"]["infrared"] == n_test * 2 * K
    assert {r.cam for r in query} == {3, 6} and {r.modality for r in query} == {INFRARED}
    single = data.gallery(trial=0, mode="all", shots=1)
    assert len(single) == n_test * 4
    assert Counter((r.pid, r.cam) for r in single) == {(p, c): 1 for p in data.test_ids for c in (1, 2, 4, 5)}
    indoor = data.gallery(trial=0, mode="indoor", shots=1)
    assert len(indoor) == n_test * 2 and {r.cam for r in indoor} == {1, 2}
    multi = data.gallery(trial=3, mode="all", shots=10)
    assert len(multi) == n_test * 4 * min(10, K)  # every image of a (id, cam) when it has fewer than 10
    assert {r.modality for r in single + indoor + multi} == {VISIBLE}
    assert all(Path(r.path).is_file() for r in query + single)


def test_regdb_reader_every_trial(trees):
    root, counts = trees["regdb"]
    r_img = TINY.regdb_images
    pids = [i.pid for i in make_identities(TINY)["train"] + make_identities(TINY)["test"]]
    for t in range(1, TINY.regdb_trials + 1):
        data = RegDB(root, t)
        expected = counts["trials"][str(t)]
        train_pids, test_pids = regdb_split(TINY, pids, t)
        vis = [r for r in data.train if r.modality == VISIBLE]
        th = [r for r in data.train if r.modality == INFRARED]
        assert (len(vis), len(th)) == (expected["train_visible"], expected["train_thermal"])
        assert (len(data.test_visible), len(data.test_thermal)) == (expected["test_visible"], expected["test_thermal"])
        # labels are contiguous per file, each identity with regdb_images images per modality
        for records, n_ids in (
            (vis, len(train_pids)),
            (th, len(train_pids)),
            (data.test_visible, len(test_pids)),
            (data.test_thermal, len(test_pids)),
        ):
            assert Counter(r.pid for r in records) == {label: r_img for label in range(n_ids)}
        # the same person has the same label in both modalities
        folder_pid = lambda r: int(Path(r.path).parent.name)  # noqa: E731
        assert {(r.pid, folder_pid(r)) for r in vis} == {(r.pid, folder_pid(r)) for r in th}
        assert sorted({folder_pid(r) for r in data.test_thermal}) == test_pids
        assert {r.cam for r in vis} == {1} and {r.cam for r in th} == {2}
        split = data.direction_split("infrared->visible")
        query, gallery = split.query, split.gallery()
        assert len(query) == len(test_pids) * r_img and len(gallery) == len(test_pids) * r_img


def test_llcm_reader_train_query_gallery(trees):
    root, counts = trees["llcm"]
    data = LLCM(root)
    pools = make_identities(TINY)
    assert data.test_ids == [i.pid for i in pools["test"]]
    train = data.train
    for modality, folder in ((VISIBLE, "train_vis"), (INFRARED, "train_nir")):
        records = [r for r in train if r.modality == modality]
        assert per_cam(records) == {c: n for c, n in counts["images"][folder].items() if n}
        assert set(r.pid for r in records) == set(range(counts["ids"]["train"]))  # contiguous labels
    for direction, q_folder, g_folder in (
        ("infrared->visible", "test_nir", "test_vis"),
        ("visible->infrared", "test_vis", "test_nir"),
    ):
        query = data.query(direction)
        assert per_cam(query) == {c: n for c, n in counts["images"][q_folder].items() if n}
        gallery = data.gallery(direction, trial=1)
        # one image per (test id, camera that saw it) in the gallery modality
        assert len(gallery) == TINY.llcm_cams_per_id * counts["ids"]["test"]
        assert sum(counts["images"][g_folder].values()) == len(gallery) * K
        assert len({(r.pid, r.cam) for r in gallery}) == len(gallery)
    assert 3 not in {r.cam for r in data.query("infrared->visible")}
