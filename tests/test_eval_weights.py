"""Evaluating a given network: ``csdn eval --weights FILE`` / ``--run DIR`` and ``Experiment(trained_only=True)``.

Nothing here trains: the weights are a network built for the config (randomly initialised CLIP, perturbed
heads) saved by hand, and a run folder is written the way a finished stage 3 leaves it.
"""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from csdn.artifacts import atomic_save_tensors, atomic_write_json
from csdn.cli import main
from csdn.config import get_profile
from csdn.experiment import DONE, FINAL, Experiment, NotTrainedError, state_dict_mismatch
from csdn.overrides import override

FLAGS = ["--profile", "smoke", "--clip", "random", "--variant", "vision-only"]  # no tiny CLIP, no text stages


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("eval-cache")


def _experiment(cache: Path, variant: str = "vision-only", **kw) -> Experiment:
    cfg = override(get_profile("smoke"), {"clip.weights": "random", "model.variant": variant})
    return Experiment(cfg, cache, progress=False, **kw)


@pytest.fixture(scope="module")
def weights(cache: Path, tmp_path_factory) -> Path:
    """A network for the config with non-initial weights, saved as a stage-3 weights file."""
    net = _experiment(cache, trained_only=True).build_network()
    torch.manual_seed(1)
    with torch.no_grad():
        for tensor in net.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.01 * torch.randn_like(tensor)).abs_()  # positive: valid BN variances
    path = tmp_path_factory.mktemp("weights") / "best.safetensors"
    atomic_save_tensors(net.state_dict(), path)
    return path


def _one_report(reports: Path) -> Path:
    """The results.json of the one run folder under ``reports``."""
    (found,) = reports.glob("*/results.json")
    return found


def _summary(reports: Path) -> list[tuple[str, float]]:
    rows = json.loads(_one_report(reports).read_text())["summary"]
    return [(row["protocol"], row["mAP"]) for row in rows]


def _eval(cache: Path, reports: Path, *extra: str) -> int:
    return main(["--cache", str(cache), "eval", *FLAGS, "--reports", str(reports), *extra])


def test_plain_eval_with_nothing_cached_refuses_and_says_what_to_run(tmp_path: Path, capsys) -> None:
    code = main(["--cache", str(tmp_path), "eval", "--profile", "smoke", "--seed", "3", "--set", "stage3.epochs=1"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("csdn: error: stage3 of this config is not trained")
    assert f"To train it: csdn --cache {tmp_path} train --profile smoke --seed 3 --set stage3.epochs=1" in err
    assert list(tmp_path.iterdir()) == []  # nothing generated, pretrained or trained


def test_trained_only_refuses_each_missing_stage_and_the_tiny_clip(tmp_path: Path) -> None:
    experiment = Experiment(get_profile("smoke"), tmp_path, progress=False, trained_only=True)
    with pytest.raises(NotTrainedError, match="the tiny CLIP .* is not in the cache .*`csdn pretrain-clip`"):
        _ = experiment.clip_source
    with pytest.raises(NotTrainedError, match="stage3 of this config is not trained"):
        _ = experiment.network
    assert not (tmp_path / "tiny_clip").exists() and not (tmp_path / "runs").exists()


def test_network_from_weights_is_the_saved_network(cache: Path, weights: Path) -> None:
    experiment = _experiment(cache, trained_only=True)
    net = experiment.network_from_weights(weights)
    saved = experiment.build_network()
    saved.load_state_dict(load_file(str(weights)))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), saved.state_dict().values(), strict=True))
    x = torch.randn(3, 3, *experiment.image_size)
    assert torch.equal(net.eval().embed(x, "infrared"), saved.eval().embed(x, "infrared"))
    assert experiment.histories == {}  # a weights file has no training history


