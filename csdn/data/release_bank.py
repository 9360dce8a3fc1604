"""The release's feature bank for stages 1 and 2: identity-sampled (visible, infrared) pairs, random batches.

The release does not train its text side on every cached image feature. Before each of stages 1 and 2 it
extracts features through AGW's ``IdentitySampler``: rounds of P identities drawn without replacement, and
for each identity K visible and K infrared images drawn *with* replacement, for ``max(n_visible,
n_infrared) // (P * K) + 1`` rounds. The bank so holds about as many pairs as the larger modality has
images, with duplicates, and misses some images. Each epoch then shuffles the bank and cuts it into
batches (dropping the last partial one): stage 1 takes ``P * K`` pairs a batch (the visible and the
infrared feature of each pair), stage 2 ``2 * P * K`` features from the bank's visible and infrared halves
mixed.

:func:`agw_identity_pairs` draws a bank exactly as AGW's sampler does for the same
``numpy.random.RandomState`` (tested against the release's own draws); :class:`FeatureBankBatches` deals
its batches in the :class:`csdn.data.sampler.CrossModalitySampler` interface the text stages use. The
order is a pure function of ``(seed, stage, epoch)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


def agw_identity_pairs(
    visible_labels: Sequence[int],
    infrared_labels: Sequence[int],
    ids_per_batch: int,
    instances: int,
    rng: np.random.RandomState,
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the bank's (visible, infrared) pairs, as AGW's ``IdentitySampler`` draws them from ``rng``.

    Rounds: ``ids_per_batch`` identities of the visible labels without replacement, then per identity
    ``instances`` visible and ``instances`` infrared positions with replacement. Every visible identity needs
    infrared images too (the release's datasets have both).
    """
    visible, infrared = _positions(visible_labels), _positions(infrared_labels)
    identities = np.unique(np.asarray(visible_labels))
    missing = [int(pid) for pid in identities if pid not in infrared]
    if missing:
        raise ValueError(f"identities {missing[:10]} have visible images but no infrared ones; the bank needs both")
    if len(identities) < ids_per_batch:
        raise ValueError(f"only {len(identities)} identities, fewer than ids_per_batch={ids_per_batch}")
    rounds = max(len(visible_labels), len(infrared_labels)) // (ids_per_batch * instances) + 1
    vis_rows: list[np.ndarray] = []
    ir_rows: list[np.ndarray] = []
    for _ in range(rounds):
        for pid in rng.choice(identities, ids_per_batch, replace=False):
            vis_rows.append(rng.choice(visible[int(pid)], instances))
            ir_rows.append(rng.choice(infrared[int(pid)], instances))
    return np.concatenate(vis_rows), np.concatenate(ir_rows)


class FeatureBankBatches:
    """Random batches of one stage's release feature bank, as ``(visible_positions, infrared_positions)``.

    Stage 1: ``P * K`` pairs a batch, so both lists have ``P * K`` entries and entry ``i`` of each shares an
    identity. Stage 2: ``2 * P * K`` features a batch from the bank's visible and infrared halves shuffled
    together ("mixed"), so the two lists have uneven lengths. With ``world_size > 1`` (stage 1 under DDP) each
    rank keeps its contiguous slice of every batch's pairs.
    """

    def __init__(
        self,
        visible_labels: Sequence[int],
        infrared_labels: Sequence[int],
        ids_per_batch: int,
        instances: int,
        seed: int = 0,
        stage: int = 1,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 (pairs) or 2 (mixed features), got {stage}")
        mixed = stage == 2
        pairs = ids_per_batch * instances
        if world_size < 1 or not 0 <= rank < world_size or pairs % world_size:
            raise ValueError(f"{pairs} pairs a batch cannot be split over rank {rank} of {world_size} processes")
        if mixed and world_size > 1:
            raise ValueError("mixed (stage-2) batches are not split over processes")
        self.seed, self.stage, self.mixed = int(seed), int(stage), mixed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        bank_seed = int(np.random.SeedSequence([self.seed, self.stage]).generate_state(1)[0])
        self.visible, self.infrared = agw_identity_pairs(
            visible_labels, infrared_labels, ids_per_batch, instances, np.random.RandomState(bank_seed)
        )
        self.batch_size = 2 * pairs if mixed else pairs  # features (mixed) or pairs per global batch

    def __len__(self) -> int:
        """Batches per epoch (the last partial batch is dropped, as the release does)."""
        entries = 2 * len(self.visible) if self.mixed else len(self.visible)
        return max(1, entries // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int]:
        """What reproduces the order: the seed and the epoch (the bank follows from the seed and stage)."""
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict`."""
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])

    def __iter__(self) -> Iterator[tuple[list[int], list[int]]]:
        rng = np.random.default_rng([self.seed, self.stage, self.epoch])
        n = len(self.visible)
        order = rng.permutation(2 * n if self.mixed else n)
        for b in range(len(self)):
            chosen = order[b * self.batch_size : (b + 1) * self.batch_size]
            if self.mixed:
                yield self.visible[chosen[chosen < n]].tolist(), self.infrared[chosen[chosen >= n] - n].tolist()
                continue
            share = self.batch_size // self.world_size
            mine = chosen[self.rank * share : (self.rank + 1) * share]
            yield self.visible[mine].tolist(), self.infrared[mine].tolist()


def _positions(labels: Sequence[int]) -> dict[int, list[int]]:
    positions: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        positions.setdefault(int(label), []).append(index)
    return positions
