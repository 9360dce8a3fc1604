"""CLIP backbones for csdn: loading over open_clip, person-crop adaptation, and the embedded tiny CLIP."""

from csdn.clip.adapt import ClipVisual, TextEncoder, VisualFeatures, adapt_visual
from csdn.clip.loader import (
    TINY_ARCHS,
    CheckpointMismatchError,
    ClipBundle,
    ClipSource,
    ClipWeightsUnavailable,
    load_clip,
    local_dir_source,
    save_local_dir,
)
from csdn.clip.pretrain import PretrainConfig, pretrain_tiny_clip, tiny_clip
from csdn.clip.zeroshot import similarity_matrix, zero_shot_attributes

__all__ = [
    "TINY_ARCHS",
    "CheckpointMismatchError",
    "ClipBundle",
    "ClipSource",
    "ClipVisual",
    "ClipWeightsUnavailable",
    "PretrainConfig",
    "TextEncoder",
    "VisualFeatures",
    "adapt_visual",
    "load_clip",
    "local_dir_source",
    "pretrain_tiny_clip",
    "save_local_dir",
    "similarity_matrix",
    "tiny_clip",
    "zero_shot_attributes",
]