def test_eval_of_weights_of_a_run_folder_and_of_the_cache_agree(cache: Path, weights: Path, tmp_path: Path) -> None:
    assert _eval(cache, tmp_path / "w", "--weights", str(weights)) == 0
    run = tmp_path / "stage3-copied"
    atomic_save_tensors(load_file(str(weights)), run / FINAL)
    atomic_write_json(run / DONE, {"history": [{"epoch": 1}], "config_key": "another", "world_size": 1})
    assert _eval(cache, tmp_path / "r", "--run", str(run)) == 0
    cached = _experiment(cache).stage3_dir  # the cache's own finished stage 3 of this config
    atomic_save_tensors(load_file(str(weights)), cached / FINAL)
    atomic_write_json(cached / DONE, {"history": [{"epoch": 1}], "config_key": cached.name, "world_size": 1})
    assert _eval(cache, tmp_path / "c") == 0
    assert _summary(tmp_path / "w") == _summary(tmp_path / "r") == _summary(tmp_path / "c")
    report = json.loads(_one_report(tmp_path / "w").read_text())
    assert report["evaluated"] == str(weights)


def test_run_folder_of_another_config_is_noted(cache: Path, weights: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "stage3-x"
    atomic_save_tensors(load_file(str(weights)), run / FINAL)
    atomic_write_json(run / DONE, {"history": [], "config_key": "0123", "world_size": 1})
    assert _eval(cache, tmp_path / "r", "--run", str(run)) == 0
    assert f"note: {run} was trained under another config (key 0123" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--variant", "csdn"], "does not fit the network of this config (missing stems.visible.0.weight"),
        (["--set", "data.synth.train_ids=8"], "shape cls_gem.weight"),
    ],
)
def test_weights_of_another_network_are_refused_naming_the_file(
    cache: Path, weights: Path, tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    assert _eval(cache, tmp_path, "--weights", str(weights), *extra) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after the progress bars of the data
    assert err.startswith(f"csdn: error: weights file {weights} ") and message in err


def test_bad_weights_arguments_are_refused(cache: Path, weights: Path, tmp_path: Path, capsys) -> None:
    torch.save({"a": torch.zeros(1)}, tmp_path / "model_80.pth")
    (tmp_path / "damaged.safetensors").write_bytes(b"\x00" * 16)
    (tmp_path / "unfinished").mkdir()
    for extra, message in (
        (["--weights", str(tmp_path / "absent.safetensors")], "does not exist"),
        (["--weights", str(tmp_path / "model_80.pth")], "not a .safetensors file: .*csdn convert-release"),
        (["--weights", str(tmp_path / "damaged.safetensors")], "cannot read (the header of )?weights file"),
        (["--run", str(tmp_path / "unfinished")], "is not a finished stage-3 run folder"),
        (["--weights", str(weights), "--run", str(tmp_path)], "give --weights FILE or --run DIR, not both"),
    ):
        assert _eval(cache, tmp_path / "r", *extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("csdn: error: ") and re.search(message, err), err


def test_state_dict_mismatch_lists_what_does_not_fit() -> None:
    expected = {"a": torch.zeros(2), "b": torch.zeros(3), "c": torch.zeros(1)}
    found = {"a": torch.zeros(2), "b": torch.zeros(4), "d": torch.zeros(1)}
    assert state_dict_mismatch(expected, found) == "missing c; unexpected d; shape b (4,) instead of (3,)"
    assert state_dict_mismatch(expected, dict(expected)) == ""


def test_release_stem_keys_its_own_runs_only(tmp_path: Path) -> None:
    smoke = get_profile("smoke")
    default = Experiment(smoke, tmp_path, progress=False)
    release = Experiment(override(smoke, {"model.release_stem": True}), tmp_path, progress=False)
    assert release.stage3_key != default.stage3_key and release.stage1_key == default.stage1_key
    assert Experiment(override(smoke, {"model.release_stem": False}), tmp_path).stage3_key == default.stage3_key


def test_missing_clip_weights_suggest_the_random_architecture(weights: Path, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "RN50.pt"
    code = main(
        ["--cache", str(tmp_path), "eval", "--profile", "smoke", "--clip", str(missing), "--weights", str(weights)]
    )
    err = capsys.readouterr().err.splitlines()[-1]
    assert code == 2 and str(missing) in err and "--clip random builds it without CLIP weights" in err
