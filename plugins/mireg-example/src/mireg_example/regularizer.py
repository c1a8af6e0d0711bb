"""``smoothness``: total variation of the predicted probabilities on unlabelled images."""

from __future__ import annotations

from typing import Literal

from mireg.contract import Backbone, Regularizer, RegularizerConfig, RegularizerOutput, StepContext


class Smoothness(Regularizer):
    """Mean absolute difference of neighbouring pixels' class probabilities (anisotropic TV)."""

    def __init__(self, on: Literal["unlabeled", "transformed"]) -> None:
        super().__init__()
        self.on = on

    def forward(self, ctx: StepContext) -> RegularizerOutput:
        logits = ctx.logits_u if self.on == "unlabeled" else ctx.logits_tu
        p = logits.float().softmax(dim=1)
        # Means over the batch go through ctx.reduction: exact under multi-process training too.
        dy = ctx.reduction.mean((p[..., 1:, :] - p[..., :-1, :]).abs())
        dx = ctx.reduction.mean((p[..., :, 1:] - p[..., :, :-1]).abs())
        # Extra values to log go in `logs` (scalars, kept on the device).
        return RegularizerOutput(dx + dy, {"dx": dx.detach(), "dy": dy.detach()})


class SmoothnessConfig(RegularizerConfig):
    """``[[regularizers]] name = "smoothness"``: ``weight`` and ``on`` (which unlabelled batch)."""

    on: Literal["unlabeled", "transformed"] = "unlabeled"

    def build(self, backbone: Backbone) -> Smoothness:
        return Smoothness(self.on)
