"""The arithmetic the network runs in: ``train.precision``.

* ``fp32``: IEEE float32 throughout. On CUDA, cuDNN would run float32 convolutions on TF32 tensor
  cores by default (inputs rounded to a 10-bit mantissa); mireg turns that off, so that a GPU
  computes what the CPU computes, up to the order of its sums, and a run's loss curve on either
  device is the same within float32 rounding.
* ``bf16``: the network under bfloat16 autocast (matrix products and convolutions in bf16); the
  losses, the MI joints and every other float32 island stay IEEE float32. The fast choice on a GPU.

:func:`ieee_float32` keeps TF32 off in a block (a training step, forward and backward), :func:`autocast`
is the forward's autocast, :func:`arithmetic` both (inference). Each restores the process's settings
on leaving, so that mireg used as a library leaves its caller's TF32 choice alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch

__all__ = ["Precision", "arithmetic", "autocast", "ieee_float32"]

#: The values of ``train.precision``.
Precision = Literal["fp32", "bf16"]


@contextmanager
def ieee_float32() -> Iterator[None]:
    """Inside the block, CUDA matrix products and convolutions, forward and backward, run in IEEE
    float32 rather than TF32; the process's own settings come back on leaving it."""
    matmul, conv = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, conv


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """bfloat16 autocast on ``device`` for ``bf16``, a disabled one for ``fp32`` (forward passes only:
    the backward runs in the types its forward chose)."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@contextmanager
def arithmetic(precision: str, device: torch.device) -> Iterator[None]:
    """A forward pass in ``precision`` on ``device`` (:func:`autocast` inside :func:`ieee_float32`)."""
    with ieee_float32(), autocast(precision, device):
        yield
