"""A torch Dataset over an :class:`~csdn.data.cache.ImageCache`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from csdn.data.cache import ImageCache


class CachedImages(Dataset):
    """Items ``(image, label, cam, index)`` read from a memory-mapped image cache.

    ``image`` is ``transform`` applied to the cached image as a ``tv_tensors.Image`` (uint8, CHW);
    without a transform the uint8 image itself is returned. ``label`` is ``labels[index]`` when labels
    are given (e.g. contiguous training labels), else the record's ``pid``; ``cam`` is the record's
    camera. ``indices`` optionally restricts the dataset to those cache rows (e.g. one modality of a
    training cache): position ``index`` then reads cache row ``indices[index]``, and ``index`` is the
    position in this dataset, the number a sampler refers to.
    """

    def __init__(
        self,
        cache: ImageCache,
        labels: Sequence[int] | None = None,
        transform: Callable[[Any], Any] | None = None,
        indices: Sequence[int] | None = None,
    ) -> None:
        self.cache = cache
        self.rows = list(range(len(cache))) if indices is None else [int(i) for i in indices]
        if any(not 0 <= row < len(cache) for row in self.rows):
            raise IndexError(f"indices must lie in [0, {len(cache)}) for a cache of {len(cache)} images")
        if labels is not None and len(labels) != len(self.rows):
            raise ValueError(f"got {len(labels)} labels for {len(self.rows)} images")
        self.labels = None if labels is None else [int(label) for label in labels]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[Any, int, int, int]:
        row = self.rows[index]
        record = self.cache.records[row]
        pixels = np.ascontiguousarray(self.cache[row].transpose(2, 0, 1))  # HWC view -> CHW copy
        image = tv_tensors.Image(torch.from_numpy(pixels))
        if self.transform is not None:
            image = self.transform(image)
        label = record.pid if self.labels is None else self.labels[index]
        return image, label, record.cam, index
