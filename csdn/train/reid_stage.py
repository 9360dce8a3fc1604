"""Stage 3: High-level Semantic Embedding (HSE) + re-ID training of the image side.

Text prototypes are fixed (fused by SII, or each modality's own prompts when SII is ``none``). Each batch
holds P identities x K visible images (two views each: plain and channel-exchanged) + K infrared images
(channel-adaptive gray). Loss = ID cross-entropy on both heads + triplet on both features
+ HSE image-to-text cross-entropy of the first visible view and the infrared images, weighted per modality
(released: 0.05 visible, 0.1 infrared) + MSEL on both features (latest release: weight 1).

Every epoch's history also records training diagnostics, so a run shows at a glance whether it learns:
ID accuracy of both heads on the training batches, mean feature norms per modality, the unweighted HSE
cross-entropy and image-to-own-text top-1 per modality, and the unweighted MSEL terms.

Augmentations are drawn per image from a seed of (run seed, epoch, step, view, position in the global
batch), so a batch is the same whatever the number of processes or DataLoader workers. Under several
processes (DDP) each rank trains on its identities of the global batch; ID and HSE losses are per-rank
means of equal-sized shards (their DDP-averaged gradient is the global one) and the triplet terms see
the gathered global batch, so an update equals the one-process update up to BatchNorm (global with
``sync_bn``) and floating-point summation order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from csdn.artifacts import key_fields
from csdn.data.cache import ImageCache
from csdn.data.records import INFRARED, VISIBLE
from csdn.data.sampler import CrossModalitySampler
from csdn.data.transforms import TransformConfig
from csdn.errors import ConfigError, check_choice
from csdn.losses import (
    WRT_WEIGHTS,
    hse_loss,
    id_loss,
    msel_loss,
    similarity_logits,
    triplet_hard,
    triplet_wrt,
)
from csdn.model.network import CSDNNet
from csdn.runtime import FP32, ComputePath
from csdn.train.distributed import SINGLE, DistContext, wrap_ddp
from csdn.train.loop import LoopConfig, StageState, check_finite, run_epochs
from csdn.train.reid_batches import BatchKey, PairedBatches
from csdn.train.schedule import make_scheduler

TRIPLETS = ("wrt", "hard")
PARAM_GROUPS = ("release", "bnneck")
SPEED_ONLY = ("workers",)  # ReIDStageConfig fields that cannot change a result (batches are the same whatever
# the number of DataLoader workers): left out of cache keys. The compute path is not one (it changes the numerics).


@dataclass(frozen=True)
class ReIDStageConfig:
    """Stage-3 optimisation and losses (defaults: the released CSDN settings)."""

    epochs: int = 120  # length of the fixed schedule
    lr: float = 3e-4  # Adam learning rate of the backbone
    classifier_lr_factor: float = 2.0  # classifiers train at lr x this (released: 6e-4)
    param_groups: str = "release"  # who trains at the classifier rate: "release" (every head tensor, as the
    # release's name match on "classifier": GeM's p, both BNNecks and both Linear classifiers; the BNNeck
    # biases train) or "bnneck" (the two Linear classifiers only; BNNeck biases frozen at 0, as BoT/CLIP-ReID)
    weight_decay: float = 5e-4  # Adam weight decay
    warmup_epochs: int = 10  # linear warm-up epochs
    warmup_factor: float = 0.01  # learning-rate factor at the start of the warm-up
    milestones: tuple[int, ...] = (40, 70)  # epochs at which the learning rate is multiplied by gamma
    gamma: float = 0.1  # learning-rate decay at each milestone
    ids_per_batch: int = 8  # P identities per batch
    instances: int = 4  # K images per identity and modality
    triplet: str = "wrt"  # "wrt" (weighted-regularisation soft margin, AGW) or "hard" (batch-hard, margin)
    triplet_margin: float = 0.3  # margin of the hard-mining triplet
    wrt_weights: str = "agw"  # WRT's softmax weights: "agw" (AGW's, as the release: its max runs over the
    # masked zeros and 1e-6 joins the normaliser, so far negatives get no weight) or "exact" (masked softmax)
    triplet_weight: float = 0.15  # weight of each triplet term (released code)
    label_smoothing: float = 0.0  # ID loss label smoothing (released: none)
    hse_visible: float = 0.05  # HSE weight for visible images (first view; 0 disables)
    hse_infrared: float = 0.1  # HSE weight for infrared images (0 disables)
    hse_cosine: bool = False  # HSE on cosine similarities (released: raw dot products, which can collapse)
    hse_temperature: float = 1.0  # HSE logits are divided by this (released: 1; with cosine e.g. 0.07)
    msel_weight: float = 1.0  # MSEL weight on each of the GeM and projected features (latest release 1;
    # the earlier release 4ceb172 has none: 0)
    msel_normalize: bool = False  # MSEL on L2-normalised features (released: raw features)
    pad: int = 10  # training augmentation: zero padding before the random crop (released: 10 at 288x144)
    erasing_p: float = 0.5  # training augmentation: probability of channel random erasing (released: 0.5)
    exchange_gray: bool = False  # the channel-exchanged view may also be a grayscale mix (CAJ's gray=3;
    # released: R, G or B only)
    channel_exchange_view: bool = True  # each visible image also gives a channel-exchanged second view
    workers: int = 0  # DataLoader worker processes building batches
    max_steps: int = 0  # > 0: at most this many steps an epoch, a dry run (never cached as finished; csdn.dryrun)

    KEY_LEGACY: ClassVar[dict[str, Any]] = {"wrt_weights": "exact", "param_groups": "bnneck", "max_steps": 0}

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(
                f"stage-3 epochs must be >= 1 (an untrained stage would be cached as done), got {self.epochs}"
            )
        check_choice("triplet", self.triplet, TRIPLETS)
        check_choice("wrt_weights", self.wrt_weights, WRT_WEIGHTS)
        if self.max_steps < 0:
            raise ConfigError(f"max_steps must be >= 0 (0: whole epochs), got {self.max_steps}")
        check_choice("param_groups", self.param_groups, PARAM_GROUPS)
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0 (0: batches built in the main process), got {self.workers}")
        if self.hse_temperature <= 0 or self.msel_weight < 0:
            raise ConfigError(
                f"need hse_temperature > 0 and msel_weight >= 0, got {self.hse_temperature}, {self.msel_weight}"
            )
        if self.msel_weight > 0 and self.instances < 2:
            raise ConfigError(
                "MSEL compares an image with the other images of its identity and modality: it needs "
                f"instances >= 2 (got {self.instances}); set msel_weight=0 to train with K=1"
            )

    def result_settings(self) -> dict[str, Any]:
        """The fields as a dict with :data:`SPEED_ONLY` ones at their defaults: what a cache key should hold
        (any ``workers`` gives the key of the default, which earlier keys were computed with), less the
        later switches at their earlier behaviour (:func:`csdn.artifacts.key_fields`)."""
        defaults = {f.name: f.default for f in fields(self) if f.name in SPEED_ONLY}
        return key_fields(replace(self, **defaults))

    @property
    def views(self) -> int:
        """Views per visible image in a batch (2 with the channel-exchanged view)."""
        return 2 if self.channel_exchange_view else 1

    def transforms(self, height: int, width: int, mean, std) -> TransformConfig:
        """The training transforms at the network's input size, with this stage's augmentation strength."""
        return TransformConfig(
            height=height,
            width=width,
            mean=tuple(mean),
            std=tuple(std),
            pad=self.pad,
            erasing_p=self.erasing_p,
            exchange_gray=self.exchange_gray,
        )


def head_parameters(net: CSDNNet, groups: str) -> list[torch.nn.Parameter]:
    """The parameters that train at the classifier rate under ``groups`` (see ``ReIDStageConfig.param_groups``).

    ``"release"``: every tensor the release's name match on "classifier" takes (its ``Classifier`` modules hold
    GeM, the BNNecks and the Linear classifiers); ``"bnneck"``: the two Linear classifiers.
    """
    if groups == "bnneck":
        return [*net.cls_gem.parameters(), *net.cls_proj.parameters()]
    return [*net.gem.parameters(), *net.bn_gem.parameters(), *net.cls_gem.parameters()] + [
        *net.bn_proj.parameters(),
        *net.cls_proj.parameters(),
    ]


def set_trainable_heads(net: CSDNNet, groups: str) -> None:
    """BNNeck biases train under the release's groups and stay frozen (at their value) under ``"bnneck"``."""
    for bn in (net.bn_gem, net.bn_proj):
        bn.bias.requires_grad_(groups == "release")


