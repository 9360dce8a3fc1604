"""The authors' released checkpoint: key mapping onto CSDNNet, the release's stem, ``csdn convert-release``.

The fixture lists the (key, shape) pairs of the release's ``Model`` state_dict (nengdong96/CSDN at 2224959,
SYSU-MM01: 395 identities, RN50 at 288x144, saved from ``nn.DataParallel``), dumped outside this project
from the release's own model definition with random weights. Our RN50 network is built with random weights
on CPU (about 2 s).
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from csdn.cli import main
from csdn.clip.loader import ClipSource, load_clip
from csdn.data.records import INFRARED, VISIBLE
from csdn.errors import CheckpointError, ConfigError
from csdn.model.network import CSDNNet
from csdn.model.release import (
    TEXT_SIDE,
    convert_release_state_dict,
    read_release_checkpoint,
    release_key,
    release_num_ids,
)

FIXTURE = Path(__file__).parent / "fixtures" / "release_csdn_2224959_keys.json"
RELEASE_KEYS = [(key, tuple(shape)) for key, shape in json.loads(FIXTURE.read_text())["keys"]]


def _release_state(keys=RELEASE_KEYS) -> dict[str, torch.Tensor]:
    """A release state_dict whose every tensor holds its own index (so a mapped tensor is traceable)."""
    return {key: torch.full(shape, float(i)) for i, (key, shape) in enumerate(keys)}


@pytest.fixture(scope="module")
def rn50_net() -> CSDNNet:
    torch.manual_seed(0)
    bundle = load_clip(ClipSource(arch="RN50", pretrained=None, image_size=(288, 144)))
    return CSDNNet(bundle.visual(), num_ids=395)


def test_every_release_image_key_lands_on_rn50_with_its_shape(rn50_net: CSDNNet) -> None:
    target = rn50_net.state_dict()
    state = _release_state()
    converted, report = convert_release_state_dict(state, target)
    assert report.missing == []  # every tensor of our network is filled
    assert set(converted) == set(target)
    for release, ours in report.mapped.items():
        assert converted[ours].shape == target[ours].shape, release
        assert torch.equal(converted[ours].reshape(-1)[:1], state[release].reshape(-1)[:1])  # the same tensor
    assert len(report.mapped) == len(target) == 370
    # every key that is not mapped is reported, and only the text side is left out
    assert sorted(report.unused) == sorted(k for k, _ in RELEASE_KEYS if k not in report.mapped)
    assert all(k.removeprefix("module.").startswith(TEXT_SIDE) for k in report.unused) and len(report.unused) == 162
    rn50_net.load_state_dict(converted)  # strict


def test_stems_trunk_and_heads_map_where_the_release_runs_them() -> None:
    assert release_key("image_encoder1.0.weight") == f"stems.{VISIBLE}.0.weight"  # gallery (visible) images
    assert release_key("image_encoder2.2.weight") == f"stems.{INFRARED}.3.weight"  # conv2 after bn1 (+ ReLU slot)
    assert release_key("image_encoder1.5.running_var") == f"stems.{VISIBLE}.7.running_var"  # bn3
    assert release_key("image_encoder.3.0.downsample.0.weight") == "trunk.layer4.0.downsample.0.weight"
    assert release_key("attnpool.positional_embedding") == "trunk.attnpool.positional_embedding"
    assert release_key("classifier.classifier.weight") == "cls_gem.weight"
    assert release_key("classifier2.BN.running_mean") == "bn_proj.running_mean"
    assert release_key("prompt_learner1.cls_ctx") is None and release_key("image_encoder1.6.weight") is None


def test_gem_exponent_becomes_a_scalar() -> None:
    converted, _ = convert_release_state_dict({"module.classifier.GEM.p": torch.tensor([2.5])})
    assert converted["gem.p"].shape == () and float(converted["gem.p"]) == 2.5


def test_missing_release_tensors_are_reported(rn50_net: CSDNNet) -> None:
    keys = [(k, s) for k, s in RELEASE_KEYS if "classifier2" not in k]
    _, report = convert_release_state_dict(_release_state(keys), rn50_net.state_dict())
    assert sorted(report.missing) == sorted(k for k in rn50_net.state_dict() if k.startswith(("bn_proj", "cls_proj")))
    assert "missing: " in report.summary()


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"visual.conv1.weight": torch.zeros(1)}, "keys it does not know: visual.conv1.weight"),
        ({"module.text_encoder.positional_embedding": torch.zeros(1)}, "no image-network keys"),
    ],
)
def test_a_foreign_state_dict_is_refused(state, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        convert_release_state_dict(state)


def test_wrong_shapes_are_refused(rn50_net: CSDNNet) -> None:
    state = _release_state([(k, (1,) if k.endswith("attnpool.positional_embedding") else s) for k, s in RELEASE_KEYS])
    with pytest.raises(CheckpointError, match=r"trunk.attnpool.positional_embedding \(1,\) instead of \(163, 2048\)"):
        convert_release_state_dict(state, rn50_net.state_dict())


def test_num_ids_come_from_the_classifier() -> None:
    assert release_num_ids(dict(_release_state([k for k in RELEASE_KEYS if "classifier." in k[0]]))) == 395
    assert release_num_ids({"module.classifier.classifier.weight": torch.zeros(7, 4)}) == 7
    with pytest.raises(CheckpointError, match="no classifier.classifier.weight"):
        release_num_ids({"x": torch.zeros(1)})


# -- the release's stem -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_rn():
    return load_clip(ClipSource(arch="csdn-tiny-rn", pretrained=None, image_size=(64, 32))).visual()


def test_release_stem_drops_the_relus_after_bn1_and_bn2(tiny_rn) -> None:
    torch.manual_seed(0)
    plain, release = CSDNNet(tiny_rn, 3).eval(), CSDNNet(tiny_rn, 3, release_stem=True).eval()
    release.load_state_dict(plain.state_dict())  # one key layout for both
    stem = release.stem_for(VISIBLE)
    assert [type(m).__name__ for m in stem][:6] == [
        "Conv2d",
        "BatchNorm2d",
        "Identity",
        "Conv2d",
        "BatchNorm2d",
        "Identity",
    ]
    assert isinstance(stem[8], torch.nn.ReLU)  # the one ReLU the release keeps, after bn3
    x = torch.randn(2, 3, 64, 32)
    by_hand = stem[9](torch.relu(stem[7](stem[6](stem[4](stem[3](stem[1](stem[0](x))))))))
    assert torch.allclose(release.stem_for(VISIBLE)(x), by_hand)
    assert not torch.allclose(plain.stem_for(VISIBLE)(x), by_hand)
    assert release.embed(x, INFRARED).shape == plain.embed(x, INFRARED).shape


def test_release_stem_is_refused_for_a_vit() -> None:
    vit = load_clip(ClipSource(arch="csdn-tiny-vit", pretrained=None, image_size=(64, 32))).visual()
    with pytest.raises(ConfigError, match="release_stem applies to ResNet towers"):
        CSDNNet(vit, 3, release_stem=True)


# -- csdn convert-release ----------------------------------------------------------------------------------


def _as_release(net: CSDNNet) -> dict[str, torch.Tensor]:
    """A release-format state_dict (``module.`` keys, GeM p of shape (1,), text side) holding ``net``'s tensors."""
    ours = net.state_dict()
    inverse = {release_key(k.removeprefix("module.")): k for k, _ in RELEASE_KEYS}
    state = {inverse[k]: v.reshape(1) if k == "gem.p" else v for k, v in ours.items()}
    state["module.prompt_learner1.cls_ctx"] = torch.zeros(3, 4, 8)
    return state


