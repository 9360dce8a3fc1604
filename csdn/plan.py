"""What a notebook or command is about to train, what is already cached, and about how long the rest takes.

:func:`training_plan` takes the runs a piece of work needs (``{label: ExperimentConfig}``) and the artifact
cache, and lists every trained artifact those runs build on, each once however many runs share it: the tiny
CLIP (profiles with ``clip.weights="tiny-synthvi"``), stage 1 (prompts), stage 2 (a trainable SII) and stage 3.
For each one it says whether the cache holds it (then it is loaded, in seconds) and otherwise estimates its
training time as

    epochs x steps per epoch x seconds per step,

with the steps per epoch the length of the stage's own batch sampler on the run's training data, and the
seconds per step measured on this machine: a few steps of the real stage-3 loop (:func:`stage3_step_seconds`,
also used by ``benchmarks/bench_scaling.py``), and the other stages at their cost per step relative to a
stage-3 step (:data:`STEP_COST`, measured by ``benchmarks/bench_plan.py``). Nothing is trained or written
but the dataset and the training images' cache, which the training reads anyway; the timing runs on random
CLIP weights of the run's architecture (the cost of a step does not depend on the weights), so the tiny CLIP
is not pretrained to time a step. When everything is cached nothing is measured.

The estimate covers training epochs; evaluation, feature extraction and validation come on top (seconds to
a minute on the demo profile), and a busy machine takes longer.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from csdn.config import ExperimentConfig
from csdn.data.records import INFRARED, VISIBLE
from csdn.data.release_bank import FeatureBankBatches
from csdn.data.sampler import CrossModalitySampler
from csdn.experiment import DONE, Experiment
from csdn.overrides import override
from csdn.runs import format_seconds
from csdn.synthvi.pretrain import is_pretrained, tiny_clip_folder
from csdn.train.loop import LoopConfig
from csdn.train.reid_stage import train_reid

BASELINE_VARIANT = "vision-only"  # the baseline `csdn demo` trains and notebooks 00, 05 and 08 compare against

# The stages of a run in training order: key -> the plan's name for it.
STAGES = {
    "tiny_clip": "tiny CLIP pretraining",
    "stage1": "stage 1 (prompts)",
    "stage2": "stage 2 (SII)",
    "stage3": "stage 3 (re-ID)",
}
# Seconds of one step of each stage (its epoch's own overhead, such as stage 1's diagnostics over every
# training image, spread over its steps) per second of a stage-3 step, measured on the demo profile with one
# CPU thread (`python benchmarks/bench_plan.py`: the demo's tiny CLIP and stages 1-2 trained from scratch,
# their histories' seconds per step against a stage-3 step measured in the same process: 1.03, 0.14, 0.01).
# Other architectures and devices have other ratios: there the text stages' and the tiny CLIP's estimates
# are rough.
STEP_COST = {"tiny_clip": 1.0, "stage1": 0.15, "stage2": 0.02, "stage3": 1.0}


def demo_runs(cfg: ExperimentConfig) -> dict[str, ExperimentConfig]:
    """The runs ``csdn demo`` trains and notebooks 00, 05 and 08 compare: CSDN (``cfg``) and the vision-only
    baseline (``cfg`` with ``model.variant`` = :data:`BASELINE_VARIANT`: the same data, schedule and seed)."""
    if cfg.model.variant == BASELINE_VARIANT:
        return {BASELINE_VARIANT: cfg}
    return {"CSDN": cfg, BASELINE_VARIANT: override(cfg, {"model.variant": BASELINE_VARIANT})}


@dataclass(frozen=True)
class PlanItem:
    """One trained artifact of the plan."""

    stage: str  # a key of STAGES
    runs: tuple[str, ...]  # labels of the runs that need it
    path: Path  # its folder in the artifact cache
    cached: bool  # the cache holds it finished: it is loaded, not trained
    epochs: int
    steps: int  # steps per epoch
    seconds: float  # estimated training time (0 when cached)

    @property
    def title(self) -> str:
        return f"{STAGES[self.stage]} of {', '.join(self.runs)}" if self.stage != "tiny_clip" else STAGES[self.stage]

    def line(self) -> str:
        """One line: what, cached or its epochs x steps and estimate, the folder."""
        if self.cached:
            return f"- {self.title}: cached, loaded ({self.path})"
        return (
            f"- {self.title}: trains now, {self.epochs} epochs x {self.steps} steps, "
            f"about {format_seconds(self.seconds)}"
        )


@dataclass(frozen=True)
class TrainingPlan:
    """The artifacts some work needs, cached or to train, with the estimate of what trains."""

    items: tuple[PlanItem, ...]
    cache_root: Path
    step_seconds: float | None  # the measured seconds of a stage-3 step (None: nothing to train, not measured)
    device: str = "cpu"

    @property
    def to_train(self) -> tuple[PlanItem, ...]:
        return tuple(item for item in self.items if not item.cached)

    @property
    def seconds(self) -> float:
        """Estimated seconds of all training (0 when everything is cached)."""
        return sum(item.seconds for item in self.to_train)

    def summary(self) -> str:
        """The plan in a sentence or two."""
        if not self.items:
            return "Nothing here trains."
        if not self.to_train:
            return f"Everything needed is in the cache {self.cache_root}: it is loaded, nothing trains."
        return (
            f"Training plan: {len(self.to_train)} of the {len(self.items)} trained artifacts needed are not in the "
            f"cache {self.cache_root} and train now, about {format_seconds(self.seconds)} on this machine "
            f"({self.device}). The estimate: a stage-3 step of {self.step_seconds:.2f} s measured just now, times "
            "each stage's epochs and steps per epoch (the other stages at their measured cost per step relative "
            "to a stage-3 step); evaluation comes on top, and a busy machine takes longer."
        )

    def __str__(self) -> str:
        return "\n".join([self.summary(), *(item.line() for item in self.items)])


def training_plan(
    runs: Mapping[str, ExperimentConfig],
    cache_root: Path,
    upto: str = "stage3",
    step_seconds: float | None = None,
) -> TrainingPlan:
    """The plan of training ``runs`` (label -> config) up to stage ``upto`` (a key of :data:`STAGES`) in
    ``cache_root``: module docstring. ``step_seconds`` replaces the measured stage-3 step (tests)."""
    if upto not in STAGES:
        raise ValueError(f"upto must be one of {list(STAGES)}, got {upto!r}")
    stages = list(STAGES)[: list(STAGES).index(upto) + 1]
    found: dict[Path, dict[str, Any]] = {}  # folder -> the item's fields, in training order
    experiments = {label: Experiment(cfg, cache_root, progress=False) for label, cfg in runs.items()}
    for label, experiment in experiments.items():
        for stage, path, cached in _artifacts(experiment, stages):
            entry = found.setdefault(path, {"stage": stage, "runs": [], "cached": cached, "experiment": experiment})
            entry["runs"].append(label)
    step = None
    if any(not entry["cached"] for entry in found.values()):
        pending = [e["experiment"] for e in found.values() if not e["cached"] and e["stage"] == "stage3"]
        step = step_seconds or _measured_step((pending or list(experiments.values()))[0])
    items, labels_of = [], {}  # (the training labels of each data config: a grid's runs share them)
    for path, entry in found.items():
        epochs, steps = _schedule(entry["experiment"], entry["stage"], labels_of)
        seconds = 0.0 if entry["cached"] else epochs * steps * step * STEP_COST[entry["stage"]]
        items.append(PlanItem(entry["stage"], tuple(entry["runs"]), path, entry["cached"], epochs, steps, seconds))
    order = list(STAGES)
    items.sort(key=lambda item: order.index(item.stage))  # stable: the runs' order within a stage
    device = str(next(iter(experiments.values())).device) if experiments else "cpu"
    return TrainingPlan(tuple(items), Path(cache_root), step, device)


def _artifacts(experiment: Experiment, stages: list[str]) -> list[tuple[str, Path, bool]]:
    """(stage, cache folder, cached) of each artifact ``experiment`` trains among ``stages``."""
    cfg, root = experiment.cfg, experiment.cache_root
    out = []
    if "tiny_clip" in stages and cfg.clip.weights == "tiny-synthvi":
        folder = tiny_clip_folder(cfg.clip.pretrain, cfg.data.synth, root, cfg.compute)
        out.append(("tiny_clip", folder, is_pretrained(folder)))
    keys = {}
    if cfg.model.uses_text:
        keys["stage1"] = lambda: experiment.stage1_key
        if cfg.trains_sii:
            keys["stage2"] = lambda: experiment.stage2_key
    keys["stage3"] = lambda: experiment.stage3_key
    for stage, key in keys.items():
        if stage in stages:
            folder = experiment.run_dir(stage, key())
            out.append((stage, folder, (folder / DONE).is_file()))
    return out


def _schedule(experiment: Experiment, stage: str, labels_of: dict) -> tuple[int, int]:
    """(epochs, steps per epoch) of ``stage`` of ``experiment``: its config's epochs, its sampler's length
    (``labels_of``: the visible and infrared training labels by data config, filled as they are read)."""
    cfg = experiment.cfg
    if stage == "tiny_clip":
        pretrain, synth = cfg.clip.pretrain, cfg.data.synth
        images = synth.clip_ids * synth.clip_images_per_id
        images = images if pretrain.max_images is None else min(images, pretrain.max_images)
        return pretrain.epochs, max(1, images // pretrain.batch_size)
    if cfg.data not in labels_of:
        records, labels = experiment.train_records, experiment.labels
        labels_of[cfg.data] = tuple([labels[r.pid] for r in records if r.modality == m] for m in (VISIBLE, INFRARED))
    visible, infrared = labels_of[cfg.data]
    settings = getattr(cfg, stage)
    if stage == "stage3" or settings.feature_bank != "release":
        sampler = CrossModalitySampler(visible, infrared, settings.ids_per_batch, settings.instances)
    else:
        stage_number = int(stage[-1])
        sampler = FeatureBankBatches(visible, infrared, settings.ids_per_batch, settings.instances, stage=stage_number)
    return settings.epochs, min(len(sampler), settings.max_steps or len(sampler))


_MEASURED: dict[tuple, float] = {}  # measured stage-3 steps of this process, by what a step's cost depends on


def _measured_step(experiment: Experiment) -> float:
    """:func:`stage3_step_seconds` of ``experiment``'s stage 3 on random CLIP weights of its architecture,
    measured once per process for each shape of step."""
    cfg = experiment.cfg
    s3 = cfg.stage3
    shape = (cfg.clip.arch, cfg.data.height, cfg.data.width, s3.ids_per_batch, s3.instances, s3.views)
    shape += (str(experiment.device), repr(experiment.compute.identity()))
    if shape not in _MEASURED:
        timing = Experiment(override(cfg, {"clip.weights": "random"}), experiment.cache_root, progress=False)
        _MEASURED[shape] = stage3_step_seconds(timing)
    return _MEASURED[shape]


def stage3_step_seconds(experiment: Experiment, steps: int = 10, base: int = 3, warmup: int = 1) -> float:
    """Seconds of one step of the real stage-3 loop (``train_reid``: batch assembly with the augmentations,
    the network on the compute path, losses, backward, Adam) on ``experiment``'s training images: the time
    of ``steps`` steps less the time of ``base`` steps, over ``steps - base`` (loader start-up and the first,
    slower step cancel), after a run of ``warmup`` steps that is not counted (a process's first steps also
    pay one-time costs, such as building the CPU's bf16 kernels, which would otherwise fall on ``base``).

    The network is ``experiment``'s, with text prototypes of random values when its variant uses text; give it
    random CLIP weights (``clip.weights="random"``) where only the time matters, so that no tiny CLIP is
    pretrained for it. Nothing is cached."""
    if not 0 < base < steps:
        raise ValueError(f"need 0 < base < steps, got base={base}, steps={steps}")
    cache = experiment.train_cache
    labels = [experiment.labels[r.pid] for r in cache.records]
    prototypes = None
    if experiment.cfg.model.uses_text:
        generator = torch.Generator().manual_seed(0)
        dim = experiment.clip.embed_dim
        prototypes = {m: torch.randn(experiment.num_ids, dim, generator=generator) for m in (VISIBLE, INFRARED)}
    seconds = {}
    for n in (warmup, base, steps) if warmup else (base, steps):
        cfg = override(experiment.cfg, {"stage3.max_steps": n, "stage3.epochs": 1}).stage3
        with tempfile.TemporaryDirectory(prefix="csdn-step-") as run_dir:
            history = train_reid(
                experiment.build_network(),
                cache,
                labels,
                prototypes,
                cfg,
                experiment.transforms,
                Path(run_dir),
                LoopConfig(epochs=1, progress=False),
                device=experiment.device,
                compute=experiment.compute,
            )
            seconds[n] = history[-1]["seconds"]  # the loop's clock of the epoch
    difference = (seconds[steps] - seconds[base]) / (steps - base)
    return difference if difference > 0 else seconds[steps] / steps  # (a hiccup of the machine in the short run)
