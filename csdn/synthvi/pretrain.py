"""Contrastive pretraining of the embedded tiny CLIP on the SynthVI captioned pool.

The loss is CLIP's symmetric InfoNCE with soft targets suited to a small world where captions are
generated from attributes: every image and caption of the same identity and modality is a positive,
and (``attribute_targets`` > 0) a caption also claims a share ``exp(k * (agreement - 1))`` of every
image whose attributes it matches, where agreement counts only what both modalities can show
(infrared: no colours). Without it, colour words alone separate almost every pair in a batch and a
tiny model never learns garments; ``attribute_targets=0`` is plain (multi-positive) CLIP. Training runs
on the stages' shared loop (per-epoch checkpoints, resume after a kill, progress bar) with a per-step
learning-rate schedule. The result is saved as an open_clip ``local-dir:`` folder (``open_clip_config.json``
+ safetensors + ``history.json`` + ``summary.json``) and loaded back with :func:`csdn.clip.load_clip` like
any other CLIP.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from csdn.artifacts import (
    TRAINING_CODE_VERSION,
    atomic_write_json,
    build_once,
    config_key,
    is_complete,
    stored_checksums,
    verify_artifact,
)
from csdn.clip.adapt import TextEncoder
from csdn.clip.loader import (
    CONFIG_FILE,
    TINY_ARCHS,
    WEIGHTS_FILE,
    ClipBundle,
    ClipSource,
    convolutional_tower,
    load_clip,
    registered_config,
    save_local_dir,
)
from csdn.errors import ConfigError
from csdn.runtime import FP32, ComputeConfig, ComputePath, compute_path, seed_everything
from csdn.synthvi.pool import ClipPool, clip_pool
from csdn.synthvi.vocabulary import PoolVocabulary
from csdn.synthvi.world import COLOR_ATTRIBUTES, COLOR_WORDS, SynthConfig
from csdn.train.loop import LoopConfig, StageState, check_finite, run_epochs

log = logging.getLogger(__name__)

PretrainingPaths = tuple[ComputePath, ComputePath]  # compute paths of the image tower and the text tower

HISTORY_FILE = "history.json"  # per-epoch metrics: a list of dicts, as the stages' histories
SUMMARY_FILE = "summary.json"  # counts, timing, throughput and config of the run
_MAX_LOGIT_SCALE = math.log(100.0)


@dataclass(frozen=True)
class PretrainConfig:
    """How the tiny CLIP is pretrained."""

    arch: str = "csdn-tiny-rn"  # one of TINY_ARCHS (any open_clip arch works, but only tiny ones are quick)
    image_size: tuple[int, int] = (128, 64)  # (H, W) input size; pool images are squash-resized to it
    epochs: int = 20  # passes over the pool
    batch_size: int = 64  # images (and their captions) per contrastive batch
    lr: float = 2e-3  # peak AdamW learning rate
    weight_decay: float = 0.05  # AdamW weight decay on weight matrices (not on norms, biases, embeddings)
    warmup_epochs: float = 1.0  # linear warm-up length, then cosine decay to zero
    augment: float = 1.0  # augmentation strength 0..1: scale/shift jitter, flip, brightness/contrast
    attribute_targets: float = 12.0  # sharpness of soft targets from attribute agreement (0 = identity
    # positives only, as CLIP): a caption also partly matches images that share its attributes
    grayscale: float = 0.0  # chance per step that a visible image is shown in grayscale with a colour-free
    # caption (a consistent pair that forces colour-invariant shape cues: garments, bags, hair)
    seed: int = 0  # seeds initialisation, shuffling and augmentation
    max_images: int | None = None  # use at most this many pool images (quick runs); None = all

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", (int(self.image_size[0]), int(self.image_size[1])))
        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError(f"need epochs >= 1 and batch_size >= 2, got {self.epochs} and {self.batch_size}")
        if not 0.0 <= self.augment <= 1.0:
            raise ConfigError(f"augment must lie in [0, 1], got {self.augment}")
        if not 0.0 <= self.grayscale <= 1.0:
            raise ConfigError(f"grayscale must lie in [0, 1], got {self.grayscale}")


def soft_clip_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, targets: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE against soft targets: ``targets[i, j] >= 0`` says how well caption ``j``
    describes image ``i`` (rows are normalised for image->text, columns for text->image)."""
    image = F.normalize(image_features, dim=-1)
    text = F.normalize(text_features, dim=-1)
    logits = logit_scale.exp() * image @ text.t()
    image_to_text = -((targets / targets.sum(dim=1, keepdim=True)) * logits.log_softmax(dim=1)).sum(dim=1).mean()
    text_to_image = -((targets / targets.sum(dim=0, keepdim=True)) * logits.log_softmax(dim=0)).sum(dim=0).mean()
    return (image_to_text + text_to_image) / 2


