"""CLIP backbones for csdn: loading over open_clip, person-crop adaptation, the tiny architectures.

The embedded tiny CLIP's pretraining on SynthVI is in :mod:`csdn.synthvi.pretrain`."""

from csdn.clip.adapt import ClipVisual, TextEncoder, VisualFeatures, adapt_visual
from csdn.clip.checkpoints import CheckpointMismatchError
from csdn.clip.hub import ClipWeightsUnavailable
from csdn.clip.loader import TINY_ARCHS, ClipBundle, ClipSource, load_clip, local_dir_source, save_local_dir

__all__ = [
    "TINY_ARCHS",
    "CheckpointMismatchError",
    "ClipBundle",
    "ClipSource",
    "ClipVisual",
    "ClipWeightsUnavailable",
    "TextEncoder",
    "VisualFeatures",
    "adapt_visual",
    "load_clip",
    "local_dir_source",
    "save_local_dir",
]
