"""The authors' released CSDN checkpoint (nengdong96/CSDN, ``network/model.py`` ``Model``) as a :class:`CSDNNet`.

The release trains one RN50 model at 288x144 and saves ``nn.DataParallel(Model).state_dict()`` with
``torch.save`` (keys prefixed ``module.``). Its image side maps one to one onto this package's network:

    release key                                     CSDNNet key
    image_encoder1.{0..5} (visible stem)            stems.visible.{0,1,3,4,6,7} (conv1, bn1, conv2, bn2, conv3, bn3)
    image_encoder2.{0..5} (infrared stem)           stems.infrared.{0,1,3,4,6,7}
    image_encoder.{0,1,2,3} (layer1..layer4)        trunk.layer{1,2,3,4}
    attnpool.*                                      trunk.attnpool.*
    classifier.GEM.p (shape (1,))                   gem.p (a scalar)
    classifier.BN.*, classifier.classifier.weight   bn_gem.*, cls_gem.weight
    classifier2.BN.*, classifier2.classifier.weight bn_proj.*, cls_proj.weight

The text side (``prompt_learner1/2``, ``text_encoder``, ``attention_fusion``) has no counterpart in the
image network: it is reported as unused. Which stem is which follows the release's test code: gallery
(visible) images go through ``image_encoder1``, infrared queries through ``image_encoder2``.

The release's stem is ``Sequential(conv1, bn1, conv2, bn2, conv3, bn3, relu, avgpool)``: it has no ReLU after
bn1 and bn2. Its weights were trained that way, and on images resized with LANCZOS and normalised with ImageNet
statistics, and its test code concatenates the plain and flipped features: :data:`RELEASE_SETTINGS`, which
``csdn convert-release`` records in the converted file and ``csdn eval --weights`` applies
(:func:`csdn.model.network.release_resnet_stem` is the stem; the converted keys are the same either way).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from csdn.data.records import INFRARED, VISIBLE
from csdn.errors import CheckpointError

RELEASE_ARCH = "RN50"  # the release's only backbone
RELEASE_IMAGE_SIZE = (288, 144)  # (H, W) it trains and tests at
# release stem index (conv1, bn1, conv2, bn2, conv3, bn3) -> index in csdn.clip.adapt.extract_stem's Sequential
_STEM_INDEX = {"0": "0", "1": "1", "2": "3", "3": "4", "4": "6", "5": "7"}
_STEMS = {"image_encoder1": VISIBLE, "image_encoder2": INFRARED}
_PREFIXES = {  # release prefix -> CSDNNet prefix (the heads and the attention pool)
    "attnpool.": "trunk.attnpool.",
    "classifier.BN.": "bn_gem.",
    "classifier.classifier.": "cls_gem.",
    "classifier2.BN.": "bn_proj.",
    "classifier2.classifier.": "cls_proj.",
}
TEXT_SIDE = ("prompt_learner1.", "prompt_learner2.", "text_encoder.", "attention_fusion.")  # no image counterpart
# What the release's weights need to compute the release's features, recorded in a converted file and applied
# by ``csdn eval --weights``: its ReLU-less stem, ImageNet statistics, LANCZOS resizing, and its flip fusion.
RELEASE_SETTINGS = {
    "model.release_stem": True,
    "clip.input_stats": "imagenet",
    "data.resize_filter": "lanczos",
    "eval.flip_fusion": "concat",
}


@dataclass
class ConversionReport:
    """What a conversion did with each key."""

    mapped: dict[str, str] = field(default_factory=dict)  # release key -> CSDNNet key it filled
    unused: list[str] = field(default_factory=list)  # release keys of the text side (no image counterpart)
    missing: list[str] = field(default_factory=list)  # CSDNNet keys no release key filled (with a target only)

    def summary(self) -> str:
        """One line: counts, and the missing keys if any."""
        text = f"{len(self.mapped)} tensors mapped, {len(self.unused)} text-side tensors unused"
        return text + (f", missing: {', '.join(self.missing)}" if self.missing else "")


def release_key(key: str) -> str | None:
    """The CSDNNet key of a release key (``module.`` already stripped); None if it has no image counterpart."""
    head, _, rest = key.partition(".")
    if head in _STEMS:
        index, _, name = rest.partition(".")
        return f"stems.{_STEMS[head]}.{_STEM_INDEX[index]}.{name}" if index in _STEM_INDEX and name else None
    match = re.fullmatch(r"image_encoder\.([0-3])\.(.+)", key)
    if match:
        return f"trunk.layer{int(match.group(1)) + 1}.{match.group(2)}"
    if key == "classifier.GEM.p":
        return "gem.p"
    for prefix, ours in _PREFIXES.items():
        if key.startswith(prefix):
            return ours + key[len(prefix) :]
    return None


def convert_release_state_dict(
    state_dict: Mapping[str, Tensor], target: Mapping[str, Tensor] | None = None
) -> tuple[dict[str, Tensor], ConversionReport]:
    """The release's state_dict as a CSDNNet state_dict, and a report of the keys.

    ``target`` (a CSDNNet ``state_dict()``, e.g. of ``Experiment.build_network()``) checks every mapped tensor's
    shape, casts it to the target's dtype and lists the target keys left unfilled in ``report.missing``.
    A key that is neither image nor text side of the release, or no image key at all, means the input is
    not the release's model: :class:`CheckpointError`.
    """
    out: dict[str, Tensor] = {}
    report = ConversionReport()
    unknown = []
    for raw_key, tensor in state_dict.items():
        key = raw_key.removeprefix("module.")
        ours = release_key(key)
        if ours is None:
            (report.unused if key.startswith(TEXT_SIDE) else unknown).append(raw_key)
            continue
        out[ours] = tensor.reshape(()) if ours == "gem.p" else tensor
        report.mapped[raw_key] = ours
    if unknown or not out:
        found = f"keys it does not know: {', '.join(unknown[:5])}" if unknown else "no image-network keys"
        raise CheckpointError(f"not a state_dict of the released CSDN model (nengdong96/CSDN network.Model): {found}")
    if target is not None:
        _fit(out, target, report)
    return out, report


def _fit(out: dict[str, Tensor], target: Mapping[str, Tensor], report: ConversionReport) -> None:
    """Check shapes against ``target``, cast to its dtypes, record its unfilled keys."""
    wrong = [
        f"{key} {tuple(out[key].shape)} instead of {tuple(t.shape)}"
        for key, t in target.items()
        if key in out and out[key].shape != t.shape
    ]
    extra = [key for key in out if key not in target]
    if wrong or extra:
        raise CheckpointError(
            "the release checkpoint does not fit the network (is it RN50 at 288x144 with two stems?): "
            + "; ".join(wrong[:3] + [f"no place for {key}" for key in extra[:3]])
        )
    for key, t in target.items():
        if key in out:
            out[key] = out[key].to(t.dtype)
    report.missing = [key for key in target if key not in out]


def read_release_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The state_dict in a release ``.pth`` (``torch.load(weights_only=True)``); :class:`CheckpointError` if not."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"release checkpoint {path} is a folder; pass the .pth file (e.g. inside it)")
    if not path.is_file():
        raise CheckpointError(f"release checkpoint {path} does not exist")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and weights_only refusals all mean "not a plain state_dict"
        raise CheckpointError(f"cannot read {path} as a PyTorch state_dict (weights_only=True): {error}") from error
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise CheckpointError(f"{path} is not a state_dict (a mapping of names to tensors) of the release's model")
    return dict(raw)


def release_target(num_ids: int, arch: str = RELEASE_ARCH, image_size: tuple[int, int] = RELEASE_IMAGE_SIZE):
    """The state_dict of a randomly initialised two-stem CSDNNet the release's weights must fit."""
    from csdn.clip.loader import ClipSource, load_clip
    from csdn.model.network import CSDNNet

    visual = load_clip(ClipSource(arch=arch, pretrained=None, image_size=image_size)).visual()
    return CSDNNet(visual, num_ids, modality_stems=True).state_dict()


def release_num_ids(state_dict: Mapping[str, Tensor]) -> int:
    """The number of training identities of a release state_dict (rows of its GeM-head classifier)."""
    for key in ("module.classifier.classifier.weight", "classifier.classifier.weight"):
        if key in state_dict:
            return int(state_dict[key].shape[0])
    raise CheckpointError("not a state_dict of the released CSDN model: no classifier.classifier.weight")
