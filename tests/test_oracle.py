"""The attribute oracle: invariant attributes only, fair ties, the real SYSU protocol (tiny SynthVI, CPU)."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from csdn.analysis.oracle import (
    INVARIANT_ATTRIBUTES,
    attribute_oracle,
    count_invariant_combinations,
    identity_attributes,
    oracle_features,
)
from csdn.data.protocol import SplitOptions
from csdn.data.regdb import RegDB
from csdn.data.sysu import SYSUMM01
from csdn.synthvi.layouts import load_metadata, write_regdb, write_sysu
from csdn.synthvi.world import ATTRIBUTES, SynthConfig

# Seed 6: two of the 24 test identities share every invariant attribute (a real tie).
TINY = SynthConfig(seed=6, height=32, width=16, clip_ids=2, train_ids=3, val_ids=1, test_ids=24, images_per_cam=2)
# Written out here rather than derived from the library, so the tests check its choice.
INVARIANT = ("build", "height", "hair", "top_pattern", "sleeve", "bottom_type", "bag", "hat")
COLOURS = ("top_color", "bottom_color", "shoes_color", "bag_color")
TRIALS = 3


@pytest.fixture(scope="module")
def sysu(tmp_path_factory) -> SYSUMM01:
    root = tmp_path_factory.mktemp("oracle") / "sysu"
    write_sysu(TINY, root)
    return SYSUMM01(root)


def invariant_keys(sysu: SYSUMM01) -> dict[int, tuple[str, ...]]:
    identities = load_metadata(sysu.root)["identities"]
    return {pid: tuple(identities[str(pid)][a] for a in INVARIANT) for pid in sysu.test_ids}


def with_invariant(attributes: dict, keys: dict[int, tuple[str, ...]]) -> dict:
    """``attributes`` with the invariant values of each pid in ``keys`` replaced."""
    return {pid: {**a, **dict(zip(INVARIANT, keys[pid]))} if pid in keys else a for pid, a in attributes.items()}


def test_invariant_attributes_are_the_colour_free_ones():
    assert set(INVARIANT_ATTRIBUTES) == set(INVARIANT)
    assert set(INVARIANT) | set(COLOURS) == set(ATTRIBUTES)


def test_oracle_reaches_the_share_its_ties_allow(sysu):
    keys = invariant_keys(sysu)
    groups = Counter(keys.values())
    unique_share = sum(1 for k in keys.values() if groups[k] == 1) / len(keys)
    assert unique_share < len(groups) / len(keys) < 1  # the world has a tie to break
    report = attribute_oracle(sysu, options=SplitOptions(trials=TRIALS))
    assert report.test_ids == len(keys) and report.combinations == len(groups)
    assert count_invariant_combinations(identity_attributes(sysu.root), sysu.test_ids) == len(groups)
    assert set(report.results) == {"all 1-shot", "indoor 1-shot"}
    for result in report.results.values():
        assert result.trials == tuple(range(TRIALS))
        assert result.r1 >= unique_share
        # a k-way tie is won by exactly one of its k identities (equal queries per identity)
        assert result.r1 == pytest.approx(len(groups) / len(keys))
        assert result.r1 <= result.rank(5) <= 1.0 and result.mAP >= unique_share
    assert "invariant combinations" in report.table()


def test_every_combination_unique_gives_perfect_retrieval(sysu):
    attributes = identity_attributes(sysu.root)
    combos = itertools.product(*(ATTRIBUTES[a] for a in INVARIANT))
    report = attribute_oracle(
        sysu, with_invariant(attributes, dict(zip(sysu.test_ids, combos))), options=SplitOptions(trials=TRIALS)
    )
    assert report.combinations == len(sysu.test_ids)
    for result in report.results.values():
        assert result.r1 == 1.0 and result.mAP == pytest.approx(1.0)


def test_ties_do_not_favour_the_true_match(sysu):
    attributes = identity_attributes(sysu.root)
    same = {pid: tuple(ATTRIBUTES[a][0] for a in INVARIANT) for pid in sysu.test_ids}
    n = len(sysu.test_ids)
    for seed in (0, 1):
        report = attribute_oracle(
            sysu, with_invariant(attributes, same), options=SplitOptions(trials=TRIALS), seed=seed
        )
        assert report.combinations == 1
        for result in report.results.values():
            assert result.r1 == pytest.approx(1 / n)  # chance: one identity of n wins the single tie


def test_colours_do_not_change_the_oracle_feature(sysu):
    attributes = identity_attributes(sysu.root)
    recoloured = {
        pid: {
            **a,
            **{
                c: ATTRIBUTES[c][(ATTRIBUTES[c].index(a[c]) + 1) % len(ATTRIBUTES[c])]
                for c in COLOURS
                if a[c] in ATTRIBUTES[c]
            },
        }
        for pid, a in attributes.items()
    }
    records = sysu.query[:6] + sysu.gallery(0)
    query = frozenset(sysu.query)
    features = oracle_features(records, attributes, query)
    assert torch.equal(features, oracle_features(records, recoloured, query))
    assert torch.allclose(features.norm(dim=1), torch.ones(len(records)))
    pid = records[0].pid
    flipped = {**attributes, pid: {**attributes[pid], "hat": "cap" if attributes[pid]["hat"] == "none" else "none"}}
    assert not torch.equal(features[0], oracle_features(records[:1], flipped, query)[0])


def test_tree_without_metadata_is_a_clear_error(tmp_path):
    fake = SimpleNamespace(root=tmp_path, test_ids=[1], query=[])
    with pytest.raises(FileNotFoundError, match="synthvi.json"):
        attribute_oracle(fake)
    (tmp_path / "synthvi.json").write_text(json.dumps({"format": "synthvi", "layout": "sysu"}))
    with pytest.raises(ValueError, match="no 'identities' table"):
        attribute_oracle(fake)


def test_oracle_runs_the_protocol_of_any_layout(tmp_path):
    root = tmp_path / "regdb"
    write_regdb(TINY, root)
    regdb = RegDB(root, trial=1)
    report = attribute_oracle(regdb)
    assert set(report.results) == {"infrared->visible", "visible->infrared"}
    assert report.test_ids == len({r.pid for r in regdb.test_visible})
    for result in report.results.values():
        assert result.trials == (1,) and result.name.startswith("RegDB")
        assert report.combinations / report.test_ids - 1e-9 <= result.r1 <= 1.0  # ties cost at most their share


def test_identity_without_attributes_is_named(sysu):
    attributes = identity_attributes(sysu.root)
    missing = sysu.test_ids[0]
    del attributes[missing]
    with pytest.raises(KeyError, match=f"identity {missing}"):
        attribute_oracle(sysu, attributes, options=SplitOptions(trials=1))
