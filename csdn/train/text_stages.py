"""Stages 1 and 2: train the text side on image features extracted once from the frozen CLIP.

Stage 1 (prompt learning) trains only the modality prompt learners with the i2t + t2i supervised
contrastive loss; ``pairing="private"`` aligns visible images with the visible prompts and infrared
images with the infrared prompts (the paper's modality-private semantics), ``"all"`` puts every image
of the batch against the texts of both learners (the released code).
Stage 2 (SII) freezes the prompts, computes each identity's visible and infrared text features once,
and trains only the fusion module with the same loss between fused texts and images of both modalities.
Batches (``feature_bank``): the release's bank of identity-sampled (visible, infrared) pairs, drawn once per
stage and shuffled into random batches every epoch (:mod:`csdn.data.release_bank`), or every cached feature
in batches of the cross-modality identity sampler: P identities x K visible + K infrared features.
After every epoch the history records, per modality, the image-to-own-text top-1 over all training
features (the identity's own text is the most similar of all identities' texts) and the mean text norm.

Under several processes, stage 1 runs under DDP: each rank encodes the prompts of its P / N identities
of the global batch, and the contrastive loss is computed on the gathered global batch (texts with
their gradient), so each update equals the one-process update up to floating-point summation order.
Stage 2 (an MLP over P identity features) is too small to split: every rank runs the same global-batch
steps and only rank 0 writes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from csdn.data.records import INFRARED, MODALITIES, VISIBLE
from csdn.data.release_bank import FeatureBankBatches
from csdn.data.sampler import CrossModalitySampler
from csdn.errors import ConfigError, check_choice
from csdn.losses import i2t_t2i_loss, similarity_logits
from csdn.model.prompts import ModalityPrompts
from csdn.model.sii import text_prototypes
from csdn.runtime import FP32, ComputePath
from csdn.train.distributed import SINGLE, DistContext, wrap_ddp
from csdn.train.loop import LoopConfig, StageState, check_finite, run_epochs
from csdn.train.schedule import make_scheduler

PAIRINGS = ("private", "all")
SCHEDULES = ("release", "after_warmup")
FEATURE_BANKS = ("release", "images")


@dataclass(frozen=True)
class TextStageConfig:
    """Optimisation of stage 1 (prompts) or stage 2 (SII) on cached image features (released settings)."""

    epochs: int = 60  # length of the cosine schedule
    lr: float = 3e-4  # Adam base learning rate
    weight_decay: float = 1e-4  # Adam weight decay
    warmup_epochs: int = 5  # linear warm-up epochs
    warmup_lr: float = 1e-5  # learning rate at the start of the warm-up
    ids_per_batch: int = 8  # P identities per batch
    instances: int = 4  # K features per identity and modality
    temperature: float = 1.0  # contrastive temperature (1 in the released code)
    cosine: bool = False  # contrastive logits on L2-normalised features (released: raw dot products)
    pairing: str = "private"  # stage 1 only: "private" (modality to its own prompts) or "all"
    schedule: str = "release"  # "release": timm's cosine counted from epoch 0 (warm-up included) down to
    # 1e-6, as the release; "after_warmup": the cosine starts where the warm-up ends and decays to 0
    feature_bank: str = "release"  # "release": each stage draws its bank of (visible, infrared) feature pairs
    # with AGW's identity sampler (with replacement) and trains on random batches of it; "images": every
    # cached feature, in P x K cross-modality identity batches (see csdn.data.release_bank)
    max_steps: int = 0  # > 0: at most this many steps an epoch, a dry run (never cached as finished; csdn.dryrun)

    KEY_LEGACY: ClassVar[dict[str, Any]] = {"schedule": "after_warmup", "feature_bank": "images", "max_steps": 0}

    def __post_init__(self) -> None:
        if self.epochs < 0:  # 0 is allowed for a stage that does not train (stage 2 of a parameter-free SII)
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        check_choice("pairing", self.pairing, PAIRINGS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("feature_bank", self.feature_bank, FEATURE_BANKS)
        if self.max_steps < 0:
            raise ConfigError(f"max_steps must be >= 0 (0: whole epochs), got {self.max_steps}")


@dataclass
class CachedFeatures:
    """Frozen-CLIP projected image features of the training set, split by modality."""

    visible: Tensor  # (N_vis, d)
    visible_labels: Tensor  # (N_vis,) contiguous training labels
    infrared: Tensor  # (N_ir, d)
    infrared_labels: Tensor  # (N_ir,)


RELEASE_MIN_LR = 1e-6  # the release's stage-1/2 floor (its stage1_lr_min)


def text_stage_scheduler(optimizer: torch.optim.Optimizer, cfg: TextStageConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning-rate schedule of a text stage (``cfg.schedule``), stepped once per epoch."""
    kind, floor = ("release_cosine", RELEASE_MIN_LR / cfg.lr) if cfg.schedule == "release" else ("cosine", 0.0)
    warmup_factor = cfg.warmup_lr / cfg.lr
    return make_scheduler(optimizer, kind, cfg.epochs, cfg.warmup_epochs, warmup_factor, min_factor=floor)


