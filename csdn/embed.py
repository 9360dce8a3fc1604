"""A trained network as a feature extractor: :func:`load_extractor` in Python, ``csdn embed`` on the command line.

The features are the evaluation's own: each image is resized to the network's input size with
``data.resize_filter`` exactly as the image cache resizes files (:func:`csdn.data.cache.decode_image`), put
through the test transform normalised by ``clip.input_stats``, and embedded by ``CSDNNet.embed`` for its
modality, with the flip test-time augmentation of ``eval.flip`` / ``eval.flip_fusion``
(:func:`csdn.eval.features.extract_features`), as :meth:`csdn.experiment.Experiment.features_of` does.

No dataset is opened: the number of identities (the classifiers' size) comes from the weights file itself.
The CLIP tower only gives the architecture and its normalisation statistics (a tiny-synthvi CLIP must be
in the cache; for RN50 / ViT-B-16 ``clip.weights=random`` needs no CLIP weights, every tensor comes from the
weights file). A weights file that records the settings its weights need (a converted release checkpoint;
a stage-3 ``final.safetensors`` records its input size and preprocessing, see
:func:`csdn.experiment.stage3_weights_settings`) gets them applied over the given config.

    >>> extractor = load_extractor(get_profile("demo"), cache_root, weights="final.safetensors")
    >>> features = extractor.embed(["a.jpg", PIL.Image.open("b.png")], "infrared")   # (2, D), unit rows

Files written by ``csdn embed`` (:func:`write_features`; ``.npz``, as pyarrow is not a dependency): ``features``
(N, D) float32, row ``i`` the feature of ``paths[i]`` (N,) str, of modality ``modalities[i]`` (N,) str, and
``settings`` (a JSON str: the weights, the feature size and the preprocessing). ``np.load(f)["features"]``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors

from csdn.artifacts import atomic_write_bytes
from csdn.config import ExperimentConfig
from csdn.data.cache import RESIZE_FILTERS, decode_image
from csdn.data.protocol import IMAGE_SUFFIXES, DatasetError
from csdn.data.records import MODALITIES
from csdn.data.transforms import TransformConfig, test_transform
from csdn.errors import CheckpointError, ConfigError
from csdn.eval.features import extract_features
from csdn.model.network import CSDNNet
from csdn.runtime import FP32, ComputePath

ImageInput = str | Path | Image.Image  # an image file, or an image already in memory
CLASSIFIER = "cls_gem.weight"  # (num_ids, trunk_dim): the tensor that gives a weights file's identity count


@dataclass(frozen=True)
class Preprocessing:
    """What evaluation does to an image around the network (from a config and its CLIP)."""

    size: tuple[int, int]  # (H, W) the network's input size
    resize_filter: str  # how a file is resized to ``size`` (data.resize_filter)
    mean: tuple[float, ...]  # normalisation mean (clip.input_stats resolved)
    std: tuple[float, ...]  # normalisation std
    flip: bool  # flip test-time augmentation (eval.flip)
    flip_fusion: str  # how the flipped feature joins the plain one (eval.flip_fusion)

    def pixels(self, image: ImageInput) -> np.ndarray:
        """The uint8 (H, W, 3) array the image cache would hold for ``image``."""
        if isinstance(image, Image.Image):
            height, width = self.size
            resized = image.convert("RGB").resize((width, height), RESIZE_FILTERS[self.resize_filter])
            return np.asarray(resized, dtype=np.uint8)
        return decode_image(image, self.size, self.resize_filter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "size": list(self.size),
            "resize_filter": self.resize_filter,
            "mean": list(self.mean),
            "std": list(self.std),
            "flip": self.flip,
            "flip_fusion": self.flip_fusion,
        }


class _Images(Dataset):
    """Images (files or PIL images) decoded as the cache does, then the test transform."""

    def __init__(self, images: Sequence[ImageInput], preprocessing: Preprocessing) -> None:
        self.images = list(images)
        self.preprocessing = preprocessing
        h, w = preprocessing.size
        self.transform = test_transform(
            TransformConfig(height=h, width=w, mean=preprocessing.mean, std=preprocessing.std)
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        pixels = np.ascontiguousarray(self.preprocessing.pixels(self.images[index]).transpose(2, 0, 1))
        return self.transform(tv_tensors.Image(torch.from_numpy(pixels)))


class FeatureExtractor:
    """A trained network with its preprocessing: :meth:`embed` gives the evaluation's features of any images."""

    def __init__(
        self,
        net: CSDNNet,
        preprocessing: Preprocessing,
        device: torch.device,
        batch_size: int = 128,
        source: str = "",
        compute: ComputePath = FP32,
    ) -> None:
        self.net = net.to(device)
        self.preprocessing = preprocessing
        self.device = device
        self.batch_size = batch_size
        self.source = source  # the weights file or run folder the network came from
        self.compute = compute  # the evaluation's compute path (precision, image layout)

    def embed(self, images: Sequence[ImageInput], modality: str, progress: bool = False) -> Tensor:
        """Features (N, D) of ``images`` (files or PIL images, any size) of one ``modality``, in order."""
        if modality not in MODALITIES:
            raise ConfigError(f"modality must be one of {', '.join(MODALITIES)}; got {modality!r}")
        p = self.preprocessing
        return extract_features(
            lambda x: self.net.embed(x, modality),
            _Images(images, p),
            batch_size=self.batch_size,
            flip=p.flip,
            flip_fusion=p.flip_fusion,
            device=self.device,
            progress=progress,
            model=self.net,
            desc=f"{modality} features",
            compute=self.compute,
        )

    def settings(self) -> dict[str, Any]:
        """What produced the features: the weights and the preprocessing (recorded beside them)."""
        settings = {"weights": self.source, "feature_dim": self.feature_dim, **self.preprocessing.as_dict()}
        return {**settings, "compute": self.compute.identity()}

    @property
    def feature_dim(self) -> int:
        width = self.net.trunk_dim + self.net.embed_dim
        return 2 * width if self.preprocessing.flip and self.preprocessing.flip_fusion == "concat" else width


