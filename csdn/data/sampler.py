"""The cross-modality identity sampler: P identities x K visible + K infrared images per batch.

Like AGW's ``IdentitySampler``, an epoch has ``max(n_visible, n_infrared) // (P * K)`` batches (at
least one; AGW adds one more), so it draws about as many images per modality as the larger modality
holds, and each batch holds P distinct identities that have images in *both* modalities (identities
seen in only one modality are never drawn).

Coverage is better than AGW's, which picks identities uniformly per batch and images with
replacement, so that in one epoch some images are drawn several times and others never. Here:

* identities are dealt from shuffled decks: every shared identity is drawn once before any is drawn
  again, so within an epoch identity counts differ by at most one;
* each identity's images of each modality are dealt from their own shuffled deck: all of an
  identity's images are used before any repeats, and the K of one batch are distinct;
* only an identity with fewer than K images in a modality repeats images within a batch: all of
  them once, then random extra draws with replacement.

With ``n_ids`` identities and ``m`` images per identity and modality, an epoch of B batches therefore
uses every image as soon as ``B * P >= n_ids * ceil(m / K)``. The order is a pure function of
``(seed, epoch)``: call :meth:`set_epoch` before each epoch for a new order, and save
:meth:`state_dict` with a checkpoint to resume exactly.

Sharding (distributed training): with ``world_size = W`` every rank deals the same global batches
(the same order as one process) and keeps its slice, identities ``r * P / W`` to ``(r + 1) * P / W``
of each batch, K images each. The ranks' identities are disjoint, their union is the one-process batch,
and :attr:`offset` is where this rank's first image sits in the global batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np


class CrossModalitySampler:
    """Batches of identity-aligned ``(visible_indices, infrared_indices)``, each a list of ``P * K`` ints.

    Indices are positions in ``visible_labels`` / ``infrared_labels``; position ``i`` of both lists has
    the same label. The K images of an identity are consecutive, identities in dealt order. With
    ``world_size > 1`` each batch holds this rank's ``P / world_size`` identities of the global batch.
    """

    def __init__(
        self,
        visible_labels: Sequence[int],
        infrared_labels: Sequence[int],
        ids_per_batch: int,
        instances: int,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if ids_per_batch < 1 or instances < 1:
            raise ValueError(f"ids_per_batch and instances must be >= 1, got {ids_per_batch} and {instances}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size), got rank {rank} of world_size {world_size}")
        if ids_per_batch % world_size:
            raise ValueError(
                f"ids_per_batch={ids_per_batch} identities per batch cannot be split evenly over {world_size} "
                "processes; choose a multiple of the number of processes"
            )
        self.rank = rank
        self.world_size = world_size
        self.visible_labels = [int(label) for label in visible_labels]
        self.infrared_labels = [int(label) for label in infrared_labels]
        self.ids_per_batch = ids_per_batch
        self.instances = instances
        self.seed = int(seed)
        self.epoch = int(epoch)
        self._visible = _positions_by_label(self.visible_labels)
        self._infrared = _positions_by_label(self.infrared_labels)
        self.shared_ids: list[int] = sorted(set(self._visible) & set(self._infrared))
        if len(self.shared_ids) < ids_per_batch:
            raise ValueError(
                f"only {len(self.shared_ids)} identities have both visible and infrared images, "
                f"fewer than ids_per_batch={ids_per_batch}; lower ids_per_batch or check the labels"
            )

    @property
    def batch_size(self) -> int:
        """Images per modality in one global batch: ``P * K``."""
        return self.ids_per_batch * self.instances

    @property
    def local_batch_size(self) -> int:
        """Images per modality in this rank's share of a batch: ``P * K / world_size``."""
        return self.batch_size // self.world_size

    @property
    def offset(self) -> int:
        """Position of this rank's first image (per modality) in the global batch."""
        return self.rank * self.local_batch_size

    def __len__(self) -> int:
        """Batches per epoch: ``max(n_visible, n_infrared) // (P * K)``, at least 1."""
        return max(1, max(len(self.visible_labels), len(self.infrared_labels)) // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int]:
        """What reproduces the order: the seed and the epoch."""
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict` (e.g. from a checkpoint)."""
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])

    def __iter__(self) -> Iterator[tuple[list[int], list[int]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        identities = _Deck(self.shared_ids, rng)
        visible = {pid: _Deck(self._visible[pid], rng) for pid in self.shared_ids}
        infrared = {pid: _Deck(self._infrared[pid], rng) for pid in self.shared_ids}
        for _ in range(len(self)):
            visible_batch: list[int] = []
            infrared_batch: list[int] = []
            for pid in identities.deal(self.ids_per_batch):
                visible_batch += visible[pid].deal_with_refill(self.instances)
                infrared_batch += infrared[pid].deal_with_refill(self.instances)
            mine = slice(self.offset, self.offset + self.local_batch_size)
            yield visible_batch[mine], infrared_batch[mine]


class _Deck:
    """Deals items in shuffled rounds: every item once per round, ``n`` distinct items per deal."""

    def __init__(self, items: Sequence[int], rng: np.random.Generator) -> None:
        self.items = list(items)
        self.rng = rng
        self.queue: deque[int] = deque()

    def deal(self, n: int) -> list[int]:
        """``n <= len(items)`` distinct items; a new round starts when the current one runs out."""
        dealt: list[int] = []
        while len(dealt) < n:
            if not self.queue:
                order = [self.items[i] for i in self.rng.permutation(len(self.items))]
                taken = set(dealt)  # keep this deal distinct: push its items to the end of the new round
                self.queue.extend([x for x in order if x not in taken] + [x for x in order if x in taken])
            dealt.append(self.queue.popleft())
        return dealt

    def deal_with_refill(self, n: int) -> list[int]:
        """``n`` items; when there are fewer than ``n`` items, all of them plus random repeats."""
        if len(self.items) >= n:
            return self.deal(n)
        shuffled = [self.items[i] for i in self.rng.permutation(len(self.items))]
        extra = self.rng.choice(len(self.items), size=n - len(self.items), replace=True)
        return shuffled + [self.items[i] for i in extra]


def _positions_by_label(labels: Sequence[int]) -> dict[int, list[int]]:
    positions: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        positions.setdefault(label, []).append(index)
    return positions
