"""Entropy minimisation (baseline): ``H(softmax(f(T(x_u))))``, the mean pixel entropy."""

from __future__ import annotations

import torch

from mireg.contract import Backbone, Group, Regularizer, RegularizerConfig, RegularizerOutput, StepContext
from mireg.losses import SINGLE_PROCESS, Reduction

__all__ = ["EntropyMin", "EntropyMinConfig"]


def mean_entropy(logits: torch.Tensor, *, reduction: Reduction = SINGLE_PROCESS) -> torch.Tensor:
    """Mean over pixels of the entropy (nats) of ``softmax(logits)`` over the class axis (dim 1).

    ``reduction`` takes the mean over the batch of all processes.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        log_p = logits.float().log_softmax(dim=1)
        return reduction.mean(-(log_p.exp() * log_p).sum(dim=1))


class EntropyMin(Regularizer):
    """Confident predictions on the (transformed) unlabelled images."""

    #: The step's groups it reads (Regularizer.reads): the predictions on T(x_u).
    reads: frozenset[Group] = frozenset({"transformed"})

    def forward(self, ctx: StepContext) -> RegularizerOutput:
        return RegularizerOutput(mean_entropy(ctx.logits_tu, reduction=ctx.reduction))


class EntropyMinConfig(RegularizerConfig):
    """``[[regularizers]] name = "entropy_min"``: only ``weight`` (docs/methods.md: 1e-5 .. 1e-3)."""

    def build(self, backbone: Backbone) -> EntropyMin:
        return EntropyMin()
