"""Segmentation metrics on 3D volumes (method.md, "Evaluation").

DSC per class per volume: ``2|A∩B| / (|A| + |B|)``; both masks empty -> 1, exactly one empty -> 0.
"""

from __future__ import annotations

import torch

__all__ = ["dice_per_class"]


def dice_per_class(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """3D Dice of each foreground class.

    Args:
        pred: Integer label volume (any shape).
        target: Integer label volume of the same shape.
        num_classes: Number of classes including the background (class 0).

    Returns:
        ``(num_classes - 1,)`` float64 Dice of classes ``1..num_classes-1``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch: {tuple(pred.shape)} vs {tuple(target.shape)}")
    classes = torch.arange(1, num_classes, device=pred.device).view(-1, *([1] * pred.dim()))
    p, t = pred.unsqueeze(0) == classes, target.unsqueeze(0) == classes
    dims = tuple(range(1, pred.dim() + 1))
    inter = (p & t).sum(dims).double()
    total = p.sum(dims).double() + t.sum(dims).double()
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))
