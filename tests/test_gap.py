"""Modality-gap metrics on hand-made point sets, the records they run on, and the ``csdn gap`` command."""

import argparse
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import csdn.cli.studies as commands
from csdn.analysis.gap import (
    GapConfig,
    centroid_gap,
    cross_modality_retrieval,
    gap_records,
    gap_table,
    identity_modality_margin,
    modality_classifier_accuracy,
    modality_gap,
    nearest_neighbour_accuracy,
    other_modality_neighbour_rate,
)
from csdn.data.records import INFRARED, VISIBLE, Record
from csdn.data.sysu import SYSUMM01

V, I = VISIBLE, INFRARED  # noqa: E741 (I for infrared, beside V)


def records_of(pids, modalities):
    return [Record(f"/x/{k}.jpg", pid, 1 if m == V else 3, m) for k, (pid, m) in enumerate(zip(pids, modalities))]


def test_centroid_ratio_of_two_separated_pairs():
    x = np.array([[0, 1], [0, -1], [4, 1], [4, -1]], dtype=float)
    distance, spread, ratio = centroid_gap(x, [V, V, I, I])
    assert (distance, spread, ratio) == pytest.approx((4.0, 1.0, 4.0))


def test_centroid_ratio_pools_the_spread_of_both_modalities():
    # visible centroid (0, 1), residuals of length 1; the single infrared point has residual 0
    x = torch.tensor([[0.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
    distance, spread, ratio = centroid_gap(x, [V, V, I])
    assert distance == pytest.approx(3.0)
    assert spread == pytest.approx(math.sqrt(2 / 3))
    assert ratio == pytest.approx(3.0 / math.sqrt(2 / 3))


def test_shared_centroid_gives_ratio_zero():
    x = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]], dtype=float)
    assert centroid_gap(x, [V, V, I, I])[2] == pytest.approx(0.0)


