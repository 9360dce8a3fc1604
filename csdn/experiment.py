"""One :class:`Experiment` runs dataset -> CLIP -> stage 1 -> stage 2 -> stage 3 -> evaluation.

Every stage's result is cached on disk under the artifact cache, keyed by the configuration that
produced it (and the keys of the stages before it), so notebooks and the CLI share the work: a
notebook run alone computes what it needs, a second one reuses it. A stage in progress holds a file
lock (two processes needing it compute it once) and checkpoints every epoch (a killed run resumes).

Under torchrun (a :class:`~csdn.train.distributed.DistContext` with several ranks) every rank builds the
same Experiment: stages 1 and 3 train under DDP, only rank 0 writes the cache, and feature extraction
splits the images over the ranks and gathers the features in order. The ranks share one cache folder.

A ``logger`` (a :class:`RunObserver`, e.g. the CLI's :class:`csdn.runs.RunFolder`) hears, on rank 0, each
stage's epochs as they train (and where a stage resumes) and each stage's result: trained, or loaded
from the cache with its stored history.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import asdict, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import torch
from filelock import FileLock
from safetensors import safe_open
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from csdn.artifacts import (
    TRAINING_CODE_VERSION,
    atomic_save_tensors,
    atomic_write_json,
    config_key,
    is_complete,
    key_fields,
    lacks_checksum,
    load_tensors,
    remove_stale_temporaries,
    stored_checksums,
    writing,
)
from csdn.clip.loader import (
    LOCAL_DIR,
    ClipBundle,
    ClipSource,
    load_clip,
    local_dir_source,
    registered_config,
    state_dict_differences,
)
from csdn.config import ExperimentConfig
from csdn.data.cache import ImageCache, content_key
from csdn.data.images import CachedImages
from csdn.data.protocol import DatasetError, SplitOptions
from csdn.data.records import INFRARED, MODALITIES, VISIBLE, Record, label_map
from csdn.data.transforms import TransformConfig, input_statistics, test_transform
from csdn.dryrun import capped_split, is_dry_run
from csdn.errors import CacheError, CheckpointError, ConfigError
from csdn.eval.features import extract_features
from csdn.eval.protocols import ProtocolResult, evaluate_split, once_per_image
from csdn.model.network import CSDNNet, release_resnet_stem
from csdn.model.prompts import ModalityPrompts
from csdn.model.sii import make_sii, text_prototypes
from csdn.overrides import override, setting
from csdn.runtime import ComputePath, compute_path, pick_device, seed_everything
from csdn.sources import open_dataset
from csdn.synthvi.layouts import FORMAT_VERSION as SYNTHVI_FORMAT
from csdn.synthvi.pretrain import tiny_clip, tiny_clip_key
from csdn.train.distributed import DistContext
from csdn.train.loop import EpochObserver, LoopConfig
from csdn.train.reid_stage import train_reid
from csdn.train.text_stages import CachedFeatures, train_prompts, train_sii

FINAL = "final.safetensors"
DONE = "done.json"


class NotTrainedError(CheckpointError):
    """A trained artifact is not in the cache and the :class:`Experiment` may not train (``trained_only``)."""


class RunObserver(Protocol):
    """What an :class:`Experiment` tells its ``logger`` about the stages (on rank 0)."""

    def stage(self, name: str) -> EpochObserver:
        """The observer of stage ``name``'s training loop (its start or resume epoch, each epoch)."""

    def stage_done(self, name: str, run_dir: Path, history: list[dict[str, float]], loaded: bool) -> None:
        """Stage ``name`` is in ``run_dir`` with ``history``; ``loaded``: it was already in the cache."""


