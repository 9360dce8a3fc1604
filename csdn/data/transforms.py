"""Train and test transforms (torchvision transforms v2 on uint8 CHW images) and AGW's channel ops.

Pipelines, in AGW / CAJ order::

    test:              resize -> float -> normalise
    visible:           resize -> pad + random crop -> flip -> float -> normalise -> channel erasing
    visible_exchange:  visible + ChannelExchange          (CSDN's second view of a visible image)
    infrared:          visible + ChannelAdaptiveGray

Resizing squashes to exactly ``height x width`` (a no-op on images already cached at that size). As in
AGW, the channel ops and the erasing act on the *normalised* float tensor. Every random choice uses
torch's global generator, so ``torch.manual_seed`` (or a DataLoader worker's seed) makes a pipeline
deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what the release normalises every pipeline with
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_STATS = ("clip", "imagenet")  # normalisation choices: the CLIP weights' own statistics, or ImageNet's
AGW_ERASING_FILL = (0.4914, 0.4822, 0.4465)  # AGW's per-channel erasing values
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # the ITU-R 601 luma weights AGW uses

TransformKind = Literal["visible", "visible_exchange", "infrared", "test"]
TRANSFORM_KINDS: tuple[TransformKind, ...] = get_args(TransformKind)


@dataclass(frozen=True)
class TransformConfig:
    """Augmentation settings shared by the train and test pipelines."""

    height: int = 288  # output height in pixels
    width: int = 144  # output width in pixels
    pad: int = 10  # zero padding before the random crop back to height x width (0: no pad/crop)
    flip_p: float = 0.5  # probability of a horizontal flip
    erasing_p: float = 0.5  # probability of ChannelRandomErasing
    erasing_scale: tuple[float, float] = (0.02, 0.4)  # range of the erased fraction of the image area
    erasing_min_ratio: float = 0.3  # erased box aspect ratio is drawn uniformly in [r, 1/r]
    erasing_fill: tuple[float, float, float] | Literal["random"] = AGW_ERASING_FILL  # per-channel values
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN  # normalisation mean (CLIP's OpenAI values)
    std: tuple[float, float, float] = OPENAI_CLIP_STD  # normalisation std (CLIP's OpenAI values)
    exchange_gray: bool = False  # ChannelExchange may also pick a grayscale mix (CAJ's gray=2 does not)
    grayscale_p: float = 0.5  # ChannelAdaptiveGray: probability of graying in its fourth branch (AGW)

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1 or self.pad < 0:
            raise ValueError(f"height/width must be >= 1 and pad >= 0, got {self.height}x{self.width}, pad {self.pad}")
        for name in ("flip_p", "erasing_p", "grayscale_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")


def input_statistics(
    input_stats: str, clip_mean: tuple[float, ...], clip_std: tuple[float, ...]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` of an :data:`INPUT_STATS` choice: the CLIP weights' own (given), or ImageNet's."""
    if input_stats not in INPUT_STATS:
        raise ValueError(f"input_stats must be one of {INPUT_STATS}, got {input_stats!r}")
    return (tuple(clip_mean), tuple(clip_std)) if input_stats == "clip" else (IMAGENET_MEAN, IMAGENET_STD)


def test_transform(cfg: TransformConfig) -> v2.Compose:
    """Resize (squash) to ``height x width``, convert to float and normalise."""
    return v2.Compose([*_to_size(cfg), *_to_normalised_float(cfg)])


test_transform.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported by tests


def train_transform(cfg: TransformConfig, kind: TransformKind) -> v2.Compose:
    """The training pipeline of one image kind (see the module docstring); ``"test"`` is :func:`test_transform`."""
    if kind not in TRANSFORM_KINDS:
        raise ValueError(f"kind must be one of {TRANSFORM_KINDS}, got {kind!r}")
    if kind == "test":
        return test_transform(cfg)
    steps: list[Any] = _to_size(cfg)
    if cfg.pad > 0:
        steps += [v2.Pad(cfg.pad), v2.RandomCrop((cfg.height, cfg.width))]
    steps += [v2.RandomHorizontalFlip(cfg.flip_p), *_to_normalised_float(cfg)]
    steps.append(ChannelRandomErasing(cfg.erasing_p, cfg.erasing_scale, cfg.erasing_min_ratio, cfg.erasing_fill))
    if kind == "visible_exchange":
        steps.append(ChannelExchange(gray=cfg.exchange_gray))
    elif kind == "infrared":
        steps.append(ChannelAdaptiveGray(cfg.grayscale_p))
    return v2.Compose(steps)


