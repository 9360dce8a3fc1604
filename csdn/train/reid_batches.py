"""The stage-3 batches: one step's sampler item (:class:`BatchKey`) becomes P identities x K visible images
(the plain view and, with channel exchange, a second view) + K infrared images, each augmented from its own
seed (:func:`image_seed`: run seed, epoch, step, view, position in the global batch), so a batch is the same
whatever the number of processes or DataLoader workers. A view is augmented at once
(:class:`~csdn.data.transforms.BatchTrainTransform`, bit-identical to the per-image pipeline).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from csdn.data.cache import ImageCache
from csdn.data.images import CachedImages
from csdn.data.transforms import BatchTrainTransform, TransformConfig, train_transform


class BatchKey(NamedTuple):
    """One step's sampler item plus what seeds its augmentations."""

    visible: list[int]  # positions in the visible rows (this rank's share of the global batch)
    infrared: list[int]  # positions in the infrared rows
    seed: int  # the run's seed
    epoch: int  # epoch of the step
    step: int  # step within the epoch
    offset: int  # position of this share's first image in the global batch


def image_seed(key: BatchKey, view: int, position: int) -> int:
    """The augmentation seed of image ``position`` (within the share) of ``view`` in the batch ``key``."""
    entropy = [key.seed, key.epoch, key.step, view, key.offset + position]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)


class PairedBatches(Dataset):
    """Turns one :class:`BatchKey` (or a bare ``(visible_indices, infrared_indices)``) into an augmented batch.

    With a :class:`BatchKey` each image's augmentation is seeded by :func:`image_seed` (torch's global
    generator is left as it was); a bare pair draws from torch's global generator, image after image.

    Each view is augmented as a whole batch (:class:`~csdn.data.transforms.BatchTrainTransform`: the same
    draws and the same floats as the per-image pipeline, which it falls back to for images it does not
    cover); ``batched=False`` runs the per-image pipeline image by image (the reference it is tested against).
    """

    def __init__(
        self,
        cache: ImageCache,
        visible_rows: list[int],
        infrared_rows: list[int],
        visible_labels: list[int],
        infrared_labels: list[int],
        tcfg: TransformConfig,
        exchange_view: bool,
        batched: bool = True,
    ) -> None:
        self.cache, self.batched = cache, batched
        self.visible = CachedImages(cache, visible_labels, train_transform(tcfg, "visible"), visible_rows)
        self.exchange = (
            CachedImages(cache, visible_labels, train_transform(tcfg, "visible_exchange"), visible_rows)
            if exchange_view
            else None
        )
        self.infrared = CachedImages(cache, infrared_labels, train_transform(tcfg, "infrared"), infrared_rows)
        kinds = ["visible", "visible_exchange"] if exchange_view else ["visible"]
        self.view_transforms = [BatchTrainTransform(tcfg, kind) for kind in kinds]
        self.infrared_transform = BatchTrainTransform(tcfg, "infrared")
        self._image_shape = (3, tcfg.height, tcfg.width)

    def __getitem__(self, item: BatchKey | tuple[list[int], list[int]]) -> dict[str, Tensor]:
        key = item if isinstance(item, BatchKey) else None
        vis_idx, ir_idx = item[0], item[1]
        views = len(self.view_transforms)
        with torch.random.fork_rng(devices=[], enabled=key is not None):
            if self.batched:
                vis_images, n = self._images(self.visible, vis_idx), len(vis_idx)
                visible = torch.empty(views * n, *self._image_shape)
                for v, transform in enumerate(self.view_transforms):
                    transform(vis_images, _seeds(key, v, n), out=visible[v * n : (v + 1) * n])
                ir = self.infrared_transform(self._images(self.infrared, ir_idx), _seeds(key, views, len(ir_idx)))
            else:
                datasets = [self.visible] + ([self.exchange] if self.exchange is not None else [])
                vis = [
                    torch.stack([self._image(view, i, key, v, j) for j, i in enumerate(vis_idx)])
                    for v, view in enumerate(datasets)
                ]
                ir = torch.stack([self._image(self.infrared, i, key, views, j) for j, i in enumerate(ir_idx)])
                visible = torch.cat(vis)
        labels_v = torch.tensor([self.visible.labels[i] for i in vis_idx])
        labels_i = torch.tensor([self.infrared.labels[i] for i in ir_idx])
        return {
            "visible": visible,
            "visible_labels": labels_v.repeat(views),
            "infrared": ir,
            "infrared_labels": labels_i,
        }

    def _images(self, images: CachedImages, indices: list[int]) -> Tensor:
        """The uint8 cache images at ``indices`` of ``images``, as an ``N x 3 x H x W`` (channels-last) view."""
        rows = [images.rows[i] for i in indices]
        return torch.from_numpy(np.asarray(self.cache.array[rows])).permute(0, 3, 1, 2)

    @staticmethod
    def _image(images: CachedImages, index: int, key: BatchKey | None, view: int, position: int) -> Tensor:
        if key is not None:
            torch.random.default_generator.manual_seed(image_seed(key, view, position))
        return torch.as_tensor(images[index][0])