class Experiment:
    """The cached, resumable pipeline of one :class:`~csdn.config.ExperimentConfig`.

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
        folder = self.cache_root / "tiny_clip" / tiny_clip_key(c.pretrain, self.cfg.data.synth, self.cfg.compute)
        if not is_complete(folder) or stored_checksums(folder) is None:  # (a folder without checksums is rebuilt)
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
            identity["weights"] = {"local-dir": [[p.name, _file_digest(p)] for p in files]}
        elif folder is None and Path(weights).expanduser().is_file():
            identity["weights"] = {"file": _file_digest(Path(weights).expanduser())}
        return identity

    @cached_property
    def compute(self) -> ComputePath:
        """The compute path of this run's image tower on its device (``cfg.compute`` resolved)."""
        layers = registered_config(self.cfg.clip.arch)["vision_cfg"].get("layers")
        return compute_path(self.cfg.compute, self.device, convolutional=isinstance(layers, (list, tuple)))

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

    # -- stages -------------------------------------------------------------------------------------

    def _run(self, name: str, key: str, module: nn.Module, train) -> nn.Module:
        """Load stage ``name``'s cached result into ``module``, or train it (under a lock) and cache it.

        A finished stage is read without a lock or any write (a warm cache works on a read-only mount).
        """
        run_dir = self.cache_root / "runs" / f"{name}-{key}"
        if self.trained_only:  # never trains: a stage missing from the cache is refused
            self._require_done(name, run_dir)
            loaded = True
        elif is_dry_run(self.cfg):  # trained in a scratch folder, never cached as finished
            return self._dry_run_stage(name, key, module, train)
        else:
            loaded = self.dist.agree(_finished(run_dir))
            if not loaded:
                self._train_stage(run_dir, key, module, train)
        fix = f"delete the folder {run_dir} to train this stage again"
        module.load_state_dict(load_tensors(run_dir / FINAL, fix))
        self.histories[name] = _read_history(run_dir / DONE, fix)
        if self.logger is not None:
            self.logger.stage_done(name, run_dir, self.histories[name], loaded)
        return module.to(self.device)

    def _dry_run_stage(self, name: str, key: str, module: nn.Module, train) -> nn.Module:
        """Train stage ``name`` of a dry run (:mod:`csdn.dryrun`) from scratch in ``<cache>/dry-runs/``: its
        checkpoints stay there for a look, but no ``done.json`` is written and nothing reads it back."""
        run_dir = self.cache_root / "dry-runs" / f"{name}-{key}"
        with writing(run_dir):
            if self.dist.is_main:
                shutil.rmtree(run_dir, ignore_errors=True)
            self.dist.barrier()
            seed_everything(self.cfg.seed)
            self.histories[name] = train(run_dir)
        if self.logger is not None:
            self.logger.stage_done(name, run_dir, self.histories[name], False)
        return module.to(self.device)

    def _require_done(self, name: str, run_dir: Path) -> None:
        """:class:`NotTrainedError` unless ``run_dir`` holds a finished run of stage ``name``."""
        if not (run_dir / DONE).is_file():
            raise NotTrainedError(
                f"{name} of this config is not trained: no finished run {run_dir} in the cache "
                f"{self.cache_root} (training does not run here: train it first, or evaluate a weights file)"
            )

    def _load_run(self, name: str, run_dir: Path, module: nn.Module) -> nn.Module:
        """Stage ``name``'s finished result from ``run_dir`` into ``module``; :class:`NotTrainedError` if absent."""
        self._require_done(name, run_dir)
        load_weights(module, run_dir / FINAL)
        self.histories[name] = read_done(run_dir)["history"]
        if self.logger is not None:
            self.logger.stage_done(name, run_dir, self.histories[name], True)
        return module.to(self.device)

    def _train_stage(self, run_dir: Path, key: str, module: nn.Module, train) -> None:
        """Train a stage into ``run_dir`` under its lock (unless another process finished it meanwhile)."""
        d = self.dist  # several ranks: all train, rank 0 holds the lock and writes, all load the result
        lock = FileLock(str(run_dir) + ".lock") if d.is_main else contextlib.nullcontext()
        with writing(run_dir):  # a read-only or full cache: one clear error naming the folder
            run_dir.mkdir(parents=True, exist_ok=True)
            with lock:
                if not d.agree(_finished(run_dir)):
                    if d.is_main and (run_dir / DONE).is_file():  # final.safetensors without a checksum
                        print(
                            f"note: {run_dir / FINAL} was written by a csdn without checksums; training the stage "
                            "again (from its last checkpoint, where one is kept)",
                            file=sys.stderr,
                        )
                        (run_dir / DONE).unlink()
                    seed_everything(self.cfg.seed)
                    history = train(run_dir)
                    if d.is_main:
                        remove_stale_temporaries(run_dir / FINAL)  # under the lock: no other writer is live
                        atomic_save_tensors(
                            module.state_dict(), run_dir / FINAL, metadata=self._final_metadata(run_dir)
                        )
                        record = {"history": history, "config_key": key, "world_size": d.world_size}
                        atomic_write_json(run_dir / DONE, record)
                d.barrier()

    def _final_metadata(self, run_dir: Path) -> dict[str, str] | None:
        """A stage-3 ``final.safetensors`` records the settings its weights need (:func:`stage3_weights_settings`)."""
        if not run_dir.name.startswith("stage3-"):
            return None
        return {WEIGHTS_SETTINGS: json.dumps(stage3_weights_settings(self.cfg))}

    @cached_property
    def histories(self) -> dict[str, list[dict[str, float]]]:
        """Per-epoch metrics of each stage that ran or was loaded."""
        return {}

    def _loop(self, name: str, epochs: int, **kw: Any) -> LoopConfig:
        """The loop settings of stage ``name``, observed by the ``logger`` when there is one."""
        observer = self.logger.stage(name) if self.logger is not None else None
        return LoopConfig(epochs=epochs, progress=self.progress, observer=observer, **kw)

    def _meta(self, stage: str, key: str) -> dict[str, Any]:
        """What a stage's checkpoints must match to be resumed (checked in this order, most telling first)."""
        return {
            "arch": self.cfg.clip.arch,
            "dataset": self.cfg.data.dataset,
            "num_ids": self.num_ids,
            "stage": stage,
            "key": key,
        }

    @cached_property
    def stage1_key(self) -> str:
        m = self.cfg.model
        return self._key("stage1", m.shared_prompts, m.prompt_wording, m.n_ctx, key_fields(self.cfg.stage1))

    @cached_property
    def prompts(self) -> ModalityPrompts:
        """Stage 1: the trained modality prompt learners."""
        if not self.cfg.model.uses_text:
            raise ValueError("the vision-only variant has no prompts")
        m, enc = self.cfg.model, self.text_encoder
        generator = torch.Generator().manual_seed(self.cfg.seed)
        prompts = ModalityPrompts.build(
            self.num_ids,
            shared=m.shared_prompts,
            wording=m.prompt_wording,
            token_embedding=enc.token_embedding,
            tokenizer=self.clip.tokenizer,
            context_length=self.clip.context_length,
            n_ctx=m.n_ctx,
            generator=generator,
        )
        meta = self._meta("stage1", self.stage1_key)
        return self._run(
            "stage1",
            self.stage1_key,
            prompts,
            lambda run_dir: train_prompts(
                prompts,
                enc,
                self.clip_features,
                self.cfg.stage1,
                run_dir,
                self._loop("stage1", self.cfg.stage1.epochs),
                seed=self.cfg.seed,
                device=self.device,
                meta=meta,
                dist=self.dist,
                compute=self.text_compute,
            ),
        )

    @cached_property
    def prompt_text_features(self) -> dict[str, Tensor]:
        """Each identity's text feature from each modality's prompts, ``(num_ids, d)``."""
        return {m: self.prompts.all_text_features(self.text_encoder, m) for m in MODALITIES}

    @cached_property
    def stage2_key(self) -> str:
        m = self.cfg.model
        return config_key([self.stage1_key, m.sii_kind, m.sii_heads, key_fields(self.cfg.stage2)])

    @cached_property
    def sii(self) -> nn.Module:
        """Stage 2: the trained SII fusion (untrained variants are returned as built)."""
        kind = self.cfg.model.sii_kind
        dim = self.clip.embed_dim  # (lazy work first, so the initial weights depend on the seed alone)
        torch.manual_seed(self.cfg.seed)
        sii = make_sii(kind, dim, heads=self.cfg.model.sii_heads)
        if not any(p.requires_grad for p in sii.parameters()):
            return sii.to(self.device)
        key = self.stage2_key
        t = self.prompt_text_features
        meta = self._meta("stage2", key)
        torch.manual_seed(self.cfg.seed)
        return self._run(
            "stage2",
            key,
            sii,
            lambda run_dir: train_sii(
                sii,
                t[VISIBLE],
                t[INFRARED],
                self.clip_features,
                self.cfg.stage2,
                run_dir,
                self._loop("stage2", self.cfg.stage2.epochs),
                seed=self.cfg.seed,
                device=self.device,
                meta=meta,
                dist=self.dist,
                compute=self.text_compute,
            ),
        )

    @cached_property
    def prototypes(self) -> dict[str, Tensor] | None:
        """Stage-3 text prototypes per image modality (None for vision-only)."""
        if not self.cfg.model.uses_text:
            return None
        t = self.prompt_text_features
        return text_prototypes(self.sii, t[VISIBLE], t[INFRARED])

    @cached_property
    def stage3_key(self) -> str:
        """Key of stage 3: upstream stages, model, stage 2 and 3 settings (not speed-only ones), selection.

        Settings that entered the key later join its payload only off the value every earlier run had,
        so existing caches keep their keys: ``sync_bn=False`` (per-rank BatchNorm under torchrun), and
        with ``select="best_val"`` the validation interval and (real data) the validation images' content.
        """
        cfg = self.cfg
        upstream = self.stage1_key if cfg.model.uses_text else self._key("no-text")
        stage3 = cfg.stage3.result_settings()
        model = asdict(cfg.model)
        if not model["release_stem"]:  # added later: its default leaves the keys of earlier runs unchanged
            del model["release_stem"]
        payload = [upstream, model, key_fields(cfg.stage2), stage3, cfg.select]
        if not cfg.sync_bn:
            payload.append({"sync_bn": False})
        if cfg.select == "best_val":
            payload.append({"validate_every": cfg.validate_every, "validation": self._validation_identity()})
        return config_key(payload)

    def _validation_identity(self) -> str | None:
        """The validation images' content key (real data; SynthVI's follows from its config), else None."""
        split = None if self.cfg.data.synthetic else self.dataset.validation()
        if split is None:
            return None
        records = [*split.query, *(r for trial in split.trials for r in split.gallery(trial))]
        return content_key(records, self.image_size, progress=self.progress, resize_filter=self.resize_filter)

    @property
    def stage3_dir(self) -> Path:
        """The cache's stage-3 run folder of this config (``final.safetensors`` and ``done.json`` once trained)."""
        return self.cache_root / "runs" / f"stage3-{self.stage3_key}"

    @property
    def is_trained(self) -> bool:
        """Whether the cache holds this config's finished stage-3 run (``network`` then loads, not trains)."""
        return (self.stage3_dir / DONE).is_file()

    def build_network(self, num_ids: int | None = None) -> CSDNNet:
        """The config's stage-3 network, untrained (CLIP weights and freshly initialised heads); ``num_ids``
        classes (default: the training split's identities, which opens the dataset)."""
        m = self.cfg.model
        visual, num_ids = self.clip.visual(), num_ids or self.num_ids
        torch.manual_seed(self.cfg.seed)
        return CSDNNet(visual, num_ids, modality_stems=m.modality_stems, gem_p=m.gem_p, release_stem=m.release_stem)

    def network_from_weights(self, path: str | Path) -> CSDNNet:
        """The config's network with every tensor from the weights file ``path`` (strict; never trains).

        ``path``: a stage-3 ``final.safetensors``/``best.safetensors`` of this package, or a release checkpoint
        converted by :func:`csdn.model.release.convert_release_state_dict`. A file that does not fit the network
        (another architecture, variant or number of identities) raises :class:`CheckpointError` naming it.
        """
        check_weights_file(Path(path))  # before building anything
        net = self.build_network()
        load_weights(net, Path(path))
        return net.to(self.device)

    def network_from_run(self, run_dir: str | Path) -> CSDNNet:
        """The network of a finished stage-3 run folder (``final.safetensors`` + ``done.json``); never trains.

        A folder trained under another config still loads when its tensors fit; compare
        ``read_done(run_dir)["config_key"]`` with :attr:`stage3_key` to know.
        """
        run_dir = Path(run_dir)
        check_run_folder(run_dir)
        return self._load_run("stage3", run_dir, self.build_network())

    @cached_property
    def network(self) -> CSDNNet:
        """Stage 3: the trained image network (with ``trained_only``: the cached one, or an error)."""
        if self.trained_only:
            self._require_done("stage3", self.stage3_dir)  # before building anything
            return self._run("stage3", self.stage3_key, self.build_network(), train=None)
        # Everything lazy first (CLIP loading or pretraining, stages 1-2), so that the initial weights
        # depend on the seed alone, not on which artifacts this process had to compute.
        visual, prototypes, num_ids = self.clip.visual(), self.prototypes, self.num_ids
        torch.manual_seed(self.cfg.seed)
        m = self.cfg.model
        net = CSDNNet(visual, num_ids, modality_stems=m.modality_stems, gem_p=m.gem_p, release_stem=m.release_stem)
        labels = [self.labels[r.pid] for r in self.train_cache.records]
        meta = self._meta("stage3", self.stage3_key)
        validate = self._validator(net) if self.cfg.validate_every else None  # best_val implies validate_every
        loop = self._loop(
            "stage3", self.cfg.stage3.epochs, validate_every=self.cfg.validate_every, select=self.cfg.select
        )
        return self._run(
            "stage3",
            self.stage3_key,
            net,
            lambda run_dir: train_reid(
                net,
                self.train_cache,
                labels,
                prototypes,
                self.cfg.stage3,
                self.transforms,
                run_dir,
                loop,
                seed=self.cfg.seed,
                device=self.device,
                validate=validate,
                meta=meta,
                dist=self.dist,
                sync_bn=self.cfg.sync_bn,
                compute=self.compute,
            ),
        )

    # -- features and evaluation --------------------------------------------------------------------

    def features_of(self, embed, model: nn.Module, flip: bool | None = None):
        """A ``features_of(records)`` for the protocol drivers from ``embed(images, modality)``.

        ``model`` (the module behind ``embed``) is put in eval mode while features are extracted.
        """
        flip = self.cfg.eval.flip if flip is None else flip

        def features_of(records: list[Record]) -> Tensor:
            cache = self.image_cache(list(records))
            out: Tensor | None = None
            for modality in MODALITIES:
                rows = [i for i, r in enumerate(records) if r.modality == modality]
                if not rows:
                    continue
                images = CachedImages(cache, transform=test_transform(self.transforms), indices=rows)
                feats = self._extract(
                    lambda x, m=modality: embed(x, m),
                    images,
                    model,
                    f"{modality} features",
                    batch_size=self.cfg.eval.batch_size,
                    flip=flip,
                    flip_fusion=self.cfg.eval.flip_fusion,
                )
                out = torch.empty(len(records), feats.shape[1]) if out is None else out
                out[rows] = feats
            return out

        return features_of

    def network_features(self) -> Any:
        net = self.network
        return self.features_of(net.embed, net)

    def zero_shot_features(self) -> Any:
        """Features of the frozen CLIP image tower (projected), the same for both modalities."""
        visual = self.clip.visual().to(self.device)
        return self.features_of(lambda x, m: visual(x).projected, visual)

    def _validator(self, net: CSDNNet):
        split = self.dataset.validation()
        if split is None:
            raise ConfigError(
                f"validate_every={self.cfg.validate_every} needs held-out validation identities, which "
                f"{self.dataset.title} does not provide here (the SYSU-MM01 layout with hold_out_val=True "
                "has them); set validate_every=0 and select='final' for this data"
            )

        def validate(epoch: int) -> dict[str, float]:
            m = evaluate_split(self.features_of(net.embed, net, flip=False), split)
            return {"rank1": m.rank(1), "mAP": m.mAP, "score": m.mAP}

        return validate

    def check_test_images(self) -> None:
        """Build the image caches evaluation reads (every query and gallery image of the test protocols), and
        (unless ``trained_only``) the training images' cache.

        Run before training (and before the tiny CLIP's pretraining), an unreadable image stops the run at once
        instead of after training; evaluation then reuses these caches (the same record lists as
        :func:`evaluate_split` asks for).
        """
        if not self.trained_only:
            self.train_cache  # noqa: B018 (built now: an unreadable training image is found before any training)
        for split in self.dataset.test_splits(self.split_options()):
            galleries = [split.gallery(t) for t in split.trials]
            self.image_cache(list(split.query))
            self.image_cache(list(dict.fromkeys(r for gallery in galleries for r in gallery)))

    def split_options(self) -> SplitOptions:
        """The test protocols ``cfg.eval`` asks for, as the readers take them."""
        e = self.cfg.eval
        return SplitOptions(trials=e.trials, modes=e.sysu_modes, shots=e.sysu_shots, directions=e.directions)

    def evaluate(self, features_of=None) -> dict[str, ProtocolResult]:
        """The dataset's test protocols for ``features_of`` (default: the trained network), by split name; each
        image's feature is computed once however many protocols rank it."""
        features_of = once_per_image(features_of or self.network_features())
        splits = [capped_split(s, self.cfg.eval.max_images) for s in self.dataset.test_splits(self.split_options())]
        return {split.name: evaluate_split(features_of, split, self.cfg.eval.rerank) for split in splits}


