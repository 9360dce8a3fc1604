"""One :class:`Experiment` runs dataset -> CLIP -> stage 1 -> stage 2 -> stage 3 -> evaluation.

Every stage's result is cached on disk under the artifact cache, keyed by the configuration that
produced it (and the keys of the stages before it), so notebooks and the CLI share the work: a
notebook run alone computes what it needs, a second one reuses it. A stage in progress holds a file
lock (two processes needing it compute it once) and checkpoints every epoch (a killed run resumes).

Under torchrun (a :class:`~csdn.train.distributed.DistContext` with several ranks) every rank builds the
same Experiment: stages 1 and 3 train under DDP, only rank 0 writes the cache, and feature extraction
splits the images over the ranks and gathers the features in order. The ranks share one cache folder.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from csdn.artifacts import (
    TRAINING_CODE_VERSION,
    atomic_save_tensors,
    atomic_write_json,
    config_key,
    load_tensors,
    remove_stale_temporaries,
    writing,
)
from csdn.clip.loader import ClipBundle, ClipSource, load_clip, local_dir_source
from csdn.config import ExperimentConfig
from csdn.data.cache import ImageCache
from csdn.data.images import CachedImages
from csdn.data.protocol import DatasetError, SplitOptions
from csdn.data.records import INFRARED, MODALITIES, VISIBLE, Record, label_map
from csdn.data.transforms import TransformConfig, test_transform
from csdn.errors import CacheError, ConfigError
from csdn.eval.features import extract_features
from csdn.eval.protocols import ProtocolResult, evaluate_split
from csdn.model.network import CSDNNet
from csdn.model.prompts import ModalityPrompts
from csdn.model.sii import make_sii, text_prototypes
from csdn.runtime import pick_device, seed_everything
from csdn.sources import open_dataset
from csdn.synthvi.pretrain import tiny_clip
from csdn.train.distributed import DistContext
from csdn.train.loop import LoopConfig
from csdn.train.reid_stage import train_reid
from csdn.train.text_stages import CachedFeatures, train_prompts, train_sii

FINAL = "final.safetensors"
DONE = "done.json"


class Experiment:
    """The cached, resumable pipeline of one :class:`~csdn.config.ExperimentConfig`.

    ``dist`` is this process's place in a torchrun job (from :func:`csdn.train.distributed.init_from_env`);
    by default one process on ``cfg.device``. Only rank 0 shows progress bars.
    """

    def __init__(
        self, cfg: ExperimentConfig, cache_root: Path, progress: bool = True, dist: DistContext | None = None
    ) -> None:
        self.cfg = cfg
        self.cache_root = Path(cache_root)
        self.dist = dist or DistContext(device=pick_device(cfg.device))
        self.progress = progress and self.dist.is_main
        self.device = self.dist.device

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
        """Test and stage-3 training transforms: the input size, CLIP's normalisation, stage 3's augmentation."""
        return self.cfg.stage3.transforms(self.cfg.data.height, self.cfg.data.width, self.clip.mean, self.clip.std)

    def image_cache(self, records: list[Record]) -> ImageCache:
        """The uint8 cache of ``records`` at the network's input size (an unreadable image is an error)."""
        return ImageCache.build(records, self.image_size, self.cache_root, progress=self.progress)

    @cached_property
    def train_cache(self) -> ImageCache:
        """The training images' cache; with ``cfg.skip_bad_images`` unreadable ones are left out."""
        skip = self.cfg.skip_bad_images
        try:
            return ImageCache.build(
                self.train_records, self.image_size, self.cache_root, progress=self.progress, skip_bad=skip
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
                encode, images, device=self.device, progress=self.progress, model=model, desc=desc, **kw
            )
        local = extract_features(
            encode,
            Subset(images, list(d.shard(len(images)))),
            device=self.device,
            progress=self.progress,
            model=model,
            desc=desc,
            **kw,
        )
        return d.gather_rows(local, len(images))

    # -- CLIP ---------------------------------------------------------------------------------------

    @cached_property
    def clip_source(self) -> ClipSource:
        c = self.cfg.clip
        if c.weights == "tiny-synthvi":
            folder = tiny_clip(c.pretrain, self.cfg.data.synth, self.cache_root)
            return local_dir_source(folder, self.image_size)
        pretrained = None if c.weights == "random" else c.weights
        return ClipSource(arch=c.arch, pretrained=pretrained, image_size=self.image_size, last_stride=c.last_stride)

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

    def _key(self, *parts: Any) -> str:
        """The cache key of a trained artifact: data, CLIP, seed, the training code's version and ``parts``."""
        return config_key([asdict(self.cfg.data), asdict(self.cfg.clip), self.cfg.seed, TRAINING_CODE_VERSION, *parts])

    @cached_property
    def clip_features(self) -> CachedFeatures:
        """Projected features of every training image from the frozen CLIP (no augmentation), cached."""
        records = self.train_cache.records  # the training records (less unreadable ones when skipping)
        skipped = [entry["index"] for entry in self.train_cache.skipped]
        # Frozen-CLIP features depend on the data and the CLIP, not on the run seed: shared across seeds.
        key = config_key(
            [
                asdict(self.cfg.data),
                asdict(self.cfg.clip),
                "clip-features",
                TRAINING_CODE_VERSION,
                *([skipped] if skipped else []),
            ]
        )
        path = self.cache_root / "features" / f"clip-{key}.safetensors"
        labels = torch.tensor([self.labels[r.pid] for r in records])
        if not self.dist.agree(path.is_file()):
            visual = self.clip.visual().to(self.device)
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
        if not self.dist.agree((run_dir / DONE).is_file()):
            self._train_stage(run_dir, key, module, train)
        fix = f"delete the folder {run_dir} to train this stage again"
        module.load_state_dict(load_tensors(run_dir / FINAL, fix))
        self.histories[name] = _read_history(run_dir / DONE, fix)
        return module.to(self.device)

    def _train_stage(self, run_dir: Path, key: str, module: nn.Module, train) -> None:
        """Train a stage into ``run_dir`` under its lock (unless another process finished it meanwhile)."""
        d = self.dist  # several ranks: all train, rank 0 holds the lock and writes, all load the result
        lock = FileLock(str(run_dir) + ".lock") if d.is_main else contextlib.nullcontext()
        with writing(run_dir):  # a read-only or full cache: one clear error naming the folder
            run_dir.mkdir(parents=True, exist_ok=True)
            with lock:
                if not d.agree((run_dir / DONE).is_file()):
                    seed_everything(self.cfg.seed)
                    history = train(run_dir)
                    if d.is_main:
                        remove_stale_temporaries(run_dir / FINAL)  # under the lock: no other writer is live
                        atomic_save_tensors(module.state_dict(), run_dir / FINAL)
                        record = {"history": history, "config_key": key, "world_size": d.world_size}
                        atomic_write_json(run_dir / DONE, record)
                d.barrier()

    @cached_property
    def histories(self) -> dict[str, list[dict[str, float]]]:
        """Per-epoch metrics of each stage that ran or was loaded."""
        return {}

    def _loop(self, epochs: int, **kw: Any) -> LoopConfig:
        return LoopConfig(epochs=epochs, progress=self.progress, **kw)

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
        return self._key("stage1", m.shared_prompts, m.prompt_wording, m.n_ctx, asdict(self.cfg.stage1))

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
                self._loop(self.cfg.stage1.epochs),
                seed=self.cfg.seed,
                device=self.device,
                meta=meta,
                dist=self.dist,
            ),
        )

    @cached_property
    def prompt_text_features(self) -> dict[str, Tensor]:
        """Each identity's text feature from each modality's prompts, ``(num_ids, d)``."""
        return {m: self.prompts.all_text_features(self.text_encoder, m) for m in MODALITIES}

    @cached_property
    def sii(self) -> nn.Module:
        """Stage 2: the trained SII fusion (untrained variants are returned as built)."""
        kind = self.cfg.model.sii_kind
        dim = self.clip.embed_dim  # (lazy work first, so the initial weights depend on the seed alone)
        torch.manual_seed(self.cfg.seed)
        sii = make_sii(kind, dim, heads=self.cfg.model.sii_heads)
        if not any(p.requires_grad for p in sii.parameters()):
            return sii.to(self.device)
        key = config_key([self.stage1_key, kind, self.cfg.model.sii_heads, asdict(self.cfg.stage2)])
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
                self._loop(self.cfg.stage2.epochs),
                seed=self.cfg.seed,
                device=self.device,
                meta=meta,
                dist=self.dist,
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
        upstream = self.stage1_key if self.cfg.model.uses_text else self._key("no-text")
        return config_key(
            [upstream, asdict(self.cfg.model), asdict(self.cfg.stage2), asdict(self.cfg.stage3), self.cfg.select]
        )

    @cached_property
    def network(self) -> CSDNNet:
        """Stage 3: the trained image network."""
        # Everything lazy first (CLIP loading or pretraining, stages 1-2), so that the initial weights
        # depend on the seed alone, not on which artifacts this process had to compute.
        visual, prototypes, num_ids = self.clip.visual(), self.prototypes, self.num_ids
        torch.manual_seed(self.cfg.seed)
        net = CSDNNet(visual, num_ids, modality_stems=self.cfg.model.modality_stems, gem_p=self.cfg.model.gem_p)
        labels = [self.labels[r.pid] for r in self.train_cache.records]
        meta = self._meta("stage3", self.stage3_key)
        validate = self._validator(net) if self.cfg.validate_every else None  # best_val implies validate_every
        loop = self._loop(self.cfg.stage3.epochs, validate_every=self.cfg.validate_every, select=self.cfg.select)
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
        """Build the image caches evaluation reads (every query and gallery image of the test protocols).

        Run before training, an unreadable test image stops the run at once instead of after training;
        evaluation then reuses these caches (the same record lists as :func:`evaluate_split` asks for).
        """
        for split in self.dataset.test_splits(self.split_options()):
            galleries = [split.gallery(t) for t in split.trials]
            self.image_cache(list(split.query))
            self.image_cache(list(dict.fromkeys(r for gallery in galleries for r in gallery)))

    def split_options(self) -> SplitOptions:
        """The test protocols ``cfg.eval`` asks for, as the readers take them."""
        e = self.cfg.eval
        return SplitOptions(trials=e.trials, modes=e.sysu_modes, shots=e.sysu_shots, directions=e.directions)

    def evaluate(self, features_of=None) -> dict[str, ProtocolResult]:
        """The dataset's test protocols for ``features_of`` (default: the trained network), by split name."""
        features_of = features_of or self.network_features()
        return {
            split.name: evaluate_split(features_of, split, self.cfg.eval.rerank)
            for split in self.dataset.test_splits(self.split_options())
        }


def _read_history(done: Path, fix: str) -> list[dict[str, float]]:
    """The per-epoch history a finished stage's ``done.json`` holds (garbage there is a :class:`CacheError`)."""
    try:
        return json.loads(done.read_text())["history"]
    except (ValueError, KeyError, TypeError) as error:  # not JSON (or not UTF-8), not a mapping, no "history"
        raise CacheError(f"{done}: not a finished stage's record ({type(error).__name__}: {error}); {fix}") from error