def multi_positive_clip_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, groups: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE where every pair in the same group (identity x modality) is a positive.

    With all groups distinct this is exactly CLIP's loss. Features need not be normalised.
    """
    positives = (groups[:, None] == groups[None, :]).float()
    return soft_clip_loss(image_features, text_features, positives, logit_scale)


def attribute_agreement(codes: torch.Tensor, observable: torch.Tensor) -> torch.Tensor:
    """Fraction of the attributes observable in both image ``i`` and caption ``j`` on which they agree.

    ``codes`` (B, A) holds each sample's attribute values as integers; ``observable`` (B, A) marks the
    attributes a sample's modality shows (infrared: no colours). Returns (B, B) in [0, 1].
    """
    both = (observable[:, None, :] & observable[None, :, :]).float()
    same = (codes[:, None, :] == codes[None, :, :]).float()
    return (both * same).sum(dim=-1) / both.sum(dim=-1).clamp_min(1.0)


def augment_batch(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Per-image random scale/shift, horizontal flip and brightness/contrast (no hue change: colours
    are attributes). ``x`` is a normalised (B, 3, H, W) batch; strength 0 returns it unchanged."""
    if strength <= 0:
        return x
    batch = x.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, generator=generator)

    scale = uniform(1.0 - 0.15 * strength, 1.0 + 0.05 * strength)
    flip = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = scale * flip
    theta[:, 1, 1] = scale
    theta[:, 0, 2] = uniform(-0.1, 0.1) * strength
    theta[:, 1, 2] = uniform(-0.06, 0.06) * strength
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid.to(x.device), mode="bilinear", padding_mode="border", align_corners=False)
    contrast = uniform(1.0 - 0.2 * strength, 1.0 + 0.2 * strength).view(-1, 1, 1, 1).to(x.device)
    brightness = uniform(-0.2 * strength, 0.2 * strength).view(-1, 1, 1, 1).to(x.device)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * contrast + mean + brightness


def strip_colors(caption: str, color_words) -> str:
    """``caption`` without its colour words ("a red striped top" -> "a striped top")."""
    pattern = r"\b(" + "|".join(sorted(map(re.escape, color_words))) + r")\b\s*"
    return re.sub(r"\s+([,.])", r"\1", re.sub(pattern, "", caption)).strip()


def to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> luma (ITU-R 601) repeated in 3 channels, uint8."""
    luma = images.float() @ torch.tensor([0.299, 0.587, 0.114])
    return luma.round().clamp(0, 255).to(torch.uint8).unsqueeze(-1).expand(-1, -1, -1, 3)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        flat = param.ndim < 2 or "embedding" in name or "logit_scale" in name or name.endswith("class_embedding")
        (no_decay if flat else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def pool_attributes(pool: ClipPool) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer attribute codes (N, A) and the attributes each image's modality shows (N, A)."""
    names = sorted(pool.attributes[0])
    vocab = {name: {} for name in names}
    codes = torch.tensor([[vocab[a].setdefault(attrs[a], len(vocab[a])) for a in names] for attrs in pool.attributes])
    colour = torch.tensor([a in COLOR_ATTRIBUTES for a in names])
    visible = torch.tensor([m == "visible" for m in pool.modalities])
    observable = visible[:, None] | ~colour[None, :]
    return codes, observable


def pool_groups(pool: ClipPool) -> torch.Tensor:
    """One integer per image: its (identity, modality) group."""
    keys = [f"{pid}/{modality}" for pid, modality in zip(np.asarray(pool.pids).tolist(), pool.modalities)]
    index = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    return torch.tensor([index[k] for k in keys], dtype=torch.long)


@dataclass
class _PoolTensors:
    """The first ``n`` pool entries as tensors a contrastive step draws its batch from."""

    images: torch.Tensor  # (n, H, W, 3) uint8
    tokens: torch.Tensor  # (n, context) caption tokens
    plain_tokens: torch.Tensor | None  # tokens of the captions without colour words (grayscale > 0 only)
    visible: torch.Tensor  # (n,) bool: visible images (those that may be shown in grayscale)
    groups: torch.Tensor  # (n,) identity x modality group
    codes: torch.Tensor | None  # (n, A) attribute codes (attribute_targets > 0 only)
    observable: torch.Tensor | None  # (n, A) attributes each image's modality shows (attribute_targets > 0 only)


