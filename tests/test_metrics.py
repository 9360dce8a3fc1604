"""Golden and property tests for csdn.eval.metrics (expected values worked out by hand in comments)."""

import numpy as np
import pytest
import torch

from csdn.data.registry import DATASETS
from csdn.eval import metrics as metrics_module
from csdn.eval.metrics import evaluate, rank_gallery

RULES = {name: reader.rules for name, reader in DATASETS.items()}  # gallery rules by dataset name


def run(scores, q_pids, g_pids, q_cams=None, g_cams=None, *, protocol="regdb", higher=True, dedup=None, max_rank=5):
    q_cams = [1] * len(q_pids) if q_cams is None else q_cams
    g_cams = [1] * len(g_pids) if g_cams is None else g_cams
    return evaluate(
        np.asarray(scores, dtype=float),
        q_pids,
        g_pids,
        q_cams,
        g_cams,
        rules=RULES[protocol],
        higher_is_better=higher,
        dedup_ids=dedup,
        max_rank=max_rank,
    )


def test_regdb_distances_golden():
    # Query 0 (pid 1): ranked pids 2,3,1,1,2 -> hits at 3,4: AP=(1/3+2/4)/2=5/12, INP=2/4, first=3.
    # Query 1 (pid 2): ranked pids 2,1,1,3,2 -> hits at 1,5: AP=(1/1+2/5)/2=0.7, INP=2/5, first=1.
    dist = [[0.5, 0.1, 0.3, 0.2, 0.9], [0.2, 0.4, 0.1, 0.3, 0.05]]
    m = run(dist, [1, 2], [1, 2, 1, 3, 2], higher=False)
    np.testing.assert_allclose(m.cmc, [0.5, 0.5, 1.0, 1.0, 1.0])
    assert m.mAP == pytest.approx((5 / 12 + 0.7) / 2)
    assert m.mINP == pytest.approx((0.5 + 0.4) / 2)
    assert (m.num_queries, m.num_valid_queries) == (2, 2)
    assert m.r1 == 0.5 and m.rank(3) == 1.0


def test_ties_keep_gallery_order():
    # Equal scores: the lower gallery index ranks first. pids 2,1,2,1 -> hits at 2,4.
    m = run([[0.9, 0.9, 0.5, 0.5]], [1], [2, 1, 2, 1], max_rank=4)
    np.testing.assert_allclose(m.cmc, [0, 1, 1, 1])
    assert m.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert m.mINP == pytest.approx(2 / 4)
    # Same scores, pids swapped within each tie: hits at 1,3 -> AP=(1+2/3)/2, INP=2/3.
    m = run([[0.9, 0.9, 0.5, 0.5]], [1], [1, 2, 1, 2], max_rank=4)
    np.testing.assert_allclose(m.cmc, [1, 1, 1, 1])
    assert m.mAP == pytest.approx((1 + 2 / 3) / 2)
    assert m.mINP == pytest.approx(2 / 3)
    order = rank_gallery(torch.tensor([[0.5, 0.9, 0.5, 0.9]]), higher_is_better=True)
    assert order.tolist() == [[1, 3, 0, 2]]
    order = rank_gallery(torch.tensor([[0.5, 0.9, 0.5, 0.9]]), higher_is_better=False)
    assert order.tolist() == [[0, 2, 1, 3]]


def test_signed_zeros_tie_and_precision_does_not_matter():
    # -0.0 == 0.0: a tie, broken by gallery index. pids 2,1 -> the wrong one first.
    m = run([[-0.0, 0.0]], [1], [2, 1], max_rank=2)
    np.testing.assert_allclose(m.cmc, [0, 1])
    m = run([[0.0, -0.0]], [1], [2, 1], higher=False, max_rank=2)
    np.testing.assert_allclose(m.cmc, [0, 1])
    scores, q_pids, g_pids, q_cams, g_cams = random_problem(seed=5)
    args = (q_pids, g_pids, q_cams, g_cams)
    as32 = scores.astype(np.float32)
    same(
        evaluate(as32, *args, rules=RULES["llcm"], higher_is_better=True),
        evaluate(as32.astype(np.float64), *args, rules=RULES["llcm"], higher_is_better=True),
    )


def test_query_without_match_is_skipped_and_counted():
    dist = [[0.5, 0.1, 0.3, 0.2, 0.9], [0.2, 0.4, 0.1, 0.3, 0.05], [0.1, 0.2, 0.3, 0.4, 0.5]]
    with_orphan = run(dist, [1, 2, 9], [1, 2, 1, 3, 2], higher=False)
    without = run(dist[:2], [1, 2], [1, 2, 1, 3, 2], higher=False)
    assert (with_orphan.num_queries, with_orphan.num_valid_queries) == (3, 2)
    np.testing.assert_allclose(with_orphan.cmc, without.cmc)
    assert with_orphan.mAP == pytest.approx(without.mAP)
    assert with_orphan.mINP == pytest.approx(without.mINP)


