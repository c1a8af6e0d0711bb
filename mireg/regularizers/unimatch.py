"""UniMatch (Yang, Qi, Feng, Zhang, Shi, "Revisiting Weak-to-Strong Consistency in Semi-Supervised
Semantic Segmentation", CVPR 2023) as its medical (ACDC) code defines it.

Source checked: github.com/LiheYoung/UniMatch at commit 0324f3d, folder ``more-scenarios/medical``
(below: file and line there).

Pseudo-labels ``y`` and confidences ``c`` of the weak view ``x_u`` are those of
:mod:`mireg.regularizers.fixmatch` (softmax of the step's logits ``z_u``, argmax and max, detached;
``unimatch.py`` 151-153). Three streams are supervised by them:

* two strong views ``s_1``, ``s_2``: each its own draw of the strong augmentation of
  :mod:`mireg.regularizers.fixmatch` (jitter, blur, CutMix with the batch rolled by one sample), its
  pseudo-labels ``y~_k`` and confidences ``c~_k`` mixed with its own boxes (``unimatch.py`` 136-139,
  155-162; ``dataset/acdc.py`` 59-69). Both run through the network in one pass (``unimatch.py`` 149).
* the feature-perturbed weak view ``f_fp``: the network run again on ``x_u`` with channel dropout
  on every encoder feature map, ``h_nc -> h_nc m_nc / (1 - p)`` with ``m_nc ~ Bernoulli(1 - p)`` per
  sample and channel (``F.dropout2d``'s definition; ``p = dropout = 0.5``, ``model/unet.py``
  171-173). Its targets are the unmixed ``y``, ``c``. The dropout is a forward hook on each encoder
  tap of the backbone (``Backbone.taps`` of kind ``"encoder"``), registered for that pass only and
  acting only on modules in training mode; its masks are drawn from the run's generator (not the
  global one ``F.dropout2d`` uses), so a resumed run draws the same.

Each stream's loss ``l(f, y, M)``, with ``M`` the pixels whose confidence is at least ``threshold``
(``0.95``, ``configs/acdc.yaml`` 11), is by default the medical code's Dice loss with ignored pixels
(``util/utils.py`` 27-50, used in ``unimatch.py`` 166-173): with ``p = softmax(f)``,

  ``l = 1/C sum_k [1 - (2 sum_M p_k [y = k] + e) / (sum_M p_k^2 + sum_M [y = k] + e)]``,  ``e = 1e-5``,

summed over all pixels in ``M`` of the global batch, background included (``l = 0`` when ``M`` is
empty). ``loss = "ce"`` uses the mean cross-entropy over ``M`` instead
(:func:`~mireg.regularizers.fixmatch.confident_cross_entropy`). The regulariser is

  ``L = (1 - w)/2 (l(f(s_1), y~_1, M_1) + l(f(s_2), y~_2, M_2)) + w l(f_fp, y, M)``,

``w = feature_weight = 0.5``: the weights 0.25, 0.25, 0.5 of ``unimatch.py`` 175. There the total
is ``(L_x + L) / 2`` with ``L_x = (CE + Dice) / 2`` on the labelled batch: supervised and
unsupervised parts weigh the same, so the recipe weight is 1 (the common factor 1/2 only scales the
learning rate; mireg's supervised loss is the cross-entropy alone). Logged: ``strong`` (the mean of
the two strong streams), ``feature`` and ``confident`` (the share of the weak view's pixels with
``c >= threshold``, the code's ``mask_ratio``, ``unimatch.py`` 188).

Where this differs from the medical code:

* The CutMix partner is the batch rolled by one sample with its pseudo-labels from the step's pass;
  the code mixes in a second unlabelled batch labelled by a no-gradient pass in eval mode
  (``unimatch.py`` 129-139).
* The perturbed stream is a second pass of the whole network; the code shares one encoder pass and
  runs the decoder on clean and dropped features concatenated in one batch (``model/unet.py``
  171-173). The dropout hooks sit on the backbone's encoder taps, which carry the encoder maps to
  the decoder only (``UNet.skips``, the smp backbone's ``encoder_taps``): as in the code, the
  decoder sees dropped maps and the encoder runs clean.
* Under ``train.compile`` the perturbed pass runs uncompiled: a compiled graph does not see forward
  hooks added after it was compiled, and would run the pass without dropout.
* CutMix boxes have a log-uniform aspect ratio in [0.3, 1/0.3] (the code: uniform,
  ``dataset/transform.py`` 39); the jitter is brightness then contrast (ColorJitter's saturation
  and hue do nothing to grayscale images).

Random draws (views, dropout masks) come from the run's generator, per shard under multi-process
training, as in :mod:`mireg.regularizers.fixmatch`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mireg.contract import Backbone, Group, Regularizer, RegularizerOutput, StepContext, uniform
from mireg.losses import SINGLE_PROCESS, Reduction
from mireg.regularizers.fixmatch import (
    PseudoLabelConfig,
    StrongAugment,
    confident_cross_entropy,
    confident_share,
    pseudo_labels,
)

__all__ = ["UniMatch", "UniMatchConfig", "channel_dropout", "confident_dice_loss"]

#: Smoothing of the Dice loss (``util/utils.py`` line 29).
DICE_SMOOTH = 1e-5


def confident_dice_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    confident: torch.Tensor,
    *,
    reduction: Reduction = SINGLE_PROCESS,
) -> torch.Tensor:
    """The Dice loss over the confident pixels of the global batch, averaged over the classes.

    Args:
        logits: ``(N, C, H, W)`` logits.
        labels: ``(N, H, W)`` int64 targets.
        confident: ``(N, H, W)`` bool: the pixels that count.
        reduction: How the sums are summed over processes.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        p = logits.float().softmax(dim=1)
        target = F.one_hot(labels, p.shape[1]).permute(0, 3, 1, 2).float()
        mask = confident[:, None].float()
        sums = torch.stack(
            [
                (p * target * mask).sum(dim=(0, 2, 3)),
                (p * p * mask).sum(dim=(0, 2, 3)),
                (target * mask).sum(dim=(0, 2, 3)),
            ]
        )
        intersection, p_sum, target_sum = reduction.sum(sums).unbind()
        dice = (2 * intersection + DICE_SMOOTH) / (p_sum + target_sum + DICE_SMOOTH)
        return (1 - dice).mean()


