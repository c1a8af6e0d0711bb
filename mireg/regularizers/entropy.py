"""Entropy minimisation (baseline): ``H(softmax(f(T(x_u))))``, the mean pixel entropy."""

from __future__ import annotations

import torch

from mireg.contract import Backbone, Regularizer, RegularizerConfig, RegularizerOutput, StepContext
from mireg.distributed import batch_mean

__all__ = ["EntropyMin", "EntropyMinConfig"]


def mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of the entropy (nats) of ``softmax(logits)`` over the class axis (dim 1)."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        log_p = logits.float().log_softmax(dim=1)
        return batch_mean(-(log_p.exp() * log_p).sum(dim=1))


class EntropyMin(Regularizer):
    """Confident predictions on the (transformed) unlabelled images."""

    def forward(self, ctx: StepContext) -> RegularizerOutput:
        return RegularizerOutput(mean_entropy(ctx.logits_tu))


class EntropyMinConfig(RegularizerConfig):
    """``[[regularizers]] name = "entropy_min"``: only ``weight`` (method.md: 1e-5 .. 1e-3)."""

    def build(self, backbone: Backbone) -> EntropyMin:
        return EntropyMin()
