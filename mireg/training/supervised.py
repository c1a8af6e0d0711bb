"""The supervised loss of a training step: the paper's cross-entropy, or nnU-Net's Dice + cross-entropy,
with deep supervision of a backbone's auxiliary logits where it has them (``[train] loss``;
:meth:`mireg.contract.Backbone.auxiliary_logits`).

nnU-Net v2's default loss (``nnUNetTrainer._build_loss``, nnunetv2 2.8.1): cross-entropy plus a soft
Dice computed over the whole batch (``batch_dice``), over the foreground classes only, with a
smoothing term of 1e-5 in numerator and denominator, the loss being *minus* the Dice (so the total
can be negative), both terms weighted 1. With deep supervision each output ``i`` (``i = 0`` the full
resolution) is weighted ``1 / 2**i``, the lowest-resolution one 0, the weights normalised to sum 1,
and each output is compared with the labels downsampled to its size (nearest).

Every batch statistic goes through a :class:`~mireg.losses.Reduction`, so that the processes of a
multi-process run compute the loss of the global batch, as for the other losses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from mireg.losses import SINGLE_PROCESS, Reduction

__all__ = ["DICE_SMOOTH", "deep_supervision_weights", "soft_dice_loss", "supervised_loss"]

#: nnU-Net's smoothing term of the soft Dice (numerator and denominator).
DICE_SMOOTH = 1e-5

SupervisedLoss = Literal["ce", "dice_ce"]


def soft_dice_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    reduction: Reduction = SINGLE_PROCESS,
    smooth: float = DICE_SMOOTH,
) -> torch.Tensor:
    """Minus the soft Dice of the foreground classes, over the whole (global) batch.

    ``dc_c = (2 sum p_c y_c + s) / (sum p_c + sum y_c + s)`` with the sums over every pixel of every
    sample (nnU-Net's ``batch_dice``), ``p`` the softmax and ``y`` the one-hot labels; the loss is
    ``-mean_c dc_c`` over the classes ``c >= 1``.

    Args:
        logits: ``(N, C, H, W)`` logits.
        labels: ``(N, H, W)`` int64 labels in ``[0, C)``.
        reduction: How the sums are summed over processes.
        smooth: The smoothing term ``s``.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        probs = logits.float().softmax(dim=1)
        onehot = F.one_hot(labels, probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
        axes = (0, 2, 3)
        intersection = reduction.sum((probs * onehot).sum(axes))[1:]
        predicted = reduction.sum(probs.sum(axes))[1:]
        truth = reduction.sum(onehot.sum(axes))[1:]
        dice = (2 * intersection + smooth) / (predicted + truth + smooth).clamp(min=1e-8)
        return -dice.mean()


def deep_supervision_weights(outputs: int) -> list[float]:
    """nnU-Net's weights of ``outputs`` outputs, the full resolution first: ``1 / 2**i``, the last
    (lowest-resolution) one 0 when there are several, normalised to sum 1."""
    weights = [1 / 2**i for i in range(outputs)]
    if outputs > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def _one(
    logits: torch.Tensor, labels: torch.Tensor, kind: SupervisedLoss, reduction: Reduction
) -> torch.Tensor:
    ce = reduction.mean(F.cross_entropy(logits.float(), labels, reduction="none"))
    if kind == "ce":
        return ce
    return ce + soft_dice_loss(logits, labels, reduction=reduction)


def supervised_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    kind: SupervisedLoss = "ce",
    auxiliary: Sequence[torch.Tensor] = (),
    *,
    reduction: Reduction = SINGLE_PROCESS,
) -> torch.Tensor:
    """The supervised loss of the labelled batch, deep-supervised when ``auxiliary`` is given.

    Args:
        logits: ``(N, C, H, W)`` logits of the labelled images.
        labels: ``(N, H, W)`` int64 labels.
        kind: ``ce`` (cross-entropy) or ``dice_ce`` (cross-entropy + :func:`soft_dice_loss`).
        auxiliary: Auxiliary logits ``(N, C, h, w)`` of the same images at decreasing resolutions
            (:meth:`mireg.contract.Backbone.auxiliary_logits`), each compared with the labels
            resized to it (nearest) and weighted by :func:`deep_supervision_weights`.
        reduction: How batch statistics are reduced over processes.
    """
    if not auxiliary:
        return _one(logits, labels, kind, reduction)
    outputs = [logits, *auxiliary]
    weights = deep_supervision_weights(len(outputs))
    total = logits.new_zeros((), dtype=torch.float32)
    for output, weight in zip(outputs, weights, strict=True):
        # A zero weight (the lowest resolution) still joins the graph, with zero gradients, so that
        # its head counts as used where DDP checks that every parameter was.
        target = labels
        if output.shape[-2:] != labels.shape[-2:]:
            resized = F.interpolate(labels[:, None].float(), size=output.shape[-2:], mode="nearest-exact")
            target = resized[:, 0].long()
        total = total + weight * _one(output, target, kind, reduction)
    return total
