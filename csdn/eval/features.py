"""Feature extraction for evaluation: batched, optional flip test-time augmentation, L2-normalised.

Flip fusion ``"mean"`` (as AGW / CLIP-ReID test code): the feature of an image is the average of the
features of the image and of its horizontal mirror, taken *before* L2 normalisation. ``"concat"`` (the CSDN
release's test code): the two features side by side, not normalised again, so that ranking by the dot
product sums the plain-plain and flipped-flipped similarities as the release's ``query @ gallery.T`` does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from csdn.runtime import FP32, ComputePath, pick_device

Encoder = Callable[[torch.Tensor], torch.Tensor]
FLIP_FUSIONS = ("mean", "concat")  # how the flipped image's feature joins the plain one


def extract_features(
    encode: Encoder,
    images: Dataset,
    batch_size: int = 128,
    flip: bool = False,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    progress: bool = True,
    *,
    normalize: bool = True,
    model: nn.Module | None = None,
    desc: str = "features",
    flip_fusion: str = "mean",
    compute: ComputePath = FP32,
) -> torch.Tensor:
    """Features of every item of ``images``, in order: a CPU float32 (N, D) tensor of unit rows
    (raw features with ``normalize=False``, e.g. stage 1's cached CLIP features). With ``flip`` and
    ``flip_fusion="concat"`` the rows are ``(N, 2D)``: the plain and the flipped feature, as ``encode`` gives
    them (not normalised again, as the release ranks them).

    ``encode`` maps a float (B, 3, H, W) batch to (B, D) features. ``images`` yields image tensors or
    tuples whose first element is the image tensor (already normalised). The module being evaluated
    (``model``, else ``encode`` itself or the object of a bound method such as ``net.encode_image``)
    is put in eval mode and each submodule's previous mode is restored afterwards. Runs under
    ``torch.inference_mode()`` on ``compute``'s path (its autocast and image layout; plain float32 by
    default). ``device=None`` uses the module's device, else CUDA when available, else CPU.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(images) == 0:
        raise ValueError("cannot extract features of an empty dataset")
    if flip_fusion not in FLIP_FUSIONS:
        raise ValueError(f"flip_fusion must be one of {FLIP_FUSIONS}, got {flip_fusion!r}")
    concat = flip and flip_fusion == "concat"
    module = model if model is not None else _module_of(encode)
    device = _device_for(device, module)
    loader = DataLoader(
        images, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=device.type == "cuda"
    )
    previous_modes = {m: m.training for m in module.modules()} if module is not None else {}
    parts = []
    try:
        if module is not None:
            compute.prepare(module).eval()
        with torch.inference_mode(), compute.autocast():
            for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
                x = _image_batch(batch).to(device, non_blocking=True)
                feats = _encode(encode, compute.images(x)).float()
                if flip:
                    flipped = _encode(encode, compute.images(torch.flip(x, dims=[3]))).float()
                    feats = torch.cat([feats, flipped], dim=1) if concat else (feats + flipped) / 2
                parts.append(feats.cpu())
    finally:
        for m, training in previous_modes.items():
            m.training = training
    # Concatenated outside inference mode, so the result is an ordinary tensor usable anywhere.
    features = torch.cat(parts)
    return F.normalize(features, dim=1) if normalize and not concat else features


def _module_of(encode: Encoder) -> nn.Module | None:
    """The nn.Module behind ``encode``: itself, or the owner of a bound method."""
    if isinstance(encode, nn.Module):
        return encode
    owner = getattr(encode, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def _device_for(device: torch.device | str | None, module: nn.Module | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if module is not None:
        param = next(module.parameters(), None)
        if param is not None:
            return param.device
    return pick_device("auto")


def _image_batch(batch) -> torch.Tensor:
    """The image tensor of a collated batch (the batch itself, or its first element)."""
    images = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            "dataset items must be image tensors or tuples whose first element is the "
            f"image tensor; got a batch of {type(images).__name__}"
        )
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(
            "expected float image batches of shape (B, C, H, W) (apply the test transform "
            f"first); got {images.dtype} of shape {tuple(images.shape)}"
        )
    return images


def _encode(encode: Encoder, x: torch.Tensor) -> torch.Tensor:
    feats = encode(x)
    if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or len(feats) != len(x):
        shape = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
        raise ValueError(f"encode must return a ({len(x)}, D) tensor for a batch of {len(x)}, got {shape}")
    return feats
