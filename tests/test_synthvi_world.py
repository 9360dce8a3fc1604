"""SynthVI world: identities, rendering, captions and the CLIP pool (tiny shapes, CPU, seconds)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from csdn.data.records import INFRARED, VISIBLE
from csdn.synthvi.cameras import ALL_CAMERAS, LLCM_CAMERAS, REGDB_CAMERAS, SYSU_CAMERAS
from csdn.synthvi.pool import clip_pool
from csdn.synthvi.render import render_image
from csdn.synthvi.world import (
    ATTRIBUTES,
    COLOR_ATTRIBUTES,
    COLOR_WORDS,
    NOT_APPLICABLE,
    SynthConfig,
    caption,
    make_identities,
)

TINY = SynthConfig(
    seed=3,
    height=32,
    width=16,
    clip_ids=6,
    train_ids=5,
    val_ids=1,
    test_ids=4,
    clip_images_per_id=4,
    clip_infrared_fraction=0.25,
)
IR_CAMERAS = [c for c in ALL_CAMERAS if c.modality == INFRARED]
VIS_CAMERAS = [c for c in ALL_CAMERAS if c.modality == VISIBLE]


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def recolored(identity, **colors):
    return dataclasses.replace(identity, attributes={**identity.attributes, **colors})


def other_color(attr: str, value: str) -> str:
    return next(v for v in ATTRIBUTES[attr] if v not in (value, NOT_APPLICABLE))


def test_color_attributes_are_attributes_and_color_words_cover_them():
    assert set(COLOR_ATTRIBUTES) <= set(ATTRIBUTES)
    assert {"red", "blue", "black", "white"} <= COLOR_WORDS
    assert not ({"striped", "backpack", "skirt", "long", "short"} & COLOR_WORDS)


@pytest.mark.parametrize(
    "field,value",
    [
        ("train_ids", 0),
        ("val_ids", 5),
        ("val_ids", 0),
        ("height", 4),
        ("clip_infrared_fraction", 1.5),
        ("jpeg_quality", 0),
        ("llcm_cams_per_id", 9),
    ],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field.split("_")[0]):
        dataclasses.replace(TINY, **{field: value})


def test_pools_are_disjoint_sized_and_deterministic():
    pools = make_identities(TINY)
    assert {k: len(v) for k, v in pools.items()} == {"clip": 6, "train": 5, "test": 4}
    pid_sets = [{i.pid for i in pool} for pool in pools.values()]
    assert sum(len(s) for s in pid_sets) == len(set().union(*pid_sets))
    assert {i.pid for i in pools["train"] + pools["test"]} == set(range(1, 10))
    assert make_identities(TINY) == pools
    other = make_identities(dataclasses.replace(TINY, seed=4))
    assert [i.attributes for i in other["clip"]] != [i.attributes for i in pools["clip"]]


def test_attributes_come_from_the_vocabulary():
    for ident in make_identities(dataclasses.replace(TINY, clip_ids=60))["clip"]:
        a = ident.attributes
        assert set(a) == set(ATTRIBUTES)
        for name, value in a.items():
            if name == "bag_color" and a["bag"] == "none":
                assert value == NOT_APPLICABLE
            else:
                assert value in ATTRIBUTES[name], (name, value)


@pytest.mark.parametrize("camera", ALL_CAMERAS, ids=lambda c: f"{c.sensor}{c.cam}")
def test_render_shape_dtype_and_determinism(camera):
    ident = make_identities(TINY)["test"][0]
    img = render_image(ident, camera, np.random.default_rng(5), height=48, width=24)
    assert img.shape == (48, 24, 3) and img.dtype == np.uint8
    assert np.array_equal(img, render_image(ident, camera, np.random.default_rng(5), height=48, width=24))
    assert not np.array_equal(img, render_image(ident, camera, np.random.default_rng(6), height=48, width=24))
    if camera.modality == INFRARED:
        assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2])


@pytest.mark.parametrize("camera", IR_CAMERAS, ids=lambda c: f"{c.sensor}{c.cam}")
def test_infrared_ignores_colour_but_visible_does_not(camera):
    for ident in make_identities(TINY)["test"]:
        a = ident.attributes
        changed = recolored(ident, **{k: other_color(k, a[k]) for k in COLOR_ATTRIBUTES if a[k] != NOT_APPLICABLE})
        ir = [render_image(i, camera, np.random.default_rng(11), height=64, width=32) for i in (ident, changed)]
        assert np.array_equal(ir[0], ir[1])
    vis_cam = VIS_CAMERAS[0]
    top = recolored(ident, top_color=other_color("top_color", a["top_color"]))
    vis = [render_image(i, vis_cam, np.random.default_rng(11), height=64, width=32) for i in (ident, top)]
    assert not np.array_equal(vis[0], vis[1])


@pytest.mark.parametrize("attr", ["top_pattern", "bottom_type", "bag", "sleeve"])
def test_infrared_shows_shape_garments_and_accessories(attr):
    ident = make_identities(TINY)["test"][1]
    value = ident.attributes[attr]
    changed = recolored(ident, **{attr: next(v for v in ATTRIBUTES[attr] if v != value)})
    if attr == "bag" and changed.attributes["bag"] != "none":
        changed = recolored(changed, bag_color="black")
    camera = SYSU_CAMERAS[2]  # cam3, infrared
    # whatever the pose, some of a few views must differ
    differs = [
        not np.array_equal(
            render_image(ident, camera, np.random.default_rng(s), height=64, width=32),
            render_image(changed, camera, np.random.default_rng(s), height=64, width=32),
        )
        for s in range(4)
    ]
    assert any(differs)


def test_cameras_of_each_layout():
    assert [(c.cam, c.modality) for c in sorted(SYSU_CAMERAS, key=lambda c: c.cam)] == [
        (1, VISIBLE),
        (2, VISIBLE),
        (3, INFRARED),
        (4, VISIBLE),
        (5, VISIBLE),
        (6, INFRARED),
    ]
    assert sorted(c.cam for c in LLCM_CAMERAS if c.modality == VISIBLE) == list(range(1, 10))
    assert sorted(c.cam for c in LLCM_CAMERAS if c.modality == INFRARED) == [1, 2, 4, 5, 6, 7, 8, 9]
    assert {c.modality for c in REGDB_CAMERAS} == {VISIBLE, INFRARED}


def test_infrared_captions_have_no_colour_words():
    idents = make_identities(dataclasses.replace(TINY, clip_ids=40))["clip"]
    for ident in idents:
        for s in range(5):
            text = caption(ident, INFRARED, np.random.default_rng(s))
            assert not (words(text) & COLOR_WORDS), text
            assert text.startswith(("an infrared", "a thermal"))


def test_visible_captions_describe_the_identity():
    idents = make_identities(dataclasses.replace(TINY, clip_ids=40))["clip"]
    texts = set()
    for ident in idents:
        a = ident.attributes
        for s in range(5):
            text = caption(ident, VISIBLE, np.random.default_rng(s))
            texts.add(text)
            assert text.startswith(("a photo", "a picture", "an image")) and text.endswith(".")
            assert a["top_color"] in words(text) and a["bottom_type"] in words(text)
            if a["bag"] == "none":
                assert not ({"backpack", "handbag"} & words(text))
            assert not re.search(r"\ba [aeiou]", text), text  # articles agree
    assert len(texts) == 200  # phrasing varies


def test_caption_rejects_unknown_modality():
    with pytest.raises(ValueError, match="modality"):
        caption(make_identities(TINY)["test"][0], "depth", np.random.default_rng(0))


def test_clip_pool_pretraining_images():
    pool = clip_pool(TINY)
    n = TINY.clip_ids * TINY.clip_images_per_id
    assert pool.images.shape == (n, 32, 16, 3) and pool.images.dtype == np.uint8 and len(pool) == n
    assert pool.modalities.count(INFRARED) == round(n * TINY.clip_infrared_fraction)
    clip_pids = {i.pid for i in make_identities(TINY)["clip"]}
    assert set(pool.pids.tolist()) == clip_pids
    for text, modality, attrs in zip(pool.captions, pool.modalities, pool.attributes):
        if modality == INFRARED:
            assert not (words(text) & COLOR_WORDS)
        else:
            assert attrs["top_color"] in words(text)
    again = clip_pool(TINY)
    assert np.array_equal(pool.images, again.images) and pool.captions == again.captions


def test_heldout_pool_is_test_identities_in_both_modalities():
    pool = clip_pool(TINY, heldout=True)
    assert set(pool.pids.tolist()) == {i.pid for i in make_identities(TINY)["test"]}
    for pid in set(pool.pids.tolist()):
        mods = [m for m, p in zip(pool.modalities, pool.pids) if p == pid]
        assert mods.count(VISIBLE) == mods.count(INFRARED) == TINY.clip_images_per_id // 2
