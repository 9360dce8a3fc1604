"""csdn.plan: what is cached, what trains, and the estimate from the profile's epochs, the samplers and a step."""

from __future__ import annotations

from pathlib import Path

import pytest

from csdn.config import get_profile
from csdn.experiment import Experiment
from csdn.overrides import override
from csdn.plan import STEP_COST, demo_runs, stage3_step_seconds, training_plan
from csdn.runs import format_seconds


def test_demo_runs_are_csdn_and_the_vision_only_baseline_on_the_same_schedule() -> None:
    cfg = get_profile("smoke")
    runs = demo_runs(cfg)
    assert list(runs) == ["CSDN", "vision-only"]
    assert runs["CSDN"] == cfg
    assert runs["vision-only"] == override(cfg, {"model.variant": "vision-only"})
    assert list(demo_runs(runs["vision-only"])) == ["vision-only"]  # no second copy of the baseline


def test_format_seconds() -> None:
    assert [format_seconds(s) for s in (0.2, 40, 89, 90, 500, 3599, 5880)] == [
        "1 s",
        "40 s",
        "89 s",
        "2 min",
        "8 min",
        "1 h 00 min",
        "1 h 38 min",
    ]


def test_plan_of_a_cold_cache_lists_every_artifact_once_with_its_estimate(tmp_path: Path) -> None:
    cfg = get_profile("smoke")
    plan = training_plan(demo_runs(cfg), tmp_path, step_seconds=0.5)
    assert [(item.stage, item.runs) for item in plan.items] == [
        ("tiny_clip", ("CSDN", "vision-only")),  # shared: listed once
        ("stage1", ("CSDN",)),
        ("stage2", ("CSDN",)),
        ("stage3", ("CSDN",)),
        ("stage3", ("vision-only",)),
    ]
    assert not any(item.cached for item in plan.items)
    experiment = Experiment(cfg, tmp_path)
    train = experiment.train_records
    infrared = sum(r.modality == "infrared" for r in train)
    visible = len(train) - infrared
    stage3 = plan.items[3]  # the cross-modality sampler: max(visible, infrared) // (P * K) steps an epoch
    assert stage3.steps == max(visible, infrared) // (cfg.stage3.ids_per_batch * cfg.stage3.instances)
    assert stage3.epochs == cfg.stage3.epochs and stage3.seconds == pytest.approx(stage3.epochs * stage3.steps * 0.5)
    tiny = plan.items[0]
    synth, pretrain = cfg.data.synth, cfg.clip.pretrain
    assert tiny.steps == synth.clip_ids * synth.clip_images_per_id // pretrain.batch_size
    assert tiny.seconds == pytest.approx(pretrain.epochs * tiny.steps * 0.5 * STEP_COST["tiny_clip"])
    assert plan.seconds == pytest.approx(sum(item.seconds for item in plan.items))
    text = str(plan)
    assert text.startswith("Training plan: 5 of the 5 trained artifacts needed are not in the cache")
    assert "- stage 3 (re-ID) of vision-only: trains now, 2 epochs x" in text
    assert len(text.splitlines()) == 6  # the prose, then one line per item


def test_plan_up_to_a_stage_and_of_a_text_free_variant(tmp_path: Path) -> None:
    cfg = get_profile("smoke")
    plan = training_plan({"CSDN": cfg}, tmp_path, upto="stage1", step_seconds=0.1)
    assert [item.stage for item in plan.items] == ["tiny_clip", "stage1"]
    mean = override(cfg, {"model.sii": "mean"})  # a parameter-free SII has no stage 2
    assert "stage2" not in [i.stage for i in training_plan({"mean": mean}, tmp_path, step_seconds=0.1).items]
    with pytest.raises(ValueError, match="upto must be one of"):
        training_plan({"CSDN": cfg}, tmp_path, upto="stage4")


def test_plan_after_training_loads_everything_and_measures_nothing(tmp_path: Path, monkeypatch) -> None:
    cfg = get_profile("smoke")
    Experiment(cfg, tmp_path, progress=False).network  # noqa: B018 (trains the tiny CLIP and stages 1-3)
    monkeypatch.setattr("csdn.plan.stage3_step_seconds", lambda *a, **k: pytest.fail("measured with nothing to train"))
    plan = training_plan({"CSDN": cfg}, tmp_path)
    assert all(item.cached for item in plan.items) and plan.seconds == 0 and plan.step_seconds is None
    assert str(plan).startswith(f"Everything needed is in the cache {tmp_path}: it is loaded, nothing trains.")
    assert all("cached, loaded" in line for line in str(plan).splitlines()[1:])
    half = training_plan(demo_runs(cfg), tmp_path, step_seconds=0.1)  # the baseline's stage 3 is still missing
    assert [item.stage for item in half.to_train] == ["stage3"] and half.to_train[0].runs == ("vision-only",)


def test_a_measured_stage3_step_is_positive_and_trains_nothing(tmp_path: Path) -> None:
    cfg = override(get_profile("smoke"), {"clip.weights": "random"})
    experiment = Experiment(cfg, tmp_path, progress=False)
    seconds = stage3_step_seconds(experiment, steps=4, base=2)
    assert 0 < seconds < 60
    assert not (tmp_path / "runs").exists() and not (tmp_path / "tiny_clip").exists()
    with pytest.raises(ValueError, match="need 0 < base < steps"):
        stage3_step_seconds(experiment, steps=2, base=2)
