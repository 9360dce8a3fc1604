"""The uint8 image cache and the Dataset over it."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from csdn.data import cache as cache_module
from csdn.data.cache import ImageCache, decode_image
from csdn.data.images import CachedImages
from csdn.data.protocol import DatasetError
from csdn.data.records import INFRARED, VISIBLE, Record

SIZE = (8, 4)  # (H, W)


def make_images(root: Path) -> list[Record]:
    """Four small images: solid PNGs of known colours, a grayscale PNG and a gradient JPEG."""
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir(parents=True)
    Image.new("RGB", (6, 12), (255, 0, 0)).save(root / "a" / "red.png")
    Image.new("RGB", (3, 5), (0, 0, 255)).save(root / "a" / "blue.png")
    Image.new("L", (4, 8), 77).save(root / "b" / "gray.png")
    gradient = np.tile(np.arange(0, 240, 10, dtype=np.uint8)[:, None, None], (1, 10, 3))
    Image.fromarray(gradient).save(root / "b" / "grad.jpg")
    return [
        Record(str(root / "a" / "red.png"), 1, 1, VISIBLE),
        Record(str(root / "a" / "blue.png"), 1, 3, INFRARED),
        Record(str(root / "b" / "gray.png"), 2, 3, INFRARED),
        Record(str(root / "b" / "grad.jpg"), 2, 2, VISIBLE),
    ]


@pytest.fixture
def records(tmp_path: Path) -> list[Record]:
    return make_images(tmp_path / "data")


def artifact_dirs(cache_dir: Path) -> list[Path]:
    folder = cache_dir / "images"
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.exists() else []


def test_build_decodes_resizes_and_memory_maps(records: list[Record], tmp_path: Path) -> None:
    cache = ImageCache.build(records, SIZE, tmp_path / "cache", progress=False)
    assert len(cache) == 4
    assert cache.size == SIZE
    assert cache.array.shape == (4, 8, 4, 3) and cache.array.dtype == np.uint8
    assert isinstance(cache.array, np.memmap)
    assert (cache[0] == [255, 0, 0]).all()
    assert (cache[1] == [0, 0, 255]).all()
    assert (cache[2] == 77).all()  # grayscale becomes three equal channels
    expected = np.asarray(Image.open(records[3].path).convert("RGB").resize((4, 8), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(cache[3], expected)
    np.testing.assert_array_equal(cache[3], decode_image(records[3].path, SIZE))
    assert cache.directory.parent == tmp_path / "cache" / "images"


def test_records_round_trip_and_reopen(records: list[Record], tmp_path: Path) -> None:
    cache = ImageCache.build(records, SIZE, tmp_path / "cache", progress=False)
    assert cache.records == records
    reopened = ImageCache.open(cache.directory)
    assert reopened.records == records
    np.testing.assert_array_equal(reopened.array, cache.array)


def test_second_build_reuses_the_cache_without_decoding(
    records: list[Record], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = ImageCache.build(records, SIZE, tmp_path / "cache", progress=False)

    def fail(*args: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache_module, "_decode_bytes", fail)
    second = ImageCache.build(records, SIZE, tmp_path / "cache", progress=False)
    assert second.directory == first.directory
    assert artifact_dirs(tmp_path / "cache") == [first.directory]


def test_changed_content_size_or_labels_give_a_new_key(records: list[Record], tmp_path: Path) -> None:
    first = ImageCache.build(records, SIZE, tmp_path / "cache", progress=False)
    other_size = ImageCache.build(records, (6, 2), tmp_path / "cache", progress=False)
    relabelled_records = [dataclasses.replace(records[0], pid=9), *records[1:]]
    relabelled = ImageCache.build(relabelled_records, SIZE, tmp_path / "cache", progress=False)
    Image.new("RGB", (6, 12), (0, 255, 0)).save(records[0].path)  # same name, new contents
    changed = ImageCache.build(records, SIZE, tmp_path / "cache", progress=False)
    directories = {first.directory, other_size.directory, relabelled.directory, changed.directory}
    assert len(directories) == 4
    assert (changed[0] == [0, 255, 0]).all()
    assert (first[0] == [255, 0, 0]).all()  # the old array is untouched


def test_moved_dataset_reuses_the_cache(records: list[Record], tmp_path: Path) -> None:
    first = ImageCache.build(records, SIZE, tmp_path / "cache", progress=False)
    shutil.copytree(tmp_path / "data", tmp_path / "elsewhere")
    moved = [dataclasses.replace(r, path=r.path.replace("/data/", "/elsewhere/")) for r in records]
    second = ImageCache.build(moved, SIZE, tmp_path / "cache", progress=False)
    assert second.directory == first.directory
    assert second.records == moved


def test_threaded_build_matches_sequential(records: list[Record], tmp_path: Path) -> None:
    sequential = ImageCache.build(records, SIZE, tmp_path / "one", progress=False)
    threaded = ImageCache.build(records, SIZE, tmp_path / "two", workers=2, progress=False)
    np.testing.assert_array_equal(sequential.array, threaded.array)


def test_unreadable_image_raises_and_leaves_nothing(records: list[Record], tmp_path: Path) -> None:
    Path(records[2].path).write_bytes(b"this is not an image")
    with pytest.raises(DatasetError, match=r"gray.png: not a readable image"):
        ImageCache.build(records, SIZE, tmp_path / "cache", progress=False)
    assert artifact_dirs(tmp_path / "cache") == []
    assert not list((tmp_path / "cache").rglob("*.npy"))


def test_missing_image_raises_naming_it(records: list[Record], tmp_path: Path) -> None:
    Path(records[1].path).unlink()
    with pytest.raises(DatasetError, match=r"blue.png: cannot read the image file"):
        ImageCache.build(records, SIZE, tmp_path / "cache", progress=False)
    assert artifact_dirs(tmp_path / "cache") == []


def test_bad_arguments(records: list[Record], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="size"):
        ImageCache.build(records, (8, 0), tmp_path / "cache", progress=False)
    with pytest.raises(ValueError, match="empty"):
        ImageCache.build([], SIZE, tmp_path / "cache", progress=False)
    with pytest.raises(FileNotFoundError, match="not a finished image cache"):
        ImageCache.open(tmp_path / "nothing")


def test_cached_images_dataset_items(records: list[Record], tmp_path: Path) -> None:
    cache = ImageCache.build(records, SIZE, tmp_path / "cache", progress=False)
    dataset = CachedImages(cache, labels=None, transform=None)
    image, label, cam, index = dataset[1]
    assert isinstance(image, tv_tensors.Image)
    assert image.dtype == torch.uint8 and image.shape == (3, 8, 4)
    assert image[2].eq(255).all() and image[:2].eq(0).all()
    assert (label, cam, index) == (1, 3, 1)
    assert len(dataset) == 4


def test_cached_images_labels_transform_and_subset(records: list[Record], tmp_path: Path) -> None:
    cache = ImageCache.build(records, SIZE, tmp_path / "cache", progress=False)
    infrared = CachedImages(cache, labels=[5, 6], transform=lambda img: img.float() / 255, indices=[1, 2])
    image, label, cam, index = infrared[1]
    assert image.dtype == torch.float32
    torch.testing.assert_close(image, torch.full((3, 8, 4), 77 / 255))
    assert (label, cam, index) == (6, 3, 1)
    with pytest.raises(ValueError, match="labels"):
        CachedImages(cache, labels=[0, 1, 2], transform=None)
    with pytest.raises(IndexError, match="indices"):
        CachedImages(cache, labels=None, transform=None, indices=[4])


def test_cached_images_work_with_a_dataloader(records: list[Record], tmp_path: Path) -> None:
    cache = ImageCache.build(records, SIZE, tmp_path / "cache", progress=False)
    loader = torch.utils.data.DataLoader(CachedImages(cache, None, None), batch_size=4)
    images, labels, cams, indices = next(iter(loader))
    assert images.shape == (4, 3, 8, 4)
    assert labels.tolist() == [1, 1, 2, 2] and cams.tolist() == [1, 3, 3, 2] and indices.tolist() == [0, 1, 2, 3]


# -- images read as they are (issue 23): real files of each mode --------------------------------------


def _png_rgb48(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (3, 5)) -> None:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one), written chunk by chunk."""
    import struct
    import zlib

    width, height = size
    row = b"\x00" + struct.pack(">HHH", *rgb) * width
    chunks = [
        (b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)),
        (b"IDAT", zlib.compress(row * height)),
        (b"IEND", b""),
    ]
    body = b"".join(struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d)) for t, d in chunks)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