def test_convert_release_cli_round_trip(tiny_rn, tmp_path: Path, capsys) -> None:
    torch.manual_seed(1)
    net = CSDNNet(tiny_rn, 3)
    torch.save(_as_release(net), tmp_path / "model_80.pth")
    args = ["--arch", "csdn-tiny-rn", "--height", "64", "--width", "32"]
    out = tmp_path / "converted.safetensors"
    assert main(["convert-release", str(tmp_path / "model_80.pth"), str(out), *args]) == 0
    printed = capsys.readouterr().out
    assert f"{len(net.state_dict())} tensors mapped, 1 text-side tensors unused" in printed
    assert "module.prompt_learner1 (1)" in printed and "model.release_stem=true" in printed
    loaded = load_file(str(out))
    assert set(loaded) == set(net.state_dict())
    assert all(torch.equal(loaded[k], v) for k, v in net.state_dict().items())


def test_convert_release_cli_refuses_what_is_not_the_release(tmp_path: Path, capsys) -> None:
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    for name, message in (
        ("list.pth", "is not a state_dict"),
        ("other.pth", "no classifier.classifier.weight"),
        ("junk.pth", "cannot read"),
        ("absent.pth", "does not exist"),
    ):
        assert main(["convert-release", str(tmp_path / name), str(tmp_path / "o.safetensors")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("csdn: error: ") and message in err and str(tmp_path / name) in err
    assert not (tmp_path / "o.safetensors").exists()


def test_read_release_checkpoint_unwraps_state_dict(tmp_path: Path) -> None:
    torch.save({"state_dict": {"a": torch.ones(2)}}, tmp_path / "w.pth")
    assert list(read_release_checkpoint(tmp_path / "w.pth")) == ["a"]