def test_linear_classifier_separates_separated_modalities():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 4))
    x[:40, 0] += 6.0
    assert modality_classifier_accuracy(x, [V] * 40 + [I] * 40, folds=5) == 1.0
    groups = [k // 4 for k in range(40)] * 2  # identity k//4 in both modalities
    assert modality_classifier_accuracy(x, [V] * 40 + [I] * 40, folds=5, groups=groups) == 1.0


def test_linear_classifier_is_at_chance_on_identical_distributions():
    x = np.random.default_rng(1).normal(size=(400, 4))
    accuracy = modality_classifier_accuracy(x, [V, I] * 200, folds=5, seed=0)
    assert abs(accuracy - 0.5) < 0.08


def test_classifier_chance_is_half_even_with_unequal_modality_counts():
    # 3 visible per infrared from one distribution: always answering "visible" has plain accuracy 0.75,
    # so a score near 0.75 would read as a gap that is not there; balanced accuracy keeps chance at 0.5
    x = np.random.default_rng(2).normal(size=(400, 4))
    accuracy = modality_classifier_accuracy(x, [V] * 300 + [I] * 100, folds=5, seed=0)
    assert abs(accuracy - 0.5) < 0.08


def test_classifier_needs_enough_features_per_modality():
    with pytest.raises(ValueError, match="at least 5 features per modality"):
        modality_classifier_accuracy(np.zeros((6, 2)), [V] * 3 + [I] * 3, folds=5)
    with pytest.raises(ValueError, match="needs >= 5 groups"):
        modality_classifier_accuracy(np.random.default_rng(0).normal(size=(20, 2)), [V, I] * 10, groups=[0, 1] * 10)


def test_nearest_neighbour_accuracy_by_hand():
    # 1-D: each identity's visible pair is tight, but each infrared image sits next to the other identity
    x = np.array([[0.0], [0.1], [1.0], [1.1], [1.05], [0.05]])
    pids, mods = [1, 1, 2, 2, 1, 2], [V, V, V, V, I, I]
    intra, cross = nearest_neighbour_accuracy(x, pids, mods)
    assert intra == 1.0  # the four visible images; the infrared ones have no same-identity infrared partner
    assert cross == 0.0
    swapped = x.copy()
    swapped[4, 0], swapped[5, 0] = 0.05, 1.05
    assert nearest_neighbour_accuracy(swapped, pids, mods) == (1.0, 1.0)


def test_nearest_neighbour_accuracy_counts_and_skips():
    # visible pid 1 @0, pid 2 @1; infrared pid 1 @0.1, pid 2 @0.4, pid 3 @5 (no visible image: skipped)
    x = np.array([[0.0], [1.0], [0.1], [0.4], [5.0]])
    intra, cross = nearest_neighbour_accuracy(x, [1, 2, 1, 2, 3], [V, V, I, I, I])
    assert cross == pytest.approx(3 / 4)  # only infrared pid 2 (@0.4) has the wrong nearest visible image
    assert math.isnan(intra)  # no identity has two images of one modality


def test_identity_modality_margin_by_hand():
    # unit vectors: pid 1 visible e1, infrared (e1 + e3)/sqrt2; pid 2 visible e2, infrared (e2 + e3)/sqrt2
    r = 1 / math.sqrt(2)
    x = np.array([[1, 0, 0], [0, 1, 0], [r, 0, r], [0, r, r]])
    pids, mods = [1, 2, 1, 2], [V, V, I, I]
    # visible: cos to own infrared r, to the other visible 0 -> r; infrared: cos to own visible r, to the
    # other infrared 0.5 -> r - 0.5; mean (2r + 2(r - 0.5)) / 4 = r - 0.25
    assert identity_modality_margin(x, pids, mods) == pytest.approx(r - 0.25)
    # modality dominating identity (each modality one tight cluster) gives a negative margin
    clusters = np.array([[1, 0.01], [1, -0.01], [0.01, 1], [-0.01, 1]])
    assert identity_modality_margin(clusters, pids, mods) < -0.9
    assert math.isnan(identity_modality_margin(x, [1, 2, 3, 4], mods))  # no identity in both modalities


def test_other_modality_neighbour_rate_and_its_ideal_by_hand():
    # pid 1: visible @0, @0.1, infrared @0.05; pid 2: visible @5, infrared @5.2, @5.3
    x = np.array([[0.0], [0.1], [0.05], [5.0], [5.2], [5.3]])
    pids, mods = [1, 1, 1, 2, 2, 2], [V, V, I, V, I, I]
    rate, ideal = other_modality_neighbour_rate(x, pids, mods)
    # nearest: 0->0.05 (other), 0.1->0.05 (other), 0.05->0 or 0.1 (other), 5->5.2 (other), 5.2->5.3, 5.3->5.2
    assert rate == pytest.approx(4 / 6)
    # ideal: each image's other same-identity images' other-modality share: 1/2, 1/2, 2/2, 2/2, 1/2, 1/2
    assert ideal == pytest.approx(4 / 6)
    separated = np.array([[0.0], [0.1], [9.0], [0.2], [9.1], [9.2]])  # visible at 0-0.2, infrared at 9
    assert other_modality_neighbour_rate(separated, pids, mods)[0] == 0.0


def test_cross_modality_retrieval_by_hand():
    # infrared queries against every visible image, cosine: pid 1's query ranks its match 2nd, pid 2's 1st
    x = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.1, 1.0]])
    recs = records_of([1, 2, 1, 2], [V, V, I, I])
    out = cross_modality_retrieval(x, recs)
    assert out == pytest.approx({"R1": 0.5, "mAP": (0.5 + 1.0) / 2})