@pytest.mark.parametrize(
    "name, write, expected",
    [
        ("gray8.png", lambda p: Image.new("L", (3, 5), 200).save(p), (200, 200, 200)),
        ("gray16.png", lambda p: Image.new("I;16", (3, 5), 40000).save(p), (156, 156, 156)),
        ("gray16.jpg", lambda p: Image.new("I;16", (3, 5), 65535).save(p, format="PNG"), (255, 255, 255)),
        ("gray16b.tif", lambda p: Image.new("I;16B", (3, 5), 25700).save(p), (100, 100, 100)),
        ("int32.tif", lambda p: Image.new("I", (3, 5), 514).save(p), (2, 2, 2)),
        ("rgb48.png", lambda p: _png_rgb48(p, (65535, 32896, 0)), (255, 128, 0)),
        ("rgba.png", lambda p: Image.new("RGBA", (3, 5), (10, 20, 30, 40)).save(p), (10, 20, 30)),
        ("palette.png", lambda p: Image.new("RGB", (3, 5), (0, 255, 0)).convert("P").save(p), (0, 255, 0)),
        ("bilevel.png", lambda p: Image.new("1", (3, 5), 1).save(p), (255, 255, 255)),
        ("cmyk.jpg", lambda p: Image.new("CMYK", (3, 5), (0, 0, 0, 0)).save(p), (255, 255, 255)),
    ],
)
def test_every_mode_is_read_as_8_bits_scaled_not_clipped(tmp_path: Path, name: str, write, expected) -> None:
    path = tmp_path / name
    write(path)
    image = decode_image(path, SIZE)
    assert image.dtype == np.uint8 and image.shape == (*SIZE, 3)
    assert np.abs(image.astype(int) - expected).max() <= 1, (Image.open(path).mode, image[0, 0])