def _pool_tensors(cfg: PretrainConfig, pool, tokenizer, n: int) -> _PoolTensors:
    """Tokens, images, groups and (as ``cfg`` needs them) colour-free tokens and attributes of ``pool[:n]``."""
    tokens = tokenizer(list(pool.captions[:n]))
    visible = torch.tensor([m == "visible" for m in pool.modalities[:n]])
    plain = tokenizer([strip_colors(c, COLOR_WORDS) for c in pool.captions[:n]]) if cfg.grayscale > 0 else None
    images = torch.from_numpy(np.ascontiguousarray(pool.images[:n]))
    codes, observable = (t[:n] for t in pool_attributes(pool)) if cfg.attribute_targets > 0 else (None, None)
    return _PoolTensors(images, tokens, plain, visible, pool_groups(pool)[:n], codes, observable)


def _batch_loss(
    cfg: PretrainConfig,
    bundle: ClipBundle,
    text_tower: TextEncoder,
    data: _PoolTensors,
    idx: torch.Tensor,
    generator: torch.Generator,
    compute: PretrainingPaths = (FP32, FP32),
) -> torch.Tensor:
    """The contrastive loss of the batch ``idx`` (grayscale and augmentation drawn from ``generator``), the
    image and text towers on ``compute``'s paths and the loss in float32."""
    batch_images, batch_tokens = data.images[idx], data.tokens[idx]
    if cfg.grayscale > 0:
        gray = data.visible[idx] & (torch.rand(len(idx), generator=generator) < cfg.grayscale)
        batch_images = torch.where(gray[:, None, None, None], to_grayscale(batch_images), batch_images)
        batch_tokens = torch.where(gray[:, None], data.plain_tokens[idx], batch_tokens)
    x = augment_batch(bundle.to_input(batch_images), cfg.augment, generator)
    positives = (data.groups[idx, None] == data.groups[None, idx]).float()
    if cfg.attribute_targets > 0:
        agreement = attribute_agreement(data.codes[idx], data.observable[idx])
        positives = torch.maximum(positives, torch.exp(cfg.attribute_targets * (agreement - 1.0)))
    model = bundle.model
    image_path, text_path = compute
    with image_path.autocast():
        image_features = model.encode_image(image_path.images(x))
    with text_path.autocast():
        text_features = text_tower.encode_tokens(batch_tokens)
    return soft_clip_loss(image_features.float(), text_features.float(), positives.to(x.device), model.logit_scale)


def _optimizer(model: torch.nn.Module, cfg: PretrainConfig, steps_per_epoch: int):
    """Fused AdamW and its per-step schedule (linear warm-up, cosine decay to zero)."""
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = max(1, int(round(cfg.warmup_epochs * steps_per_epoch)))
    optimizer = torch.optim.AdamW(  # fused: ~8x faster steps on CPU (the 49408-token embedding dominates)
        _param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6, fused=True
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, warmup_steps, total_steps))
    return optimizer, scheduler


def _epoch_runner(
    cfg: PretrainConfig,
    bundle: ClipBundle,
    data: _PoolTensors,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    on_epoch: Callable[[int, ClipBundle], None] | None,
    compute: PretrainingPaths = (FP32, FP32),
):
    """The loop's ``train_epoch``: one shuffled pass over the pool in whole batches, then ``on_epoch``. The loss
    is summed on the device and read (and checked finite) once an epoch."""
    model, n = bundle.model, len(data.images)
    text_tower = TextEncoder(model, bundle.tokenizer, frozen=False)

    def train_epoch(epoch: int, tick: Callable[[], None]) -> dict[str, float]:
        total, steps = torch.zeros(()), n // cfg.batch_size
        order = torch.randperm(n, generator=generator)
        for step in range(steps):
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            loss = _batch_loss(cfg, bundle, text_tower, data, idx, generator, compute)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, _MAX_LOGIT_SCALE)
            total = total.to(loss.device) + loss.detach()
            tick()  # the loop steps the per-step schedule
        check_finite(total, f"tiny-CLIP pretraining epoch {epoch + 1}")
        metrics = {"loss": total.item() / steps, "logit_scale": float(model.logit_scale.detach().exp())}
        log.info("pretrain %s epoch %d/%d loss %.4f", cfg.arch, epoch + 1, cfg.epochs, metrics["loss"])
        if on_epoch is not None:
            on_epoch(epoch, bundle)
            model.train()
        return metrics

    return train_epoch


