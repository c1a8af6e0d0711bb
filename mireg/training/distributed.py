"""Multi-process training under ``torchrun``: the process group and the cross-rank sums of the losses.

``torchrun --nproc-per-node N -m mireg train RECIPE`` starts N processes. Every process draws the
same global batch (same seed, same generator) and trains on its shard of it (``shard``). Every batch
statistic the losses are built from (the MI joints, the batch means of the supervised, consistency
and entropy terms, the batch-norm moments) is summed across processes with a differentiable
all-reduce (``sum_across_ranks``; the losses get it through ``reduction()``), so each process
computes the loss of the whole global batch.
DDP then averages the gradients: the all-reduce's backward sums the N identical upstream gradients,
the average divides by N, and every parameter gets the gradient one process would compute on the
concatenated batch. In a single process the reductions here are the identity.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn

from mireg.errors import RecipeError
from mireg.losses import SINGLE_PROCESS, Reduction

__all__ = [
    "CrossRankBatchNorm",
    "any_rank",
    "batch_mean",
    "broadcast_from_main",
    "convert_batch_norm",
    "init_from_environment",
    "is_distributed",
    "is_main",
    "launched_by_torchrun",
    "leave",
    "rank",
    "reduction",
    "shard",
    "sum_across_ranks",
    "world_size",
]


def launched_by_torchrun() -> bool:
    """True in a process started by ``torchrun`` with more than one process in the job."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    """True once the process group of a multi-process job is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """The process that writes the run directory and prints: rank 0, or the only one."""
    return rank() == 0


def init_from_environment(device: torch.device, key: str = "train.device") -> torch.device:
    """Join the ``torchrun`` job (NCCL on CUDA, gloo on CPU); return this process's device.

    Args:
        device: The recipe's resolved device (``mireg.training.loop.resolve_device``); CUDA becomes
            ``cuda:LOCAL_RANK``, and a numbered ``cuda:N`` is refused (``torchrun`` assigns the GPUs).
        key: The recipe key named in errors.
    """
    if device.type == "cuda":
        if device.index is not None:
            raise RecipeError(
                f'{key}: "{device}" under torchrun; use "cuda" (each process takes the GPU of its LOCAL_RANK)'
            )
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=30)
        )
    return device


def leave() -> None:
    """Leave the job's process group at the end of a run (nothing outside a torchrun job)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every process if ``flag`` is true on any (one exchange; a host sync)."""
    if not is_distributed():
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_from_main(obj: object) -> object:
    """Rank 0's ``obj`` on every process (e.g. the run directory it chose)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(n: int) -> slice:
    """This process's part of a global batch of ``n`` (``n`` divisible by the world size)."""
    size = n // world_size()
    return slice(rank() * size, (rank() + 1) * size)


def sum_across_ranks(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over all processes, differentiably (the identity in a single process)."""
    if not is_distributed():
        return t
    total: torch.Tensor = dist_nn.all_reduce(t)
    return total


def batch_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over the global batch: every entry of every process's shard.

    Shards are equal in size (``shard``), so the global count is the local one times the world size.
    """
    if not is_distributed():
        return values.mean()
    return sum_across_ranks(values.sum()) / (values.numel() * world_size())


def reduction() -> Reduction:
    """The losses' :class:`~mireg.losses.Reduction` for the current process group.

    ``sum`` is :func:`sum_across_ranks` and ``mean`` is :func:`batch_mean`; outside a multi-process
    job it is :data:`~mireg.losses.SINGLE_PROCESS`.
    """
    if not is_distributed():
        return SINGLE_PROCESS
    return Reduction(sum=sum_across_ranks, mean=batch_mean)


class CrossRankBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training-mode moments are those of the global batch, on any backend.

    The same parameters and buffers as ``nn.BatchNorm*d`` (checkpoints are interchangeable); in
    evaluation mode, or in a single process, it is plain batch norm. The mean and then the variance
    are each one differentiable all-reduce of per-channel sums (two passes, no cancellation).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = x.numel() // x.shape[1] * world_size()
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.float()
            mean = sum_across_ranks(xf.sum(dims)) / count
            centred = xf - mean.view(shape)
            var = sum_across_ranks(centred.square().sum(dims)) / count
            if self.track_running_stats and self.running_mean is not None:
                self._update_running_stats(mean.detach(), var.detach(), count)
            out = centred * torch.rsqrt(var + self.eps).view(shape)
            if self.affine:
                out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        assert self.running_mean is not None and self.running_var is not None
        assert self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * count / max(count - 1, 1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")


def convert_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm1d/2d/3d`` in ``module`` by a :class:`CrossRankBatchNorm`.

    Parameters (with their ``requires_grad``) and buffers are kept; returns the module (or its
    replacement, when ``module`` is itself a batch norm).
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, (CrossRankBatchNorm, nn.SyncBatchNorm)
    ):
        replacement = CrossRankBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        replacement.load_state_dict(module.state_dict())
        first = next(iter(module.state_dict().values()), None)
        if first is not None:
            replacement.to(first.device)
        for new, old in zip(replacement.parameters(), module.parameters(), strict=True):
            new.requires_grad_(old.requires_grad)  # a mean teacher's frozen weights stay frozen
        replacement.train(module.training)
        return replacement
    for name, child in module.named_children():
        setattr(module, name, convert_batch_norm(child))
    return module