def test_a_16_bit_gradient_keeps_its_order_and_range(tmp_path: Path) -> None:
    values = np.linspace(1000, 60000, 8 * 4).reshape(8, 4).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "thermal.png")
    image = decode_image(tmp_path / "thermal.png", SIZE)[..., 0].astype(int)
    assert np.abs(image - np.rint(values / 257)).max() <= 1  # scaled: not one saturated white image
    assert image.min() == 4 and image.max() == 233


@pytest.mark.parametrize("mode, value", [("F", 0.5), ("I", 70000), ("I", -3)])
def test_a_mode_without_a_faithful_8_bit_reading_is_refused(tmp_path: Path, mode: str, value) -> None:
    Image.new(mode, (3, 5), value).save(tmp_path / "odd.tif")
    with pytest.raises(DatasetError, match=r"odd.tif: .*cannot be read as 8 bits faithfully; save it with 8 or 16"):
        decode_image(tmp_path / "odd.tif", SIZE)


def test_a_decompression_bomb_is_one_error_naming_it_or_skipped(records: list[Record], tmp_path: Path) -> None:
    from bad_inputs import png_bomb

    png_bomb(Path(records[1].path))
    with pytest.raises(DatasetError, match=r"blue.png: a damaged file or a decompression bomb, not decoded"):
        ImageCache.build(records, SIZE, tmp_path / "cache", progress=False)
    cache = ImageCache.build(records, SIZE, tmp_path / "cache", progress=False, skip_bad=True)
    assert len(cache) == 3 and [s["path"] for s in cache.skipped] == [records[1].path]


# -- checksums (issue 23) ------------------------------------------------------------------------------


def test_a_damaged_array_is_an_error_naming_it_and_the_folder_to_delete(records: list[Record], tmp_path: Path) -> None:
    from csdn.errors import CacheError

    built = ImageCache.build(records, SIZE, tmp_path / "cache", progress=False)
    array = np.load(built.directory / "images.npy", mmap_mode="r+")
    array[2, 0, 0, 0] ^= 1  # one bit of one pixel
    array.flush()
    del array, built
    with pytest.raises(CacheError, match=r"images.npy: damaged .*delete the folder .*images/\w+ to build it again"):
        ImageCache.build(records, SIZE, tmp_path / "cache", progress=False)


def test_a_cache_of_a_csdn_without_checksums_is_built_again(records: list[Record], tmp_path: Path, capsys) -> None:
    built = ImageCache.build(records, SIZE, tmp_path / "cache", progress=False)
    (built.directory / ".complete").write_text("ok\n")  # the marker csdn wrote before checksums
    np.load(built.directory / "images.npy", mmap_mode="r+")[:] = 0  # (whatever it holds is not trusted)
    again = ImageCache.build(records, SIZE, tmp_path / "cache", progress=False)
    assert "was built by a csdn without checksums; building it again" in capsys.readouterr().err
    assert (again[0] == [255, 0, 0]).all() and '"images.npy"' in (again.directory / ".complete").read_text()
