"""The attribute oracle: the best a SynthVI test split allows to modality-invariant attributes alone.

An infrared camera cannot see colour, so what both modalities share is an identity's *invariant*
attributes (:data:`INVARIANT_ATTRIBUTES`: build, height, hair, top pattern, sleeve, bottom type, bag,
hat). The oracle knows, for every test image, its identity's invariant attributes (from the tree's
``synthvi.json``) and nothing else: its feature is the one-hot encoding of each invariant attribute,
concatenated and L2-normalised, so identities that share every invariant attribute look identical.
It is evaluated by the protocol code the models use (:func:`csdn.eval.protocols.evaluate_split`): its
R1/mAP is the ceiling of retrieval by invariant attributes alone, set by how many distinct invariant
combinations the test identities show (:func:`count_invariant_combinations`). A model may exceed it
through hidden continuous cues (body proportions, thermal intensities) that no attribute names.

**Ties.** Identities sharing a combination get equal scores, and the metrics' stable sort would then
put the lower gallery index first; the gallery is ordered by pid, so the lowest pid would win every
tie, and exact equality of float32 dot products would also depend on how the matrix product rounds.
Instead the order inside a tie is made explicit and independent of the query: gallery features carry
one extra coordinate ``TIE_EPSILON * u(pid)``, ``u`` a seeded permutation of the tree's pids scaled
to [0, 1), and query features carry 1 there. Every query then sees the *same* fixed order of the
tied gallery identities, so the true identity wins a k-way tie for exactly one of the k identities
(its R1 share is 1/k, the expectation of a random tie-break) and is never favoured for being the
true match. ``TIE_EPSILON`` is far below the score step of one attribute (``1 / 8``) and its steps
(``TIE_EPSILON / #pids``) far above float32 rounding, so it only ever orders tied identities.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from csdn.data.protocol import Reader, SplitOptions
from csdn.data.records import Record
from csdn.eval.protocols import ProtocolResult, evaluate_split
from csdn.synthvi.layouts import METADATA_FILE, load_metadata, synthvi_pid
from csdn.synthvi.world import ATTRIBUTES, COLOR_ATTRIBUTES

__all__ = [
    "INVARIANT_ATTRIBUTES",
    "TIE_EPSILON",
    "OracleReport",
    "attribute_oracle",
    "count_invariant_combinations",
    "identity_attributes",
    "invariant_key",
    "oracle_features",
]

# What a visible and an infrared camera both show: every attribute but the colours.
INVARIANT_ATTRIBUTES: tuple[str, ...] = tuple(a for a in ATTRIBUTES if a not in COLOR_ATTRIBUTES)
# Weight of the tie-break coordinate (see the module docstring); below 1/len(INVARIANT_ATTRIBUTES).
TIE_EPSILON = 1e-2

Attributes = Mapping[int, Mapping[str, str]]  # pid -> attribute name -> value


@dataclass(frozen=True, eq=False)
class OracleReport:
    """The oracle's protocol results per test split, and what bounds them."""

    test_ids: int  # test identities
    combinations: int  # distinct invariant-attribute combinations among them
    results: dict[str, ProtocolResult]  # "<mode> <shots>-shot" ("all 1-shot", ...) -> result over the trials

    def table(self) -> str:
        """Mean R1 / mAP / mINP per search mode, in percent, under a line naming the bound."""
        lines = [
            f"attribute oracle: {self.combinations} invariant combinations among {self.test_ids} test ids "
            f"-> expected R1 {100 * self.combinations / self.test_ids:.2f}% (fair ties, equal queries per id)",
            f"{'search':<14}{'trials':>7}{'R1':>8}{'mAP':>8}{'mINP':>8}",
        ]
        for mode, r in self.results.items():
            lines.append(f"{mode:<14}{len(r.trials):>7}{100 * r.r1:8.2f}{100 * r.mAP:8.2f}{100 * r.mINP:8.2f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def identity_attributes(root: str | Path) -> dict[int, dict[str, str]]:
    """Every identity's attributes (pid -> name -> value) from a SynthVI tree's ``synthvi.json``."""
    return _attributes_of(load_metadata(Path(root)), Path(root))


def _attributes_of(meta: dict, root: Path) -> dict[int, dict[str, str]]:
    identities = meta.get("identities")
    if not isinstance(identities, dict):
        raise ValueError(f"{root / METADATA_FILE} has no 'identities' table; delete the tree and write it again")
    return {int(pid): dict(attrs) for pid, attrs in identities.items()}


def invariant_key(attributes: Attributes, pid: int) -> tuple[str, ...]:
    """The invariant attribute values of ``pid``, in :data:`INVARIANT_ATTRIBUTES` order."""
    if pid not in attributes:
        raise KeyError(f"identity {pid} has no attributes: are they from another SynthVI tree or config?")
    attrs = attributes[pid]
    missing = [a for a in INVARIANT_ATTRIBUTES if a not in attrs]
    if missing:
        raise KeyError(f"identity {pid} lacks the invariant attribute(s) {missing}")
    return tuple(attrs[a] for a in INVARIANT_ATTRIBUTES)


def count_invariant_combinations(attributes: Attributes, pids: Iterable[int]) -> int:
    """How many distinct invariant-attribute combinations the identities ``pids`` show."""
    return len({invariant_key(attributes, pid) for pid in pids})


def _one_hot(key: Sequence[str], pid: int) -> np.ndarray:
    """Concatenated one-hot encodings of the invariant values ``key`` over the vocabulary."""
    blocks = []
    for name, value in zip(INVARIANT_ATTRIBUTES, key):
        vocabulary = ATTRIBUTES[name]
        if value not in vocabulary:
            raise ValueError(f"identity {pid}: {name}={value!r} is not one of {vocabulary}")
        blocks.append(np.asarray(vocabulary) == value)
    return np.concatenate(blocks).astype(np.float64)


def _tie_order(pids: Iterable[int], seed: int) -> dict[int, float]:
    """A fixed per-identity tie-break value in [0, 1): a seeded permutation of the sorted pids."""
    ordered = sorted(pids)
    ranks = np.random.default_rng([seed, 0x7E]).permutation(len(ordered))
    return {pid: float(rank) / len(ordered) for pid, rank in zip(ordered, ranks)}


def oracle_features(
    records: Sequence[Record], attributes: Attributes, query: Collection[Record] = (), seed: int = 0
) -> torch.Tensor:
    """(N, D) L2-normalised oracle features of ``records`` from their identities' invariant attributes only.

    Records in ``query`` carry 1 in the last (tie-break) coordinate, the others ``TIE_EPSILON * u(pid)``
    (see the module docstring); colour attributes, cameras and image paths play no part.
    """
    if not records:
        raise ValueError("oracle_features needs at least one record")
    ties = _tie_order(attributes, seed)
    scale = np.sqrt(len(INVARIANT_ATTRIBUTES))
    pids = [synthvi_pid(r) for r in records]
    base = {pid: _one_hot(invariant_key(attributes, pid), pid) / scale for pid in set(pids)}
    feats = np.stack(
        [np.append(base[pid], 1.0 if r in query else TIE_EPSILON * ties[pid]) for r, pid in zip(records, pids)]
    )
    return torch.from_numpy(feats / np.linalg.norm(feats, axis=1, keepdims=True)).float()


def attribute_oracle(
    dataset: Reader, attributes: Attributes | None = None, *, options: SplitOptions = SplitOptions(), seed: int = 0
) -> OracleReport:
    """Evaluate the attribute oracle on a SynthVI tree, in whichever dataset layout it was written.

    ``dataset`` is its reader; ``attributes`` (pid -> name -> value) default to those in
    ``dataset.root/synthvi.json``. Each of the reader's test splits for ``options`` runs
    :func:`evaluate_split` exactly as for a model (results keyed by split name, as
    ``Experiment.evaluate`` keys them); ``seed`` fixes the tie-break order.
    """
    if attributes is None:
        attributes = identity_attributes(dataset.root)
    splits = dataset.test_splits(options)
    test_ids = sorted(
        {synthvi_pid(r) for split in splits for t in split.trials for r in (*split.query, *split.gallery(t))}
    )
    results = {
        split.name: evaluate_split(
            partial(oracle_features, attributes=attributes, query=frozenset(split.query), seed=seed), split
        )
        for split in splits
    }
    return OracleReport(len(test_ids), count_invariant_combinations(attributes, test_ids), results)
