"""The batched stage-3 augmentation equals the per-image pipeline exactly: same seeds, draws and floats."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from csdn.config import get_profile
from csdn.data.cache import ImageCache
from csdn.data.records import INFRARED, VISIBLE, Record
from csdn.data.transforms import BatchTrainTransform, TransformConfig, train_transform
from csdn.train.reid_batches import BatchKey, PairedBatches, image_seed, image_seeds

KINDS = ("visible", "visible_exchange", "infrared")
SIZE = (32, 16)  # (H, W) of the test cache
DEMO = {"pad": 4, "erasing_p": 0.0}  # the demo profile's stage-3 augmentation
RELEASE = {"pad": 10, "erasing_p": 0.5}  # the released CSDN's
CONFIGS = {
    "demo": DEMO,
    "release": RELEASE,
    "every-branch": {"pad": 3, "erasing_p": 1.0, "flip_p": 1.0, "grayscale_p": 1.0, "exchange_gray": True},
    "random-fill-no-pad": {"pad": 0, "erasing_p": 0.7, "erasing_fill": "random", "exchange_gray": True},
    "no-flip-imagenet": {"pad": 2, "flip_p": 0.0, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
}


def config(name: str, size: tuple[int, int] = SIZE) -> TransformConfig:
    return TransformConfig(height=size[0], width=size[1], **CONFIGS[name])


def uint8_images(count: int, size: tuple[int, int], seed: int = 0, channels_last: bool = False) -> torch.Tensor:
    """``count x 3 x H x W`` random uint8 images; with ``channels_last`` the permuted view of an HWC array."""
    generator = torch.Generator().manual_seed(seed)
    hwc = torch.randint(0, 256, (count, *size, 3), dtype=torch.uint8, generator=generator)
    return hwc.permute(0, 3, 1, 2) if channels_last else hwc.permute(0, 3, 1, 2).contiguous()


def per_image(cfg: TransformConfig, kind: str, images: torch.Tensor, seeds: list[int] | None) -> torch.Tensor:
    """The reference: ``train_transform`` image by image, torch's generator seeded before each image."""
    pipeline, out = train_transform(cfg, kind), []
    for i, image in enumerate(images):
        if seeds is not None:
            torch.random.default_generator.manual_seed(seeds[i])
        out.append(pipeline(tv_tensors.Image(image.contiguous())).as_subclass(torch.Tensor))
    return torch.stack(out)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [(16, 8), SIZE])
def test_batch_transform_equals_the_per_image_pipeline(name: str, kind: str, size: tuple[int, int]) -> None:
    cfg = config(name, size)
    transform = BatchTrainTransform(cfg, kind)
    for seed, channels_last in ((0, False), (1, True), (2, True)):
        images = uint8_images(24, size, seed, channels_last)
        seeds = [image_seed(BatchKey([], [], seed, 1, 2, 0), 0, j) for j in range(len(images))]
        assert transform.covers(images)
        out = transform(images, seeds)
        assert out.dtype == torch.float32 and out.is_contiguous() and out.shape == (24, 3, *size)
        assert torch.equal(out, per_image(cfg, kind, images, seeds))


@pytest.mark.parametrize("kind", KINDS)
def test_without_seeds_the_images_draw_in_turn_from_the_global_generator(kind: str) -> None:
    cfg, images = config("every-branch"), uint8_images(16, SIZE, 3)
    torch.manual_seed(11)
    expected = per_image(cfg, kind, images, None)
    state = torch.get_rng_state()
    torch.manual_seed(11)
    assert torch.equal(BatchTrainTransform(cfg, kind)(images), expected)
    assert torch.equal(torch.get_rng_state(), state)  # the generator ends where the per-image loop leaves it


