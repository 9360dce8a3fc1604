"""The CSDN image network: modality-specific stems, a shared CLIP trunk, and two BNNeck heads.

Head (a): GeM-pooled trunk feature map (ViT: the class token) -> BatchNorm1d (BNNeck) -> bias-free Linear.
Head (b): the trunk's projected CLIP feature (attention pool / ViT projection) -> BatchNorm1d -> Linear.
The inference feature is ``concat(L2norm(BN(GeM feature)), L2norm(projected feature))``.

``release_stem=True`` (ResNets) runs each stem as the authors' release does, without the ReLUs after bn1 and
bn2 (to evaluate its checkpoints, see :mod:`csdn.model.release`); the parameter names are unchanged.

``modality_stems=False`` gives one shared stem (the CLIP-ReID and vision-only baselines). A shared stem
runs once over the concatenated visible + infrared batch, so its BatchNorms normalise both modalities
with one set of batch statistics in training, as their running statistics do at test (as in AGW).

Each variant name denotes one network everywhere (CLI, notebooks, ablation, README):

    variant             stems          text (prompts, SII, HSE)
    csdn                per modality   modality prompts, SII, HSE
    clip-reid           shared         one shared prompt learner, HSE, no SII
    vision-only         shared         none
    vision-only-stems   per modality   none (the CSDN network without text)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from csdn.clip.adapt import RESNET, ClipVisual
from csdn.data.records import INFRARED, MODALITIES, VISIBLE
from csdn.errors import ConfigError
from csdn.model.prompts import WORDINGS
from csdn.model.sii import SII_KINDS

VARIANTS = ("csdn", "clip-reid", "vision-only", "vision-only-stems")
_STEMS = {"csdn": True, "clip-reid": False, "vision-only": False, "vision-only-stems": True}


@dataclass(frozen=True)
class ModelConfig:
    """What the network and its text side are made of (the variant picks sensible defaults)."""

    variant: str = "csdn"  # "csdn", "clip-reid", "vision-only" or "vision-only-stems" (see the module docstring)
    prompt_wording: str = "paper"  # "paper" ("A visible/An infrared photo of ...") or "released" ("A photo of ...")
    n_ctx: int = 4  # learnable context tokens per identity and modality
    sii: str = "official"  # SII variant: "official", "attention", "mean" or "none"
    sii_heads: int = 8  # attention heads of the "attention" SII
    gem_p: float = 3.0  # initial GeM exponent (learnable)
    release_stem: bool = False  # RN stems as the release runs them: no ReLU after bn1 and bn2 (for its checkpoints)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.prompt_wording not in WORDINGS:
            raise ConfigError(f"prompt_wording must be one of {WORDINGS}, got {self.prompt_wording!r}")
        if self.sii not in SII_KINDS:
            raise ConfigError(f"sii must be one of {SII_KINDS}, got {self.sii!r}")
        if self.n_ctx < 1 or self.sii_heads < 1:
            raise ConfigError(f"need n_ctx >= 1 and sii_heads >= 1, got {self.n_ctx} and {self.sii_heads}")

    @property
    def modality_stems(self) -> bool:
        """Separate stems for visible and infrared images (csdn, vision-only-stems) or one shared stem."""
        return _STEMS[self.variant]

    @property
    def uses_text(self) -> bool:
        """False for the vision-only baselines (no prompts, no SII, no HSE)."""
        return not self.variant.startswith("vision-only")

    @property
    def shared_prompts(self) -> bool:
        """One prompt learner for both modalities (the CLIP-ReID baseline)."""
        return self.variant == "clip-reid"

    @property
    def sii_kind(self) -> str:
        """The SII variant actually used: only CSDN fuses."""
        return self.sii if self.variant == "csdn" else "none"


class _PowerMean(torch.autograd.Function):
    """``clamp(x, eps) ** p`` averaged over the spatial grid, (N, C, H, W) -> (N, C), with ``p`` a 0-d tensor.

    The forward is autograd's; the backward reuses the forward's power (``d/dx x**p = p * x**p / x``)
    instead of raising ``x`` to ``p - 1`` again: one transcendental pass over the map fewer, equal to
    autograd's gradient up to rounding (tests/test_network.py)."""

    @staticmethod
    def forward(ctx, x: Tensor, p: Tensor, eps: float) -> Tensor:
        clamped = x.clamp(min=eps)
        powered = clamped.pow(p)
        ctx.save_for_backward(x, clamped, powered, p)
        ctx.eps = eps
        return powered.mean(dim=(2, 3))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, clamped, powered, p = ctx.saved_tensors
        per_cell = (grad / (x.shape[2] * x.shape[3]))[:, :, None, None].to(powered.dtype)
        grad_x = grad_p = None
        if ctx.needs_input_grad[0]:
            grad_x = (powered / clamped * per_cell * p.to(powered.dtype)).masked_fill_(x < ctx.eps, 0)
        if ctx.needs_input_grad[1]:
            grad_p = (powered * clamped.log() * per_cell).sum(dtype=torch.float32).to(p.dtype)
        return grad_x, grad_p, None


