"""What a run is computed from, and the keys of what it computes: the data (dataset, training labels, the
uint8 image caches, the input transforms), the CLIP it starts from (pretrained, random, a weights file or the
tiny CLIP pretrained on SynthVI), the compute paths of its towers, and the cache keys built from the content
of all of these (:meth:`RunInputs._key`), including the frozen-CLIP features stages 1-2 train on.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from csdn.artifacts import (
    TRAINING_CODE_VERSION,
    atomic_save_tensors,
    config_key,
    key_fields,
    lacks_checksum,
    load_tensors,
)
from csdn.clip.loader import LOCAL_DIR, ClipBundle, ClipSource, convolutional_tower, load_clip, local_dir_source
from csdn.config import ExperimentConfig
from csdn.data.cache import ImageCache
from csdn.data.images import CachedImages
from csdn.data.protocol import DatasetError
from csdn.data.records import VISIBLE, Record, label_map
from csdn.data.transforms import TransformConfig, input_statistics, test_transform
from csdn.eval.features import extract_features
from csdn.experiment.records import file_digest
from csdn.experiment.stage_cache import NotTrainedError, RunObserver
from csdn.model.network import release_resnet_stem
from csdn.runtime import ComputePath, compute_path, pick_device, seed_everything
from csdn.sources import open_dataset
from csdn.synthvi.layouts import FORMAT_VERSION as SYNTHVI_FORMAT
from csdn.synthvi.pretrain import is_pretrained, tiny_clip, tiny_clip_folder
from csdn.train.distributed import DistContext
from csdn.train.text_stages import CachedFeatures


class RunInputs:
    """The inputs half of an :class:`~csdn.experiment.Experiment`: data, CLIP, compute paths and cache keys.

    ``dist`` is this process's place in a torchrun job (from :func:`csdn.train.distributed.init_from_env`);
    by default one process on ``cfg.device``. Only rank 0 shows progress bars and tells ``logger``.
    ``trained_only=True`` never trains: a stage (or tiny CLIP) missing from the cache raises
    :class:`NotTrainedError`.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        cache_root: Path,
        progress: bool = True,
        dist: DistContext | None = None,
        logger: RunObserver | None = None,
        trained_only: bool = False,
    ) -> None:
        self.cfg = cfg
        self.cache_root = Path(cache_root)
        self.dist = dist or DistContext(device=pick_device(cfg.device))
        self.progress = progress and self.dist.is_main
        self.device = self.dist.device
        self.logger = logger if self.dist.is_main else None
        self.trained_only = trained_only

    # -- data ---------------------------------------------------------------------------------------

    @cached_property
    def dataset(self):
        """The dataset reader (SynthVI is generated into the cache on first use)."""
        return open_dataset(self.cfg.data, self.cache_root, progress=self.progress)

    @cached_property
    def train_records(self) -> list[Record]:
        return list(self.dataset.train)

    @cached_property
    def labels(self) -> dict[int, int]:
        """pid -> contiguous training label."""
        return label_map(self.train_records)

    @property
    def num_ids(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.cfg.data.height, self.cfg.data.width)

    @cached_property
    def transforms(self) -> TransformConfig:
        """Test and stage-3 training transforms: the input size, the normalisation of ``clip.input_stats``, stage
        3's augmentation."""
        mean, std = input_statistics(self.cfg.clip.input_stats, self.clip.mean, self.clip.std)
        return self.cfg.stage3.transforms(self.cfg.data.height, self.cfg.data.width, mean, std)

    def image_cache(self, records: list[Record]) -> ImageCache:
        """The uint8 cache of ``records`` at the network's input size (an unreadable image is an error).

        Kept per record list: the test images are checked before training and read by every model's
        evaluation, and each build would hash every file's bytes again.
        """
        key = tuple(records)
        if key not in self._image_caches:
            self._image_caches[key] = ImageCache.build(
                records, self.image_size, self.cache_root, progress=self.progress, resize_filter=self.resize_filter
            )
        return self._image_caches[key]

    @property
    def resize_filter(self) -> str:
        """How image files are resized into the caches (``data.resize_filter``)."""
        return self.cfg.data.resize_filter

    @cached_property
    def _image_caches(self) -> dict[tuple[Record, ...], ImageCache]:
        return {}

    @cached_property
    def train_cache(self) -> ImageCache:
        """The training images' cache; with ``cfg.skip_bad_images`` unreadable ones are left out."""
        skip, records = self.cfg.skip_bad_images, self.train_records  # (a dataset that does not open: said as is)
        try:
            return ImageCache.build(
                records,
                self.image_size,
                self.cache_root,
                progress=self.progress,
                skip_bad=skip,
                resize_filter=self.resize_filter,
            )
        except DatasetError as error:
            if skip:
                raise
            raise DatasetError(
                f"{error}. To train without unreadable training images instead, set "
                "skip_bad_images=True (csdn train --skip-bad-images)"
            ) from error

    @property
    def skipped_images(self) -> list[dict]:
        """Training images left out as unreadable (``{"index", "path", "reason"}``); empty unless skipping."""
        return self.train_cache.skipped

    def _extract(self, encode, images: Dataset, model: nn.Module, desc: str, **kw: Any) -> Tensor:
        """:func:`extract_features` of ``images``, split over the ranks and gathered in order."""
        d = self.dist
        if not d.distributed or len(images) < d.world_size:
            return extract_features(
                encode,
                images,
                device=self.device,
                progress=self.progress,
                model=model,
                desc=desc,
                compute=self.compute,
                **kw,
            )
        local = extract_features(
            encode,
            Subset(images, list(d.shard(len(images)))),
            device=self.device,
            progress=self.progress,
            model=model,
            desc=desc,
            compute=self.compute,
            **kw,
        )
        return d.gather_rows(local, len(images))

    # -- CLIP ---------------------------------------------------------------------------------------

    @cached_property
    def clip_source(self) -> ClipSource:
        c = self.cfg.clip
        if c.weights == "tiny-synthvi":
            if self.trained_only:
                self._require_tiny_clip()
            folder = tiny_clip(c.pretrain, self.cfg.data.synth, self.cache_root, self.cfg.compute)
            return replace(local_dir_source(folder, self.image_size), grid_interpolation=c.grid_interpolation)
        pretrained = None if c.weights == "random" else c.weights
        return ClipSource(
            arch=c.arch,
            pretrained=pretrained,
            image_size=self.image_size,
            last_stride=c.last_stride,
            grid_interpolation=c.grid_interpolation,
        )

    def _require_tiny_clip(self) -> None:
        """Refuse (:class:`NotTrainedError`) when the config's tiny CLIP is not pretrained in the cache."""
        c = self.cfg.clip
        folder = tiny_clip_folder(c.pretrain, self.cfg.data.synth, self.cache_root, self.cfg.compute)
        if not is_pretrained(folder):
            raise NotTrainedError(
                f"the tiny CLIP this config builds on ({c.pretrain.arch}) is not in the cache {self.cache_root} "
                f"(no finished {folder} with checksums) and evaluation does not pretrain it: run `csdn pretrain-clip` "
                "with the same "
                "profile and settings first, or use the cache that holds it (--cache)"
            )

    @cached_property
    def clip(self) -> ClipBundle:
        """The CLIP the run starts from, adapted to the input size (frozen reference copy)."""
        seed_everything(self.cfg.seed)
        bundle = load_clip(self.clip_source, device="cpu")
        bundle.model.eval().requires_grad_(False)
        return bundle

    @cached_property
    def text_encoder(self) -> nn.Module:
        return self.clip.text_encoder().to(self.device)

    @cached_property
    def data_identity(self) -> dict[str, Any]:
        """What the training data contributes to the keys of trained artifacts: what determines it, not where it is.

        SynthVI is generated from its config by a versioned writer, so the data config (and the writer's
        format) is its content; the keys are those of earlier versions. A real dataset is its training
        images' content: the training image cache's key (each file's bytes, its path relative to the images'
        common root, pid, camera, modality, the input size), which the training needs anyway. So the same
        images under another root spelling or mount point reuse the cache, and an image rewritten in place
        retrains.
        """
        data = self.cfg.data
        if data.synthetic:
            identity = key_fields(data)
            if SYNTHVI_FORMAT != 1:  # a new SynthVI writer is new content (format-1 keys predate this entry)
                identity["synthvi_format"] = SYNTHVI_FORMAT
            return identity
        identity: dict[str, Any] = {"dataset": data.dataset, "train_images": self.train_cache.key}
        if self.cfg.clip.weights == "tiny-synthvi":  # the tiny CLIP is pretrained on SynthVI's CLIP pool
            identity["synth"] = asdict(data.synth)
        return identity

    @cached_property
    def clip_identity(self) -> dict[str, Any]:
        """What the CLIP config contributes to the keys: the config, with a weights file or ``local-dir:`` folder
        named by its content (each file's name in the folder and digest) instead of its path."""
        identity = key_fields(self.cfg.clip)
        weights = self.cfg.clip.weights
        folder = Path(weights[len(LOCAL_DIR) :]).expanduser() if weights.startswith(LOCAL_DIR) else None
        if folder is not None and folder.is_dir():
            files = sorted(p for p in folder.iterdir() if p.is_file())
            identity["weights"] = {"local-dir": [[p.name, file_digest(p)] for p in files]}
        elif folder is None and Path(weights).expanduser().is_file():
            identity["weights"] = {"file": file_digest(Path(weights).expanduser())}
        return identity

    @cached_property
    def compute(self) -> ComputePath:
        """The compute path of this run's image tower on its device (``cfg.compute`` resolved)."""
        return compute_path(self.cfg.compute, self.device, convolutional=convolutional_tower(self.cfg.clip.arch))

    @cached_property
    def text_compute(self) -> ComputePath:
        """The compute path of the text stages (the text tower, a transformer) on the run's device."""
        return compute_path(self.cfg.compute, self.device, convolutional=False)

    @cached_property
    def compute_identity(self) -> dict[str, Any]:
        """What the compute paths contribute to the keys of trained artifacts (they change the numerics)."""
        return {"image": self.compute.identity(), "text": self.text_compute.identity()}

    def _key(self, *parts: Any) -> str:
        """The cache key of a trained artifact: data, CLIP, seed, the training code's version, the compute
        path and ``parts``."""
        payload = [self.data_identity, self.clip_identity, self.cfg.seed, TRAINING_CODE_VERSION]
        return config_key([*payload, self.compute_identity, *parts])

    @cached_property
    def clip_features_key(self) -> str:
        """Key of the frozen-CLIP training features: the data and the CLIP, not the run seed (shared across seeds),
        and the release's stem when the model runs it."""
        skipped = [entry["index"] for entry in self.train_cache.skipped]
        payload = [self.data_identity, self.clip_identity, "clip-features", TRAINING_CODE_VERSION]
        payload.append(self.compute_identity)
        stem = [{"release_stem": True}] if self.cfg.model.release_stem else []  # added later: off by default
        return config_key(payload + ([skipped] if skipped else []) + stem)

    @cached_property
    def clip_features(self) -> CachedFeatures:
        """Projected features of every training image from the frozen CLIP (no augmentation), cached."""
        records = self.train_cache.records  # the training records (less unreadable ones when skipping)
        path = self.cache_root / "features" / f"clip-{self.clip_features_key}.safetensors"
        labels = torch.tensor([self.labels[r.pid] for r in records])
        if self.dist.is_main and lacks_checksum(path):
            print(f"note: {path} was written by a csdn without checksums; computing it again", file=sys.stderr)
        if not self.dist.agree(path.is_file() and not lacks_checksum(path)):
            visual = self.clip.visual()
            if self.cfg.model.release_stem:  # the release extracts its bank through its own (ReLU-less) stem
                visual.stem = release_resnet_stem(visual)
            visual = visual.to(self.device)
            images = CachedImages(self.train_cache, transform=test_transform(self.transforms))
            feats = self._extract(lambda x: visual(x).projected, images, visual, "CLIP features", normalize=False)
            if self.dist.is_main:
                atomic_save_tensors({"features": feats}, path)  # unique temp file: safe under concurrency
            self.dist.barrier()
        feats = load_tensors(path, f"delete {path} to compute the features again")["features"]
        vis = torch.tensor([r.modality == VISIBLE for r in records])
        return CachedFeatures(feats[vis], labels[vis], feats[~vis], labels[~vis])