def _finished(run_dir: Path) -> bool:
    """A stage's run folder is done, its final.safetensors with a checksum (or unreadable: said when loaded)."""
    return (run_dir / DONE).is_file() and not lacks_checksum(run_dir / FINAL)


def _file_digest(path: Path) -> str:
    """blake2b of a file's bytes, read in chunks (CLIP weights files are hundreds of MB)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def read_done(run_dir: Path) -> dict[str, Any]:
    """The ``done.json`` of a finished run folder (history, config_key, world_size)."""
    path = Path(run_dir) / DONE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {path} ({error}): not a finished run folder of csdn") from error


def check_run_folder(run_dir: Path) -> None:
    """:class:`CheckpointError` unless ``run_dir`` is a finished stage-3 run folder (``done.json``)."""
    run_dir = Path(run_dir)
    if run_dir.is_symlink() and not run_dir.exists():  # a run folder's stages/stage3 after the cache went
        raise CheckpointError(
            f"{run_dir}: a link to {os.readlink(run_dir)}, which no longer exists (the artifact cache it "
            "pointed into was deleted or moved); train that stage again, or pass its folder or weights "
            "file where they are now"
        )
    if not (run_dir / DONE).is_file():
        raise CheckpointError(
            f"{run_dir} is not a finished stage-3 run folder (no {DONE}); pass a folder "
            "$CSDN_CACHE/runs/stage3-<key> whose training finished, or its weights file with --weights"
        )


def check_weights_file(path: Path) -> None:
    """:class:`CheckpointError` unless ``path`` is an existing ``.safetensors`` file."""
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.suffix != ".safetensors":
        raise CheckpointError(
            f"{path} is not a .safetensors file: evaluate this package's final.safetensors / best.safetensors, "
            "or convert the authors' release checkpoint first (csdn convert-release IN.pth OUT.safetensors)"
        )


WEIGHTS_SETTINGS = "csdn.settings"  # safetensors metadata: JSON of the config settings the weights need
STAGE3_RECORDED = ("data.height", "data.width", "data.resize_filter", "clip.input_stats", "model.release_stem")


def stage3_weights_settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """What a stage-3 ``final.safetensors`` records it needs (:data:`STAGE3_RECORDED`): the input size and
    preprocessing it was trained with, so ``csdn embed`` / ``eval --weights`` of the file apply them. Metadata
    only: the cache keys are unchanged."""
    return {dotted: setting(cfg, dotted) for dotted in STAGE3_RECORDED}


def weights_settings(path: str | Path) -> dict[str, Any]:
    """The settings a weights file records it needs (dotted config paths -> values; e.g. a converted release
    checkpoint's stem and preprocessing), ``{}`` when it records none."""
    path = Path(path)
    check_weights_file(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            recorded = (handle.metadata() or {}).get(WEIGHTS_SETTINGS)
        return json.loads(recorded) if recorded else {}
    except Exception as error:  # safetensors' own error types for a damaged file, or garbage metadata
        raise CheckpointError(f"cannot read weights file {path}: {error}") from error


def config_for_weights(
    cfg: ExperimentConfig, path: str | Path, given: Mapping[str, Any] | None = None
) -> tuple[ExperimentConfig, dict[str, Any], dict[str, Any]]:
    """``cfg`` with the settings the weights file ``path`` records it needs, and ``(recorded, changes)``: all it
    records, and those that changed ``cfg`` (the rest it had already). A setting of ``given`` (what the user
    set) that contradicts the file is a :class:`ConfigError`."""
    recorded = weights_settings(path)
    for key, value in recorded.items():
        if key in (given or {}) and setting(cfg, key) != value:
            raise ConfigError(
                f"{path} records that its weights need {key}={json.dumps(value)} (the preprocessing they were "
                f"trained with), but the command sets {key}={json.dumps(setting(cfg, key))}: leave that setting out"
            )
    changes = {key: value for key, value in recorded.items() if setting(cfg, key) != value}
    return (override(cfg, changes) if changes else cfg), recorded, changes


def load_weights(module: nn.Module, path: Path) -> None:
    """Load the safetensors file ``path`` into ``module`` strictly; :class:`CheckpointError` naming it otherwise."""
    path = Path(path)
    check_weights_file(path)
    try:
        state = load_tensors(path, "replace it with an intact copy", checksum=False)  # checked if it has a checksum
    except CacheError as error:
        raise CheckpointError(f"cannot read weights file {error}") from error
    problems = state_dict_mismatch(module.state_dict(), state)
    if problems:
        raise CheckpointError(
            f"weights file {path} does not fit the network of this config ({problems}); was it trained with "
            "another profile, architecture, variant or number of identities?"
        )
    module.load_state_dict(state)


def state_dict_mismatch(expected: dict[str, Tensor], found: dict[str, Tensor], show: int = 3) -> str:
    """What keeps ``found`` from loading strictly where ``expected`` is the target's state_dict ("" if nothing)."""

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:show]) + (f", ... ({len(keys)} in all)" if len(keys) > show else "")

    missing, unexpected, differ = state_dict_differences(expected, found)
    shapes = [f"{k} {tuple(found[k].shape)} instead of {tuple(expected[k].shape)}" for k in differ]
    parts = [
        f"missing {some(missing)}" if missing else "",
        f"unexpected {some(unexpected)}" if unexpected else "",
        f"shape {some(shapes)}" if shapes else "",
    ]
    return "; ".join(p for p in parts if p)


def _read_history(done: Path, fix: str) -> list[dict[str, float]]:
    """The per-epoch history a finished stage's ``done.json`` holds (garbage there is a :class:`CacheError`)."""
    try:
        return json.loads(done.read_text())["history"]
    except (ValueError, KeyError, TypeError) as error:  # not JSON (or not UTF-8), not a mapping, no "history"
        raise CacheError(f"{done}: not a finished stage's record ({type(error).__name__}: {error}); {fix}") from error