def test_sysu_cam3_query_ignores_every_cam2_gallery_image():
    # Scores rank the gallery in index order: (pid3,cam2) (pid1,cam2) (pid2,cam1) (pid1,cam1).
    g_pids, g_cams = [3, 1, 2, 1], [2, 2, 1, 1]
    scores = [[0.9, 0.8, 0.7, 0.6]]
    # cam3 query: both cam2 images go (the negative too) -> list pid2, pid1: hit at 2 of 2.
    m = run(scores, [1], g_pids, [3], g_cams, protocol="sysu", max_rank=4)
    np.testing.assert_allclose(m.cmc, [0, 1, 1, 1])
    assert m.mAP == pytest.approx(1 / 2) and m.mINP == pytest.approx(1 / 2)
    # cam6 query: nothing removed -> pids 3,1,2,1: hits at 2,4.
    m = run(scores, [1], g_pids, [6], g_cams, protocol="sysu", max_rank=4)
    np.testing.assert_allclose(m.cmc, [0, 1, 1, 1])
    assert m.mAP == pytest.approx((1 / 2 + 2 / 4) / 2) and m.mINP == pytest.approx(2 / 4)
    # A cam3 query whose only match is in cam2 has no valid match.
    m = run([[0.9, 0.8, 0.7, 0.6]] * 2, [1, 3], [1, 2, 3, 2], [6, 3], [1, 1, 2, 1], protocol="sysu")
    assert (m.num_queries, m.num_valid_queries) == (2, 1)
    # With every gallery image in cam 2, cam-3 queries have nothing left; cam-6 queries are unaffected.
    m = run([[0.9, 0.8]] * 2, [1, 2], [1, 2], [3, 6], [2, 2], protocol="sysu")
    assert (m.num_queries, m.num_valid_queries) == (2, 1) and m.r1 == 0 and m.rank(2) == 1
    # The same filter is not applied under RegDB.
    m = run([[0.9, 0.8, 0.7, 0.6]], [3], [1, 2, 3, 2], [3], [1, 1, 2, 1], protocol="regdb")
    assert m.num_valid_queries == 1 and m.r1 == 0


def test_multi_shot_dedup_counts_each_identity_once():
    # Ranked pids 2,2,3,1,2,1. Raw: hits at 4 and 6. Deduplicated list 2,3,1: hit at rank 3.
    scores = [[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]]
    g_pids = [2, 2, 3, 1, 2, 1]
    dedup = run(scores, [1], g_pids, [6], [1] * 6, protocol="sysu", dedup=True, max_rank=6)
    raw = run(scores, [1], g_pids, [6], [1] * 6, protocol="sysu", dedup=False, max_rank=6)
    np.testing.assert_allclose(dedup.cmc, [0, 0, 1, 1, 1, 1])
    np.testing.assert_allclose(raw.cmc, [0, 0, 0, 1, 1, 1])
    # mAP and mINP use every positive, deduplicated or not: AP=(1/4+2/6)/2, INP=2/6.
    for m in (dedup, raw):
        assert m.mAP == pytest.approx(7 / 24) and m.mINP == pytest.approx(1 / 3)
    # SYSU's default is deduplication.
    np.testing.assert_allclose(run(scores, [1], g_pids, [6], [1] * 6, protocol="sysu", max_rank=6).cmc, dedup.cmc)


def test_dedup_after_the_cam_filter():
    # Ranked (pid,cam): (2,1) (3,2) (2,4) (1,1). cam3 query: kept 2,2,1 -> raw 3, dedup 2.
    scores = [[0.9, 0.8, 0.7, 0.6]]
    g_pids, g_cams = [2, 3, 2, 1], [1, 2, 4, 1]
    m = run(scores, [1], g_pids, [3], g_cams, protocol="sysu", dedup=True, max_rank=4)
    np.testing.assert_allclose(m.cmc, [0, 1, 1, 1])
    m = run(scores, [1], g_pids, [3], g_cams, protocol="sysu", dedup=False, max_rank=4)
    np.testing.assert_allclose(m.cmc, [0, 0, 1, 1])
    # cam6 query keeps all: 2,3,2,1 -> dedup 2,3,1 -> rank 3.
    m = run(scores, [1], g_pids, [6], g_cams, protocol="sysu", dedup=True, max_rank=4)
    np.testing.assert_allclose(m.cmc, [0, 0, 1, 1])