def test_the_flip_draw_is_compared_in_float32_as_torch_compares_it() -> None:
    """``RandomHorizontalFlip`` keeps an image when ``torch.rand(1) >= p``, compared in float32: a ``p`` just
    above the drawn value (the same float32) keeps it, where a comparison in double would flip."""
    images = uint8_images(6, (8, 4), 4)  # with no pad, the flip is each image's first draw
    seeds = list(range(100, 106))
    drawn = torch.Generator().manual_seed(seeds[2])
    value = torch.rand(1, generator=drawn).item()
    cfg = TransformConfig(height=8, width=4, pad=0, erasing_p=0.0, flip_p=value + 1e-12)
    assert torch.tensor(cfg.flip_p, dtype=torch.float32).item() == value < cfg.flip_p
    expected = per_image(cfg, "visible", images, seeds)
    assert torch.equal(BatchTrainTransform(cfg, "visible")(images, seeds), expected)
    unflipped = per_image(replace(cfg, flip_p=0.0), "visible", images[2:3], seeds[2:3])[0]
    assert torch.equal(expected[2], unflipped) and not torch.equal(expected[2], unflipped.flip(-1))


def test_images_it_does_not_cover_fall_back_to_the_per_image_pipeline() -> None:
    cfg = config("release", (16, 8))
    transform = BatchTrainTransform(cfg, "visible_exchange")
    for images in (uint8_images(5, (24, 10), 5), uint8_images(5, (16, 8), 6).float()):  # a resize; not uint8
        assert not transform.covers(images)
        seeds = [7, 8, 9, 10, 11]
        expected = per_image(cfg, "visible_exchange", images, seeds)
        assert torch.equal(transform(images, seeds), expected)
        out = torch.full((5, 3, 16, 8), float("nan"))
        assert transform(images, seeds, out=out) is out and torch.equal(out, expected)


def test_the_output_is_written_into_out_when_given() -> None:
    cfg, images, seeds = config("demo"), uint8_images(4, SIZE, 7), [1, 2, 3, 4]
    buffer = torch.full((9, 3, *SIZE), float("nan"))
    BatchTrainTransform(cfg, "infrared")(images, seeds, out=buffer[2:6])
    assert torch.equal(buffer[2:6], per_image(cfg, "infrared", images, seeds))
    assert buffer[:2].isnan().all() and buffer[6:].isnan().all()


def test_an_empty_batch_is_empty() -> None:
    out = BatchTrainTransform(config("release"), "infrared")(uint8_images(0, SIZE), [])
    assert out.shape == (0, 3, *SIZE)


def test_bad_input_is_refused_clearly() -> None:
    cfg = config("demo")
    for kind in ("test", "thermal"):
        with pytest.raises(ValueError, match="kind must be one of"):
            BatchTrainTransform(cfg, kind)  # type: ignore[arg-type]
    transform = BatchTrainTransform(cfg, "visible")
    for bad in (uint8_images(2, SIZE)[0], torch.zeros(2, 4, *SIZE, dtype=torch.uint8), np.zeros((2, 3, *SIZE))):
        with pytest.raises(ValueError, match="N x 3 x H x W"):
            transform(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="3 seeds for 2 images"):
        transform(uint8_images(2, SIZE), [1, 2, 3])
    with pytest.raises(ValueError, match="out must be a float32 tensor"):
        transform(uint8_images(2, SIZE), out=torch.empty(2, 3, 8, 4))
    with pytest.raises(ValueError, match="out must be a float32 tensor"):
        transform(uint8_images(2, SIZE), out=torch.empty(2, 3, *SIZE, dtype=torch.float64))


@pytest.mark.parametrize("seed", [0, 1, 2**32 - 1, 2**32, 2**64 + 3])
@pytest.mark.parametrize("offset", [0, 32, 2**32 - 10, 2**32])
def test_image_seeds_are_image_seed(seed: int, offset: int) -> None:
    for epoch, step in ((0, 0), (7, 79), (2**32 + 1, 2**40)):
        key = BatchKey([], [], seed, epoch, step, offset)
        for view in (0, 1, 2):
            assert image_seeds(key, view, 20) == [image_seed(key, view, j) for j in range(20)]
    assert image_seeds(BatchKey([], [], seed, 0, 0, offset), 0, 0) == []


def test_image_seeds_keep_image_seeds_errors() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        image_seed(BatchKey([], [], -1, 0, 0, 0), 0, 0)
    with pytest.raises(ValueError, match="non-negative"):
        image_seeds(BatchKey([], [], -1, 0, 0, 0), 0, 3)


