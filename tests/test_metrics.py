from __future__ import annotations

import pytest
import torch

from mireg.evaluation.metrics import dice_per_class


def test_dice_by_hand() -> None:
    gt = torch.zeros(2, 4, 4, dtype=torch.long)
    pred = torch.zeros_like(gt)
    gt[0, :2, :2] = 1  # 4 voxels
    pred[0, :2, :1] = 1  # 2 voxels, both inside
    gt[1, 0, 0] = 2
    pred[1, 3, 3] = 2  # disjoint single voxels
    dice = dice_per_class(pred, gt, 4)
    assert dice.tolist() == pytest.approx([2 * 2 / 6, 0.0, 1.0])  # class 3: both empty -> 1


def test_dice_one_empty_mask_is_zero() -> None:
    gt = torch.zeros(3, 3, dtype=torch.long)
    pred = gt.clone()
    pred[1, 1] = 1
    assert dice_per_class(pred, gt, 2).tolist() == [0.0]
    assert dice_per_class(gt, pred, 2).tolist() == [0.0]
