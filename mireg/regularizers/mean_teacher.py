"""Mean teacher (Tarvainen & Valpola): consistency with an exponential moving average of the student.

``L = MSE(p_s(T(x_u)), sg(T(p_t(x_u))))``. The teacher is updated after every optimiser step with
``a = min(1 - 1/(step + 1), 0.999)``: ``theta_t = a theta_t + (1 - a) theta_s``. As in the authors'
setting, the teacher runs in train mode (its batch-norm layers use batch statistics and update their
own running statistics, which are not averaged), and evaluation and checkpoints use the teacher.
"""

from __future__ import annotations

import copy

import torch
from pydantic import Field
from torch import nn

from mireg.contract import Backbone, Group, Regularizer, RegularizerConfig, RegularizerOutput, StepContext
from mireg.losses import consistency_loss

__all__ = ["MeanTeacher", "MeanTeacherConfig"]


class MeanTeacher(Regularizer):
    """Holds the teacher network (not optimised) and its EMA update."""

    #: The step's groups it reads (Regularizer.reads): the student's T(x_u); the teacher runs on x_u.
    reads: frozenset[Group] = frozenset({"transformed"})

    def __init__(self, student: Backbone, max_decay: float = 0.999) -> None:
        super().__init__()
        self.teacher = copy.deepcopy(student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.max_decay = max_decay

    def forward(self, ctx: StepContext) -> RegularizerOutput:
        self.teacher.train()
        with torch.no_grad():
            target = ctx.transform(self.teacher(ctx.x_u).float().softmax(dim=1))
        loss = consistency_loss(ctx.logits_tu.softmax(dim=1), target, "mse", reduction=ctx.reduction)
        return RegularizerOutput(loss)

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int) -> None:
        decay = min(1.0 - 1.0 / (step + 1), self.max_decay)
        for t, s in zip(self.teacher.parameters(), model.parameters(), strict=True):
            t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)

    def evaluation_model(self, model: nn.Module) -> nn.Module:
        return self.teacher


class MeanTeacherConfig(RegularizerConfig):
    """``[[regularizers]] name = "mean_teacher"``: ``weight`` (docs/methods.md: 10) and ``max_decay``."""

    max_decay: float = Field(0.999, gt=0, lt=1)

    def build(self, backbone: Backbone) -> MeanTeacher:
        return MeanTeacher(backbone, self.max_decay)
