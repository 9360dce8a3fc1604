"""Distributed training: rank helpers on a 2-process gloo group, and torchrun vs one process on smoke.

What is equal and what is not. With world size W each rank trains on P/W identities of the same
global batch (with the same augmentations); DDP averages the gradients of per-rank ID/HSE means of
equal-sized shards (= the global means' gradients), the triplet and contrastive terms see the
gathered global batch, and SyncBatchNorm normalises with global-batch statistics. An update then
equals the one-process update on the global batch; only floating-point summation order differs
(shards, all-reduced partial sums). The toy test runs in float64 and agrees to 1e-12, which shows
the computation itself is the same. The smoke runs are float32: losses agree to ~1e-6 there. Weights
agree to a small fraction of the learning rate: Adam moves a parameter whose gradient is float noise by
about +-lr whatever the noise, so summation order shows up at the scale of lr (measured: 7e-7 for stage 3
at the release's 3e-4, 2.6e-4 at the smoke profile's 8e-3; 1e-5 for stage 2, whose Adam steps amplify
stage 1's 1e-7 differences), so the weight tolerance is 1e-3. Per-rank BatchNorm (``--no-sync-bn``) is a different
computation: its stage-3 weights differ by ~1e-1, which the last test checks so that the comparison
is known to be able to fail.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch import nn

from csdn.losses import triplet_wrt
from csdn.runtime import bf16_supported
from csdn.train.distributed import SINGLE, CpuSyncBatchNorm, DistContext, sync_batchnorm, wrap_ddp

LOSS_TOL = 1e-4  # per-epoch mean losses, absolute
WEIGHT_TOL = 1e-3  # every parameter and buffer of every stage, absolute (values are O(1); see the docstring)
STAGES = ("stage1", "stage2", "stage3")


# -- rank helpers on a real 2-process gloo group ---------------------------------------------------


def _toy_model() -> nn.Module:
    """In float64, so that equal computations agree to ~1e-15 and summation order cannot hide a flaw."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 4))
    model.unused = nn.Parameter(torch.ones(2))  # never used in forward: DDP must cope
    return model.double()


def _toy_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, generator=g, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def _train_toy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: DistContext, sync_bn: bool = True, steps: int = 3
) -> list[float]:
    """SGD steps on ID cross-entropy (local mean) + a batch-coupling triplet term (on the gathered batch)."""
    params = [p for n, p in model.named_parameters() if "unused" not in n]
    ddp = wrap_ddp(model, ctx, sync_bn=sync_bn)
    optimizer = torch.optim.SGD(params, lr=0.5)
    losses = []
    for _ in range(steps):
        feats = ddp(x)
        loss = nn.functional.cross_entropy(feats, y) + triplet_wrt(ctx.gather_with_grad(feats), ctx.gather_with_grad(y))
        losses.append(float(ctx.mean(loss.detach())))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return losses


def _worker(rank: int, world: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    ctx = DistContext(rank=rank, world_size=world)
    try:
        result: dict = {"shard": list(ctx.shard(5))}
        local = torch.tensor([[float(i), -float(i)] for i in ctx.shard(5)])
        result["gathered"] = ctx.gather_rows(local, 5)
        result["agree"] = ctx.agree(rank == 0)
        result["mean"] = ctx.mean(torch.tensor([float(rank), 10.0 * rank]))
        x, y = _toy_batch()
        mine = slice(rank * 4, rank * 4 + 4)  # two identities per rank, as the sharded sampler deals them
        for sync_bn in (True, False):
            model = _toy_model()
            result[f"losses_sync{sync_bn}"] = _train_toy(model, x[mine], y[mine], ctx, sync_bn)
            result[f"state_sync{sync_bn}"] = model.state_dict()
            result[f"bn_sync{sync_bn}"] = type(model[1]).__name__
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(2, str(folder / "store"), str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_shards_and_ordered_gather(two_ranks: list[dict]) -> None:
    assert [r["shard"] for r in two_ranks] == [[0, 1], [2, 3, 4]]  # contiguous blocks, sizes differ by one
    expected = torch.tensor([[float(i), -float(i)] for i in range(5)])
    for r in two_ranks:
        torch.testing.assert_close(r["gathered"], expected, rtol=0, atol=0)  # rows in the original order


def test_agree_takes_rank_zero_and_mean_averages(two_ranks: list[dict]) -> None:
    assert [r["agree"] for r in two_ranks] == [True, True]
    for r in two_ranks:
        torch.testing.assert_close(r["mean"], torch.tensor([0.5, 5.0]))


def test_ddp_with_sync_bn_and_gathered_triplet_equals_one_process_on_the_global_batch(two_ranks: list[dict]) -> None:
    x, y = _toy_batch()
    single = _toy_model()
    losses = _train_toy(single, x, y, SINGLE)
    for r in two_ranks:
        assert r["bn_syncTrue"] == "CpuSyncBatchNorm" and r["bn_syncFalse"] == "BatchNorm1d"
        assert r["losses_syncTrue"] == pytest.approx(losses, rel=1e-12)
        for name, value in single.state_dict().items():  # weights and BatchNorm running statistics
            torch.testing.assert_close(r["state_syncTrue"][name], value, rtol=1e-12, atol=1e-12, msg=name)
    # per-rank BatchNorm is a different computation: its weights are measurably elsewhere
    per_rank = two_ranks[0]["state_syncFalse"]
    assert max(float((per_rank[k] - v).abs().max()) for k, v in single.state_dict().items()) > 1e-3


def test_cpu_sync_batchnorm_is_plain_batchnorm_in_one_process_and_in_eval() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 2), nn.BatchNorm1d(2))
    model[4].bias.requires_grad_(False)  # a frozen BNNeck bias stays frozen
    model(torch.randn(5, 3, 2, 2))  # non-trivial running statistics
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    plain = _clone_of(model)
    synced = sync_batchnorm(model, torch.device("cpu"))
    assert synced is model and isinstance(model[1], CpuSyncBatchNorm) and isinstance(model[4], CpuSyncBatchNorm)
    assert not model[4].bias.requires_grad and model[4].weight.requires_grad
    for k, v in reference.items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    x = torch.randn(6, 3, 2, 2)
    torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)  # no process group: plain BatchNorm
    model.eval()
    plain.eval()
    torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)