class _ChannelTransform(v2.Transform):
    """Base of the channel ops: acts on 3-channel images (pure tensors or ``tv_tensors.Image``) only."""

    _transformed_types = (torch.Tensor,)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.TVTensor) and not isinstance(inpt, tv_tensors.Image):
            return inpt  # boxes, masks, ... pass through
        if inpt.ndim < 3 or inpt.shape[-3] != 3:
            shape = tuple(inpt.shape)
            raise ValueError(f"{type(self).__name__} needs a 3-channel (..., 3, H, W) image, got shape {shape}")
        out = self._apply(inpt.as_subclass(torch.Tensor), params)
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.Image) else out

    def _apply(self, image: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError


class ChannelExchange(_ChannelTransform):
    """Replace the image by one of its channels (R, G or B, uniformly), copied to all three.

    With ``gray=True`` a grayscale mix is a fourth, equally likely choice (CAJ's ``gray=3``); CAJ's
    default ``gray=2`` is ``gray=False``.
    """

    def __init__(self, gray: bool = False) -> None:
        super().__init__()
        self.gray = gray

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"choice": int(torch.randint(0, 4 if self.gray else 3, ()).item())}

    def _apply(self, image: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        return _channel_choice(image, params["choice"])


class ChannelAdaptiveGray(_ChannelTransform):
    """AGW's ``ChannelAdapGray``: one of four equally likely branches.

    Branches 1-3 copy the R, G or B channel to all three; branch 4 converts to grayscale with
    probability ``p`` and otherwise leaves the image unchanged. So P(single channel) = 3/4,
    P(grayscale) = p/4 and P(unchanged) = (1 - p)/4: ``p`` only gates the grayscale branch, as in AGW.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p}")
        self.p = p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        choice: int | None = int(torch.randint(0, 4, ()).item())
        if choice == 3 and not torch.rand(()).item() < self.p:
            choice = None
        return {"choice": choice}

    def _apply(self, image: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        return image if params["choice"] is None else _channel_choice(image, params["choice"])


class ChannelRandomErasing(_ChannelTransform):
    """AGW's ``ChannelRandomErasing``: with probability ``p`` fill one random box with per-channel values.

    The box covers a fraction of the image drawn uniformly in ``scale`` with an aspect ratio drawn
    uniformly in ``[min_ratio, 1 / min_ratio]`` (up to 100 attempts to fit inside the image). ``fill``
    gives one value per channel in the image's value space (AGW's values, applied after
    normalisation), or ``"random"`` for one standard-normal value per channel.
    """

    def __init__(
        self,
        p: float = 0.5,
        scale: tuple[float, float] = (0.02, 0.4),
        min_ratio: float = 0.3,
        fill: tuple[float, float, float] | Literal["random"] = AGW_ERASING_FILL,
    ) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p}")
        if not 0.0 < scale[0] <= scale[1] <= 1.0 or not 0.0 < min_ratio <= 1.0:
            raise ValueError(f"need 0 < scale[0] <= scale[1] <= 1 and 0 < min_ratio <= 1, got {scale}, {min_ratio}")
        if fill != "random" and len(fill) != 3:
            raise ValueError(f"fill must be 3 per-channel values or 'random', got {fill!r}")
        self.p, self.scale, self.min_ratio, self.fill = p, tuple(scale), min_ratio, fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if not torch.rand(()).item() < self.p:
            return {"box": None}
        height, width = next(x for x in flat_inputs if isinstance(x, torch.Tensor)).shape[-2:]
        for _ in range(100):
            area = height * width * torch.empty(()).uniform_(*self.scale).item()
            ratio = torch.empty(()).uniform_(self.min_ratio, 1.0 / self.min_ratio).item()
            h, w = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if h < height and w < width:
                top = int(torch.randint(0, height - h + 1, ()).item())
                left = int(torch.randint(0, width - w + 1, ()).item())
                values = torch.randn(3) if self.fill == "random" else torch.tensor(self.fill)
                return {"box": (top, left, h, w), "values": values}
        return {"box": None}

    def _apply(self, image: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        if params["box"] is None:
            return image
        top, left, h, w = params["box"]
        out = image.clone()
        out[..., :, top : top + h, left : left + w] = params["values"].to(out.dtype)[:, None, None]
        return out


def _channel_choice(image: torch.Tensor, choice: int) -> torch.Tensor:
    """Channel ``choice`` (0, 1, 2) copied to all three channels, or (3) the grayscale mix."""
    if choice < 3:
        return image[..., [choice, choice, choice], :, :].clone()
    weights = torch.tensor(GRAY_WEIGHTS, dtype=torch.float32).view(3, 1, 1)
    gray = (image.float() * weights).sum(dim=-3, keepdim=True)
    if not image.is_floating_point():
        gray = gray.round().clamp(0, torch.iinfo(image.dtype).max)
    return gray.to(image.dtype).expand_as(image).clone()


def _to_size(cfg: TransformConfig) -> list[Any]:
    return [v2.ToImage(), v2.Resize((cfg.height, cfg.width), antialias=True)]


def _to_normalised_float(cfg: TransformConfig) -> list[Any]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(cfg.mean), list(cfg.std))]
