"""One loader over open_clip for every CLIP source, returning a model adapted to person crops.

Sources (:class:`ClipSource`):

* ``arch`` + pretrained tag (``"RN50"``/``"ViT-B-16"`` + ``"openai"``): weights from the open_clip /
  Hugging Face cache or downloaded when online. Offline (``HF_HUB_OFFLINE=1``, set before Python starts)
  an uncached tag fails at once with :class:`ClipWeightsUnavailable` naming the alternatives.
* ``arch`` + a local weights file (``.safetensors``, or ``.pt``/``.pth``/``.bin`` read with
  ``weights_only=True``; OpenAI's TorchScript archives are read with ``torch.jit.load``). ``module.``
  prefixes and ``{"state_dict": ...}``/``{"model": ...}`` wrappers are unwrapped.
* ``"local-dir:<folder>"``: an open_clip folder (``open_clip_config.json`` + weights), e.g. the tiny CLIP.
* ``pretrained=None``: random initialisation (tests, or training from scratch).

OpenAI weights get QuickGELU whichever way they are loaded (tag metadata, TorchScript archive/OpenAI
state-dict markers, or "openai" in the file path); ``ClipSource.quick_gelu`` overrides the guess.
The tiny architectures ``csdn-tiny-vit`` and ``csdn-tiny-rn`` are registered with open_clip from the
JSON configs shipped in ``csdn/clip/model_configs``. Reading a weights file is :mod:`csdn.clip.checkpoints`,
a pretrained tag's file :mod:`csdn.clip.hub`, the person-crop preprocessing :mod:`csdn.clip.preprocess`.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIP
from open_clip.tokenizer import SimpleTokenizer
from torchvision.transforms import v2

from csdn.artifacts import atomic_write_bytes, atomic_write_json
from csdn.clip.adapt import GRID_INTERPOLATIONS, ClipVisual, TextEncoder, adapt_visual, visual_kind
from csdn.clip.checkpoints import (
    WEIGHT_SUFFIXES,
    CheckpointMismatchError,
    ClipWeightsInvalid,
    ClipWeightsNotFound,
    describe_state_dict,
    folder_given,
    read_state_dict,
)
from csdn.clip.hub import tag_weights
from csdn.clip.preprocess import images_to_tensor, person_transform
from csdn.errors import ConfigError

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
TINY_ARCHS = ("csdn-tiny-vit", "csdn-tiny-rn")
LOCAL_DIR = "local-dir:"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
_POS_KEYS = ("visual.positional_embedding", "visual.attnpool.positional_embedding")

open_clip.add_model_config(MODEL_CONFIG_DIR)


@dataclass(frozen=True)
class ClipSource:
    """Where a CLIP comes from and the person-crop geometry it is adapted to."""

    arch: str  # open_clip architecture name: "RN50", "ViT-B-16", "csdn-tiny-vit", "csdn-tiny-rn", ...
    pretrained: str | None = None  # tag ("openai"), weights file path, "local-dir:<folder>", or None (random)
    image_size: tuple[int, int] = (256, 128)  # (H, W) input the image tower is adapted to
    last_stride: int = 1  # ResNets only: stride of layer4 (1 = re-ID adaptation, 2 = CLIP as released)
    quick_gelu: bool | None = None  # force QuickGELU on/off; None = auto (True for OpenAI weights)
    cache_dir: str | None = None  # open_clip / Hugging Face download cache; None = their defaults
    grid_interpolation: str = "bicubic"  # how a positional grid is resized to image_size (GRID_INTERPOLATIONS)

    def __post_init__(self) -> None:
        if self.grid_interpolation not in GRID_INTERPOLATIONS:
            raise ConfigError(
                f"grid_interpolation must be one of {GRID_INTERPOLATIONS}, got {self.grid_interpolation!r}"
            )
        if len(self.image_size) != 2:
            raise ConfigError(f"image_size must be (H, W), got {self.image_size!r}")
        object.__setattr__(self, "image_size", (int(self.image_size[0]), int(self.image_size[1])))
        if self.last_stride not in (1, 2):
            raise ConfigError(f"last_stride must be 1 or 2, got {self.last_stride}")


@dataclass
class ClipBundle:
    """A loaded, adapted CLIP and everything needed to feed it."""

    model: CLIP  # the open_clip model, image tower adapted to ``image_size``, in eval mode
    tokenizer: SimpleTokenizer  # open_clip BPE tokenizer padded/truncated to ``context_length``
    context_length: int  # text positions of the model
    mean: tuple[float, ...]  # per-channel normalisation mean (0..1 scale)
    std: tuple[float, ...]  # per-channel normalisation std
    quick_gelu: bool  # whether the towers use QuickGELU
    image_size: tuple[int, int]  # (H, W) the image tower expects
    last_stride: int  # layer4 stride for ResNets
    source: ClipSource  # what was asked for
    model_cfg: dict[str, Any] = field(repr=False)  # open_clip model config that built ``model``
    checkpoint: Path | None = None  # the weights file that was loaded, if any

    @property
    def kind(self) -> str:
        """``"resnet"`` or ``"vit"``."""
        return visual_kind(self.model.visual)

    @property
    def embed_dim(self) -> int:
        """Dimension of the joint image-text space."""
        return int(self.model.visual.output_dim)

    def visual(self) -> ClipVisual:
        """The image tower as stem + trunk (modules shared with ``model``)."""
        return ClipVisual(self.model.visual)

    def text_encoder(self) -> TextEncoder:
        """The frozen text tower working on token embeddings (modules shared with ``model``)."""
        return TextEncoder(self.model, self.tokenizer)

    def preprocess(self) -> v2.Compose:
        """Single-image transform (PIL or HxWx3 uint8): squash-resize to ``image_size``, normalise."""
        return person_transform(self.image_size, self.mean, self.std)

    def to_input(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """A uint8 batch (N, H, W, 3) -> normalised float (N, 3, H', W') on the model's device."""
        device = next(self.model.parameters()).device
        return images_to_tensor(images, self.image_size, self.mean, self.std).to(device)


