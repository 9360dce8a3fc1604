"""The cross-modality identity sampler."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from csdn.data.sampler import CrossModalitySampler


def labels_from_counts(counts: dict[int, int]) -> list[int]:
    """Interleaved labels, e.g. {0: 2, 1: 3} -> [0, 1, 0, 1, 1] (positions of an id are scattered)."""
    remaining = dict(counts)
    labels = []
    while any(remaining.values()):
        for pid in sorted(remaining):
            if remaining[pid]:
                labels.append(pid)
                remaining[pid] -= 1
    return labels


VISIBLE = labels_from_counts({0: 4, 1: 8, 2: 6, 3: 3, 4: 5, 9: 6})  # id 9: visible only
INFRARED = labels_from_counts({0: 2, 1: 4, 2: 4, 3: 5, 4: 7, 8: 3})  # id 8: infrared only


def test_batches_are_identity_aligned_with_p_distinct_ids() -> None:
    sampler = CrossModalitySampler(VISIBLE, INFRARED, ids_per_batch=2, instances=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == max(len(VISIBLE), len(INFRARED)) // 8 == 4
    for visible, infrared in batches:
        assert len(visible) == len(infrared) == 8
        visible_ids = [VISIBLE[i] for i in visible]
        assert visible_ids == [INFRARED[i] for i in infrared]
        blocks = [visible_ids[k : k + 4] for k in range(0, 8, 4)]
        assert all(len(set(block)) == 1 for block in blocks)  # K consecutive images per identity
        assert len({block[0] for block in blocks}) == 2  # P distinct identities
        assert not {8, 9} & set(visible_ids)  # single-modality identities are never drawn


def test_k_images_of_an_identity_are_distinct_unless_it_has_fewer_than_k() -> None:
    sampler = CrossModalitySampler(VISIBLE, INFRARED, ids_per_batch=2, instances=4, seed=3)
    for visible, infrared in sampler:
        for indices, labels in ((visible, VISIBLE), (infrared, INFRARED)):
            for start in range(0, len(indices), 4):
                block = indices[start : start + 4]
                available = labels.count(labels[block[0]])
                assert len(set(block)) == min(4, available)


def test_identity_counts_are_balanced_and_images_used_before_repeating() -> None:
    sampler = CrossModalitySampler(VISIBLE, INFRARED, ids_per_batch=2, instances=3, seed=1)
    sampler_len = len(sampler)
    drawn: dict[tuple[str, int], list[int]] = {}
    id_counts: Counter[int] = Counter()
    for visible, infrared in sampler:
        for start in range(0, len(visible), 3):
            id_counts[VISIBLE[visible[start]]] += 1
        for name, indices, labels in (("vis", visible, VISIBLE), ("ir", infrared, INFRARED)):
            for index in indices:
                drawn.setdefault((name, labels[index]), []).append(index)
    assert sum(id_counts.values()) == sampler_len * 2
    assert max(id_counts.values()) - min(id_counts.values()) <= 1
    for (name, pid), sequence in drawn.items():
        available = (VISIBLE if name == "vis" else INFRARED).count(pid)
        if available >= 3:  # rounds: each run of `available` draws holds every image once
            for start in range(0, len(sequence) - available + 1, available):
                assert len(set(sequence[start : start + available])) == available


def test_an_epoch_covers_every_image_when_the_counts_allow() -> None:
    visible = labels_from_counts({pid: 8 for pid in range(4)})
    infrared = labels_from_counts({pid: 8 for pid in range(4)})
    sampler = CrossModalitySampler(visible, infrared, ids_per_batch=2, instances=4, seed=5)
    assert len(sampler) * 2 >= 4 * math.ceil(8 / 4)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(i for v, _ in batches for i in v) == list(range(32))
        assert sorted(i for _, r in batches for i in r) == list(range(32))


def test_reproducible_per_epoch_and_different_across_epochs() -> None:
    a = CrossModalitySampler(VISIBLE, INFRARED, 2, 4, seed=7)
    b = CrossModalitySampler(VISIBLE, INFRARED, 2, 4, seed=7)
    assert list(a) == list(b) == list(a)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert list(CrossModalitySampler(VISIBLE, INFRARED, 2, 4, seed=8)) != first


def test_state_dict_resumes_the_exact_order() -> None:
    sampler = CrossModalitySampler(VISIBLE, INFRARED, 2, 4, seed=11)
    sampler.set_epoch(6)
    state = sampler.state_dict()
    assert state == {"seed": 11, "epoch": 6}
    resumed = CrossModalitySampler(VISIBLE, INFRARED, 2, 4, seed=0)
    resumed.load_state_dict(state)
    assert list(resumed) == list(sampler)
    assert list(CrossModalitySampler(VISIBLE, INFRARED, 2, 4, seed=11, epoch=6)) == list(sampler)


def test_small_datasets_still_give_one_batch() -> None:
    sampler = CrossModalitySampler([0, 1], [1, 0], ids_per_batch=2, instances=4)
    assert len(sampler) == 1
    visible, infrared = next(iter(sampler))
    assert sorted(visible) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [[0, 1][i] for i in visible] == [[1, 0][i] for i in infrared]


def test_too_few_shared_identities_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"only 1 identities have both visible and infrared images"):
        CrossModalitySampler([0, 0, 1], [0, 2], ids_per_batch=2, instances=2)
    with pytest.raises(ValueError, match="must be >= 1"):
        CrossModalitySampler([0], [0], ids_per_batch=1, instances=0)


@pytest.mark.parametrize("world_size", [2, 4])
def test_shards_split_each_global_batch_into_disjoint_identity_groups(world_size: int) -> None:
    whole = CrossModalitySampler(VISIBLE, INFRARED, ids_per_batch=4, instances=2, seed=3, epoch=2)
    shards = [
        CrossModalitySampler(VISIBLE, INFRARED, 4, 2, seed=3, epoch=2, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    assert all(len(s) == len(whole) for s in shards)  # every rank takes the same number of steps
    per_rank = [list(s) for s in shards]
    for step, (visible, infrared) in enumerate(whole):
        parts = [batches[step] for batches in per_rank]
        # concatenated in rank order, the shards are exactly the one-process batch
        assert [i for v, _ in parts for i in v] == visible
        assert [i for _, r in parts for i in r] == infrared
        ids = [{VISIBLE[i] for i in v} for v, _ in parts]
        assert all(len(s) == 4 // world_size for s in ids)  # P / W identities per rank
        assert len(set().union(*ids)) == 4  # disjoint across ranks
    assert [s.offset for s in shards] == [r * 8 // world_size for r in range(world_size)]


def test_sharding_needs_ids_per_batch_divisible_by_world_size() -> None:
    with pytest.raises(ValueError, match="ids_per_batch=3 .* cannot be split evenly over 2 processes"):
        CrossModalitySampler(VISIBLE, INFRARED, ids_per_batch=3, instances=2, rank=0, world_size=2)
    with pytest.raises(ValueError, match="rank must lie in"):
        CrossModalitySampler(VISIBLE, INFRARED, ids_per_batch=2, instances=2, rank=2, world_size=2)
