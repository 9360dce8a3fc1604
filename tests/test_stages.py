"""The three training stages on tiny data: they learn, they resume exactly, the Experiment caches them."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from csdn.clip.loader import ClipSource, load_clip
from csdn.config import get_profile
from csdn.data.cache import ImageCache
from csdn.data.records import INFRARED, VISIBLE, label_map
from csdn.data.transforms import TransformConfig
from csdn.experiment import Experiment
from csdn.model.network import CSDNNet
from csdn.model.prompts import ModalityPrompts
from csdn.model.sii import make_sii
from csdn.sources import open_dataset
from csdn.train.loop import LoopConfig
from csdn.train.reid_stage import ReIDStageConfig, train_reid
from csdn.train.text_stages import CachedFeatures, TextStageConfig, train_prompts, train_sii

SIZE = (64, 32)


@pytest.fixture(scope="module")
def bundle():
    torch.manual_seed(0)
    return load_clip(ClipSource(arch="csdn-tiny-rn", image_size=SIZE))


def _features(num_ids: int = 6, per_id: int = 4, dim: int = 128) -> CachedFeatures:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(num_ids, dim, generator=g)
    labels = torch.arange(num_ids).repeat_interleave(per_id)
    noise = lambda: 0.3 * torch.randn(len(labels), dim, generator=g)  # noqa: E731
    return CachedFeatures(centres[labels] + noise(), labels, centres[labels] + noise(), labels.clone())


@pytest.mark.parametrize("feature_bank", ["release", "images"])
@pytest.mark.parametrize("pairing", ["private", "all"])
def test_stage1_prompt_learning_reduces_the_loss(bundle, tmp_path: Path, pairing: str, feature_bank: str) -> None:
    enc = bundle.text_encoder()
    prompts = ModalityPrompts.build(
        6,
        shared=False,
        wording="paper",
        token_embedding=enc.token_embedding,
        tokenizer=bundle.tokenizer,
        context_length=bundle.context_length,
        generator=torch.Generator().manual_seed(0),
    )
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    cfg = TextStageConfig(
        epochs=6, warmup_epochs=1, lr=3e-3, ids_per_batch=3, instances=2, pairing=pairing, feature_bank=feature_bank
    )
    history = train_prompts(prompts, enc, _features(), cfg, tmp_path, LoopConfig(epochs=6, progress=False))
    assert history[-1]["loss"] < history[0]["loss"]
    for k, v in enc.state_dict().items():  # the text encoder stays frozen
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("feature_bank", ["release", "images"])
def test_stage2_trains_only_sii(tmp_path: Path, feature_bank: str) -> None:
    feats = _features()
    g = torch.Generator().manual_seed(1)
    t_vis, t_ir = torch.randn(6, 128, generator=g), torch.randn(6, 128, generator=g)
    sii = make_sii("official", 128)
    cfg = TextStageConfig(epochs=5, warmup_epochs=1, lr=1e-3, ids_per_batch=3, instances=2, feature_bank=feature_bank)
    history = train_sii(sii, t_vis, t_ir, feats, cfg, tmp_path, LoopConfig(epochs=5, progress=False))
    assert history[-1]["loss"] < history[0]["loss"]


class _Stop(Exception):
    pass


def test_stage3_resume_matches_uninterrupted_run(bundle, tmp_path: Path) -> None:
    data = get_profile("smoke").data
    reader = open_dataset(data, tmp_path / "cache", progress=False)
    records = reader.train
    cache = ImageCache.build(records, SIZE, tmp_path / "cache", progress=False)
    labels_of = label_map(records)
    labels = [labels_of[r.pid] for r in cache.records]
    protos = {
        m: torch.randn(len(labels_of), bundle.embed_dim, generator=torch.Generator().manual_seed(2))
        for m in (VISIBLE, INFRARED)
    }
    cfg = ReIDStageConfig(epochs=3, warmup_epochs=1, milestones=(2,), ids_per_batch=4, instances=2)
    tcfg = TransformConfig(height=SIZE[0], width=SIZE[1])
    loop = LoopConfig(epochs=3, progress=False, validate_every=1)

    def run(run_dir: Path, stop_at: int | None) -> CSDNNet:
        torch.manual_seed(0)
        net = CSDNNet(bundle.visual(), len(labels_of))

        def validate(epoch: int) -> dict[str, float]:
            if epoch == stop_at:
                raise _Stop()
            return {"score": 0.0}

        train_reid(net, cache, labels, protos, cfg, tcfg, run_dir, loop, seed=0, validate=validate)
        return net

    straight = run(tmp_path / "a", None)
    with pytest.raises(_Stop):
        run(tmp_path / "b", stop_at=1)  # killed during epoch 2: epoch 1's checkpoint survives
    resumed = run(tmp_path / "b", None)
    for k, v in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0, msg=k)


def test_experiment_smoke_end_to_end_and_cached(tmp_path: Path) -> None:
    cfg = get_profile("smoke")
    exp = Experiment(cfg, tmp_path, progress=False)
    results = exp.evaluate()
    assert set(results) == {"all 1-shot", "indoor 1-shot"}
    assert all(0.0 <= r.mAP <= 1.0 for r in results.values())
    assert {"stage1", "stage2", "stage3"} <= set(exp.histories)
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir() if p.is_dir())
    assert [r.split("-")[0] for r in runs] == ["stage1", "stage2", "stage3"]
    stamp = {r: (tmp_path / "runs" / r / "final.safetensors").stat().st_mtime_ns for r in runs}

    again = Experiment(cfg, tmp_path, progress=False)  # a second notebook: everything is reused
    torch.testing.assert_close(again.network.state_dict(), exp.network.state_dict())
    assert stamp == {r: (tmp_path / "runs" / r / "final.safetensors").stat().st_mtime_ns for r in runs}

    other = Experiment(replace(cfg, model=replace(cfg.model, sii="mean")), tmp_path, progress=False)
    other.network  # noqa: B018  - reuses stage 1, has no stage 2 to train, trains its own stage 3
    runs_after = sorted(p.name for p in (tmp_path / "runs").iterdir() if p.is_dir())
    assert len([r for r in runs_after if r.startswith("stage1")]) == 1
    assert len([r for r in runs_after if r.startswith("stage3")]) == 2


def test_cache_keys_carry_the_training_code_version(tmp_path: Path, monkeypatch) -> None:
    """An artifact written by an older version of the training code is never served to the new code."""
    import csdn.experiment.inputs as experiment
    import csdn.synthvi.pretrain as pretrain

    cfg = get_profile("smoke")
    for variant in ("csdn", "vision-only"):
        run = replace(cfg, model=replace(cfg.model, variant=variant))

        def keys(run=run) -> tuple[str, ...]:
            exp = Experiment(run, tmp_path, progress=False)
            text = (exp.stage1_key,) if run.model.uses_text else ()
            return (*text, exp.stage3_key, pretrain.tiny_clip_key(run.clip.pretrain, run.data.synth))

        now = keys()
        monkeypatch.setattr(experiment, "TRAINING_CODE_VERSION", experiment.TRAINING_CODE_VERSION - 1)
        monkeypatch.setattr(pretrain, "TRAINING_CODE_VERSION", pretrain.TRAINING_CODE_VERSION - 1)
        older = keys()
        monkeypatch.undo()
        assert all(a != b for a, b in zip(now, older)), (variant, now, older)
        assert keys() == now  # and the keys are stable within one version


def test_msel_needs_two_images_per_identity_and_modality() -> None:
    with pytest.raises(ValueError, match="instances >= 2"):
        ReIDStageConfig(instances=1)
    assert ReIDStageConfig(instances=1, msel_weight=0).instances == 1


@pytest.mark.parametrize("epochs", [0, -3])
@pytest.mark.parametrize("stage", ["stage1", "stage2", "stage3"])
def test_a_stage_that_would_train_needs_an_epoch(stage: str, epochs: int) -> None:
    from csdn.errors import ConfigError
    from csdn.overrides import override

    with pytest.raises(ConfigError, match=rf"{stage}.epochs must be >= 1|epochs must be >= [01]"):
        override(get_profile("smoke"), {f"{stage}.epochs": epochs})


def test_stages_that_do_not_train_may_have_no_epochs() -> None:
    from csdn.overrides import override

    smoke = get_profile("smoke")
    for sii in ("mean", "none"):  # parameter-free fusion: stage 2 is skipped
        assert override(smoke, {"model.sii": sii, "stage2.epochs": 0}).stage2.epochs == 0
    vision = override(smoke, {"model.variant": "vision-only", "stage1.epochs": 0, "stage2.epochs": 0})
    assert vision.stage1.epochs == 0
    assert override(smoke, {"model.variant": "clip-reid", "stage2.epochs": 0}).stage2.epochs == 0  # no fusion


def test_tiny_clip_pretraining_needs_an_epoch() -> None:
    from csdn.errors import ConfigError
    from csdn.overrides import override

    with pytest.raises(ConfigError, match=r"need epochs >= 1"):
        override(get_profile("smoke"), {"clip.pretrain.epochs": 0})