# ----------------------------------------------------------------------------------------------------
# Fitting a state dict into an architecture


def state_dict_differences(
    expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """Keys of ``expected`` missing from ``found``, keys of ``found`` it lacks, and keys whose shapes differ."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [k for k, v in expected.items() if k in found and found[k].shape != v.shape]
    return missing, unexpected, shapes


def _mismatches(model: CLIP, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    expected = model.state_dict()
    missing, unexpected, shapes = state_dict_differences(expected, state)
    return (
        missing,
        unexpected,
        [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}" for k in shapes],
    )


def _mismatch_message(path: Path, arch: str, state: dict, found: tuple[list[str], list[str], list[str]]) -> str:
    missing, unexpected, shapes = found
    parts = [f"{len(missing)} missing keys", f"{len(unexpected)} unexpected keys", f"{len(shapes)} shape mismatches"]
    examples = missing[:2] + unexpected[:2] + shapes[:2]
    return (
        f"checkpoint {path} does not fit architecture {arch!r}: {', '.join(parts)} (e.g. {examples}). "
        f"The checkpoint looks like {describe_state_dict(state)}. Pass the architecture it was trained with "
        "as ClipSource(arch=...)."
    )


def _fit_scalars(model: CLIP, state: dict[str, torch.Tensor]) -> None:
    for key in ("logit_scale", "logit_bias"):
        param = getattr(model, key, None)
        if key in state and param is not None and state[key].shape != param.shape:
            if state[key].numel() == param.numel():  # scalar vs 1-element tensor
                state[key] = state[key].reshape(param.shape)


# ----------------------------------------------------------------------------------------------------
# Resolving a source


def registered_config(arch: str) -> dict[str, Any]:
    """The open_clip model config of a registered architecture name (a deep copy)."""
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ConfigError(f"unknown CLIP architecture {arch!r}; known: {', '.join(open_clip.list_models())}")
    return cfg


def convolutional_tower(arch: str) -> bool:
    """Whether the registered architecture's image tower is a ResNet (its config lists layers per stage)."""
    return isinstance(registered_config(arch)["vision_cfg"].get("layers"), (list, tuple))


def _structure(cfg: dict[str, Any]) -> dict[str, Any]:
    """The parts of a model config that decide the weight shapes (image size and activation aside)."""
    cfg = copy.deepcopy(cfg)
    cfg.pop("quick_gelu", None)
    cfg.get("vision_cfg", {}).pop("image_size", None)
    return cfg


def read_local_dir(folder: str | Path) -> dict[str, Any]:
    """Parse ``open_clip_config.json`` of a ``local-dir:`` folder (clear errors for missing/invalid files)."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise ClipWeightsNotFound(f"local-dir folder not found: {folder}")
    if not path.is_file():
        raise ClipWeightsNotFound(f"{path} is missing: a local-dir: folder needs open_clip's {CONFIG_FILE}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ClipWeightsInvalid(f"{path} is not valid JSON: {error}") from error
    if "model_cfg" not in config:
        raise ClipWeightsInvalid(f"{path} has no 'model_cfg' entry (expected open_clip's local-dir format)")
    return config


def _local_dir_weights(folder: Path) -> Path:
    preferred = [folder / name for name in (WEIGHTS_FILE, "open_clip_pytorch_model.bin", "model.safetensors")]
    found = [p for p in preferred if p.is_file()] or sorted(p for s in WEIGHT_SUFFIXES for p in folder.glob(f"*{s}"))
    if not found:
        raise ClipWeightsNotFound(f"{folder} has {CONFIG_FILE} but no weights file ({WEIGHTS_FILE} expected)")
    return found[0]


@dataclass
class _Plan:
    model_cfg: dict[str, Any]
    checkpoint: Path | None
    state: dict[str, torch.Tensor] | None
    quick_gelu: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    stored_geometry: tuple[tuple[int, int], int] | None  # (image_size, last_stride) the weights were saved at


def _plan(source: ClipSource) -> _Plan:
    mean, std = tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD)
    pretrained = source.pretrained
    if pretrained is None:
        cfg = registered_config(source.arch)
        return _Plan(cfg, None, None, _choose(source.quick_gelu, cfg.get("quick_gelu", False)), mean, std, None)
    if pretrained.startswith(LOCAL_DIR):
        return _plan_local_dir(source, Path(pretrained[len(LOCAL_DIR) :]))
    path = Path(pretrained).expanduser()
    if path.is_dir():
        raise ClipWeightsInvalid(folder_given(path))
    if path.is_file():
        cfg = registered_config(source.arch)
        state, openai_marker = read_state_dict(path)
        openai = openai_marker or _named_openai(path) or bool(cfg.get("quick_gelu", False))
        return _Plan(cfg, path, state, _choose(source.quick_gelu, openai), mean, std, None)
    if path.suffix in WEIGHT_SUFFIXES or os.sep in pretrained:
        raise ClipWeightsNotFound(f"CLIP weights file not found: {path}")
    cfg = registered_config(source.arch)
    weights = tag_weights(source.arch, pretrained, source.cache_dir)
    tag_cfg = open_clip.get_pretrained_cfg(source.arch, pretrained)
    state, _ = read_state_dict(weights)
    quick = _choose(source.quick_gelu, bool(tag_cfg.get("quick_gelu", False) or cfg.get("quick_gelu", False)))
    return _Plan(cfg, weights, state, quick, tuple(tag_cfg.get("mean", mean)), tuple(tag_cfg.get("std", std)), None)


def _plan_local_dir(source: ClipSource, folder: Path) -> _Plan:
    config = read_local_dir(folder)
    cfg = config["model_cfg"]
    known = open_clip.get_model_config(source.arch)
    if known is not None and _structure(known) != _structure(cfg):
        recorded = config.get("csdn", {}).get("arch", "unknown")
        raise CheckpointMismatchError(
            f"{folder / CONFIG_FILE} describes a different architecture than {source.arch!r}; "
            f"pass the folder's own architecture as ClipSource(arch=...) (recorded: {recorded})"
        )
    weights = _local_dir_weights(folder)
    state, _ = read_state_dict(weights)
    preprocess = config.get("preprocess_cfg", {})
    record = config.get("csdn")
    stored = (tuple(record["image_size"]), int(record.get("last_stride", 1))) if record else None
    return _Plan(
        cfg,
        weights,
        state,
        _choose(source.quick_gelu, cfg.get("quick_gelu", False)),
        tuple(preprocess.get("mean", OPENAI_DATASET_MEAN)),
        tuple(preprocess.get("std", OPENAI_DATASET_STD)),
        stored,
    )


def _named_openai(path: Path) -> bool:
    """True for a file called like OpenAI weights or inside a Hugging Face cache repo of OpenAI weights."""
    return "openai" in path.name.lower() or any(
        part.startswith("models--") and "openai" in part.lower() for part in path.parts
    )


def _choose(forced: bool | None, guess: bool) -> bool:
    return bool(guess) if forced is None else bool(forced)


# ----------------------------------------------------------------------------------------------------
# Building and loading


def build_model(model_cfg: dict[str, Any], quick_gelu: bool) -> CLIP:
    """Instantiate an open_clip CLIP with the built-in towers from a model config (random weights)."""
    cfg = copy.deepcopy(model_cfg)
    if cfg.pop("custom_text", False) or cfg.get("text_cfg", {}).get("hf_model_name"):
        raise ConfigError("csdn needs CLIP's built-in text transformer (no custom/HF text towers)")
    if cfg.get("vision_cfg", {}).get("timm_model_name"):
        raise ConfigError("csdn needs open_clip's ModifiedResNet or VisionTransformer image tower (no timm towers)")
    cfg.pop("multimodal_cfg", None)
    cfg["quick_gelu"] = quick_gelu
    model = CLIP(**cfg)
    visual_kind(model.visual)  # fail early on unsupported towers
    return model


@functools.lru_cache(maxsize=8)
def _tokenizer(context_length: int) -> SimpleTokenizer:
    return SimpleTokenizer(context_length=context_length)


def _load_weights(model: CLIP, plan: _Plan, source: ClipSource) -> None:
    transient = {name for name, _ in model.named_buffers()} - set(model.state_dict())
    state = {k: v for k, v in plan.state.items() if k not in transient}  # e.g. a scripted model's attn_mask
    if plan.stored_geometry is not None:
        adapt_visual(model.visual, *plan.stored_geometry)
    _fit_scalars(model, state)
    found = _mismatches(model, state)
    only_grid = not found[0] and not found[1] and all(s.split(":")[0] in _POS_KEYS for s in found[2])
    if found[2] and only_grid:  # weights saved from a model already adapted to the requested geometry
        adapt_visual(model.visual, source.image_size, source.last_stride, source.grid_interpolation)
        found = _mismatches(model, state)
    if any(found):
        raise CheckpointMismatchError(_mismatch_message(plan.checkpoint, source.arch, state, found))
    model.load_state_dict(state, strict=True)


def load_clip(source: ClipSource, device: str | torch.device = "cpu") -> ClipBundle:
    """Load (or randomly initialise) a CLIP from ``source`` and adapt it to ``source.image_size``."""
    plan = _plan(source)
    model = build_model(plan.model_cfg, plan.quick_gelu)
    if plan.state is not None:
        _load_weights(model, plan, source)
    adapt_visual(model.visual, source.image_size, source.last_stride, source.grid_interpolation)
    model = model.to(device).eval()
    context_length = int(model.positional_embedding.shape[0])
    return ClipBundle(
        model=model,
        tokenizer=_tokenizer(context_length),
        context_length=context_length,
        mean=plan.mean,
        std=plan.std,
        quick_gelu=plan.quick_gelu,
        image_size=(int(source.image_size[0]), int(source.image_size[1])),
        last_stride=source.last_stride,
        source=source,
        model_cfg={**plan.model_cfg, "quick_gelu": plan.quick_gelu},
        checkpoint=plan.checkpoint,
    )


# ----------------------------------------------------------------------------------------------------
# Saving in open_clip's local-dir format


def save_local_dir(bundle: ClipBundle, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``bundle`` as an open_clip ``local-dir:`` folder (config + safetensors weights).

    The geometry the weights are in (image size, ResNet last stride) is recorded under the ``"csdn"``
    key, which open_clip ignores; :func:`load_clip` re-applies it before loading the weights. ViT
    folders are also readable by plain ``open_clip.create_model("local-dir:...")``; ResNet folders
    need :func:`load_clip` (open_clip cannot build a stride-1, rectangular attention pool).
    """
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in bundle.model.state_dict().items()}
    atomic_write_bytes(folder / WEIGHTS_FILE, save(tensors))
    height, width = bundle.image_size
    model_cfg = copy.deepcopy(bundle.model_cfg)
    if bundle.kind == "vit":  # open_clip builds rectangular ViTs itself, so plain open_clip can read the folder
        model_cfg["vision_cfg"]["image_size"] = [height, width]
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {
            "size": [height, width],
            "mean": list(bundle.mean),
            "std": list(bundle.std),
            "interpolation": "bilinear",
            "resize_mode": "squash",
        },
        "csdn": {
            "arch": bundle.source.arch,
            "image_size": [height, width],
            "last_stride": bundle.last_stride,
            **(extra or {}),
        },
    }
    atomic_write_json(folder / CONFIG_FILE, config)
    return folder


def local_dir_source(folder: str | Path, image_size: tuple[int, int] | None = None) -> ClipSource:
    """A :class:`ClipSource` for a folder written by :func:`save_local_dir` (arch and size from its record)."""
    config = read_local_dir(folder)
    record = config.get("csdn", {})
    arch = record.get("arch", "")
    size = tuple(image_size or record.get("image_size") or config.get("preprocess_cfg", {}).get("size", (256, 128)))
    return ClipSource(
        arch=arch,
        pretrained=f"{LOCAL_DIR}{Path(folder)}",
        image_size=size,
        last_stride=int(record.get("last_stride", 1)),
    )
