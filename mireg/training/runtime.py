"""Where a run executes: one process, or one of several under ``torchrun``, chosen once.

:class:`Runtime` is the only object the training core asks about processes. In a single process
its methods are the identity (the whole batch, no exchange, the model itself); in a ``torchrun``
job (``mireg.training.distributed``) they shard the global batch, wrap the networks in DDP, convert batch
norm to global-batch moments and agree on stop requests.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mireg.errors import RecipeError
from mireg.losses import Reduction
from mireg.training import distributed

__all__ = ["Runtime", "hardware", "resolve_device"]


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an unavailable CUDA device is an error naming ``key``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(
            f"{key}: {name!r} requested but CUDA is not available", 'use device = "auto" or "cpu"'
        )
    return device


def hardware(device: torch.device, threads: int | None = None, processes: int = 1) -> str:
    """What trains on ``device``: the GPU's name (``"NVIDIA H100 80GB HBM3"``), or the CPU's model
    and torch's threads on it (``"AMD EPYC, 2 threads"``; ``threads``: torch's now unless given);
    ``"4 x NAME"`` for ``processes`` of a ``torchrun`` job. A run records it in ``versions.json``;
    a study counts the time its runs take from those trained on the same hardware."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        count = torch.get_num_threads() if threads is None else threads
        name = f"{_cpu_model()}, {count} thread{'s' if count != 1 else ''}"
    else:
        name = device.type
    return f"{processes} x {name}" if processes > 1 else name


def _cpu_model() -> str:
    """The CPU's model name (Linux's ``/proc/cpuinfo``; else what :mod:`platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


class _Replicated(nn.Module):
    """What DDP keeps in sync: the backbone, run through ``forward``, and the regularisers, whose
    parameters (cluster heads, second networks) are used outside it but get their gradients averaged
    all the same."""

    def __init__(self, model: nn.Module, regularizers: list[nn.Module]) -> None:
        super().__init__()
        self.model = model
        self.regularizers = nn.ModuleList(regularizers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out


@dataclass(frozen=True)
class Runtime:
    """The device and the process group of this process.

    Attributes:
        device: This process's device.
        world: Number of processes training the run (1 outside ``torchrun``).
        rank: This process's rank (0 outside ``torchrun``).
    """

    device: torch.device
    world: int = 1
    rank: int = 0

    @classmethod
    def start(cls, device: str, key: str = "train.device") -> Runtime:
        """Resolve ``device``; under ``torchrun``, join the job (idempotent) and take this rank's GPU."""
        resolved = resolve_device(device, key)
        if distributed.launched_by_torchrun():
            resolved = distributed.init_from_environment(resolved, key)
        return cls(resolved, distributed.world_size(), distributed.rank())

    def hardware(self) -> str:
        """What trains the run: :func:`hardware` of this process's device, times the processes."""
        return hardware(self.device, processes=self.world)

    @property
    def is_distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """The process that writes the run folder and prints."""
        return self.rank == 0

    def check_batches(self, labeled: int, unlabeled: int) -> None:
        """Global batch sizes must split evenly over the processes."""
        for key, size in (("labeled_batch", labeled), ("unlabeled_batch", unlabeled)):
            if size % self.world:
                raise RecipeError(
                    f"train.{key}: {size} is not divisible by the {self.world} processes "
                    "(batch sizes are global; each process trains on an equal share)"
                )

    def shard(self, n: int) -> slice:
        """This process's part of a global batch of ``n``."""
        return distributed.shard(n)

    def reduction(self) -> Reduction:
        """How the losses reduce batch statistics: over the global batch (identity in one process)."""
        return distributed.reduction()

    def convert_batch_norm(self, modules: list[nn.Module]) -> None:
        """In a job, batch norm takes the global batch's moments (in place; before the optimiser is
        built, since the replaced layers get new parameters). Nothing in one process."""
        if self.is_distributed:
            for module in modules:
                distributed.convert_batch_norm(module)

    def wrap(self, model: nn.Module, regularizers: list[nn.Module]) -> nn.Module:
        """What the step's forward runs through: the model itself, or in a job one DDP module over
        the model and the regularisers (so every trained parameter's gradient is averaged)."""
        if not self.is_distributed:
            return model
        return DistributedDataParallel(
            _Replicated(model, regularizers),
            device_ids=[self.device] if self.device.type == "cuda" else None,
        )

    def stop_agreed(self, requested: bool, boundary: bool) -> bool:
        """Whether to stop after this step: at once in one process; in a job, every process stops
        together at the next log boundary if any asked (one exchange there, none elsewhere)."""
        if not self.is_distributed:
            return requested
        return boundary and distributed.any_rank(requested, self.device)

    def broadcast(self, obj: object) -> object:
        """Rank 0's ``obj`` on every process."""
        return distributed.broadcast_from_main(obj)

    def close(self) -> None:
        """Leave the job's process group (nothing in one process)."""
        distributed.leave()