class GeM(nn.Module):
    """Generalised-mean pooling over the spatial grid with a learnable exponent ``p``."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return _PowerMean.apply(x, self.p, self.eps).pow(1.0 / self.p)


def bnneck(dim: int) -> nn.BatchNorm1d:
    """BatchNorm1d with a frozen zero bias, as in the BNNeck of the re-ID baselines."""
    bn = nn.BatchNorm1d(dim)
    bn.bias.requires_grad_(False)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    return bn


def classifier(dim: int, num_ids: int) -> nn.Linear:
    """Bias-free identity classifier, weights N(0, 0.001)."""
    fc = nn.Linear(dim, num_ids, bias=False)
    nn.init.normal_(fc.weight, std=0.001)
    return fc


# Positions of the ReLUs after bn1 and bn2 in the ResNet stem of csdn.clip.adapt.extract_stem
# (conv1, bn1, act1, conv2, bn2, act2, conv3, bn3, act3, avgpool).
_RELEASE_DROPPED_RELUS = (2, 5)


def release_resnet_stem(visual: ClipVisual) -> nn.Sequential:
    """The ResNet stem as the release runs it: CLIP's stem without the ReLUs after bn1 and bn2.

    The ReLUs become ``nn.Identity`` in place, so the parameter names (``0.weight``, ``1.*``, ``3.weight``,
    ...) are those of the ordinary stem and checkpoints of either kind share one key layout.
    """
    if visual.kind != RESNET:
        raise ConfigError("release_stem applies to ResNet towers (RN50 family) only; set model.release_stem=false")
    stem = copy.deepcopy(visual.stem)
    for index in _RELEASE_DROPPED_RELUS:
        if not isinstance(stem[index], nn.ReLU):
            raise ValueError(f"unexpected ResNet stem layout: module {index} is {type(stem[index]).__name__}")
        stem[index] = nn.Identity()
    return stem


class NetOutput(NamedTuple):
    """Training-time outputs for a batch."""

    gem: Tensor  # (B, trunk_dim) GeM feature before the BNNeck (triplet loss)
    proj: Tensor  # (B, embed_dim) projected CLIP feature (triplet and HSE losses)
    gem_logits: Tensor  # (B, num_ids) classifier of the BN'd GeM feature
    proj_logits: Tensor  # (B, num_ids) classifier of the BN'd projected feature


class CSDNNet(nn.Module):
    """Stems per modality + the shared trunk of a CLIP image tower + two heads."""

    def __init__(
        self,
        visual: ClipVisual,
        num_ids: int,
        modality_stems: bool = True,
        gem_p: float = 3.0,
        release_stem: bool = False,
    ) -> None:
        super().__init__()
        if num_ids < 1:
            raise ValueError(f"num_ids must be >= 1, got {num_ids}")
        self.num_ids = num_ids
        self.modality_stems = modality_stems
        stem = release_resnet_stem(visual) if release_stem else visual.stem
        stems = {VISIBLE: copy.deepcopy(stem)}
        stems[INFRARED] = copy.deepcopy(stem) if modality_stems else stems[VISIBLE]
        self.stems = nn.ModuleDict(stems) if modality_stems else None
        self.stem = None if modality_stems else stems[VISIBLE]
        self.trunk = copy.deepcopy(visual.trunk)
        # The copies train even when the CLIP they come from is frozen (the Experiment keeps a frozen reference).
        for module in (*stems.values(), self.trunk):
            module.requires_grad_(True)
        self.trunk_dim, self.embed_dim = visual.trunk_dim, visual.embed_dim
        # ResNet feature maps are post-ReLU, so GeM applies; ViT tokens after ln_post are signed, so the
        # ViT head uses the class token instead (as CLIP-ReID's ViT does).
        self.pool_with_gem = visual.kind == RESNET
        self.gem = GeM(gem_p)
        self.bn_gem, self.cls_gem = bnneck(self.trunk_dim), classifier(self.trunk_dim, num_ids)
        self.bn_proj, self.cls_proj = bnneck(self.embed_dim), classifier(self.embed_dim, num_ids)

    def stem_for(self, modality: str) -> nn.Module:
        """The stem that images of ``modality`` pass through."""
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        return self.stems[modality] if self.stems is not None else self.stem

    def backbone(self, parts: list[tuple[Tensor, str]]) -> tuple[Tensor, Tensor]:
        """Run each (images, modality) part through its stem, then all together through the trunk.

        Returns the GeM feature and the projected feature, rows in the order of ``parts``.
        """
        parts = [(x, m) for x, m in parts if len(x)]
        if self.stems is None:  # one stem: one call, one set of BatchNorm statistics for both modalities
            for _, m in parts:
                self.stem_for(m)  # validates the modality names
            hidden = self.stem(torch.cat([x for x, _ in parts]))
        else:
            hidden = torch.cat([self.stem_for(m)(x) for x, m in parts])
        features = self.trunk(hidden)
        pooled = self.gem(features.feature_map.float()) if self.pool_with_gem else features.pooled.float()
        return pooled, features.projected.float()

    def forward(self, parts: list[tuple[Tensor, str]]) -> NetOutput:
        """Training forward over (images, modality) parts (visible and infrared in one batch); every output is
        float32, also under autocast (the losses read them in full precision)."""
        gem, proj = self.backbone(parts)
        logits = self.cls_gem(self.bn_gem(gem)).float(), self.cls_proj(self.bn_proj(proj)).float()
        return NetOutput(gem, proj, *logits)

    def embed(self, images: Tensor, modality: str) -> Tensor:
        """Inference feature of images of one modality: concat(L2(BN(GeM)), L2(projected))."""
        gem, proj = self.backbone([(images, modality)])
        return torch.cat([F.normalize(self.bn_gem(gem), dim=1), F.normalize(proj, dim=1)], dim=1)
