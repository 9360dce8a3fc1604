"""The person-crop preprocessing of a CLIP: squash-resize (no centre crop: person crops keep head and feet) to
the input size the image tower is adapted to, then normalise."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2


def person_transform(image_size: tuple[int, int], mean, std) -> v2.Compose:
    """Squash-resize (no centre crop: person crops keep head and feet) and normalise one image."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(tuple(image_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


def images_to_tensor(images: np.ndarray | torch.Tensor, image_size: tuple[int, int], mean, std) -> torch.Tensor:
    """uint8 images (N, H, W, 3) -> normalised float (N, 3, H', W'), squash-resized when sizes differ."""
    x = torch.as_tensor(images)
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    if tuple(x.shape[2:]) != tuple(image_size):
        x = F.interpolate(x, size=tuple(image_size), mode="bilinear", align_corners=False, antialias=True)
    mean_t = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean_t) / std_t
