"""The captioned SynthVI pool the tiny CLIP is pretrained (and zero-shot evaluated) on, rendered in memory."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from csdn.data.records import INFRARED, MODALITIES, VISIBLE
from csdn.synthvi.cameras import ALL_CAMERAS, SYSU_CAMERAS
from csdn.synthvi.render import render_image
from csdn.synthvi.world import PURPOSE_CLIP, PURPOSE_HELDOUT, SynthConfig, caption, image_rng, make_identities


@dataclass
class ClipPool:
    """Captioned images for pretraining (or zero-shot evaluating) the tiny CLIP, in memory."""

    images: np.ndarray  # (N, H, W, 3) uint8
    captions: list[str]  # one caption per image
    modalities: list[str]  # VISIBLE or INFRARED per image
    pids: np.ndarray  # (N,) int64 identity per image
    attributes: list[dict[str, str]]  # the identity's attributes per image

    def __len__(self) -> int:
        return len(self.captions)


def _pool_modalities(n: int, infrared_fraction: float, rng: np.random.Generator) -> list[str]:
    n_ir = int(round(n * infrared_fraction))
    flags = np.zeros(n, dtype=bool)
    flags[rng.permutation(n)[:n_ir]] = True
    return [INFRARED if f else VISIBLE for f in flags]


def clip_pool(cfg: SynthConfig, heldout: bool = False) -> ClipPool:
    """Render the captioned CLIP pool (deterministic in ``cfg``).

    ``heldout=False``: the ``"clip"`` identities, ``clip_images_per_id`` each, a
    ``clip_infrared_fraction`` of them infrared (colour-free captions), over every camera of every layout.
    ``heldout=True``: the re-ID ``"test"`` identities (never seen in pretraining), ``clip_images_per_id``
    each, half visible and half infrared (SYSU-MM01 cameras), for zero-shot attribute evaluation.
    """
    pools = make_identities(cfg)
    identities = pools["test"] if heldout else pools["clip"]
    purpose = PURPOSE_HELDOUT if heldout else PURPOSE_CLIP
    n = len(identities) * cfg.clip_images_per_id
    if heldout:
        modalities = [MODALITIES[k % 2] for _ in identities for k in range(cfg.clip_images_per_id)]
        cameras = SYSU_CAMERAS
    else:
        modalities = _pool_modalities(n, cfg.clip_infrared_fraction, np.random.default_rng([cfg.seed, purpose]))
        cameras = ALL_CAMERAS
    by_modality = {m: [c for c in cameras if c.modality == m] for m in MODALITIES}
    images = np.empty((n, cfg.height, cfg.width, 3), dtype=np.uint8)
    captions, pids, attributes = [], [], []
    for i, modality in enumerate(modalities):
        ident = identities[i // cfg.clip_images_per_id]
        rng = image_rng(cfg.seed, purpose, ident.pid, 0, i % cfg.clip_images_per_id)
        cams = by_modality[modality]
        camera = cams[int(rng.integers(len(cams)))]
        images[i] = render_image(ident, camera, rng, height=cfg.height, width=cfg.width)
        captions.append(caption(ident, modality, rng))
        pids.append(ident.pid)
        attributes.append(dict(ident.attributes))
    return ClipPool(images, captions, list(modalities), np.asarray(pids, dtype=np.int64), attributes)
