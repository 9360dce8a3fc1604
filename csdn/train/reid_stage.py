"""Stage 3: High-level Semantic Embedding (HSE) + re-ID training of the image side.

Text prototypes are fixed (fused by SII, or each modality's own prompts when SII is ``none``). Each batch
holds P identities x K visible images (two views each: plain and channel-exchanged) + K infrared images
(channel-adaptive gray). Loss = ID cross-entropy on both heads + triplet on both features
+ HSE image-to-text cross-entropy, weighted per modality (released: 0.05 visible, 0.1 infrared).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from csdn.data.cache import ImageCache
from csdn.data.images import CachedImages
from csdn.data.records import INFRARED, VISIBLE
from csdn.data.sampler import CrossModalitySampler
from csdn.data.transforms import TransformConfig, train_transform
from csdn.losses import hse_loss, id_loss, triplet_hard, triplet_wrt
from csdn.model.network import CSDNNet
from csdn.runtime import autocast
from csdn.train.loop import LoopConfig, StageState, check_finite, run_epochs
from csdn.train.schedule import make_scheduler

TRIPLETS = ("wrt", "hard")


@dataclass(frozen=True)
class ReIDStageConfig:
    """Stage-3 optimisation and losses (defaults: the released CSDN settings)."""

    epochs: int = 120  # length of the fixed schedule
    lr: float = 3e-4  # Adam learning rate of the backbone
    classifier_lr_factor: float = 2.0  # classifiers train at lr x this (released: 6e-4)
    weight_decay: float = 5e-4  # Adam weight decay
    warmup_epochs: int = 10  # linear warm-up epochs
    warmup_factor: float = 0.01  # learning-rate factor at the start of the warm-up
    milestones: tuple[int, ...] = (40, 70)  # epochs at which the learning rate is multiplied by gamma
    gamma: float = 0.1  # learning-rate decay at each milestone
    ids_per_batch: int = 8  # P identities per batch
    instances: int = 4  # K images per identity and modality
    triplet: str = "wrt"  # "wrt" (weighted-regularisation soft margin, AGW) or "hard" (batch-hard, margin)
    triplet_margin: float = 0.3  # margin of the hard-mining triplet
    triplet_weight: float = 0.15  # weight of each triplet term (released code)
    label_smoothing: float = 0.0  # ID loss label smoothing (released: none)
    hse_visible: float = 0.05  # HSE weight for visible images (0 disables)
    hse_infrared: float = 0.1  # HSE weight for infrared images (0 disables)
    channel_exchange_view: bool = True  # each visible image also gives a channel-exchanged second view
    amp: bool = True  # autocast on CUDA
    workers: int = 0  # DataLoader worker processes building batches

    def __post_init__(self) -> None:
        if self.triplet not in TRIPLETS:
            raise ValueError(f"triplet must be one of {TRIPLETS}, got {self.triplet!r}")


class PairedBatches(Dataset):
    """Turns one sampler item ``(visible_indices, infrared_indices)`` into a whole augmented batch."""

    def __init__(self, cache: ImageCache, visible_rows: list[int], infrared_rows: list[int],
                 visible_labels: list[int], infrared_labels: list[int], tcfg: TransformConfig,
                 exchange_view: bool) -> None:
        self.visible = CachedImages(cache, visible_labels, train_transform(tcfg, "visible"), visible_rows)
        self.exchange = (CachedImages(cache, visible_labels, train_transform(tcfg, "visible_exchange"), visible_rows)
                         if exchange_view else None)
        self.infrared = CachedImages(cache, infrared_labels, train_transform(tcfg, "infrared"), infrared_rows)

    def __getitem__(self, item: tuple[list[int], list[int]]) -> dict[str, Tensor]:
        vis_idx, ir_idx = item
        views = [self.visible] + ([self.exchange] if self.exchange is not None else [])
        vis = [torch.stack([torch.as_tensor(view[i][0]) for i in vis_idx]) for view in views]
        labels_v = torch.tensor([self.visible.labels[i] for i in vis_idx])
        ir = torch.stack([torch.as_tensor(self.infrared[i][0]) for i in ir_idx])
        labels_i = torch.tensor([self.infrared.labels[i] for i in ir_idx])
        return {"visible": torch.cat(vis), "visible_labels": labels_v.repeat(len(views)),
                "infrared": ir, "infrared_labels": labels_i}


def make_optimizer(net: CSDNNet, cfg: ReIDStageConfig) -> torch.optim.Adam:
    """Adam with the classifiers at ``lr * classifier_lr_factor``."""
    classifier_params = [*net.cls_gem.parameters(), *net.cls_proj.parameters()]
    ids = {id(p) for p in classifier_params}
    backbone = [p for p in net.parameters() if p.requires_grad and id(p) not in ids]
    return torch.optim.Adam(
        [{"params": backbone, "lr": cfg.lr},
         {"params": classifier_params, "lr": cfg.lr * cfg.classifier_lr_factor}],
        lr=cfg.lr, weight_decay=cfg.weight_decay,
    )


def reid_losses(net_out, labels: Tensor, n_visible: int, prototypes: dict[str, Tensor] | None,
                cfg: ReIDStageConfig) -> dict[str, Tensor]:
    """The stage-3 loss terms of one batch whose first ``n_visible`` rows are visible images."""
    triplet: Callable[[Tensor, Tensor], Tensor] = (
        triplet_wrt if cfg.triplet == "wrt" else (lambda f, y: triplet_hard(f, y, cfg.triplet_margin))
    )
    terms = {
        "id": id_loss(net_out.gem_logits, labels, cfg.label_smoothing)
        + id_loss(net_out.proj_logits, labels, cfg.label_smoothing),
        "triplet": cfg.triplet_weight * (triplet(net_out.gem, labels) + triplet(net_out.proj, labels)),
    }
    if prototypes is not None and (cfg.hse_visible > 0 or cfg.hse_infrared > 0):
        proj_v, proj_i = net_out.proj[:n_visible], net_out.proj[n_visible:]
        terms["hse"] = (cfg.hse_visible * hse_loss(proj_v, prototypes[VISIBLE], labels[:n_visible])
                        + cfg.hse_infrared * hse_loss(proj_i, prototypes[INFRARED], labels[n_visible:]))
    return terms


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
) -> list[dict[str, float]]:
    """Stage 3 on the training image cache (``labels[i]`` = contiguous label of cache row ``i``)."""
    net.to(device)
    protos = None if prototypes is None else {m: t.to(device).float() for m, t in prototypes.items()}
    records = cache.records
    vis_rows = [i for i, r in enumerate(records) if r.modality == VISIBLE]
    ir_rows = [i for i, r in enumerate(records) if r.modality == INFRARED]
    vis_labels, ir_labels = [labels[i] for i in vis_rows], [labels[i] for i in ir_rows]
    sampler = CrossModalitySampler(vis_labels, ir_labels, cfg.ids_per_batch, cfg.instances, seed=seed)
    batches = PairedBatches(cache, vis_rows, ir_rows, vis_labels, ir_labels, tcfg, cfg.channel_exchange_view)
    optimizer = make_optimizer(net, cfg)
    scheduler = make_scheduler(optimizer, "multistep", cfg.epochs, cfg.warmup_epochs, cfg.warmup_factor,
                               cfg.milestones, cfg.gamma)

    def train_epoch(epoch: int, tick: Callable[[], None]) -> dict[str, float]:
        sampler.set_epoch(epoch)
        loader = DataLoader(batches, sampler=sampler, batch_size=None, num_workers=cfg.workers,
                            pin_memory=device.type == "cuda")
        sums: dict[str, float] = {}
        steps = 0
        for batch in loader:
            x_v, x_i = batch["visible"].to(device, non_blocking=True), batch["infrared"].to(device, non_blocking=True)
            y = torch.cat([batch["visible_labels"], batch["infrared_labels"]]).to(device)
            with autocast(device, cfg.amp):
                out = net([(x_v, VISIBLE), (x_i, INFRARED)])
            terms = reid_losses(out, y, len(x_v), protos, cfg)
            loss = sum(terms.values())
            check_finite(loss, f"stage 3 epoch {epoch + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            for k, v in {"loss": loss, **{f"{k}_loss": t for k, t in terms.items()}}.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            tick()
        return {k: v / max(steps, 1) for k, v in sums.items()}

    stage = StageState("stage3 HSE+reID", net, optimizer, scheduler, train_epoch, len(sampler), validate=validate,
                       extra_state=sampler.state_dict, load_extra_state=sampler.load_state_dict, meta=meta or {})
    return run_epochs(stage, run_dir, loop)
