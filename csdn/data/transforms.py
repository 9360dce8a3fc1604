"""Train and test transforms (torchvision transforms v2 on uint8 CHW images) and AGW's channel ops.

Pipelines, in AGW / CAJ order::

    test:              resize -> float -> normalise
    visible:           resize -> pad + random crop -> flip -> float -> normalise -> channel erasing
    visible_exchange:  visible + ChannelExchange          (CSDN's second view of a visible image)
    infrared:          visible + ChannelAdaptiveGray

Resizing squashes to exactly ``height x width`` (a no-op on images already cached at that size). As in
AGW, the channel ops and the erasing act on the *normalised* float tensor. Every random choice uses
torch's global generator, so ``torch.manual_seed`` (or a DataLoader worker's seed) makes a pipeline
deterministic. :class:`BatchTrainTransform` runs a training pipeline on a whole batch at once (stage 3's
batches), bit-identical to it image by image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, get_args

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


class BatchTrainTransform:
    """:func:`train_transform` of one kind over a whole batch, bit-identical to it applied image by image.

    ``transform(images, seeds)`` takes ``N x 3 x H x W`` images (any memory layout, e.g. the channels-last
    view of an HWC uint8 cache) and returns the ``N x 3 x height x width`` float32 batch the per-image
    pipeline would give, image ``i`` drawn after torch's global generator was seeded with ``seeds[i]`` (as
    a per-image loop that seeds before each image does); without ``seeds`` the images draw one after the
    other from the global generator, which ends in the state the per-image loop leaves.

    Each image's parameters are drawn exactly as the per-image pipeline draws them, in its order:
    ``RandomCrop``'s top then left (only when padded: :func:`_draw_crop` mirrors torchvision's draws),
    ``RandomHorizontalFlip``'s ``torch.rand(1)``, then :meth:`ChannelRandomErasing.draw` and the channel
    op's ``draw``. The pixel operations then run on the batch: one zero pad, each image cropped at its
    offsets (a flipped image from the mirrored pad, at the mirrored offset), one conversion to float and
    normalisation (the same float32 operations as ``ToDtype`` and ``Normalize``), the erased boxes, then
    the channel op in place (the chosen channel copied over the other two; the grayscale mix by the
    per-image code). No torchvision dispatch, no ``tv_tensors`` wrapping.

    Covered: uint8 images already at ``height x width`` (the per-image pipeline's resize is then a no-op),
    any pad, flip and erasing probability, AGW or random erasing fill, ``exchange_gray``. Anything else
    (images of another size, which the per-image pipeline resizes, or of another dtype) falls back to the
    per-image pipeline: the same result at the per-image speed.
    """

    def __init__(self, cfg: TransformConfig, kind: TransformKind) -> None:
        if kind not in TRANSFORM_KINDS or kind == "test":
            raise ValueError(f"kind must be one of {TRANSFORM_KINDS[:-1]}, got {kind!r}")
        self.cfg, self.kind = cfg, kind
        self.pipeline = train_transform(cfg, kind)  # the per-image semantics, and the fallback
        self.erasing = ChannelRandomErasing(cfg.erasing_p, cfg.erasing_scale, cfg.erasing_min_ratio, cfg.erasing_fill)
        self.channel: ChannelExchange | ChannelAdaptiveGray | None = None
        if kind == "visible_exchange":
            self.channel = ChannelExchange(gray=cfg.exchange_gray)
        elif kind == "infrared":
            self.channel = ChannelAdaptiveGray(cfg.grayscale_p)
        # torch compares the float32 rand(1) with p in float32: the same comparison on Python floats
        self._flip_p = torch.tensor(cfg.flip_p, dtype=torch.float32).item()
        # Normalize's constants, as torchvision builds them (float32, one per channel)
        self._mean = torch.as_tensor(list(cfg.mean), dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.as_tensor(list(cfg.std), dtype=torch.float32).view(-1, 1, 1)

    def covers(self, images: torch.Tensor) -> bool:
        """Whether ``images`` take the batched path (else :meth:`__call__` runs the per-image pipeline)."""
        return images.dtype == torch.uint8 and tuple(images.shape[-2:]) == (self.cfg.height, self.cfg.width)

    def __call__(
        self, images: torch.Tensor, seeds: Sequence[int] | None = None, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The augmented batch, written into ``out`` (``N x 3 x height x width`` float32) when given."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"BatchTrainTransform needs N x 3 x H x W images, got {shape}")
        if seeds is not None and len(seeds) != len(images):
            raise ValueError(f"got {len(seeds)} seeds for {len(images)} images")
        size = (len(images), 3, self.cfg.height, self.cfg.width)
        if out is None:
            out = torch.empty(size)
        elif tuple(out.shape) != size or out.dtype != torch.float32:
            raise ValueError(f"out must be a float32 tensor of shape {size}, got {out.dtype} {tuple(out.shape)}")
        images = images.as_subclass(torch.Tensor)
        if not self.covers(images):
            return self._per_image(images, seeds, out)
        params = []
        for i in range(len(images)):
            if seeds is not None:
                torch.random.default_generator.manual_seed(seeds[i])
            params.append(self._draw())
        return self._apply(images, params, out)

    def _per_image(self, images: torch.Tensor, seeds: Sequence[int] | None, out: torch.Tensor) -> torch.Tensor:
        for i, image in enumerate(images):
            if seeds is not None:
                torch.random.default_generator.manual_seed(seeds[i])
            out[i] = self.pipeline(tv_tensors.Image(image.contiguous())).as_subclass(torch.Tensor)
        return out

    def _draw(self) -> _ImageParams:
        """One image's parameters, drawn in the per-image pipeline's order: crop, flip, erasing, channel."""
        top, left = _draw_crop(self.cfg.pad, self.cfg.height, self.cfg.width)
        flip = not torch.rand(1).item() >= self._flip_p  # RandomHorizontalFlip: unchanged when rand(1) >= p
        erase = self.erasing.draw(self._size)
        choice = self.channel.draw() if self.channel is not None else None
        return _ImageParams(top, left, flip, erase, choice)

    def _size(self) -> tuple[int, int]:
        """The image size at the erasing step (a method, not a lambda: the transform pickles to workers)."""
        return self.cfg.height, self.cfg.width

    def _apply(self, images: torch.Tensor, params: list[_ImageParams], out: torch.Tensor) -> torch.Tensor:
        height, width, pad = self.cfg.height, self.cfg.width, self.cfg.pad
        # pad + crop + flip on uint8, in the images' layout (channels-last for a view of an HWC cache)
        padded = torch.nn.functional.pad(images, [pad] * 4) if pad > 0 else images
        mirrored = padded.flip(-1) if any(p.flip for p in params) else padded
        crops = torch.empty(out.shape, dtype=torch.uint8, memory_format=_layout(images))
        for i, p in enumerate(params):
            # hflip(crop(x, left)) == crop(hflip(x), padded width - width - left)
            source, left = (mirrored, 2 * pad - p.left) if p.flip else (padded, p.left)
            crops[i] = source[i, :, p.top : p.top + height, left : left + width]
        # ToDtype(float32, scale=True) then Normalize: torchvision's float32 operations, elementwise
        out.copy_(crops).mul_(1.0 / 255).sub_(self._mean).div_(self._std)
        for i, p in enumerate(params):
            if p.erase["box"] is not None:
                top, left, h, w = p.erase["box"]
                out[i, :, top : top + h, left : left + w] = p.erase["values"].to(out.dtype)[:, None, None]
        for i, p in enumerate(params):  # the channel op: copy the chosen channel over the other two, or gray
            if p.choice == 3:
                out[i] = _channel_choice(out[i], 3)
            elif p.choice is not None:
                for channel in {0, 1, 2} - {p.choice}:
                    out[i, channel] = out[i, p.choice]
        return out


class _ImageParams(NamedTuple):
    """One image's draws in :class:`BatchTrainTransform`."""

    top: int  # crop offsets in the padded image
    left: int
    flip: bool
    erase: dict[str, Any]  # ChannelRandomErasing.draw's parameters
    choice: int | None  # the channel op's draw (None: unchanged, or no channel op)


def _layout(images: torch.Tensor) -> torch.memory_format:
    channels_last = images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def _draw_crop(pad: int, height: int, width: int) -> tuple[int, int]:
    """``Pad(pad)`` then ``RandomCrop((height, width))``'s offsets ``(top, left)`` in the padded image, drawn as
    torchvision's ``RandomCrop.make_params`` draws them: top then left, each only when the padded side is longer."""
    padded_height, padded_width = height + 2 * pad, width + 2 * pad
    top = int(torch.randint(0, padded_height - height + 1, size=())) if padded_height > height else 0
    left = int(torch.randint(0, padded_width - width + 1, size=())) if padded_width > width else 0
    return top, left


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
        return {"choice": self.draw()}

    def draw(self) -> int:
        """The channel choice of one image (0, 1, 2; 3: the grayscale mix), drawn from torch's global generator."""
        return int(torch.randint(0, 4 if self.gray else 3, ()).item())

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
        return {"choice": self.draw()}

    def draw(self) -> int | None:
        """The branch of one image (0, 1, 2: that channel; 3: grayscale; None: unchanged), drawn from torch's
        global generator."""
        choice: int | None = int(torch.randint(0, 4, ()).item())
        if choice == 3 and not torch.rand(()).item() < self.p:
            choice = None
        return choice

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
        return self.draw(lambda: next(x for x in flat_inputs if isinstance(x, torch.Tensor)).shape[-2:])

    def draw(self, size: Callable[[], tuple[int, int]]) -> dict[str, Any]:
        """The box of one image of ``size()`` (``(H, W)``, asked only when the image is erased) and its values,
        or ``{"box": None}``, drawn from torch's global generator."""
        if not torch.rand(()).item() < self.p:
            return {"box": None}
        height, width = size()
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