def _seeds(key: BatchKey | None, view: int, count: int) -> list[int] | None:
    """The :func:`image_seed` of each of ``count`` images of ``view`` (None for a bare pair)."""
    return None if key is None else image_seeds(key, view, count)


# numpy's SeedSequence constants (numpy/random/bit_generator.pyx, from O'Neill's seed_seq_fe), for image_seeds
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_MULT_L, _MIX_MULT_R, _MASK32, _POOL = 0xCA01F9DD, 0x4973F715, 0xFFFFFFFF, 4


def image_seeds(key: BatchKey, view: int, count: int) -> list[int]:
    """``[image_seed(key, view, p) for p in range(count)]``, computed together.

    numpy's ``SeedSequence(entropy).generate_state(1, np.uint64)`` (pool of 4 uint32 words), run on every
    image's entropy at once with uint32 array arithmetic: the entropy words are those numpy makes of the
    integers (each split into 32-bit words, lowest first), the same for every image but the last, the
    position, which is one word while ``offset + count <= 2**32``. Anything else (a value that is not a
    non-negative integer, larger positions) is left to :func:`image_seed`, one image at a time.
    """
    head = [key.seed, key.epoch, key.step, view, key.offset]
    if not all(isinstance(v, (int, np.integer)) and v >= 0 for v in head) or key.offset + count > 2**32:
        return [image_seed(key, view, position) for position in range(count)]
    words = [np.full(count, w, np.uint32) for v in head[:4] for w in _uint32_words(int(v))]
    words.append(np.arange(key.offset, key.offset + count, dtype=np.uint64).astype(np.uint32))
    hash_const = _INIT_A

    def hashmix(value: np.ndarray) -> np.ndarray:
        nonlocal hash_const
        value = value ^ np.uint32(hash_const)
        hash_const = hash_const * _MULT_A & _MASK32
        value = value * np.uint32(hash_const)
        return value ^ (value >> np.uint32(16))

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        result = np.uint32(_MIX_MULT_L) * x - np.uint32(_MIX_MULT_R) * y
        return result ^ (result >> np.uint32(16))

    pool = [hashmix(words[i]) for i in range(_POOL)]  # there are at least 5 words: no zero padding
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for src in range(_POOL, len(words)):
        for dst in range(_POOL):
            pool[dst] = mix(pool[dst], hashmix(words[src]))
    hash_const, state = _INIT_B, []
    for dst in range(2):  # generate_state(1, np.uint64): two uint32 words, the first the low half
        value = pool[dst] ^ np.uint32(hash_const)
        hash_const = hash_const * _MULT_B & _MASK32
        value = value * np.uint32(hash_const)
        state.append((value ^ (value >> np.uint32(16))).astype(np.uint64))
    return ((state[0] | (state[1] << np.uint64(32))) >> np.uint64(1)).tolist()


def _uint32_words(value: int) -> list[int]:
    """``value`` as numpy's SeedSequence splits an integer: 32-bit words, lowest first (0 is one word)."""
    words = [value & _MASK32]
    while value > _MASK32:
        value >>= 32
        words.append(value & _MASK32)
    return words