def _seeing_the_full_table(
    on_epoch: Callable[[int, ClipBundle], None], model: torch.nn.Module, vocabulary: PoolVocabulary, full: nn.Embedding
) -> Callable[[int, ClipBundle], None]:
    """``on_epoch`` called with the model's full token table in place (any tokenizer output works), the
    training's compact table put back afterwards."""

    def call(epoch: int, bundle: ClipBundle) -> None:
        compact = model.token_embedding
        model.token_embedding = vocabulary.write_back(compact, full)
        try:
            on_epoch(epoch, bundle)
        finally:
            model.token_embedding = compact

    return call


def pretrain_tiny_clip(
    cfg: PretrainConfig,
    pool,
    out_dir: Path,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[int, ClipBundle], None] | None = None,
    run_dir: Path | None = None,
    progress: bool = True,
    compute: PretrainingPaths = (FP32, FP32),
) -> list[dict[str, float]]:
    """Pretrain a CLIP of ``cfg.arch`` from scratch on ``pool`` (image and text towers on ``compute``'s paths)
    and save it as a ``local-dir:`` folder.

    ``pool`` is a SynthVI ``ClipPool`` (images, captions, modalities, pids). Training runs on the shared
    loop of the stages (:func:`csdn.train.loop.run_epochs`): it checkpoints every epoch into ``run_dir``
    and, called again with the same ``run_dir`` after a kill, resumes from the last checkpoint (None: a
    temporary folder, no resume). ``on_epoch(epoch, bundle)``, if given, is called after every epoch (e.g.
    to track zero-shot accuracy; the model is in train mode again afterwards). Returns the per-epoch
    history (``epoch``, ``loss``, ``logit_scale``, ``lr``, ``seconds``), also written to
    ``out_dir/history.json``; throughput, counts and config go to ``out_dir/summary.json``.
    """
    n = len(pool.captions) if cfg.max_images is None else min(cfg.max_images, len(pool.captions))
    if n < cfg.batch_size:
        raise ValueError(f"the pool has {n} images, fewer than one batch of {cfg.batch_size}; lower batch_size")
    if run_dir is None:
        with tempfile.TemporaryDirectory(prefix="csdn-pretrain-") as tmp:
            return pretrain_tiny_clip(cfg, pool, out_dir, device, on_epoch, Path(tmp), progress, compute)
    seed_everything(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    bundle = load_clip(ClipSource(cfg.arch, None, cfg.image_size), device=device)
    model = bundle.model.train()
    compute[0].prepare(model.visual)
    data = _pool_tensors(cfg, pool, bundle.tokenizer, n)
    full_embedding = model.token_embedding  # trained through a table of the pool's tokens (the same training)
    vocabulary = PoolVocabulary.of(full_embedding.num_embeddings, data.tokens, data.plain_tokens)
    data = replace(data, tokens=vocabulary.compact(data.tokens), plain_tokens=vocabulary.compact(data.plain_tokens))
    model.token_embedding = vocabulary.compact_embedding(full_embedding)
    if on_epoch is not None:
        on_epoch = _seeing_the_full_table(on_epoch, model, vocabulary, full_embedding)
    optimizer, scheduler = _optimizer(model, cfg, n // cfg.batch_size)
    stage = StageState(
        f"pretrain {cfg.arch}",
        model,
        optimizer,
        scheduler,
        _epoch_runner(cfg, bundle, data, optimizer, generator, on_epoch, compute),
        n // cfg.batch_size,
        extra_state=lambda: {"generator": generator.get_state()},
        load_extra_state=lambda state: generator.set_state(state["generator"]),
        meta={"arch": cfg.arch, "stage": "tiny_clip", "key": config_key(asdict(cfg)), "n_images": n},
        scheduler_per_step=True,
    )
    history = run_epochs(stage, run_dir, LoopConfig(epochs=cfg.epochs, keep_checkpoints=1, progress=progress))
    model.token_embedding = vocabulary.write_back(model.token_embedding, full_embedding)
    model.eval()
    save_local_dir(bundle, out_dir)
    atomic_write_json(Path(out_dir) / HISTORY_FILE, history)
    atomic_write_json(Path(out_dir) / SUMMARY_FILE, _summary(cfg, pool, n, history))
    return history


def _summary(cfg: PretrainConfig, pool, n: int, history: list[dict[str, float]]) -> dict[str, Any]:
    """Counts, training time over all epochs (also those of a run that was resumed), throughput, config."""
    total = sum(h["seconds"] for h in history)
    return {
        "arch": cfg.arch,
        "epochs": cfg.epochs,
        "total_seconds": total,
        "images_per_second": (n // cfg.batch_size) * cfg.batch_size * cfg.epochs / total,
        "n_images": n,
        "n_infrared": sum(m == "infrared" for m in pool.modalities[:n]),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
        "config": asdict(cfg),
    }


def pretraining_paths(cfg: PretrainConfig, compute: ComputeConfig) -> PretrainingPaths:
    """The compute paths (image tower, text tower) of a tiny CLIP's pretraining (always on the CPU)."""
    cpu = torch.device("cpu")
    image = compute_path(compute, cpu, convolutional=convolutional_tower(cfg.arch))
    return image, compute_path(compute, cpu, convolutional=False)


def tiny_clip_key(cfg: PretrainConfig, synth: SynthConfig, compute: ComputeConfig | None = None) -> str:
    """Cache key of a tiny CLIP: the pretraining and SynthVI configs, the architecture's JSON config, the
    training code's version and the pretraining's resolved compute path."""
    return config_key(
        {
            "pretrain": asdict(cfg),
            "synth": asdict(synth),
            "arch": registered_config(cfg.arch),
            "format": 1,
            "code": TRAINING_CODE_VERSION,
            "compute": [path.identity() for path in pretraining_paths(cfg, compute or ComputeConfig())],
        }
    )


def tiny_clip_folder(
    cfg: PretrainConfig, synth: SynthConfig, cache_root: Path, compute: ComputeConfig | None = None
) -> Path:
    """Where :func:`tiny_clip` keeps the tiny CLIP of ``cfg``, ``synth`` and ``compute`` in ``cache_root``."""
    return Path(cache_root) / "tiny_clip" / tiny_clip_key(cfg, synth, compute)


def is_pretrained(folder: Path) -> bool:
    """Whether ``folder`` holds a finished tiny CLIP that :func:`tiny_clip` would load, not build again (complete,
    with checksums: a folder without them is rebuilt)."""
    return is_complete(folder) and stored_checksums(folder) is not None


def tiny_clip(cfg: PretrainConfig, synth: SynthConfig, cache_root: Path, compute: ComputeConfig | None = None) -> Path:
    """The ``local-dir:`` folder of the tiny CLIP pretrained with ``cfg`` on ``synth``'s CLIP pool.

    Computed once and cached under ``cache_root/tiny_clip/<key>`` (safe under concurrent callers);
    load it with ``load_clip(local_dir_source(path))``. While it trains, its checkpoints live in
    ``cache_root/runs/tiny_clip-<key>`` (outside the build's temporary folder, which a failed build
    removes), so a killed or interrupted pretraining resumes there; they are removed once the folder is complete.
    """
    if cfg.arch not in TINY_ARCHS:
        log.warning("pretraining %s from scratch on SynthVI: expect it to be slow", cfg.arch)
    compute = compute or ComputeConfig()
    target = tiny_clip_folder(cfg, synth, cache_root, compute)
    run_dir = Path(cache_root) / "runs" / f"tiny_clip-{target.name}"

    def produce(tmp: Path) -> None:
        pretrain_tiny_clip(cfg, clip_pool(synth), tmp, run_dir=run_dir, compute=pretraining_paths(cfg, compute))

    folder = build_once(target, produce, checksummed=(WEIGHTS_FILE, CONFIG_FILE))
    shutil.rmtree(run_dir, ignore_errors=True)  # the folder is complete: nothing will resume from these
    verify_artifact(folder)  # damaged weights are an error naming the file, never a different CLIP
    return folder


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: not a folder written by pretrain_tiny_clip")
    return json.loads(path.read_text())


def read_history(folder: Path) -> list[dict[str, Any]]:
    """The per-epoch metrics (``history.json``) of a pretrained tiny CLIP folder, one dict per epoch.

    A folder of an earlier version, whose ``history.json`` holds a list per metric next to the run's
    summary, is read the same way (its per-epoch lists become one dict per epoch).
    """
    history = _read_json(Path(folder) / HISTORY_FILE)
    if isinstance(history, list):
        return history
    columns = {k: v for k, v in history.items() if isinstance(v, list) and len(v) == len(history["loss"])}
    return [{"epoch": i + 1, **{k: v[i] for k, v in columns.items()}} for i in range(len(history["loss"]))]


def read_summary(folder: Path) -> dict[str, Any]:
    """Counts, timing, throughput and config (``summary.json``) of a pretrained tiny CLIP folder.

    For a folder of an earlier version (no ``summary.json``) they are read from its ``history.json``.
    """
    path = Path(folder) / SUMMARY_FILE
    if path.is_file():
        return json.loads(path.read_text())
    old = _read_json(Path(folder) / HISTORY_FILE)
    if isinstance(old, list):
        raise FileNotFoundError(f"{path} is missing: not a folder written by pretrain_tiny_clip")
    return {k: v for k, v in old.items() if not isinstance(v, list)}
