"""Shared loop: exact resume after an interruption, non-finite loss handling, checkpoint validation."""

from pathlib import Path

import pytest
import torch

from csdn.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from csdn.train.loop import LoopConfig, NonFiniteLossError, StageState, check_finite, run_epochs
from csdn.train.schedule import make_scheduler, warmup_cosine_factor, warmup_multistep_factor


class Interrupt(Exception):
    pass


def _toy_stage(fail_at: int | None = None, nan_at: int | None = None, dims: int = 3) -> StageState:
    torch.manual_seed(0)
    x = torch.randn(64, dims)
    y = x @ torch.arange(1.0, dims + 1) + 0.1
    model = torch.nn.Linear(dims, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    sched = make_scheduler(opt, "multistep", epochs=6, warmup_epochs=2, warmup_factor=0.1, milestones=(4,))

    def train_epoch(epoch: int, tick) -> dict[str, float]:
        if epoch == fail_at:
            raise Interrupt()
        order = torch.randperm(64)  # global RNG: must be restored on resume
        total = 0.0
        for i in range(0, 64, 16):
            idx = order[i : i + 16]
            loss = ((model(x[idx]).squeeze(1) - y[idx]) ** 2).mean()
            if epoch == nan_at:
                loss = loss * float("nan")
            check_finite(loss, f"toy epoch {epoch}")
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            tick()
        return {"loss": total / 4}

    return StageState("toy", model, opt, sched, train_epoch, steps_per_epoch=4, meta={"arch": f"linear{dims}"})


def test_resume_reaches_the_same_weights(tmp_path: Path) -> None:
    cfg = LoopConfig(epochs=6, progress=False)
    straight = _toy_stage()
    hist_a = run_epochs(straight, tmp_path / "a", cfg)

    interrupted = _toy_stage(fail_at=3)
    with pytest.raises(Interrupt):
        run_epochs(interrupted, tmp_path / "b", cfg)
    assert latest_checkpoint(tmp_path / "b").name == "epoch_0003"
    resumed = _toy_stage()
    hist_b = run_epochs(resumed, tmp_path / "b", cfg)

    for k, v in straight.module.state_dict().items():
        torch.testing.assert_close(resumed.module.state_dict()[k], v, rtol=0, atol=0)
    assert [h["loss"] for h in hist_a] == [h["loss"] for h in hist_b]
    assert len(hist_b) == 6


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path: Path) -> None:
    stage = _toy_stage(nan_at=2)
    with pytest.raises(NonFiniteLossError, match="toy epoch 2"):
        run_epochs(stage, tmp_path, LoopConfig(epochs=6, progress=False))
    last = latest_checkpoint(tmp_path)
    assert last.name == "epoch_0002"
    ckpt = load_checkpoint(last, _toy_stage().module, expect={"arch": "linear3"})
    assert ckpt.epoch == 2
    assert all(torch.isfinite(p).all() for p in _toy_stage().module.parameters())


def test_checkpoint_of_other_architecture_is_refused(tmp_path: Path) -> None:
    run_epochs(_toy_stage(), tmp_path, LoopConfig(epochs=1, progress=False))
    with pytest.raises(CheckpointError, match="arch"):
        load_checkpoint(latest_checkpoint(tmp_path), _toy_stage(dims=4).module, expect={"arch": "linear4"})
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(latest_checkpoint(tmp_path), _toy_stage(dims=4).module)


def test_only_recent_checkpoints_are_kept(tmp_path: Path) -> None:
    run_epochs(_toy_stage(), tmp_path, LoopConfig(epochs=5, keep_checkpoints=2, progress=False))
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["epoch_0004", "epoch_0005", "latest.json"]


def test_best_val_selection_restores_best_epoch(tmp_path: Path) -> None:
    stage = _toy_stage()
    snapshots = {}

    def validate(epoch: int) -> dict[str, float]:
        snapshots[epoch] = {k: v.clone() for k, v in stage.module.state_dict().items()}
        return {"score": 1.0 if epoch == 2 else 0.0}

    stage.validate = validate
    run_epochs(stage, tmp_path, LoopConfig(epochs=5, validate_every=1, select="best_val", progress=False))
    for k, v in snapshots[2].items():
        torch.testing.assert_close(stage.module.state_dict()[k], v)


def test_schedule_factors_by_hand() -> None:
    # warm-up from 0.01 over 10 epochs, x0.1 at 40 and 70 (the released stage-3 schedule)
    f = lambda e: warmup_multistep_factor(e, 10, 0.01, (40, 70), 0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.01)
    assert f(5) == pytest.approx(0.01 * 0.5 + 0.5)
    assert f(10) == 1.0 and f(39) == 1.0
    assert f(40) == pytest.approx(0.1) and f(70) == pytest.approx(0.01)
    g = lambda e: warmup_cosine_factor(e, 5, 1e-5 / 3e-4, 60)  # noqa: E731
    assert g(0) == pytest.approx(1e-5 / 3e-4)
    assert g(5) == pytest.approx(1.0)
    assert g(60) == pytest.approx(0.0, abs=1e-12)
    assert g(int(5 + 55 / 2)) == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(torch.pi * 27 / 55)).item()))
    with pytest.raises(ValueError, match="unknown schedule"):
        make_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1), "step", 1, 0, 1.0)


def test_a_resumed_run_removes_what_a_killed_save_left(tmp_path: Path) -> None:
    interrupted = _toy_stage(fail_at=2)
    with pytest.raises(Interrupt):
        run_epochs(interrupted, tmp_path, LoopConfig(epochs=4, progress=False))
    stale = tmp_path / ".best.safetensors.k1ll3d.tmp"  # as a SIGKILL inside atomic_save_tensors leaves it
    stale.write_bytes(b"half a file")
    run_epochs(_toy_stage(), tmp_path, LoopConfig(epochs=4, progress=False))
    assert not stale.exists()
    assert not list(tmp_path.glob(".*.tmp"))