def test_llcm_removes_same_pid_same_cam_only():
    # Query pid1 cam2. Ranked (pid,cam): (1,2) (2,2) (1,1) (3,3) (1,4).
    # (1,2) is removed; (2,2) stays. Kept pids 2,1,3,1: hits at 2,4 -> AP=(1/2+2/4)/2, INP=2/4.
    scores = [[0.9, 0.8, 0.7, 0.6, 0.5]]
    m = run(scores, [1], [1, 2, 1, 3, 1], [2], [2, 2, 1, 3, 4], protocol="llcm")
    np.testing.assert_allclose(m.cmc, [0, 1, 1, 1, 1])
    assert m.mAP == pytest.approx(0.5) and m.mINP == pytest.approx(0.5)
    # Ranked (1,2) (2,2) (2,1) (1,1): kept 2,2,1 -> raw rank 3, deduplicated rank 2 (LLCM default).
    scores = [[0.9, 0.8, 0.7, 0.6]]
    m = run(scores, [1], [1, 2, 2, 1], [2], [2, 2, 1, 1], protocol="llcm", max_rank=4)
    np.testing.assert_allclose(m.cmc, [0, 1, 1, 1])
    m = run(scores, [1], [1, 2, 2, 1], [2], [2, 2, 1, 1], protocol="llcm", dedup=False, max_rank=4)
    np.testing.assert_allclose(m.cmc, [0, 0, 1, 1])


def test_max_rank_beyond_gallery_saturates():
    m = run([[0.1, 0.9]], [1], [1, 2], max_rank=20)
    assert m.cmc.shape == (20,)
    np.testing.assert_allclose(m.cmc, [0] + [1] * 19)
    assert m.to_dict()["r20"] == 1.0 and m.to_dict()["num_valid_queries"] == 1


def reference_loop(scores, q_pids, g_pids, q_cams, g_cams, protocol, dedup, max_rank):
    """One query at a time, written plainly from the metric definitions."""
    cmc_hits, aps, inps = np.zeros(max_rank), [], []
    for q in range(len(q_pids)):
        order = np.argsort(-scores[q], kind="stable")
        keep = []
        for g in order:
            if protocol == "sysu" and q_cams[q] == 3 and g_cams[g] == 2:
                continue
            if protocol == "llcm" and g_pids[g] == q_pids[q] and g_cams[g] == q_cams[q]:
                continue
            keep.append(g)
        hits = [g_pids[g] == q_pids[q] for g in keep]
        if not any(hits):
            continue
        pos = [i + 1 for i, h in enumerate(hits) if h]
        aps.append(np.mean([(k + 1) / r for k, r in enumerate(pos)]))
        inps.append(len(pos) / pos[-1])
        ranked_ids = list(dict.fromkeys(g_pids[g] for g in keep)) if dedup else [g_pids[g] for g in keep]
        first = ranked_ids.index(q_pids[q]) + 1
        cmc_hits[first - 1 :] += 1
    return cmc_hits / len(aps), np.mean(aps), np.mean(inps), len(aps)


@pytest.mark.parametrize("protocol", ["sysu", "regdb", "llcm"])
@pytest.mark.parametrize("dedup", [True, False])
def test_matches_a_per_query_loop_with_ties(protocol, dedup, monkeypatch):
    monkeypatch.setattr(metrics_module, "_CHUNK_ELEMENTS", 64)  # several row chunks
    rng = np.random.default_rng(0)
    q_pids, g_pids = rng.integers(0, 6, 25), rng.integers(0, 5, 30)
    q_cams, g_cams = rng.choice([3, 6], 25), rng.integers(1, 5, 30)
    scores = np.round(rng.random((25, 30)), 1)  # coarse values: many ties
    m = evaluate(
        scores,
        q_pids,
        g_pids,
        q_cams,
        g_cams,
        rules=RULES[protocol],
        higher_is_better=True,
        dedup_ids=dedup,
        max_rank=10,
    )
    cmc, mAP, mINP, valid = reference_loop(scores, q_pids, g_pids, q_cams, g_cams, protocol, dedup, 10)
    np.testing.assert_allclose(m.cmc, cmc, rtol=0, atol=1e-12)
    assert m.mAP == pytest.approx(mAP, abs=1e-12) and m.mINP == pytest.approx(mINP, abs=1e-12)
    assert m.num_valid_queries == valid and m.num_queries == 25


def random_problem(seed=1, n_q=20, n_g=40):
    rng = np.random.default_rng(seed)
    g_pids = rng.integers(0, 8, n_g)
    q_pids = rng.integers(0, 8, n_q)
    scores = rng.normal(size=(n_q, n_g)) + 2.0 * (q_pids[:, None] == g_pids[None, :])
    return scores, q_pids, g_pids, rng.choice([3, 6], n_q), rng.integers(1, 6, n_g)