def test_modality_gap_normalises_rows_first():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 3))
    x[:20, 0] += 3.0
    recs = records_of([k % 10 for k in range(40)], [V] * 20 + [I] * 20)
    scaled = x * rng.uniform(0.5, 5.0, size=(40, 1))
    a, b = modality_gap(x, recs), modality_gap(torch.tensor(scaled), recs)
    assert a == b or a.to_dict() == pytest.approx(b.to_dict())
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert a.centroid_ratio == pytest.approx(centroid_gap(unit, [r.modality for r in recs])[2])
    assert (a.n_visible, a.n_infrared) == (20, 20)
    raw = modality_gap(scaled, recs, GapConfig(normalize=False))
    assert raw.centroid_ratio != pytest.approx(a.centroid_ratio)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="both modalities"):
        centroid_gap(np.zeros((3, 2)), [V, V, V])
    with pytest.raises(ValueError, match="one modality per feature row"):
        centroid_gap(np.zeros((3, 2)), [V, I])
    with pytest.raises(ValueError, match="modalities must be"):
        centroid_gap(np.zeros((2, 2)), [V, "thermal"])
    with pytest.raises(ValueError, match=r"\(N, D\) matrix"):
        centroid_gap(np.zeros(3), [V, I, I])
    with pytest.raises(ValueError, match="one record per feature row"):
        modality_gap(np.zeros((3, 2)), records_of([1, 2], [V, I]))


def test_gap_table_in_percent():
    x = np.array([[0, 1], [0, -1], [4, 1], [4, -1]] * 5, dtype=float) + np.arange(20)[:, None] * 1e-3
    recs = records_of(list(range(20)), [V, V, I, I] * 5)
    table = gap_table({"a": modality_gap(x, recs, GapConfig(normalize=False, folds=2))})
    row = table.loc["a"]
    assert row["modality clf acc (%)"] == 100.0
    assert row["centroid ratio"] == pytest.approx(4.0, rel=1e-2)
    assert (row["visible"], row["infrared"]) == (10, 10)


class FakeSYSU(SYSUMM01):
    query = records_of([1, 2], [I, I])

    def __init__(self):
        pass

    def gallery(self, trial, mode="all", shots=1):
        assert mode == "all" and shots == 1
        return records_of([1, 2], [V, V]) if trial == 0 else [Record("/g/x.jpg", 1, 4, V), *records_of([1], [V])]


def test_gap_records_are_queries_plus_the_union_of_galleries():
    recs = gap_records(FakeSYSU(), trials=2)
    # 2 queries + 2 gallery images of trial 0 + the one new image of trial 1 (its other image repeats)
    assert len(recs) == 5 and len(set(recs)) == 5
    assert recs[:2] == FakeSYSU.query


def test_gap_command_writes_tables_and_projections(tmp_path: Path, monkeypatch, capsys):
    def fake_features(base, records, cache_root, models=None, seed=None, progress=False):
        rng = np.random.default_rng(0)
        out = {}
        for shift, name in ((3.0, "zero-shot CLIP"), (0.0, "CSDN")):
            x = rng.normal(size=(len(records), 8))
            x[:, 0] += [shift * (r.modality == V) + r.pid for r in records]
            out[name] = torch.tensor(x, dtype=torch.float32)
        return out

    monkeypatch.setattr(commands, "collect_features", fake_features)
    parser = argparse.ArgumentParser()
    commands.add_commands(parser.add_subparsers())
    args = parser.parse_args(
        ["gap", "--profile", "smoke", "--methods", "t-SNE", "--reports", str(tmp_path / "reports")]
    )
    args.cache = tmp_path / "cache"
    assert args.func(args) == 0
    folder = tmp_path / "reports" / "smoke" / "gap"
    text = (folder / "gap.md").read_text()
    assert "csdn gap --profile smoke --seed 0 --methods t-SNE" in text and "zero-shot CLIP" in text and "CSDN" in text
    assert (folder / "projections.png").stat().st_size > 10_000 and (folder / "gap.png").stat().st_size > 10_000
    table = (folder / "gap.csv").read_text().splitlines()
    assert table[0].startswith("model,centroid ratio") and len(table) == 3
    assert "modality gap of 2 models" in capsys.readouterr().out
