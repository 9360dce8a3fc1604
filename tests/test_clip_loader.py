"""csdn.clip.loader (with checkpoints, hub, preprocess): every way of getting a CLIP, QuickGELU, preprocessing and
clear errors."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file

import csdn.clip.hub as hub
from csdn.clip.checkpoints import CheckpointMismatchError, read_state_dict
from csdn.clip.hub import ClipWeightsUnavailable, cached_pretrained
from csdn.clip.loader import ClipSource, load_clip, local_dir_source, save_local_dir
from csdn.clip.preprocess import images_to_tensor, person_transform

SIZE = (64, 32)


@pytest.fixture(scope="module")
def vit_bundle():
    torch.manual_seed(0)
    return load_clip(ClipSource("csdn-tiny-vit", None, SIZE))


@pytest.fixture(scope="module")
def vit_state(vit_bundle):
    return {k: v.clone() for k, v in vit_bundle.model.state_dict().items()}


@pytest.fixture(scope="module")
def probe():
    torch.manual_seed(1)
    return torch.randn(2, 3, *SIZE)


def _image_features(bundle, x):
    with torch.no_grad():
        return bundle.model.encode_image(x)


def _has_quick_gelu(model) -> bool:
    return any(isinstance(m, QuickGELU) for m in model.modules())


def test_tiny_architectures_are_registered_with_open_clip():
    names = open_clip.list_models()
    assert "csdn-tiny-vit" in names and "csdn-tiny-rn" in names
    assert open_clip.get_model_config("csdn-tiny-vit")["vision_cfg"]["image_size"] == [128, 64]


def test_random_init_is_adapted_and_reports_its_settings(vit_bundle):
    assert vit_bundle.image_size == SIZE
    assert vit_bundle.kind == "vit"
    assert vit_bundle.context_length == 48
    assert vit_bundle.tokenizer(["a photo"]).shape == (1, 48)
    assert not vit_bundle.quick_gelu and not _has_quick_gelu(vit_bundle.model)
    assert vit_bundle.checkpoint is None


def test_offline_tag_fails_at_once_naming_the_alternatives(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "hub_offline", lambda: True)

    def no_download(*args, **kwargs):
        raise AssertionError("an offline load must not try to download")

    monkeypatch.setattr(open_clip, "download_pretrained", no_download)
    with pytest.raises(ClipWeightsUnavailable) as error:
        load_clip(ClipSource("RN50", "openai", (288, 144), cache_dir=str(tmp_path)))
    message = str(error.value)
    assert "RN50/openai" in message and "HF_HUB_OFFLINE" in message
    assert "local-dir:" in message and ".safetensors" in message and "csdn-tiny-rn" in message


def _fake_hub_cache(root, repo_id: str, filename: str, tensors: dict) -> str:
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    save_file(tensors, str(snapshot / filename))
    return str(snapshot / filename)


def test_cached_tag_is_found_without_network(tmp_path):
    path = _fake_hub_cache(tmp_path, "timm/resnet50_clip.openai", "open_clip_model.safetensors", {"x": torch.zeros(1)})
    assert str(cached_pretrained("RN50", "openai", cache_dir=str(tmp_path))) == path
    assert cached_pretrained("ViT-B-16", "openai", cache_dir=str(tmp_path)) is None


def test_cached_tag_loads_with_the_tags_quick_gelu(tmp_path, monkeypatch, vit_state, vit_bundle, probe):
    _fake_hub_cache(tmp_path, "org/tiny", "open_clip_model.safetensors", vit_state)
    tag = {"hf_hub": "org/tiny/", "quick_gelu": True, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    real = open_clip.get_pretrained_cfg
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda a, t: tag if t == "faketag" else real(a, t))
    monkeypatch.setattr(hub, "hub_offline", lambda: True)
    bundle = load_clip(ClipSource("csdn-tiny-vit", "faketag", SIZE, cache_dir=str(tmp_path)))
    assert bundle.quick_gelu and _has_quick_gelu(bundle.model)
    assert bundle.mean == (0.5, 0.5, 0.5) and bundle.std == (0.25, 0.25, 0.25)
    for key, value in vit_state.items():
        assert torch.equal(bundle.model.state_dict()[key], value)


def test_unknown_tag_and_missing_file_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="known tags"):
        load_clip(ClipSource("csdn-tiny-vit", "laion2b_s34b_b79k", SIZE))
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        load_clip(ClipSource("csdn-tiny-vit", str(tmp_path / "nothing.safetensors"), SIZE))
    with pytest.raises(ValueError, match="unknown CLIP architecture"):
        load_clip(ClipSource("no-such-arch", None, SIZE))


def test_local_safetensors_file_loads_the_same_model(tmp_path, vit_bundle, vit_state, probe):
    path = tmp_path / "tiny.safetensors"
    save_file(vit_state, str(path))
    bundle = load_clip(ClipSource("csdn-tiny-vit", str(path), SIZE))
    assert bundle.checkpoint == path and not bundle.quick_gelu
    torch.testing.assert_close(_image_features(bundle, probe), _image_features(vit_bundle, probe))


def test_pt_file_with_module_prefix_and_state_dict_wrapper(tmp_path, vit_bundle, vit_state, probe):
    path = tmp_path / "ddp_checkpoint.pt"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in vit_state.items()}}, path)
    bundle = load_clip(ClipSource("csdn-tiny-vit", str(path), SIZE))
    torch.testing.assert_close(_image_features(bundle, probe), _image_features(vit_bundle, probe))
    state, openai = read_state_dict(path)
    assert set(state) == set(vit_state) and not openai


def test_model_wrapper_is_unwrapped(tmp_path, vit_state):
    path = tmp_path / "wrapped.pth"
    torch.save({"model": vit_state}, path)
    state, _ = read_state_dict(path)
    assert set(state) == set(vit_state)


def test_release_markers_switch_on_quick_gelu(tmp_path, vit_state):
    marked = tmp_path / "weights.pt"
    torch.save(
        {
            **vit_state,
            "input_resolution": torch.tensor(224),
            "context_length": torch.tensor(48),
            "vocab_size": torch.tensor(49408),
        },
        marked,
    )
    bundle = load_clip(ClipSource("csdn-tiny-vit", str(marked), SIZE))
    assert bundle.quick_gelu and _has_quick_gelu(bundle.model)

    named = tmp_path / "openai-tiny.safetensors"
    save_file(vit_state, str(named))
    assert load_clip(ClipSource("csdn-tiny-vit", str(named), SIZE)).quick_gelu
    forced_off = load_clip(ClipSource("csdn-tiny-vit", str(named), SIZE, quick_gelu=False))
    assert not forced_off.quick_gelu and not _has_quick_gelu(forced_off.model)
    hub = tmp_path / "models--timm--vit_base_patch16_clip_224.openai" / "snapshots" / "abc"
    hub.mkdir(parents=True)
    save_file(vit_state, str(hub / "open_clip_model.safetensors"))
    assert load_clip(ClipSource("csdn-tiny-vit", str(hub / "open_clip_model.safetensors"), SIZE)).quick_gelu


def test_torchscript_archive_gets_quick_gelu(tmp_path, vit_bundle, probe):
    path = tmp_path / "jit.pt"
    torch.jit.script(vit_bundle.model).save(str(path))
    bundle = load_clip(ClipSource("csdn-tiny-vit", str(path), SIZE))
    assert bundle.quick_gelu  # an OpenAI-style archive means OpenAI weights
    for key, value in vit_bundle.model.state_dict().items():
        assert torch.equal(bundle.model.state_dict()[key], value)


def test_local_dir_roundtrip_and_open_clip_compatibility(tmp_path, vit_bundle, probe):
    folder = save_local_dir(vit_bundle, tmp_path / "tiny")
    config = json.loads((folder / "open_clip_config.json").read_text())
    assert config["csdn"] == {"arch": "csdn-tiny-vit", "image_size": [64, 32], "last_stride": 1}
    source = local_dir_source(folder)
    assert source.arch == "csdn-tiny-vit" and source.image_size == SIZE
    bundle = load_clip(source)
    torch.testing.assert_close(_image_features(bundle, probe), _image_features(vit_bundle, probe))
    plain = open_clip.create_model(f"local-dir:{folder}")  # open_clip itself reads the folder too
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain.encode_image(probe), _image_features(vit_bundle, probe))


def test_resnet_local_dir_keeps_its_geometry_and_can_be_resized(tmp_path):
    torch.manual_seed(0)
    rn = load_clip(ClipSource("csdn-tiny-rn", None, SIZE))
    folder = save_local_dir(rn, tmp_path / "rn")
    x = torch.randn(1, 3, *SIZE)
    same = load_clip(local_dir_source(folder))
    torch.testing.assert_close(_image_features(same, x), _image_features(rn, x))
    bigger = load_clip(local_dir_source(folder, image_size=(128, 64)))
    assert bigger.model.visual.attnpool.positional_embedding.shape[0] == 8 * 4 + 1
    assert _image_features(bigger, torch.randn(1, 3, 128, 64)).shape == (1, 128)


def test_wrong_architecture_is_a_clear_error(tmp_path, vit_state):
    path = tmp_path / "vit.safetensors"
    save_file(vit_state, str(path))
    with pytest.raises(CheckpointMismatchError) as error:
        load_clip(ClipSource("csdn-tiny-rn", str(path), SIZE))
    message = str(error.value)
    assert str(path) in message and "csdn-tiny-rn" in message and "looks like a ViT CLIP" in message


def test_local_dir_of_another_architecture_is_refused(tmp_path, vit_bundle):
    folder = save_local_dir(vit_bundle, tmp_path / "tiny")
    with pytest.raises(CheckpointMismatchError, match="different architecture"):
        load_clip(ClipSource("csdn-tiny-rn", f"local-dir:{folder}", SIZE))


def test_unreadable_and_malformed_inputs_name_the_file(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="broken.safetensors"):
        read_state_dict(bad)
    listing = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listing)
    with pytest.raises(ValueError, match="list.pt.*state dict"):
        read_state_dict(listing)
    text = tmp_path / "weights.txt"
    text.write_text("x")
    with pytest.raises(ValueError, match="weights.txt"):
        read_state_dict(text)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        load_clip(ClipSource("csdn-tiny-vit", f"local-dir:{empty}", SIZE))
    (empty / "open_clip_config.json").write_text(json.dumps({"model_cfg": open_clip.get_model_config("csdn-tiny-vit")}))
    with pytest.raises(FileNotFoundError, match="no weights file"):
        load_clip(ClipSource("csdn-tiny-vit", f"local-dir:{empty}", SIZE))


def test_source_validates_its_geometry():
    assert ClipSource("RN50", image_size=[288, 144]).image_size == (288, 144)
    with pytest.raises(ValueError, match="last_stride"):
        ClipSource("RN50", last_stride=3)


def test_preprocessing_squashes_instead_of_centre_cropping():
    image = np.zeros((256, 64, 3), dtype=np.uint8)
    image[:32] = 255  # a white head band at the very top
    out = person_transform((64, 32), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))(image)
    assert out.shape == (3, 64, 32)
    assert out[:, :6].min() > 0.9  # a centre crop would have cut the top away
    assert out[:, 10:].max() < 0.1


def test_images_to_tensor_normalises_and_resizes():
    images = np.full((2, 8, 4, 3), 255, dtype=np.uint8)
    x = images_to_tensor(images, (16, 8), mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    assert x.shape == (2, 3, 16, 8)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([2.0, 1.0, 0.5]))
    with pytest.raises(ValueError, match="uint8"):
        images_to_tensor(images.astype(np.float32), (16, 8), (0, 0, 0), (1, 1, 1))


def test_convolutional_tower_tells_resnets_from_transformers():
    from csdn.clip.loader import convolutional_tower

    assert convolutional_tower("csdn-tiny-rn") and convolutional_tower("RN50")
    assert not convolutional_tower("csdn-tiny-vit") and not convolutional_tower("ViT-B-16")
