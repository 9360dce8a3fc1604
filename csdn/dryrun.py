"""A dry run: a real configuration end to end in minutes, to check it before a day of GPU time.

``csdn train --dry-run [N]`` (:func:`dry_run_overrides`) trains every stage for one epoch of at most ``N``
steps (``stage{1,2,3}.epochs=1``, ``stage{1,2,3}.max_steps=N``) and evaluates at most :data:`DRY_RUN_IMAGES`
queries and gallery images per split (``eval.max_images``); ``--set stage3.max_steps=N`` alone caps one
stage. Any of these caps makes the run a dry run (:func:`is_dry_run`): its stages train in
``<cache>/dry-runs/`` (wiped at the start, no ``done.json``), so a dry run is never cached as a finished
stage, and the report says "DRY RUN" (:func:`dry_run_note`). The caps also enter the stages' cache keys,
so no real run can load a dry run's weights. What a dry run computes in full, and leaves in the cache for
the real run, is what every run shares: the dataset's image caches (every training and test image
decoded, so an unreadable one is found) and the frozen CLIP's features of the training images.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from csdn.data.protocol import EvalSplit

DRY_RUN_STEPS = 2  # steps per stage of `--dry-run` without a number
DRY_RUN_IMAGES = 64  # queries and gallery images a dry run ranks per split
STAGES = ("stage1", "stage2", "stage3")


def dry_run_overrides(steps: int = DRY_RUN_STEPS, images: int = DRY_RUN_IMAGES) -> dict[str, Any]:
    """The dotted overrides of a dry run: one epoch of at most ``steps`` steps per stage, ``images`` evaluated."""
    if steps < 1:
        from csdn.errors import ConfigError

        raise ConfigError(f"--dry-run takes a number of steps >= 1, got {steps}")
    caps: dict[str, Any] = {}
    for stage in STAGES:
        caps.update({f"{stage}.epochs": 1, f"{stage}.max_steps": steps})
    return {**caps, "eval.max_images": images}


def is_dry_run(cfg) -> bool:
    """Whether ``cfg`` (an ExperimentConfig) caps any stage's steps or the images evaluated."""
    return any(getattr(cfg, stage).max_steps for stage in STAGES) or cfg.eval.max_images > 0


def dry_run_note(cfg) -> str:
    """The line a dry run's report starts with (what was capped)."""
    steps = ", ".join(
        f"{s} {getattr(cfg, s).epochs} epoch(s) x {getattr(cfg, s).max_steps or 'all'} steps" for s in STAGES
    )
    images = cfg.eval.max_images or "all"
    return f"DRY RUN ({steps}; at most {images} queries and gallery images per split): not a result"


def capped_split(split: EvalSplit, images: int) -> EvalSplit:
    """``split`` with at most ``images`` queries (spread over the list) and, per trial, at most ``images`` gallery
    images: those of the kept queries' identities first, then the others in order."""
    if images <= 0 or len(split.query) <= images and all(len(split.gallery(t)) <= images for t in split.trials):
        return split
    step = max(1, len(split.query) // images)
    query = split.query[::step][:images]
    pids = {r.pid for r in query}

    def gallery_of(trial: int) -> list:
        gallery = split.gallery(trial)
        return ([r for r in gallery if r.pid in pids] + [r for r in gallery if r.pid not in pids])[:images]

    return replace(split, query=query, gallery_of=gallery_of, title=f"{split.title} (dry run)")