def weights_of_run(run: str | Path) -> Path:
    """The stage-3 weights of ``run``: a finished stage-3 folder (``final.safetensors`` + ``done.json``) or a
    run folder of ``csdn train`` (its ``stages/stage3`` link)."""
    from csdn.experiment import DONE, FINAL

    run = Path(run)
    for folder in (run, run / "stages" / "stage3"):
        if (folder / DONE).is_file() and (folder / FINAL).is_file():
            return folder / FINAL
    raise CheckpointError(
        f"{run} is neither a finished stage-3 folder (final.safetensors + done.json) nor a run folder of csdn train "
        "with stages/stage3; pass $CSDN_CACHE/runs/stage3-<key>, reports/<run>, or the weights file with --weights"
    )


def weights_num_ids(path: str | Path) -> int:
    """The number of identities a stage-3 weights file was trained on (its classifier's rows)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return int(handle.get_slice(CLASSIFIER).get_shape()[0])
    except Exception as error:  # safetensors' own error types, or no classifier tensor
        raise CheckpointError(f"{path}: not stage-3 network weights ({error}); pass a final.safetensors") from error


def load_extractor(
    cfg: ExperimentConfig,
    cache_root: str | Path,
    weights: str | Path | None = None,
    run: str | Path | None = None,
    batch_size: int | None = None,
) -> FeatureExtractor:
    """The network of ``weights`` (a file), ``run`` (a folder, :func:`weights_of_run`) or, with neither, the
    cache's trained network of ``cfg``, with the preprocessing of ``cfg`` (updated by what the file records).
    Never trains and opens no dataset when given weights."""
    from csdn.experiment import Experiment, check_weights_file, config_for_weights, load_weights

    if weights is not None and run is not None:
        raise ConfigError("give the weights file or the run folder, not both")
    path = weights_of_run(run) if run is not None else weights
    if path is not None:
        check_weights_file(Path(path))
        cfg = config_for_weights(cfg, path)[0]
    experiment = Experiment(cfg, Path(cache_root), progress=False, trained_only=True)
    if path is None:
        net, source = experiment.network, str(experiment.stage3_dir / "final.safetensors")
    else:
        net, source = experiment.build_network(weights_num_ids(path)), str(path)
        load_weights(net, Path(path))
    t = experiment.transforms
    e = cfg.eval
    preprocessing = Preprocessing(
        (cfg.data.height, cfg.data.width), cfg.data.resize_filter, t.mean, t.std, e.flip, e.flip_fusion
    )
    batch = batch_size or e.batch_size
    return FeatureExtractor(net, preprocessing, experiment.device, batch, source, compute=experiment.compute)


def image_files(path: str | Path) -> list[Path]:
    """The image files of ``path``: itself, or every image under a folder (recursively, sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DatasetError(f"{path}: no such image file or folder; pass an image or a folder of images")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DatasetError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder; pass another")
    return files


def write_features(
    path: str | Path, features: Tensor, paths: Sequence[str], modalities: Sequence[str], settings: dict[str, Any]
) -> Path:
    """Write the features with their file names as ``.npz`` (module docstring), atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ConfigError(f"{path}: features are written as .npz; name the file so")
    buffer = io.BytesIO()
    np.savez(
        buffer,
        features=features.numpy().astype(np.float32),
        paths=np.array(paths, dtype=str),
        modalities=np.array(modalities, dtype=str),
        settings=np.array(json.dumps(settings)),
    )
    atomic_write_bytes(path, buffer.getvalue())
    return path


def read_features(path: str | Path) -> tuple[np.ndarray, list[str], list[str], dict[str, Any]]:
    """``(features, paths, modalities, settings)`` of a file :func:`write_features` wrote."""
    with np.load(Path(path)) as data:
        features, paths, modalities = data["features"], data["paths"].tolist(), data["modalities"].tolist()
        return features, paths, modalities, json.loads(str(data["settings"]))