def _setup(module: nn.Module, cfg: TextStageConfig, trainable: list[nn.Parameter]):
    optimizer = torch.optim.Adam(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return optimizer, text_stage_scheduler(optimizer, cfg)


def _sampler(
    feats: CachedFeatures, cfg: TextStageConfig, seed: int, dist: DistContext = SINGLE, stage: int = 1
) -> CrossModalitySampler | FeatureBankBatches:
    """Stage ``stage``'s batches: the release's feature bank (stage 2: mixed batches) or P x K identity batches."""
    labels = (feats.visible_labels.tolist(), feats.infrared_labels.tolist(), cfg.ids_per_batch, cfg.instances)
    shard = {"seed": seed, "rank": dist.rank, "world_size": dist.world_size}
    if cfg.feature_bank == "release":
        return FeatureBankBatches(*labels, stage=stage, **shard)
    return CrossModalitySampler(*labels, **shard)


class _PromptTexts(nn.Module):
    """Both modalities' prompt texts in one forward call (DDP expects one forward per backward)."""

    def __init__(self, prompts: ModalityPrompts) -> None:
        super().__init__()
        self.prompts = prompts

    def forward(self, labels_v: Tensor, labels_i: Tensor, text_encoder: nn.Module) -> tuple[Tensor, Tensor]:
        return self.prompts(labels_v, VISIBLE, text_encoder), self.prompts(labels_i, INFRARED, text_encoder)


def _per_label(fn: Callable[[Tensor], Tensor], labels: Tensor) -> Tensor:
    """``fn`` evaluated once per distinct label, expanded back to one row per entry of ``labels``."""
    unique, inverse = torch.unique(labels, return_inverse=True)
    return fn(unique)[inverse]


@torch.no_grad()
def text_diagnostics(feats: CachedFeatures, texts: dict[str, Tensor], cosine: bool) -> dict[str, float]:
    """Per modality: how often an image's own identity text is its most similar text, and the text norm.

    ``texts[m]`` is ``(num_ids, d)``, row = label: the texts the images of modality ``m`` are aligned to.
    """
    out: dict[str, float] = {}
    for m, images, labels in (
        (VISIBLE, feats.visible, feats.visible_labels),
        (INFRARED, feats.infrared, feats.infrared_labels),
    ):
        t = texts[m].to(images.device)
        hits = similarity_logits(images.float(), t.float(), cosine=cosine).argmax(1) == labels.to(images.device)
        out[f"i2t_top1_{m}"] = hits.float().mean().item()
        out[f"text_norm_{m}"] = t.norm(dim=1).mean().item()
    return out


def _epoch_runner(
    sampler: CrossModalitySampler | FeatureBankBatches,
    feats: CachedFeatures,
    optimizer: torch.optim.Optimizer,
    batch_loss: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor],
    where: str,
    device: torch.device,
    diagnose: Callable[[CachedFeatures], dict[str, float]],
    max_steps: int = 0,
    compute: ComputePath = FP32,
):
    """One epoch of a text stage. The loss is summed on the device and read (and checked finite) once an
    epoch, so no step waits for the device; a non-finite step fails the epoch before its checkpoint."""
    vis, ir = feats.visible.to(device), feats.infrared.to(device)
    lv_all, li_all = feats.visible_labels.to(device), feats.infrared_labels.to(device)
    on_device = CachedFeatures(vis, lv_all, ir, li_all)

    def train_epoch(epoch: int, tick: Callable[[], None]) -> dict[str, float]:
        sampler.set_epoch(epoch)
        total, steps = torch.zeros((), device=device), 0
        for vis_idx, ir_idx in sampler:
            if max_steps and steps == max_steps:  # a dry run
                break
            vi, ii = torch.as_tensor(vis_idx, device=device), torch.as_tensor(ir_idx, device=device)
            with compute.autocast():
                loss = batch_loss(vis[vi], lv_all[vi], ir[ii], li_all[ii]).float()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, steps = total + loss.detach(), steps + 1
            tick()
        check_finite(total, f"{where} epoch {epoch + 1}")
        return {"loss": total.item() / max(steps, 1), **diagnose(on_device)}

    return train_epoch