def make_optimizer(net: CSDNNet, cfg: ReIDStageConfig) -> torch.optim.Adam:
    """Adam with the head tensors of ``cfg.param_groups`` at ``lr * classifier_lr_factor``, the rest at ``lr``
    (call :func:`set_trainable_heads` first: frozen tensors are left out)."""
    heads = [p for p in head_parameters(net, cfg.param_groups) if p.requires_grad]
    ids = {id(p) for p in heads}
    backbone = [p for p in net.parameters() if p.requires_grad and id(p) not in ids]
    return torch.optim.Adam(
        [{"params": backbone, "lr": cfg.lr}, {"params": heads, "lr": cfg.lr * cfg.classifier_lr_factor}],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
    )


class BatchRows(NamedTuple):
    """Where the modalities sit in a stage-3 batch: ``[visible view 1 | view 2 ... | infrared]``."""

    first_view: slice  # the first (plain) visible view: HSE and MSEL use these rows
    infrared: slice  # the infrared images

    @classmethod
    def of(cls, n_visible: int, n_rows: int, views: int) -> BatchRows:
        return cls(slice(0, n_visible // views), slice(n_visible, n_rows))


def reid_terms(
    net_out,
    labels: Tensor,
    n_visible: int,
    prototypes: dict[str, Tensor] | None,
    cfg: ReIDStageConfig,
    gather: Callable[[Tensor], Tensor] | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The stage-3 loss terms (weighted, to sum) and the unweighted HSE / MSEL parts they are made of.

    The batch's first ``n_visible`` rows are visible images. ``gather`` (e.g.
    :meth:`DistContext.gather_with_grad`) collects the features and labels of every process's batch for the
    triplet terms, which compare samples across the batch. The unweighted parts (``hse_<modality>`` whenever
    there are prototypes, ``msel_gem`` / ``msel_proj`` when MSEL is on) feed :func:`batch_diagnostics`.
    """
    gather = gather or (lambda x: x)
    triplet: Callable[[Tensor, Tensor], Tensor] = (
        (lambda f, y: triplet_wrt(f, y, weights=cfg.wrt_weights))
        if cfg.triplet == "wrt"
        else (lambda f, y: triplet_hard(f, y, cfg.triplet_margin))
    )
    all_labels = gather(labels)
    terms = {
        "id": id_loss(net_out.gem_logits, labels, cfg.label_smoothing)
        + id_loss(net_out.proj_logits, labels, cfg.label_smoothing),
        "triplet": cfg.triplet_weight
        * (triplet(gather(net_out.gem), all_labels) + triplet(gather(net_out.proj), all_labels)),
    }
    parts: dict[str, Tensor] = {}
    rows = BatchRows.of(n_visible, len(labels), cfg.views)
    if prototypes is not None:
        hse = {
            m: hse_loss(net_out.proj[r], prototypes[m], labels[r], cfg.hse_temperature, cfg.hse_cosine)
            for m, r in ((VISIBLE, rows.first_view), (INFRARED, rows.infrared))
        }
        parts.update({f"hse_{m}": v for m, v in hse.items()})
        if cfg.hse_visible > 0 or cfg.hse_infrared > 0:
            terms["hse"] = cfg.hse_visible * hse[VISIBLE] + cfg.hse_infrared * hse[INFRARED]
    if cfg.msel_weight > 0:
        v, i = rows.first_view, rows.infrared
        msel = {
            name: msel_loss(f[v], labels[v], f[i], labels[i], cfg.msel_normalize)
            for name, f in (("gem", net_out.gem), ("proj", net_out.proj))
        }
        parts.update({f"msel_{k}": m for k, m in msel.items()})
        terms["msel"] = cfg.msel_weight * (msel["gem"] + msel["proj"])
    return terms, parts


def reid_losses(
    net_out,
    labels: Tensor,
    n_visible: int,
    prototypes: dict[str, Tensor] | None,
    cfg: ReIDStageConfig,
    gather: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """The weighted stage-3 loss terms of one batch (see :func:`reid_terms`)."""
    return reid_terms(net_out, labels, n_visible, prototypes, cfg, gather)[0]


@torch.no_grad()
def batch_diagnostics(
    net_out,
    labels: Tensor,
    n_visible: int,
    prototypes: dict[str, Tensor] | None,
    cfg: ReIDStageConfig,
    parts: dict[str, Tensor],
) -> dict[str, Tensor]:
    """What shows whether stage 3 learns, on one training batch (summed over batches, then averaged), as
    0-d tensors on the batch's device (read once an epoch: no step waits for the device).

    ``acc_gem`` / ``acc_proj``: ID accuracy of the two heads; ``norm_{gem,proj}_{visible,infrared}``: mean
    feature norms; with text prototypes ``hse_ce_<m>`` (unweighted HSE cross-entropy) and ``i2t_top1_<m>``
    (the own identity's prototype is the most similar); ``msel_gem`` / ``msel_proj`` (unweighted) when MSEL
    is on. ``parts`` are the unweighted terms :func:`reid_terms` computed for this batch (not recomputed).
    """
    rows = BatchRows.of(n_visible, len(labels), cfg.views)
    out = {
        "acc_gem": (net_out.gem_logits.argmax(1) == labels).float().mean(),
        "acc_proj": (net_out.proj_logits.argmax(1) == labels).float().mean(),
    }
    for m, r in ((VISIBLE, slice(0, n_visible)), (INFRARED, rows.infrared)):
        out[f"norm_gem_{m}"] = net_out.gem[r].float().norm(dim=1).mean()
        out[f"norm_proj_{m}"] = net_out.proj[r].float().norm(dim=1).mean()
    if prototypes is not None:
        for m, r in ((VISIBLE, rows.first_view), (INFRARED, rows.infrared)):
            out[f"hse_ce_{m}"] = parts[f"hse_{m}"].detach().float()
            logits = similarity_logits(net_out.proj[r].float(), prototypes[m], cosine=cfg.hse_cosine)
            out[f"i2t_top1_{m}"] = (logits.argmax(1) == labels[r]).float().mean()
    out.update({k: v.detach().float() for k, v in parts.items() if k.startswith("msel_")})
    return out


def train_reid(
    net: CSDNNet,
    cache: ImageCache,
    labels: list[int],
    prototypes: dict[str, Tensor] | None,
    cfg: ReIDStageConfig,
    tcfg: TransformConfig,
    run_dir: Path,
    loop: LoopConfig,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
    validate: Callable[[int], dict[str, float]] | None = None,
    meta: dict | None = None,
    dist: DistContext = SINGLE,
    sync_bn: bool = True,
    compute: ComputePath = FP32,
) -> list[dict[str, float]]:
    """Stage 3 on the training image cache (``labels[i]`` = contiguous label of cache row ``i``), the network
    on ``compute``'s path (autocast, image layout). The losses and diagnostics are summed on the device and
    read once an epoch; a non-finite step fails the epoch before its checkpoint.

    With several processes (``dist``), every rank calls this with the same arguments; the network is
    trained under DDP (BatchNorm over the global batch with ``sync_bn``) and only rank 0 writes.
    """
    compute.prepare(net.to(device))
    protos = None if prototypes is None else {m: t.to(device).float() for m, t in prototypes.items()}
    records = cache.records
    vis_rows = [i for i, r in enumerate(records) if r.modality == VISIBLE]
    ir_rows = [i for i, r in enumerate(records) if r.modality == INFRARED]
    vis_labels, ir_labels = [labels[i] for i in vis_rows], [labels[i] for i in ir_rows]
    sampler = CrossModalitySampler(
        vis_labels, ir_labels, cfg.ids_per_batch, cfg.instances, seed=seed, rank=dist.rank, world_size=dist.world_size
    )
    batches = PairedBatches(cache, vis_rows, ir_rows, vis_labels, ir_labels, tcfg, cfg.channel_exchange_view)
    set_trainable_heads(net, cfg.param_groups)  # before DDP, which registers what trains
    model = wrap_ddp(net, dist, sync_bn)  # net itself in one process
    optimizer = make_optimizer(net, cfg)
    scheduler = make_scheduler(
        optimizer, "multistep", cfg.epochs, cfg.warmup_epochs, cfg.warmup_factor, cfg.milestones, cfg.gamma
    )

    def train_epoch(epoch: int, tick: Callable[[], None]) -> dict[str, float]:
        sampler.set_epoch(epoch)
        keys = [BatchKey(v, i, seed, epoch, step, sampler.offset) for step, (v, i) in enumerate(sampler)]
        keys = keys[: cfg.max_steps or None]  # a dry run: the epoch's first steps
        loader = DataLoader(
            batches, sampler=keys, batch_size=None, num_workers=cfg.workers, pin_memory=device.type == "cuda"
        )
        names: list[str] = []
        sums: Tensor | None = None
        steps = 0
        for batch in loader:
            x_v, x_i = (compute.images(batch[m].to(device, non_blocking=True)) for m in (VISIBLE, INFRARED))
            y = torch.cat([batch["visible_labels"], batch["infrared_labels"]]).to(device)
            with compute.autocast():
                out = model([(x_v, VISIBLE), (x_i, INFRARED)])
            terms, parts = reid_terms(out, y, len(x_v), protos, cfg, gather=dist.gather_with_grad)
            diagnostics = batch_diagnostics(out, y, len(x_v), protos, cfg, parts)
            loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            names = ["loss", *(f"{k}_loss" for k in terms), *diagnostics]
            row = torch.stack([loss.detach(), *(t.detach() for t in terms.values()), *diagnostics.values()])
            sums = row if sums is None else sums + row
            tick()
        if sums is None:
            return {}
        losses = dist.mean(sums[: len(terms) + 1])  # the global batch's losses on every rank
        check_finite(losses[0], f"stage 3 epoch {epoch + 1}")
        values = torch.cat([losses, sums[len(terms) + 1 :]]).tolist()
        return {k: v / steps for k, v in zip(names, values)}

    stage = StageState(
        "stage3 HSE+reID",
        net,
        optimizer,
        scheduler,
        train_epoch,
        min(len(sampler), cfg.max_steps or len(sampler)),
        validate=validate,
        extra_state=sampler.state_dict,
        load_extra_state=sampler.load_state_dict,
        meta=meta or {},
    )
    return run_epochs(stage, run_dir, loop, dist=dist)