@contextmanager
def channel_dropout(modules: Sequence[nn.Module], p: float, generator: torch.Generator) -> Iterator[None]:
    """Inside the block, the outputs of ``modules`` in training mode lose whole channels.

    Each output ``(N, C, H, W)`` is multiplied by ``m / (1 - p)``, ``m`` a ``(N, C, 1, 1)`` mask of
    Bernoulli(``1 - p``) draws from ``generator`` (the definition of ``F.dropout2d``). The hooks are
    removed on leaving the block, also on an error.
    """
    if not 0 <= p < 1:
        raise ValueError(f"channel dropout needs 0 <= p < 1, got {p}")

    def drop(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        if not module.training or p == 0:
            return None
        n, c = output.shape[:2]
        keep = uniform((n, c), generator, output.device) >= p
        scale = keep.to(output.dtype) / (1 - p)
        return output * scale.view(n, c, *([1] * (output.dim() - 2)))

    handles = [module.register_forward_hook(drop) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class UniMatch(Regularizer):
    """Two strong views and a feature-perturbed weak view, supervised by confident pseudo-labels.

    Args:
        encoder: The modules whose outputs are the backbone's encoder feature maps (held without
            registering them as submodules: they are the trained network's).
        threshold: Pixels whose confidence is below it do not count.
        augment: The strong augmentation.
        dropout: Channel-dropout probability of the perturbed stream.
        feature_weight: ``w``, the perturbed stream's weight; each strong view weighs ``(1 - w)/2``.
        loss: Each stream's loss: ``"dice"`` (the medical code's) or ``"ce"``.
    """

    #: The step's groups it reads (Regularizer.reads): x_u's logits, the weak view's pseudo-labels.
    reads: frozenset[Group] = frozenset({"unlabelled"})

    def __init__(
        self,
        encoder: Sequence[nn.Module],
        threshold: float = 0.95,
        augment: StrongAugment | None = None,
        dropout: float = 0.5,
        feature_weight: float = 0.5,
        loss: Literal["dice", "ce"] = "dice",
    ) -> None:
        super().__init__()
        self.encoder: tuple[nn.Module, ...] = tuple(encoder)
        self.threshold = threshold
        self.augment = augment or StrongAugment()
        self.dropout = dropout
        self.feature_weight = feature_weight
        self.loss: Literal["dice", "ce"] = loss

    def stream_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor, reduction: Reduction
    ) -> torch.Tensor:
        """One stream's loss against the pseudo-labels whose confidence reaches the threshold."""
        confident = confidence >= self.threshold
        if self.loss == "dice":
            return confident_dice_loss(logits, labels, confident, reduction=reduction)
        return confident_cross_entropy(logits, labels, confident, reduction=reduction)

    def perturbed(self, ctx: StepContext, generator: torch.Generator) -> torch.Tensor:
        """Logits of the weak view with channel dropout on every encoder feature map.

        The pass runs eagerly: a network compiled in place (``train.compile``) would reuse its
        graph, traced without these hooks, and silently skip the dropout.
        """
        with channel_dropout(self.encoder, self.dropout, generator), torch.compiler.set_stance("force_eager"):
            return ctx.forward(ctx.x_u).logits

    def forward(self, ctx: StepContext) -> RegularizerOutput:
        g = ctx.rng()
        labels, confidence = pseudo_labels(ctx.logits_u)
        s1, y1, c1 = self.augment(ctx.x_u, labels, confidence, g)
        s2, y2, c2 = self.augment(ctx.x_u, labels, confidence, g)
        logits_1, logits_2 = ctx.forward(torch.cat([s1, s2])).logits.chunk(2)
        strong = (
            self.stream_loss(logits_1, y1, c1, ctx.reduction)
            + self.stream_loss(logits_2, y2, c2, ctx.reduction)
        ) / 2
        logs = {"strong": strong.detach()}
        loss = (1 - self.feature_weight) * strong
        if self.feature_weight > 0:
            feature = self.stream_loss(self.perturbed(ctx, g), labels, confidence, ctx.reduction)
            loss = loss + self.feature_weight * feature
            logs["feature"] = feature.detach()
        logs["confident"] = confident_share(confidence, self.threshold, ctx.reduction)
        return RegularizerOutput(loss, logs)


class UniMatchConfig(PseudoLabelConfig):
    """``[[regularizers]] name = "unimatch"``: ``weight`` (UniMatch: 1), ``threshold`` (0.95), the
    strong augmentation's ``jitter``, ``jitter_p``, ``blur_p``, ``cutmix_p``, and ``dropout`` (0.5),
    ``feature_weight`` (0.5) and ``loss`` (``dice``) of :mod:`mireg.regularizers.unimatch`."""

    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="channel-dropout probability on encoder maps")
    feature_weight: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="weight of the feature-perturbed stream; the two strong views share the rest",
    )
    loss: Literal["dice", "ce"] = Field("dice", description="each stream's loss on the confident pixels")

    def build(self, backbone: Backbone) -> UniMatch:
        encoder = [backbone.tap_module(name) for name, tap in backbone.taps.items() if tap.kind == "encoder"]
        if not encoder:
            raise ValueError(f"the backbone has no encoder taps to perturb; it has {list(backbone.taps)}")
        return UniMatch(
            encoder, self.threshold, self.strong_augment(), self.dropout, self.feature_weight, self.loss
        )
