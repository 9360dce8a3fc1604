"""Cache keys of trained artifacts follow what determines the result: data content, not where it lies."""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
from PIL import Image

from csdn.artifacts import TRAINING_CODE_VERSION, config_key
from csdn.config import get_profile
from csdn.experiment import Experiment
from csdn.overrides import override

# (pid, cam) -> images; ids 1, 2 train, 3 val, 4 test (SYSU-MM01 layout)
LAYOUT = {(1, 1): 2, (1, 3): 2, (2, 2): 2, (2, 6): 2, (3, 1): 1, (3, 3): 1, (4, 1): 1, (4, 3): 1}


def _sysu(root: Path) -> Path:
    for cam in range(1, 7):
        (root / f"cam{cam}").mkdir(parents=True, exist_ok=True)
    for (pid, cam), count in LAYOUT.items():
        for k in range(1, count + 1):
            _jpeg(root / f"cam{cam}" / f"{pid:04d}" / f"{k:04d}.jpg", (40 * pid, 30 * cam, 20 * k))
    (root / "exp").mkdir()
    for name, line in {"train": "1,2", "val": "3", "test": "4"}.items():
        (root / "exp" / f"{name}_id.txt").write_text(line + "\n")
    return root


def _jpeg(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 16), colour).save(path)


def _keys(root: str, cache: Path, **changes) -> dict[str, str]:
    cfg = override(get_profile("smoke"), {"data.dataset": "sysu", "data.root": root, **changes})
    e = Experiment(cfg, cache, progress=False)
    return {
        "features": e.clip_features_key,
        "stage1": e.stage1_key,
        "stage2": e.stage2_key,
        "stage3": e.stage3_key,
    }


@pytest.fixture
def sysu(tmp_path: Path) -> Path:
    return _sysu(tmp_path / "data" / "SYSU-MM01")


def test_the_same_images_under_other_root_spellings_share_keys(sysu: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    keys = _keys(str(sysu), cache)
    assert _keys(str(sysu) + "/", cache) == keys
    assert _keys(os.path.relpath(sysu), cache) == keys
    moved = tmp_path / "mnt" / "copy"
    shutil.copytree(sysu, moved)  # a new mount point: other paths and mtimes, same content
    assert _keys(str(moved), cache) == keys


def test_an_image_rewritten_in_place_changes_every_key(sysu: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    keys = _keys(str(sysu), cache)
    _jpeg(sysu / "cam1" / "0001" / "0001.jpg", (0, 255, 0))  # same path, other bytes
    changed = _keys(str(sysu), cache)
    assert all(changed[name] != keys[name] for name in keys)


def test_a_speed_only_setting_keeps_the_key_and_sync_bn_changes_it(sysu: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    keys = _keys(str(sysu), cache)
    assert _keys(str(sysu), cache, **{"stage3.workers": 4}) == keys
    no_sync = _keys(str(sysu), cache, sync_bn=False)
    assert no_sync["stage3"] != keys["stage3"]
    assert {k: v for k, v in no_sync.items() if k != "stage3"} == {k: v for k, v in keys.items() if k != "stage3"}


def test_best_val_keys_follow_the_validation_interval_and_images(sysu: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    best = {"select": "best_val", "validate_every": 1}
    keys = _keys(str(sysu), cache, **best)
    assert _keys(str(sysu), cache, **{**best, "validate_every": 2})["stage3"] != keys["stage3"]
    _jpeg(sysu / "cam3" / "0003" / "0001.jpg", (1, 2, 3))  # a validation image (id 3 is held out)
    changed = _keys(str(sysu), cache, **best)
    assert changed["stage3"] != keys["stage3"] and changed["stage1"] == keys["stage1"]


def test_synthvi_keys_need_no_data_and_keep_their_earlier_values(tmp_path: Path) -> None:
    cfg = get_profile("smoke")
    e = Experiment(cfg, tmp_path / "cache", progress=False)
    m = cfg.model

    def before(part, *later: str) -> dict:  # the config as it was before the ``later`` fields existed
        return {k: v for k, v in asdict(part).items() if k not in later}

    earlier = config_key(  # the stage-1 key as computed before keys followed the data content
        [
            before(cfg.data, "resize_filter"),
            before(cfg.clip, "input_stats", "grid_interpolation"),
            cfg.seed,
            TRAINING_CODE_VERSION,
            e.compute_identity,  # the resolved compute paths (since version 3)
            "stage1",
            m.shared_prompts,
            m.prompt_wording,
            m.n_ctx,
            before(cfg.stage1, "schedule", "feature_bank", "max_steps"),
        ]
    )
    assert e.stage1_key == earlier
    assert not (tmp_path / "cache").exists()  # nothing generated or hashed to know the keys
    workers = Experiment(override(cfg, {"stage3.workers": 2}), tmp_path / "cache", progress=False)
    assert workers.stage3_key == e.stage3_key


def test_a_clip_weights_file_is_keyed_by_its_content_not_its_path(tmp_path: Path) -> None:
    weights = tmp_path / "a" / "RN.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"first weights")
    moved = tmp_path / "b" / "renamed.safetensors"
    moved.parent.mkdir()
    shutil.copy(weights, moved)

    def stage1_key(path: str) -> str:
        cfg = override(get_profile("smoke"), {"clip.weights": path})
        return Experiment(cfg, tmp_path / "cache", progress=False).stage1_key

    key = stage1_key(str(weights))
    assert stage1_key(str(moved)) == key
    weights.write_bytes(b"other weights")  # rewritten in place
    assert stage1_key(str(weights)) != key
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text("{}")
    local = stage1_key(f"local-dir:{folder}")
    (folder / "open_clip_config.json").write_text('{"model_cfg": {}}')
    assert stage1_key(f"local-dir:{folder}/") != local


def test_the_compute_path_separates_keys(tmp_path: Path) -> None:
    """bf16 and fp32 training give different results: their stages and frozen features never share a key."""
    cfg = get_profile("smoke")
    fp32 = Experiment(override(cfg, {"compute.precision": "fp32"}), tmp_path, progress=False)
    contiguous = Experiment(override(cfg, {"compute.memory_format": "contiguous"}), tmp_path, progress=False)
    assert fp32.compute.identity() == {"precision": "fp32", "layout": "contiguous"}
    channels_last = Experiment(override(cfg, {"compute.memory_format": "channels_last"}), tmp_path, progress=False)
    assert fp32.stage1_key != channels_last.stage1_key
    if fp32.compute != Experiment(cfg, tmp_path).compute:  # a CPU with bf16: the default path is another
        assert fp32.stage3_key != Experiment(cfg, tmp_path, progress=False).stage3_key
        assert fp32.clip_features_key != Experiment(cfg, tmp_path, progress=False).clip_features_key
    assert contiguous.compute.channels_last is False
