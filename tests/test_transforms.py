"""Train/test pipelines and the AGW channel ops."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from csdn.data.transforms import (
    GRAY_WEIGHTS,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    TRANSFORM_KINDS,
    ChannelAdaptiveGray,
    ChannelExchange,
    ChannelRandomErasing,
    TransformConfig,
    test_transform,
    train_transform,
)

CFG = TransformConfig(height=16, width=8)


def random_image(seed: int = 0, size: tuple[int, int] = (16, 8)) -> tv_tensors.Image:
    generator = torch.Generator().manual_seed(seed)
    return tv_tensors.Image(torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=generator))


def channels_equal(image: torch.Tensor) -> bool:
    return bool(torch.equal(image[0], image[1]) and torch.equal(image[1], image[2]))


def seeded(transform, image, seed: int):
    torch.manual_seed(seed)
    return transform(image)


@pytest.mark.parametrize("kind", TRANSFORM_KINDS)
def test_every_kind_gives_a_normalised_float_image_of_the_configured_size(kind: str) -> None:
    out = train_transform(CFG, kind)(random_image(size=(30, 11)))
    assert out.shape == (3, 16, 8)
    assert out.dtype == torch.float32


def test_test_transform_is_exact_resize_and_normalisation() -> None:
    image = random_image()
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    torch.testing.assert_close(test_transform(CFG)(image), (image.float() / 255 - mean) / std)
    assert test_transform(CFG)(random_image(size=(40, 20))).shape == (3, 16, 8)


def test_train_pipeline_without_randomness_equals_the_test_pipeline() -> None:
    quiet = TransformConfig(height=16, width=8, pad=0, flip_p=0.0, erasing_p=0.0)
    image = random_image(3)
    torch.testing.assert_close(train_transform(quiet, "visible")(image), test_transform(quiet)(image))


@pytest.mark.parametrize("kind", ["visible", "visible_exchange", "infrared"])
def test_train_pipelines_are_deterministic_under_a_seed(kind: str) -> None:
    transform, image = train_transform(CFG, kind), random_image(1)
    assert torch.equal(seeded(transform, image, 5), seeded(transform, image, 5))
    outputs = {seeded(transform, image, s).sum().item() for s in range(6)}
    assert len(outputs) > 1


def test_numpy_hwc_arrays_are_accepted() -> None:
    array = random_image().permute(1, 2, 0).numpy()
    torch.testing.assert_close(test_transform(CFG)(array), test_transform(CFG)(random_image()))


def test_channel_exchange_copies_one_channel_to_all() -> None:
    image = random_image(2)
    seen = set()
    for seed in range(30):
        out = seeded(ChannelExchange(gray=False), image, seed)
        assert channels_equal(out)
        matches = [c for c in range(3) if torch.equal(out[0], image[c])]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == {0, 1, 2}


def test_channel_exchange_with_gray_also_gives_the_luma_mix() -> None:
    image = random_image(4).float() / 255
    expected_gray = sum(w * image[c] for c, w in enumerate(GRAY_WEIGHTS))
    grays = 0
    for seed in range(40):
        out = seeded(ChannelExchange(gray=True), image, seed)
        assert channels_equal(out)
        if not any(torch.equal(out[0], image[c]) for c in range(3)):
            torch.testing.assert_close(out[0], expected_gray)
            grays += 1
    assert grays > 0


def test_gray_mix_on_uint8_is_rounded() -> None:
    image = tv_tensors.Image(torch.tensor([[[10]], [[20]], [[200]]], dtype=torch.uint8))
    for seed in range(40):
        out = seeded(ChannelAdaptiveGray(p=1.0), image, seed)
        if out[0, 0, 0].item() not in (10, 20, 200):
            assert out.flatten().tolist() == [round(0.2989 * 10 + 0.587 * 20 + 0.114 * 200)] * 3
            assert out.dtype == torch.uint8
            return
    pytest.fail("the grayscale branch never ran in 40 seeds")


def test_channel_adaptive_gray_p1_always_equalises_channels() -> None:
    image = random_image(5)
    outcomes = set()
    for seed in range(40):
        out = seeded(ChannelAdaptiveGray(p=1.0), image, seed)
        assert channels_equal(out)
        single = [c for c in range(3) if torch.equal(out[0], image[c])]
        outcomes.add(single[0] if single else "gray")
    assert outcomes == {0, 1, 2, "gray"}


def test_channel_adaptive_gray_p0_never_grays() -> None:
    image = random_image(6)
    outcomes = set()
    for seed in range(40):
        out = seeded(ChannelAdaptiveGray(p=0.0), image, seed)
        if torch.equal(out, image):
            outcomes.add("unchanged")
        else:
            assert channels_equal(out)
            outcomes.add(next(c for c in range(3) if torch.equal(out[0], image[c])))
    assert outcomes == {0, 1, 2, "unchanged"}


def test_random_erasing_p0_is_identity_and_p1_fills_one_box_per_channel() -> None:
    image = torch.zeros(3, 40, 20) - 5.0
    assert torch.equal(seeded(ChannelRandomErasing(p=0.0), image, 0), image)
    fill = (0.25, 0.5, 0.75)
    for seed in range(10):
        out = seeded(ChannelRandomErasing(p=1.0, fill=fill), image, seed)
        changed = out[0] != -5.0
        rows, cols = changed.any(dim=1).nonzero().flatten(), changed.any(dim=0).nonzero().flatten()
        box = (slice(rows.min().item(), rows.max().item() + 1), slice(cols.min().item(), cols.max().item() + 1))
        assert changed[box].all() and changed.sum() == changed[box].numel()  # one solid rectangle
        assert 0.02 * 800 * 0.5 <= changed.sum() <= 0.4 * 800 * 1.5
        for c, value in enumerate(fill):
            assert (out[c][box] == value).all()
            assert (out[c][~changed] == -5.0).all()


def test_random_erasing_random_fill_uses_one_value_per_channel() -> None:
    out = seeded(ChannelRandomErasing(p=1.0, fill="random"), torch.zeros(3, 40, 20), 3)
    for c in range(3):
        values = out[c][out[c] != 0].unique()
        assert len(values) == 1


def test_channel_ops_keep_the_image_type_and_pass_other_inputs_through() -> None:
    image = random_image(7)
    boxes = tv_tensors.BoundingBoxes([[0, 0, 2, 2]], format="XYXY", canvas_size=(16, 8))
    out_image, out_boxes, label = seeded(ChannelExchange(), (image, boxes, 3), 0)
    assert isinstance(out_image, tv_tensors.Image)
    assert out_boxes is boxes and label == 3
    composed = v2.Compose([ChannelRandomErasing(p=1.0), ChannelAdaptiveGray(p=1.0)])
    assert isinstance(seeded(composed, tv_tensors.Image(image.float()), 0), tv_tensors.Image)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="kind"):
        train_transform(CFG, "thermal")
    with pytest.raises(ValueError, match="flip_p"):
        TransformConfig(flip_p=1.5)
    with pytest.raises(ValueError, match="height"):
        TransformConfig(height=0)
    with pytest.raises(ValueError, match="3-channel"):
        ChannelExchange()(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="probability"):
        ChannelAdaptiveGray(p=-0.1)
    with pytest.raises(ValueError, match="fill"):
        ChannelRandomErasing(fill=(0.0, 1.0))
