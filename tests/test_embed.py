"""``csdn embed`` and :func:`csdn.embed.load_extractor`: the evaluation's own features of any image files.

One smoke network is trained (vision-only on a random tiny CLIP: no tiny-CLIP pretraining, no text stages);
its features of SynthVI test images from the embedder are compared with the pipeline's (``features_of``).
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from csdn.cli import main
from csdn.config import get_profile
from csdn.data.records import INFRARED, VISIBLE, Record
from csdn.embed import load_extractor, read_features
from csdn.experiment import FINAL, Experiment, weights_settings
from csdn.overrides import override

SMOKE = {"clip.weights": "random", "model.variant": "vision-only"}
FLAGS = ["--profile", "smoke", "--clip", "random", "--variant", "vision-only"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Experiment:
    experiment = Experiment(override(get_profile("smoke"), SMOKE), tmp_path_factory.mktemp("embed"), progress=False)
    _ = experiment.network
    return experiment


def _pipeline(experiment: Experiment, files: list[Path], modality: str) -> torch.Tensor:
    """The evaluation's features of ``files`` (records built for them: the pid and camera do not matter)."""
    net = experiment.network
    records = [Record(str(f), int(f.parent.name), 3, modality) for f in files]
    return experiment.features_of(net.embed, net)(records)


def _files(experiment: Experiment, cam: int, count: int = 12) -> list[Path]:
    return sorted((Path(experiment.dataset.root) / f"cam{cam}").rglob("*.jpg"))[:count]


def test_final_weights_record_the_preprocessing_they_need(trained: Experiment) -> None:
    settings = weights_settings(trained.stage3_dir / FINAL)
    assert settings == {
        "data.height": 64,
        "data.width": 32,
        "data.resize_filter": "bilinear",
        "clip.input_stats": "clip",
        "model.release_stem": False,
    }


def test_csdn_embed_of_folders_reproduces_the_pipeline_features(trained: Experiment, tmp_path: Path, capsys) -> None:
    root = Path(trained.dataset.root)
    out = tmp_path / "features.npz"
    argv = ["--cache", str(trained.cache_root), "embed", *FLAGS, "--run", str(trained.stage3_dir)]
    code = main([*argv, "--infrared", str(root / "cam3"), "--visible", str(root / "cam1"), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    features, paths, modalities, settings = read_features(out)
    assert settings["size"] == [64, 32] and settings["flip"] is True and settings["weights"].endswith(FINAL)
    rgb, ir = (sorted(map(str, (root / f"cam{c}").rglob("*.jpg"))) for c in (1, 3))
    assert paths == rgb + ir and modalities == [VISIBLE] * len(rgb) + [INFRARED] * len(ir)
    for modality in (INFRARED, VISIBLE):
        rows = [i for i, m in enumerate(modalities) if m == modality]
        expected = _pipeline(trained, [Path(paths[i]) for i in rows], modality)
        assert features.dtype == np.float32 and features.shape[1] == expected.shape[1]
        np.testing.assert_allclose(features[rows], expected.numpy(), atol=1e-6, rtol=0)
    assert "images embedded" in capsys.readouterr().out


def test_one_call_embeds_files_and_pil_images_of_any_size(trained: Experiment) -> None:
    # the demo profile's input size is 128x64: the weights file's recorded 64x32 applies
    cfg = override(get_profile("demo"), SMOKE)
    extractor = load_extractor(cfg, trained.cache_root, weights=trained.stage3_dir / FINAL)
    assert extractor.preprocessing.size == (64, 32)
    files = _files(trained, 3, 6)
    mixed = [files[0], Image.open(files[1]), *files[2:]]
    expected = _pipeline(trained, files, INFRARED)
    np.testing.assert_allclose(extractor.embed(mixed, INFRARED).numpy(), expected.numpy(), atol=1e-6, rtol=0)
    big = Image.open(files[0]).resize((97, 203))  # another size: resized to the network's own input
    assert extractor.embed([big], INFRARED).shape == (1, expected.shape[1])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["somewhere"], "images given without their modality: add --modality"),
        (["--out", "x.csv", "--visible", "."], "x.csv: features are written as .npz"),
        (["--visible", "no-such-folder"], "no-such-folder: no such image file or folder"),
        ([], "no images to embed"),
        (["--modality", "infrared", "--weights", "w.pth", "."], "weights file w.pth does not exist"),
    ],
)
def test_bad_embed_arguments_are_one_line_and_write_nothing(
    trained: Experiment, tmp_path: Path, monkeypatch, capsys, extra: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["--cache", str(trained.cache_root), "embed", *FLAGS, "--run", str(trained.stage3_dir)]
    out = [] if "--out" in extra else ["--out", "f.npz"]
    if "--weights" in extra:
        argv = argv[:-2]
    assert main([*argv, *out, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("csdn: error: ") and message in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_a_run_folder_of_csdn_train_gives_its_stage3_weights(trained: Experiment, tmp_path: Path) -> None:
    from csdn.embed import weights_of_run
    from csdn.errors import CheckpointError

    (tmp_path / "run" / "stages").mkdir(parents=True)
    (tmp_path / "run" / "stages" / "stage3").symlink_to(trained.stage3_dir)
    assert weights_of_run(tmp_path / "run") == tmp_path / "run" / "stages" / "stage3" / FINAL
    assert weights_of_run(trained.stage3_dir) == trained.stage3_dir / FINAL
    with pytest.raises(CheckpointError, match="neither a finished stage-3 folder"):
        weights_of_run(tmp_path)