def _clone_of(model: nn.Module) -> nn.Module:
    clone = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 2), nn.BatchNorm1d(2))
    clone.load_state_dict(model.state_dict())
    return clone


def test_single_process_context_is_a_no_op() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    assert SINGLE.gather_with_grad(x) is x and SINGLE.gather_rows(x, 3) is x
    assert SINGLE.agree(False) is False and list(SINGLE.shard(4)) == [0, 1, 2, 3]
    module = nn.Linear(2, 2)
    assert wrap_ddp(module, SINGLE) is module


# -- torchrun on the smoke profile vs one process -------------------------------------------------


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CSDN_PROFILE", "CSDN_CACHE")}
    return {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _csdn(cache: Path, *args: str, nproc: int = 1, precision: str = "fp32") -> subprocess.CompletedProcess:
    """``csdn train --profile smoke`` (float32 by default: the comparisons below are of the computation)."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    cmd = [sys.executable, *launcher, "-m", "csdn", "--cache", str(cache), "train", "--profile", "smoke", *args]
    cmd += ["--set", f"compute.precision={precision}"]
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _copy_cache(src: Path, dst: Path, keep: tuple[str, ...]) -> Path:
    """The generated data, tiny CLIP and image caches of ``src`` (plus the named stage runs), not its results."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("runs", "features"))
    for name in keep:
        for path in glob.glob(str(src / name)):
            target = dst / Path(path).relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)  # glob may list a run's .lock file before its folder
            (shutil.copytree if Path(path).is_dir() else shutil.copy)(path, target)
    return dst


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """A single-process smoke run from scratch (data, tiny CLIP, three stages, evaluation)."""
    root = tmp_path_factory.mktemp("one-process")
    _csdn(root / "cache", "--reports", str(root / "reports"))
    return root


def _stage(cache: Path, stage: str) -> tuple[list[dict], dict[str, torch.Tensor], dict]:
    (run,) = [p for p in (cache / "runs").glob(f"{stage}-*") if p.is_dir()]
    done = json.loads((run / "done.json").read_text())
    return done["history"], load_file(str(run / "final.safetensors")), done


def _max_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_torchrun_two_gloo_processes_match_one_process(one_process: Path, tmp_path: Path) -> None:
    cache = _copy_cache(one_process / "cache", tmp_path / "cache", keep=())
    result = _csdn(cache, "--reports", str(tmp_path / "reports"), nproc=2)
    assert result.stdout.count("finished in") == 1  # only rank 0 prints and writes the report
    for stage in STAGES:
        hist_1, weights_1, _ = _stage(one_process / "cache", stage)
        hist_2, weights_2, done = _stage(cache, stage)
        assert done["world_size"] == 2
        assert len(hist_1) == len(hist_2)
        for h1, h2 in zip(hist_1, hist_2):
            for key in (k for k in h1 if k.endswith("loss")):
                assert h2[key] == pytest.approx(h1[key], abs=LOSS_TOL), (stage, h1["epoch"], key)
        assert _max_gap(weights_1, weights_2) < WEIGHT_TOL, stage
    assert not list(cache.rglob("*.tmp")) and not list(cache.rglob(".epoch_*"))  # nothing half-written
    summary = [
        json.loads(next(root.glob("smoke-csdn-seed0*/results.json")).read_text())["summary"]
        for root in (one_process / "reports", tmp_path / "reports")
    ]
    for row_1, row_2 in zip(*summary):  # evaluation on gathered features: the same test results
        assert row_2["protocol"] == row_1["protocol"]
        assert row_2["mAP"] == pytest.approx(row_1["mAP"], abs=0.05)


def test_per_rank_batchnorm_is_not_the_one_process_computation(one_process: Path, tmp_path: Path) -> None:
    cache = _copy_cache(one_process / "cache", tmp_path / "cache", keep=("runs/stage1-*", "runs/stage2-*"))
    _csdn(cache, "--no-sync-bn", "--reports", str(tmp_path / "reports"), nproc=2)
    _, weights_1, _ = _stage(one_process / "cache", "stage3")
    _, weights_2, _ = _stage(cache, "stage3")
    assert _max_gap(weights_1, weights_2) > 30 * WEIGHT_TOL  # the tolerance above can tell the difference


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="this CPU has no native bf16 (AVX512-BF16/AMX)")
def test_torchrun_trains_on_the_bf16_path(tmp_path: Path) -> None:
    """Two processes on the default (bf16) path: synchronised BatchNorm takes bf16 activations, every stage
    finishes with finite losses and the report is written once."""
    result = _csdn(tmp_path / "cache", "--reports", str(tmp_path / "reports"), nproc=2, precision="auto")
    assert result.stdout.count("finished in") == 1
    for stage in STAGES:
        history, weights, done = _stage(tmp_path / "cache", stage)
        assert done["world_size"] == 2
        assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history), stage
        assert all(torch.isfinite(w).all() for w in weights.values()), stage
