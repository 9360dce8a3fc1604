"""Several processes, one training run: torchrun start-up, rank helpers, feature gathering and DDP.

``torchrun --nproc_per_node N -m csdn train ...`` starts N copies of the CLI. :func:`init_from_env`
joins them into one process group (NCCL when each process drives a GPU, gloo on CPU) and returns the
:class:`DistContext` that the pipeline passes down; one process gets the single-process context and
nothing changes. What several processes share and what they do not:

* each rank gets ``P / N`` of the ``P`` identities of every global batch (the sampler deals the same
  global batch on every rank and keeps its slice), with the same augmentations as one process;
* DistributedDataParallel averages gradients, and losses that couple samples (triplet, contrastive)
  see the whole global batch through :meth:`DistContext.gather_with_grad`, so an update equals the
  one-process update on the global batch, BatchNorm aside;
* BatchNorm: with ``sync_bn`` (default) statistics are computed over the global batch
  (``torch.nn.SyncBatchNorm`` on GPUs, :class:`CpuSyncBatchNorm` on CPU where torch has none);
  without it each rank normalises with its own shard's statistics and rank 0's running statistics
  are kept;
* only rank 0 writes (checkpoints, history, final weights, reports); evaluation splits the images
  over the ranks and gathers the features in order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from csdn.errors import ConfigError
from csdn.runtime import pick_device

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly one-process) training run."""

    rank: int = 0  # this process's rank in [0, world_size)
    world_size: int = 1  # number of processes
    local_rank: int = 0  # rank on this machine (selects the GPU)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where this rank computes

    @property
    def distributed(self) -> bool:
        """True with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files and prints."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every rank gets here (no-op in one process)."""
        if self.distributed:
            dist.barrier()

    def agree(self, value: bool) -> bool:
        """Rank 0's ``value`` on every rank (so all ranks take the same branch around collectives)."""
        if not self.distributed:
            return value
        flag = torch.tensor([int(value) if self.is_main else 0], device=self.device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    def mean(self, values: Tensor) -> Tensor:
        """The average of ``values`` over the ranks (detached; e.g. per-step losses for logging)."""
        if not self.distributed:
            return values.detach()
        out = values.detach().to(self.device, torch.float64).clone()
        dist.all_reduce(out)
        return (out / self.world_size).to(values.dtype)

    def shard(self, n: int) -> range:
        """This rank's contiguous block of ``range(n)`` (block sizes differ by at most one)."""
        bounds = np.linspace(0, n, self.world_size + 1).round().astype(int)
        return range(int(bounds[self.rank]), int(bounds[self.rank + 1]))

    def gather_rows(self, local: Tensor, n: int) -> Tensor:
        """Concatenate every rank's ``local`` rows (rank ``r`` holding rows ``shard(n)`` of ``r``), in order.

        Not differentiable (for evaluation features); the result lives on the CPU.
        """
        if not self.distributed:
            return local
        size = max(len(DistContext(r, self.world_size).shard(n)) for r in range(self.world_size))
        padded = local.new_zeros((size, *local.shape[1:]), device=self.device)
        padded[: len(local)] = local.to(self.device)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        rows = [len(DistContext(r, self.world_size).shard(n)) for r in range(self.world_size)]
        return torch.cat([part[:count] for part, count in zip(parts, rows)]).cpu()

    def gather_with_grad(self, local: Tensor) -> Tensor:
        """Every rank's equally shaped ``local`` stacked in rank order, with gradients flowing back.

        A loss computed on the result is the same on every rank; the backward pass sums its gradient
        over the ranks, and DDP's averaging then gives exactly the gradient of that loss.
        """
        if not self.distributed:
            return local
        parts = [torch.zeros_like(local) for _ in range(self.world_size)]
        parts[self.rank] = local
        return _SumOverRanks.apply(torch.cat(parts))


SINGLE = DistContext()


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward pass is also an all-reduce (sum): y = sum_r x_r."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def launched_by_torchrun() -> bool:
    """True when the torchrun environment variables are set (read at the CLI edge only)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def world_size_from_env() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``), 1 outside torchrun (at the CLI edge only)."""
    return int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else 1


def init_from_env(device_preference: str = "auto") -> DistContext:
    """Join the process group torchrun describes, or return the one-process context.

    The device follows ``device_preference`` (``"auto"``: CUDA when available); on CUDA each rank
    takes GPU ``LOCAL_RANK`` and the backend is NCCL, otherwise gloo.
    """
    device = pick_device(device_preference)
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistContext(device=device)
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs are visible; "
                "start at most one process per GPU (--nproc_per_node)"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
    return DistContext(rank=rank, world_size=world, local_rank=local, device=device)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (after a last barrier) if this process joined one."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch of all ranks for CPU tensors (torch's SyncBatchNorm is GPU-only).

    In training it computes the mean and the (biased) variance from sums all-reduced over the ranks,
    differentiably, and updates the running statistics with them as one-process BatchNorm would on the
    concatenated batch; in eval mode it is plain BatchNorm. Statistics are computed in float32 and the
    output has the input's dtype (as BatchNorm under autocast).
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        dtype, x = x.dtype, x.float() if x.dtype in (torch.bfloat16, torch.float16) else x
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype)
        n = _SumOverRanks.apply(count)
        mean = _SumOverRanks.apply(x.sum(dims)) / n
        centred = x - mean.view(shape)
        var = _SumOverRanks.apply(centred.pow(2).sum(dims)) / n
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * n / (n - 1).clamp(min=1))
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        y = y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y
        return y.to(dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, unbiased_var: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean, factor)
        self.running_var.lerp_(unbiased_var, factor)


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with every BatchNorm layer computing global-batch statistics (in place for children)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CpuSyncBatchNorm):
        synced = CpuSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        # the same parameter and buffer objects (as torch's convert_sync_batchnorm): optimizers stay valid
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            setattr(synced, name, tensor)
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module.add_module(name, _convert(child))
    return module


def wrap_ddp(module: nn.Module, ctx: DistContext, sync_bn: bool = True) -> nn.Module:
    """``module`` itself in one process; otherwise DDP around it (BatchNorm synchronised with ``sync_bn``).

    Checkpoint and evaluate the returned module's ``.module`` (or the original object, which DDP wraps
    without copying). The set of parameters that receive gradients must not change between steps.
    """
    if not ctx.distributed:
        return module
    if sync_bn:
        module = sync_batchnorm(module, ctx.device)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, static_graph=True)
