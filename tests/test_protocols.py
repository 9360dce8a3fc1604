"""Protocol drivers on small fake datasets with hand-placed features (expected values in comments)."""

import json
import random

import numpy as np
import pytest
import torch

from csdn.data.llcm import LLCM
from csdn.data.records import INFRARED, VISIBLE, Record
from csdn.data.regdb import RegDB
from csdn.data.registry import DATASETS
from csdn.data.sysu import SYSUMM01
from csdn.eval.metrics import evaluate
from csdn.eval.protocols import (
    ProtocolResult,
    evaluate_by_query_camera,
    evaluate_features,
    evaluate_llcm,
    evaluate_regdb,
    evaluate_sysu,
    once_per_image,
)
from csdn.eval.rerank import RerankConfig, k_reciprocal_rerank

RULES = {name: reader.rules for name, reader in DATASETS.items()}  # gallery rules by dataset name

E1, E2, MIX = (1.0, 0.0), (0.0, 1.0), (0.8, 0.6)


def rec(name, pid, cam, modality=VISIBLE):
    return Record(f"/data/{name}.jpg", pid, cam, modality)


class Lookup:
    """features_of from a {path: vector} table; remembers every call."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def __call__(self, records):
        self.calls.append(list(records))
        return torch.tensor([self.table[r.path] for r in records], dtype=torch.float32)


class HandSYSU(SYSUMM01):
    """Two infrared queries; trial 0 is an easy gallery, trial 1 a harder one."""

    query = [rec("q1", 1, 3, INFRARED), rec("q2", 2, 6, INFRARED)]
    galleries = {
        0: [rec("g0a", 1, 1), rec("g0b", 2, 1)],
        1: [rec("g1a", 1, 2), rec("g1b", 2, 1), rec("g1c", 1, 4)],
    }
    table = {
        "/data/q1.jpg": E1,
        "/data/q2.jpg": E2,
        "/data/g0a.jpg": E1,
        "/data/g0b.jpg": E2,
        "/data/g1a.jpg": E1,
        "/data/g1b.jpg": MIX,
        "/data/g1c.jpg": E2,
    }

    def __init__(self):
        self.gallery_calls = []

    def gallery(self, trial, mode="all", shots=1):
        self.gallery_calls.append((trial, mode, shots))
        return list(self.galleries[trial])


def test_sysu_trials_golden_and_features_extracted_once():
    # Trial 0: both queries find their identity first -> R1 = mAP = mINP = 1.
    # Trial 1: q1 (cam3, e1) ignores g1a (cam2): ranked g1b (pid2, .8), g1c (pid1, 0) -> hit at 2.
    #          q2 (e2): ranked g1c (pid1, 1), g1b (pid2, .6), g1a (pid1, 0) -> hit at 2.
    #          R1 = 0, R2 = 1, AP = INP = 1/2 for both.
    data, features_of = HandSYSU(), Lookup(HandSYSU.table)
    result = evaluate_sysu(features_of, data, mode="indoor", shots=1, trials=2)
    assert data.gallery_calls == [(0, "indoor", 1), (1, "indoor", 1)]
    assert result.name == "SYSU-MM01 indoor-search single-shot" and result.trials == (0, 1)
    assert [m.r1 for m in result.per_trial] == [1.0, 0.0]
    assert result.r1 == pytest.approx(0.5) and result.rank(2) == pytest.approx(1.0)
    assert result.mAP == pytest.approx(0.75) and result.mINP == pytest.approx(0.75)
    # One call for the queries, one for the union of the galleries (each image once).
    assert len(features_of.calls) == 2
    assert features_of.calls[0] == HandSYSU.query
    assert sorted(r.path for r in features_of.calls[1]) == sorted(
        r.path for g in HandSYSU.galleries.values() for r in g
    )


def test_results_per_query_camera_golden():
    # The trials of test_sysu_trials_golden..., split by the query's camera: q1 (cam 3) hits at 1 then 2,
    # q2 (cam 6) hits at 1 then 2 -> each camera: R1 0.5, mAP 0.75.
    from csdn.data.protocol import EvalSplit

    data = HandSYSU()
    split = EvalSplit("indoor", "SYSU indoor", tuple(HandSYSU.query), data.gallery, (0, 1), RULES["sysu"])
    features_of = Lookup(HandSYSU.table)
    per_camera = evaluate_by_query_camera(features_of, split)
    assert list(per_camera) == [3, 6]
    assert [r.name for r in per_camera.values()] == ["SYSU indoor, query camera 3", "SYSU indoor, query camera 6"]
    assert all(r.r1 == pytest.approx(0.5) and r.mAP == pytest.approx(0.75) for r in per_camera.values())
    computed = [r.path for call in features_of.calls for r in call]
    assert len(computed) == len(set(computed)) == 2 + 5  # each query and gallery image once


def test_sysu_equals_direct_evaluation_per_trial_and_shares_gallery_images():
    rng = np.random.default_rng(0)
    query = [rec(f"q{i}", i % 4, 3 + 3 * (i % 2), INFRARED) for i in range(12)]
    pool = [rec(f"g{i}", i % 4, 1 + i % 5, VISIBLE) for i in range(40)]
    table = {r.path: tuple(rng.normal(size=6)) for r in query + pool}

    class Data(SYSUMM01):
        def __init__(self):
            pass

        @property
        def query(self):
            return query

        def gallery(self, trial, mode="all", shots=1):
            return random.Random(trial).sample(pool, 15)  # trials overlap in images

    features_of = Lookup(table)
    result = evaluate_sysu(features_of, Data(), shots=10, trials=[3, 7])
    assert result.name == "SYSU-MM01 all-search multi-shot" and result.trials == (3, 7)
    union = features_of.calls[1]
    assert len(union) == len(set(union)) < 30
    q = torch.tensor([table[r.path] for r in query])
    for trial, m in zip((3, 7), result.per_trial):
        gallery = Data().gallery(trial)
        g = torch.tensor([table[r.path] for r in gallery])
        direct = evaluate(
            q @ g.T,
            [r.pid for r in query],
            [r.pid for r in gallery],
            [r.cam for r in query],
            [r.cam for r in gallery],
            rules=RULES["sysu"],
            higher_is_better=True,
            dedup_ids=True,
        )
        np.testing.assert_allclose(m.cmc, direct.cmc)
        assert m.mAP == pytest.approx(direct.mAP) and m.mINP == pytest.approx(direct.mINP)


def test_rerank_option_uses_reranked_distances():
    data, features_of = HandSYSU(), Lookup(HandSYSU.table)
    config = RerankConfig(k1=2, k2=1, lambda_value=0.5)
    result = evaluate_sysu(features_of, data, trials=[1], rerank=config)
    q = torch.tensor([HandSYSU.table[r.path] for r in HandSYSU.query])
    gallery = HandSYSU.galleries[1]
    g = torch.tensor([HandSYSU.table[r.path] for r in gallery])
    dist = k_reciprocal_rerank(q, g, k1=2, k2=1, lambda_value=0.5)
    direct = evaluate(
        dist,
        [1, 2],
        [r.pid for r in gallery],
        [3, 6],
        [r.cam for r in gallery],
        rules=RULES["sysu"],
        higher_is_better=False,
    )
    np.testing.assert_allclose(result.per_trial[0].cmc, direct.cmc)
    assert result.mAP == pytest.approx(direct.mAP)
    assert evaluate_sysu(Lookup(HandSYSU.table), HandSYSU(), trials=[0], rerank=True).r1 == 1.0


class FakeLLCM(LLCM):
    """Identities 1, 2; cameras 1, 2 in both modalities; one image per (modality, id, camera, k)."""

    def __init__(self):
        self.records = [
            rec(f"{m}{pid}c{cam}k{k}", pid, cam, m)
            for m in (VISIBLE, INFRARED)
            for pid in (1, 2)
            for cam in (1, 2)
            for k in (0, 1)
        ]

    def query(self, direction):
        modality = direction.split("->")[0]
        return [r for r in self.records if r.modality == modality]

    def gallery(self, direction, trial):
        modality = direction.split("->")[1]
        return [r for r in self.records if r.modality == modality and r.path.endswith(f"k{trial}.jpg")]


def test_llcm_directions_and_same_camera_removal():
    data = FakeLLCM()
    # Identity direction + a camera offset: each query's best match is its own pid's same-camera image.
    table = {
        r.path: (float(r.pid == 1), float(r.pid == 2), 0.5 * (r.cam == 1), 0.5 * (r.cam == 2)) for r in data.records
    }
    for direction, query_modality in (("visible->infrared", VISIBLE), ("infrared->visible", INFRARED)):
        features_of = Lookup(table)
        result = evaluate_llcm(features_of, data, direction, trials=2)
        assert result.name == f"LLCM {direction}" and result.trials == (0, 1)
        assert {r.modality for r in features_of.calls[0]} == {query_modality}
        assert {r.modality for r in features_of.calls[1]} != {query_modality}
        # The same-pid-same-cam image is removed; the other-camera image of the pid still ranks first.
        assert result.r1 == 1.0 and result.mAP == 1.0
        assert all(m.num_valid_queries == m.num_queries == 8 for m in result.per_trial)
    with pytest.raises(ValueError, match="direction"):
        evaluate_llcm(Lookup(table), data, "visible->thermal")


def test_llcm_only_match_in_same_camera_is_not_valid():
    query = [rec("q", 1, 1)]

    class Data(LLCM):
        def __init__(self):
            pass

        def query(self, direction):
            return query

        def gallery(self, direction, trial):
            return [rec("same", 1, 1, INFRARED), rec("other", 2, 2, INFRARED), rec("mine", 1, 2, INFRARED)]

    table = {"/data/q.jpg": E1, "/data/same.jpg": E1, "/data/other.jpg": MIX, "/data/mine.jpg": E2}
    m = evaluate_llcm(Lookup(table), Data(), "visible->infrared", trials=1).per_trial[0]
    # "same" removed: ranked other (pid2), mine (pid1) -> first hit at 2.
    np.testing.assert_allclose(m.cmc[:3], [0, 1, 1])


class FakeRegDB(RegDB):
    """Two identities, two images each per modality; cam 1 visible, cam 2 thermal."""

    def __init__(self, trial):
        self.trial = trial
        self.test_visible = [rec(f"t{self.trial}v{p}{k}", p, 1) for p in (0, 1) for k in (0, 1)]
        self.test_thermal = [rec(f"t{self.trial}t{p}{k}", p, 2, INFRARED) for p in (0, 1) for k in (0, 1)]


def regdb_model(trial):
    """Trial 1: identity features (perfect). Trial 2: thermal features swapped between identities."""

    def features_of(records):
        pids = [r.pid if trial == 1 or r.modality == VISIBLE else 1 - r.pid for r in records]
        return torch.eye(2)[pids]

    return features_of


def test_regdb_one_model_per_trial():
    seen = []

    def dataset_of(trial):
        seen.append(trial)
        return FakeRegDB(trial)

    result = evaluate_regdb(regdb_model, dataset_of, "thermal->visible", trials=2)
    assert seen == [1, 2] and result.trials == (1, 2) and result.name == "RegDB thermal->visible"
    # Trial 1 perfect. Trial 2: each query scores 1 with the other identity's two images and 0 with
    # its own: hits at ranks 3, 4 -> AP = (1/3 + 2/4)/2 = 5/12, INP = 2/4.
    assert [m.r1 for m in result.per_trial] == [1.0, 0.0]
    assert result.per_trial[1].mAP == pytest.approx(5 / 12)
    assert result.mAP == pytest.approx((1 + 5 / 12) / 2)
    assert result.mINP == pytest.approx((1 + 0.5) / 2)


def test_regdb_from_a_root_folder(tmp_path):
    (tmp_path / "idx").mkdir()
    for folder, kind in (("Visible", "visible"), ("Thermal", "thermal")):
        lines = []
        for pid in (0, 1):
            for k in (0, 1):
                path = tmp_path / folder / f"{pid}" / f"{k}.bmp"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"")
                lines.append(f"{folder}/{pid}/{k}.bmp {pid}")
        for split in ("train", "test"):
            (tmp_path / "idx" / f"{split}_{kind}_1.txt").write_text("\n".join(lines) + "\n")
    result = evaluate_regdb(
        lambda t: lambda records: torch.eye(2)[[r.pid for r in records]], tmp_path, "visible->infrared", trials=[1]
    )
    assert result.name == "RegDB visible->thermal" and result.r1 == 1.0 and result.mAP == 1.0


def test_table_and_dict():
    result = evaluate_sysu(Lookup(HandSYSU.table), HandSYSU(), trials=2, max_rank=5)
    text = result.table()
    lines = text.splitlines()
    assert lines[0] == "SYSU-MM01 all-search single-shot (2 trials)"
    assert lines[1].split() == ["trial", "R1", "R5", "mAP", "mINP"]
    assert lines[2].split() == ["0", "100.00", "100.00", "100.00", "100.00"]
    assert lines[3].split() == ["1", "0.00", "100.00", "50.00", "50.00"]
    assert lines[4].split() == ["mean", "50.00", "100.00", "75.00", "75.00"]
    assert lines[5].split() == ["std", "50.00", "0.00", "25.00", "25.00"]
    assert str(result) == text
    data = json.loads(json.dumps(result.to_dict()))
    assert data["mean"] == {"r1": 0.5, "r5": 1.0, "mAP": 0.75, "mINP": 0.75}
    assert data["trials"] == [0, 1] and len(data["cmc"]) == 5
    assert data["per_trial"][1]["trial"] == 1 and data["per_trial"][1]["num_valid_queries"] == 2


def test_evaluate_features_dot_product():
    query, gallery = [rec("a", 1, 1)], [rec("b", 2, 2), rec("c", 1, 2)]
    q, g = torch.tensor([E1]), torch.tensor([MIX, E1])
    m = evaluate_features(q, g, query, gallery, rules=RULES["regdb"])
    assert m.r1 == 1.0 and m.num_queries == 1


def test_bad_input_is_rejected():
    data = HandSYSU()
    with pytest.raises(ValueError, match=r"features_of must return a \(2, D\) tensor"):
        evaluate_sysu(lambda records: torch.zeros(1, 2), data, trials=1)
    with pytest.raises(ValueError, match="trials must be >= 1"):
        evaluate_sysu(Lookup(HandSYSU.table), data, trials=0)
    with pytest.raises(ValueError, match="at least one trial"):
        evaluate_sysu(Lookup(HandSYSU.table), data, trials=[])

    class EmptyGallery(HandSYSU):
        def gallery(self, trial, mode="all", shots=1):
            return [] if trial == 1 else super().gallery(trial, mode, shots)

    with pytest.raises(ValueError, match="trial 1 is empty"):
        evaluate_sysu(Lookup(HandSYSU.table), EmptyGallery(), trials=2)
    with pytest.raises(ValueError, match="one Metrics per trial"):
        ProtocolResult("x", (0, 1), ())


def test_removed_between_is_the_per_query_rule_for_every_query():
    query = [rec("q1", 1, 3, INFRARED), rec("q2", 2, 6, INFRARED)]
    gallery = [rec("g1", 1, 2), rec("g2", 2, 6), rec("g3", 1, 1)]
    for rules in (RULES["sysu"], RULES["llcm"], RULES["regdb"]):
        removed = rules.removed_between(query, gallery)
        assert removed.shape == (2, 3)
        assert all(torch.equal(~removed[i], rules.kept(q, gallery)) for i, q in enumerate(query))
    # SYSU: a camera-3 query ignores camera 2; LLCM: a query ignores its identity on its own camera
    assert RULES["sysu"].removed_between(query, gallery).tolist() == [[True, False, False], [False, False, False]]
    assert RULES["llcm"].removed_between(query, gallery).tolist() == [[False, False, False], [False, True, False]]


def test_once_per_image_serves_both_directions_from_one_pass():
    """Both LLCM directions rank the same images: with once_per_image each is computed once, same metrics."""
    data = FakeLLCM()
    table = {
        r.path: (float(r.pid == 1), float(r.pid == 2), 0.5 * (r.cam == 1), 0.5 * (r.cam == 2)) for r in data.records
    }
    plain, counted = Lookup(table), Lookup(table)
    shared = once_per_image(counted)
    for direction in ("visible->infrared", "infrared->visible"):
        expected = evaluate_llcm(plain, data, direction, trials=2)
        got = evaluate_llcm(shared, data, direction, trials=2)
        assert [m.mAP for m in got.per_trial] == [m.mAP for m in expected.per_trial]
    computed = [r.path for call in counted.calls for r in call]
    assert len(computed) == len(set(computed))  # every image once
    assert len(computed) < len([r for call in plain.calls for r in call])  # the plain calls repeat images
    assert shared([]).shape[0] == 0 and shared(data.records[:2]).shape == (2, 4)