# ---- PairedBatches: the stage-3 batch of a BatchKey, batched against image by image ----


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> ImageCache:
    """A cache of 24 random images: 3 identities x 4 visible + 4 infrared each, at SIZE."""
    root = tmp_path_factory.mktemp("paired")
    rng = np.random.default_rng(0)
    records = []
    for index in range(24):
        pid, modality = index // 8, VISIBLE if index % 8 < 4 else INFRARED
        path = root / f"{index:02d}.png"
        Image.fromarray(rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)).save(path)
        records.append(Record(str(path), pid + 10, 1 if modality == VISIBLE else 3, modality))
    return ImageCache.build(records, SIZE, root / "cache", progress=False)


def paired(cache: ImageCache, tcfg: TransformConfig, exchange_view: bool, batched: bool) -> PairedBatches:
    records = cache.records
    vis = [i for i, r in enumerate(records) if r.modality == VISIBLE]
    ir = [i for i, r in enumerate(records) if r.modality == INFRARED]
    label = {pid: n for n, pid in enumerate(sorted({r.pid for r in records}))}
    labels = [label[r.pid] for r in records]
    return PairedBatches(
        cache, vis, ir, [labels[i] for i in vis], [labels[i] for i in ir], tcfg, exchange_view, batched=batched
    )


def assert_same_batch(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


KEYS = [
    BatchKey([0, 1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 0, 1, 2, 3], 0, 0, 0, 0),
    BatchKey([11, 3, 3, 7, 0, 9], [5, 2, 8, 11, 4, 4], 7, 3, 12, 16),  # repeats, another seed, epoch, step, share
    BatchKey([4, 5, 6, 7], [0, 1, 2, 3], 2**40, 119, 79, 2**32 - 2),  # large seed; positions across 2**32
]


@pytest.mark.parametrize("name", ["demo", "release", "every-branch"])
@pytest.mark.parametrize("exchange_view", [True, False])
def test_paired_batches_equal_the_per_image_assembly(cache: ImageCache, name: str, exchange_view: bool) -> None:
    tcfg = config(name)
    batched, reference = (paired(cache, tcfg, exchange_view, flag) for flag in (True, False))
    state = torch.get_rng_state()
    for key in KEYS:
        batch = batched[key]
        assert_same_batch(batch, reference[key])
        views = 2 if exchange_view else 1
        assert batch["visible"].shape == (views * len(key.visible), 3, *SIZE) and batch["visible"].is_contiguous()
        assert batch["visible_labels"].tolist() == [batched.visible.labels[i] for i in key.visible] * views
    assert torch.equal(torch.get_rng_state(), state)  # a BatchKey leaves torch's generator as it was
    for seed in (0, 5):  # a bare pair draws from the global generator, image after image
        torch.manual_seed(seed)
        batch = batched[([1, 2, 3], [4, 5, 6])]
        after = torch.get_rng_state()
        torch.manual_seed(seed)
        assert_same_batch(batch, reference[([1, 2, 3], [4, 5, 6])])
        assert torch.equal(torch.get_rng_state(), after)


def test_paired_batches_of_a_cache_at_another_size_fall_back(cache: ImageCache) -> None:
    tcfg = config("release", (24, 12))  # the cache holds 32 x 16 images: the pipeline resizes them
    batched, reference = (paired(cache, tcfg, True, flag) for flag in (True, False))
    assert not batched.infrared_transform.covers(batched._images(batched.infrared, [0]))
    assert_same_batch(batched[KEYS[1]], reference[KEYS[1]])


def test_paired_batches_pickle_for_worker_processes(cache: ImageCache) -> None:
    batches = paired(cache, config("release"), True, True)
    assert_same_batch(pickle.loads(pickle.dumps(batches))[KEYS[0]], batches[KEYS[0]])


def test_paired_batches_keep_their_index_errors(cache: ImageCache) -> None:
    for flag in (True, False):
        with pytest.raises(IndexError):
            paired(cache, config("demo"), True, flag)[BatchKey([0, 12], [0], 0, 0, 0, 0)]


def test_the_demo_config_is_covered() -> None:
    """The stage-3 transforms of the demo profile take the batched path on the demo's cache size."""
    cfg = get_profile("demo")
    tcfg = cfg.stage3.transforms(cfg.data.height, cfg.data.width, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    transform = BatchTrainTransform(tcfg, "visible")
    assert transform.covers(uint8_images(1, (cfg.data.height, cfg.data.width)))
    assert (tcfg.pad, tcfg.erasing_p) == (DEMO["pad"], DEMO["erasing_p"])
