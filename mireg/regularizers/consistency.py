"""Transform consistency ("UDA" in the authors' code): ``MSE(p(T(x_u)), sg(T(p(x_u))))``."""

from __future__ import annotations

from typing import Literal

from mireg.contract import Backbone, Regularizer, RegularizerConfig, RegularizerOutput, StepContext
from mireg.losses import consistency_loss

__all__ = ["Consistency", "ConsistencyConfig"]


class Consistency(Regularizer):
    """Predictions on ``T(x_u)`` must match the transformed (detached) predictions on ``x_u``."""

    def __init__(self, kind: Literal["mse", "kl"] = "mse") -> None:
        super().__init__()
        self.kind: Literal["mse", "kl"] = kind

    def forward(self, ctx: StepContext) -> RegularizerOutput:
        target = ctx.transform(ctx.logits_u.softmax(dim=1))
        loss = consistency_loss(ctx.logits_tu.softmax(dim=1), target, self.kind, reduction=ctx.reduction)
        return RegularizerOutput(loss)


class ConsistencyConfig(RegularizerConfig):
    """``[[regularizers]] name = "consistency"``: ``weight`` and ``kind`` (``mse`` or ``kl``)."""

    kind: Literal["mse", "kl"] = "mse"

    def build(self, backbone: Backbone) -> Consistency:
        return Consistency(self.kind)
