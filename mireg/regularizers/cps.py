"""Cross pseudo supervision (Chen, Yuan, Zeng, Wang, "Semi-Supervised Semantic Segmentation with Cross
Pseudo Supervision", CVPR 2021).

Two networks of the recipe's backbone, initialised differently: ``f``, the trained model (its logits
come from the step's ordinary forward), and ``g``, a twin this regulariser owns
(``Backbone.twin()``). Each network's hard prediction supervises the other, on the labelled and the
unlabelled images ``x`` of the step::

    L_cps = CE(f(x), argmax g(x)) + CE(g(x), argmax f(x))      (pseudo-labels detached)

each cross-entropy averaged over the pixels of the batch. ``g`` also learns from the labels, with
the recipe's supervised loss, as ``f`` does (the paper's cross-entropy, or Dice + cross-entropy with
deep supervision on the strong recipe: ``StepContext.supervised_loss``); the paper's total is
``L_sup(f) + L_sup(g) + lambda L_cps``, so ``L_sup(g)`` is returned outside the recipe's weight
(``RegularizerOutput.unweighted``) and the weight is ``lambda``. ``g``'s parameters are optimised,
checkpointed and synchronised across processes with the rest. The evaluated network is ``f``
(``evaluate = "first"``, the paper's choice) or the average of both networks' probabilities
(``evaluate = "mean"``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mireg.contract import Backbone, Group, Regularizer, RegularizerConfig, RegularizerOutput, StepContext

__all__ = ["CPSConfig", "CrossPseudoSupervision", "MeanOfTwo"]


class MeanOfTwo(nn.Module):
    """Two networks evaluated as one: the log of the mean of their softmax probabilities."""

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.first, self.second = first, second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first: torch.Tensor = self.first(x)
        second: torch.Tensor = self.second(x)
        p = (first.float().softmax(dim=1) + second.float().softmax(dim=1)) / 2
        return p.clamp_min(1e-12).log()


class CrossPseudoSupervision(Regularizer):
    """``L_cps`` between the trained model and a second network (see the module doc)."""

    #: The step's groups it reads (Regularizer.reads): f's logits of x_u; T(x_u) plays no part.
    reads: frozenset[Group] = frozenset({"unlabelled"})

    def __init__(self, backbone: Backbone, evaluate: Literal["first", "mean"] = "first") -> None:
        super().__init__()
        self.other = backbone.twin()
        self.evaluate = evaluate

    def forward(self, ctx: StepContext) -> RegularizerOutput:
        mean = ctx.reduction.mean
        n_l = len(ctx.x_l)
        mine = torch.cat([ctx.logits_l, ctx.logits_u])
        theirs = self.other(torch.cat([ctx.x_l, ctx.x_u])).float()
        auxiliary = [a[:n_l] for a in self.other.auxiliary_logits()]  # deep supervision, if any
        cps = mean(F.cross_entropy(mine, theirs.argmax(dim=1).detach(), reduction="none"))
        cps = cps + mean(F.cross_entropy(theirs, mine.argmax(dim=1).detach(), reduction="none"))
        sup_other = ctx.supervised_loss(theirs[:n_l], auxiliary)
        agreement = mean((mine.argmax(dim=1) == theirs.argmax(dim=1)).float()).detach()
        return RegularizerOutput(cps, {"agreement": agreement}, unweighted=sup_other)

    def evaluation_model(self, model: nn.Module) -> nn.Module:
        return model if self.evaluate == "first" else MeanOfTwo(model, self.other)


class CPSConfig(RegularizerConfig):
    """``[[regularizers]] name = "cps"``: ``weight`` (the paper's lambda) and ``evaluate``."""

    evaluate: Literal["first", "mean"] = Field(
        "first", description='the evaluated network: "first" (the trained model) or "mean" of both'
    )

    def build(self, backbone: Backbone) -> CrossPseudoSupervision:
        return CrossPseudoSupervision(backbone, self.evaluate)
