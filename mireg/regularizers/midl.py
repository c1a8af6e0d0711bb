"""The MIDL 2020 variant: local mutual information on the network's softmax outputs, no heads.

``L = L_local(T(p(x_u)), p(T(x_u)); r)`` with ``r = 1`` by default (docs/methods.md, "midl"); the recipe
adds the transform consistency as its own regulariser.
"""

from __future__ import annotations

from pydantic import Field

from mireg.contract import Backbone, Regularizer, RegularizerConfig, RegularizerOutput, StepContext
from mireg.losses import local_mi_loss

__all__ = ["OutputMI", "OutputMIConfig"]


class OutputMI(Regularizer):
    """Local MI between the transformed predictions and the predictions on transformed images."""

    def __init__(self, radius: int = 1, patch: int | None = None) -> None:
        super().__init__()
        self.radius, self.patch = radius, patch

    def forward(self, ctx: StepContext) -> RegularizerOutput:
        p_u = ctx.transform(ctx.logits_u.float().softmax(dim=1))
        p_tu = ctx.logits_tu.float().softmax(dim=1)
        loss = local_mi_loss(p_u, p_tu, self.radius, self.patch, reduction=ctx.reduction)
        return RegularizerOutput(loss)


class OutputMIConfig(RegularizerConfig):
    """``[[regularizers]] name = "midl"``: ``weight``, ``radius`` (default 1), ``patch``."""

    radius: int = Field(1, ge=0)
    patch: int | None = Field(None, ge=2)

    def build(self, backbone: Backbone) -> OutputMI:
        return OutputMI(self.radius, self.patch)