def train_prompts(
    prompts: ModalityPrompts,
    text_encoder: nn.Module,
    feats: CachedFeatures,
    cfg: TextStageConfig,
    run_dir: Path,
    loop: LoopConfig,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
    meta: dict | None = None,
    dist: DistContext = SINGLE,
    compute: ComputePath = FP32,
) -> list[dict[str, float]]:
    """Stage 1: train the prompt learners (text encoder frozen) on ``compute``'s path; returns the per-epoch
    history.

    With several processes (``dist``) every rank calls this with the same arguments (DDP, rank 0 writes).
    """
    prompts.to(device)
    text_encoder.to(device)
    optimizer, scheduler = _setup(prompts, cfg, list(prompts.parameters()))
    sampler = _sampler(feats, cfg, seed, dist)
    texts = wrap_ddp(_PromptTexts(prompts), dist, sync_bn=False)

    def batch_loss(fv: Tensor, lv: Tensor, fi: Tensor, li: Tensor) -> Tensor:
        (uv, inv_v), (ui, inv_i) = torch.unique(lv, return_inverse=True), torch.unique(li, return_inverse=True)
        tv, ti = texts(uv, ui, text_encoder)  # one text per distinct identity of this rank's share
        gather = dist.gather_with_grad  # the global batch (identity in one process)
        fv, lv, fi, li, tv, ti = (gather(x) for x in (fv, lv, fi, li, tv[inv_v], ti[inv_i]))
        if cfg.pairing == "private":
            return i2t_t2i_loss(fv, lv, tv, lv, cfg.temperature, cfg.cosine) + i2t_t2i_loss(
                fi, li, ti, li, cfg.temperature, cfg.cosine
            )
        images, labels = torch.cat([fv, fi]), torch.cat([lv, li])
        return i2t_t2i_loss(images, labels, torch.cat([tv, ti]), labels, cfg.temperature, cfg.cosine)

    def diagnose(on_device: CachedFeatures) -> dict[str, float]:
        return text_diagnostics(
            on_device, {m: prompts.all_text_features(text_encoder, m) for m in MODALITIES}, cfg.cosine
        )

    stage = StageState(
        "stage1 prompts",
        prompts,
        optimizer,
        scheduler,
        _epoch_runner(sampler, feats, optimizer, batch_loss, "stage 1", device, diagnose, cfg.max_steps, compute),
        min(len(sampler), cfg.max_steps or len(sampler)),
        extra_state=sampler.state_dict,
        load_extra_state=sampler.load_state_dict,
        meta=meta or {},
    )
    return run_epochs(stage, run_dir, loop, dist=dist)


def train_sii(
    sii: nn.Module,
    text_visible: Tensor,
    text_infrared: Tensor,
    feats: CachedFeatures,
    cfg: TextStageConfig,
    run_dir: Path,
    loop: LoopConfig,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
    meta: dict | None = None,
    dist: DistContext = SINGLE,
    compute: ComputePath = FP32,
) -> list[dict[str, float]]:
    """Stage 2: train the SII fusion on fixed per-identity text features ``(num_ids, d)`` of both learners
    (on ``compute``'s path).

    With several processes every rank runs the same (unsplit) steps; ``dist`` only makes rank 0 the writer.
    """
    sii.to(device)
    t_vis, t_ir = text_visible.to(device), text_infrared.to(device)
    optimizer, scheduler = _setup(sii, cfg, [p for p in sii.parameters() if p.requires_grad])
    sampler = _sampler(feats, cfg, seed, stage=2)

    def batch_loss(fv: Tensor, lv: Tensor, fi: Tensor, li: Tensor) -> Tensor:
        labels = torch.cat([lv, li])
        # The release fuses one text per image of the batch; P x K batches use the visible half's labels, which
        # hold the same identities K times each (the same loss up to a constant, as earlier caches trained it).
        text_labels = labels if cfg.feature_bank == "release" else lv
        fused = _per_label(lambda ids: sii(t_vis[ids], t_ir[ids]), text_labels)
        return i2t_t2i_loss(torch.cat([fv, fi]), labels, fused, text_labels, cfg.temperature, cfg.cosine)

    def diagnose(on_device: CachedFeatures) -> dict[str, float]:
        return text_diagnostics(on_device, text_prototypes(sii, t_vis, t_ir), cfg.cosine)

    stage = StageState(
        "stage2 SII",
        sii,
        optimizer,
        scheduler,
        _epoch_runner(sampler, feats, optimizer, batch_loss, "stage 2", device, diagnose, cfg.max_steps, compute),
        min(len(sampler), cfg.max_steps or len(sampler)),
        extra_state=sampler.state_dict,
        load_extra_state=sampler.load_state_dict,
        meta=meta or {},
    )
    return run_epochs(stage, run_dir, loop, dist=dist)
