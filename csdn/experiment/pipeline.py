"""The stages of one run (stage 1 prompts, stage 2 SII, stage 3 network) and its evaluation, over the inputs of
:mod:`csdn.experiment.inputs` and the stage cache of :mod:`csdn.experiment.stage_cache`."""

from __future__ import annotations

from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from csdn.artifacts import config_key, key_fields
from csdn.data.cache import content_key
from csdn.data.images import CachedImages
from csdn.data.protocol import SplitOptions
from csdn.data.records import INFRARED, MODALITIES, VISIBLE, Record
from csdn.data.transforms import test_transform
from csdn.dryrun import capped_split
from csdn.errors import ConfigError
from csdn.eval.protocols import ProtocolResult, evaluate_split, once_per_image
from csdn.experiment.inputs import RunInputs
from csdn.experiment.records import DONE, check_run_folder, check_weights_file, load_weights
from csdn.experiment.stage_cache import StageCache
from csdn.model.network import CSDNNet
from csdn.model.prompts import ModalityPrompts
from csdn.model.sii import make_sii, text_prototypes
from csdn.train.reid_stage import train_reid
from csdn.train.text_stages import train_prompts, train_sii


class Experiment(RunInputs, StageCache):
    """The cached, resumable pipeline of one :class:`~csdn.config.ExperimentConfig`:
    ``Experiment(cfg, cache_root, progress=True, dist=None, logger=None, trained_only=False)``
    (see :class:`~csdn.experiment.inputs.RunInputs` for the arguments).
    """

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
                **self._text_stage_settings(meta),
            ),
        )

    def _text_stage_settings(self, meta: dict[str, Any]) -> dict[str, Any]:
        """The settings stages 1 and 2 share: seed, device, checkpoint ``meta``, ranks and the text compute path."""
        return {
            "seed": self.cfg.seed,
            "device": self.device,
            "meta": meta,
            "dist": self.dist,
            "compute": self.text_compute,
        }

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
                **self._text_stage_settings(meta),
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
        return self.run_dir("stage3", self.stage3_key)

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