def same(a, b):
    np.testing.assert_allclose(a.cmc, b.cmc, atol=1e-12)
    assert a.mAP == pytest.approx(b.mAP, abs=1e-12) and a.mINP == pytest.approx(b.mINP, abs=1e-12)
    assert a.num_valid_queries == b.num_valid_queries


@pytest.mark.parametrize("protocol", ["sysu", "regdb", "llcm"])
def test_permuting_gallery_or_queries_changes_nothing(protocol):
    scores, q_pids, g_pids, q_cams, g_cams = random_problem()
    base = evaluate(scores, q_pids, g_pids, q_cams, g_cams, rules=RULES[protocol], higher_is_better=True)
    g_perm = np.random.default_rng(2).permutation(len(g_pids))
    q_perm = np.random.default_rng(3).permutation(len(q_pids))
    same(
        base,
        evaluate(
            scores[:, g_perm],
            q_pids,
            g_pids[g_perm],
            q_cams,
            g_cams[g_perm],
            rules=RULES[protocol],
            higher_is_better=True,
        ),
    )
    same(
        base,
        evaluate(
            scores[q_perm], q_pids[q_perm], g_pids, q_cams[q_perm], g_cams, rules=RULES[protocol], higher_is_better=True
        ),
    )


def test_scores_and_distances_agree_and_monotone_maps_change_nothing():
    scores, q_pids, g_pids, q_cams, g_cams = random_problem()
    args = (q_pids, g_pids, q_cams, g_cams)
    base = evaluate(scores, *args, rules=RULES["sysu"], higher_is_better=True)
    same(base, evaluate(-scores, *args, rules=RULES["sysu"], higher_is_better=False))
    same(
        base,
        evaluate(torch.tensor(np.exp(scores), dtype=torch.float32), *args, rules=RULES["sysu"], higher_is_better=True),
    )


def test_perfect_ranking_scores_one():
    q_pids, g_pids = np.array([0, 1, 2, 1]), np.array([2, 1, 0, 1, 2, 0])
    scores = (q_pids[:, None] == g_pids[None, :]).astype(float)
    m = evaluate(scores, q_pids, g_pids, [1] * 4, [1] * 6, rules=RULES["regdb"], higher_is_better=True)
    assert np.all(m.cmc == 1.0) and m.mAP == 1.0 and m.mINP == 1.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_rank=0), "max_rank"),
        (dict(q_pids=[1, 2, 3]), "q_pids"),
        (dict(g_cams=[1]), "g_cams"),
        (dict(scores=[[0.1, float("nan")], [0.2, 0.3]]), "NaN"),
        (dict(scores=np.zeros((2, 0))), "non-empty"),
        (dict(q_pids=[1.5, 2.0]), "integers"),
        (dict(q_pids=[7, 8]), "no query has a true match"),
    ],
)
def test_bad_input_is_rejected(kwargs, message):
    args = dict(
        scores=[[0.1, 0.2], [0.2, 0.3]],
        q_pids=[1, 2],
        g_pids=[1, 2],
        q_cams=[1, 1],
        g_cams=[1, 1],
        rules=RULES["regdb"],
        max_rank=5,
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        evaluate(
            np.asarray(args.pop("scores"), dtype=float),
            args.pop("q_pids"),
            args.pop("g_pids"),
            args.pop("q_cams"),
            args.pop("g_cams"),
            higher_is_better=True,
            **args,
        )


def test_rules_must_be_gallery_rules():
    with pytest.raises(TypeError, match="GalleryRules"):
        evaluate([[0.1, 0.2]], [1], [1, 2], [1], [1, 1], rules="sysu", higher_is_better=True)


def test_removed_mask_broadcasts_over_queries_and_gallery():
    import torch

    q_pid, q_cam = torch.tensor([[1], [1], [2]]), torch.tensor([[3], [2], [6]])
    g_pid, g_cam = torch.tensor([[1, 2, 1, 3]]), torch.tensor([[2, 2, 1, 3]])
    # SYSU: the camera-3 query loses every camera-2 image, whatever its identity.
    assert RULES["sysu"].removed(q_pid, q_cam, g_pid, g_cam).tolist() == [
        [True, True, False, False],
        [False, False, False, False],
        [False, False, False, False],
    ]
    # LLCM: a query loses its own identity seen by its own camera only.
    assert RULES["llcm"].removed(q_pid, q_cam, g_pid, g_cam).tolist() == [
        [False, False, False, False],
        [True, False, False, False],
        [False, False, False, False],
    ]
    assert not RULES["regdb"].removed(q_pid, q_cam, g_pid, g_cam).any()
