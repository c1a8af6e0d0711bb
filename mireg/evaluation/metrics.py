"""Segmentation metrics on 3D volumes (docs/methods.md, "Reading the numbers").

All metrics are computed per volume and per class:

* DSC: ``2|A∩B| / (|A| + |B|)``.
* HD95: the larger of the two directed 95th percentiles of surface distances,
  ``max(p95(d(S_A -> S_B)), p95(d(S_B -> S_A)))`` (numpy's default linear percentile).
* HD: the full Hausdorff distance, the larger of the two directed maxima.
* ASSD: the average symmetric surface distance,
  ``(sum d(S_A -> S_B) + sum d(S_B -> S_A)) / (|S_A| + |S_B|)``.

The surface ``S_A`` of a mask ``A`` is the set of its voxels with at least one face-connected
(6-connected in 3D, 4-connected in 2D) neighbour outside ``A``; voxels outside the array count as
outside, i.e. ``A & ~binary_erosion(A, face_structure, border_value=0)``. The distance from a voxel
to a surface is the exact Euclidean distance in mm between voxel centres to the nearest surface
voxel, using the voxel spacing of each axis.

Empty-mask convention (no class is ever silently dropped):

* both masks empty -> DSC 1, HD95 = HD = ASSD = 0;
* exactly one mask empty -> DSC 0, HD95 = HD = ASSD = ``None`` (undefined).

``dice_per_class`` is the torch variant of the DSC used during training/evaluation and follows the same
convention (both empty -> 1, exactly one empty -> 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

__all__ = ["ClassMetrics", "class_metrics", "dice_per_class", "surface_distances", "volume_metrics"]


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


@dataclass(frozen=True)
class ClassMetrics:
    """Metrics of one class in one volume.

    Attributes:
        dice: Dice similarity coefficient in ``[0, 1]``.
        hd95: 95th-percentile Hausdorff distance in mm; ``None`` when exactly one mask is empty.
        hd: Hausdorff distance in mm; ``None`` when exactly one mask is empty.
        assd: Average symmetric surface distance in mm; ``None`` when exactly one mask is empty.
    """

    dice: float
    hd95: float | None
    hd: float | None
    assd: float | None


def _check_spacing(spacing: Sequence[float], ndim: int) -> np.ndarray:
    """Spacing as a float array of one positive entry per axis, else ``ValueError``."""
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.shape != (ndim,):
        raise ValueError(f"spacing must have one entry per axis ({ndim}), got {tuple(spacing)}")
    if not np.all(np.isfinite(sp) & (sp > 0)):
        raise ValueError(f"spacing must be positive and finite, got {tuple(spacing)}")
    return sp


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face-connected neighbour outside it (array border counts as outside)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    surface: np.ndarray = mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)
    return surface


def _crop(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of ``a | b`` padded by one voxel (clipped to the array).

    Exactness: every voxel of ``a`` and ``b`` (hence of both surfaces) lies inside the box, so the
    nearest surface voxel of one mask to any voxel of the other is inside it too. Voxels just outside
    the box are outside both masks, as are voxels outside the array, so the surfaces are unchanged.
    """
    union = a | b
    slices = []
    for axis in range(union.ndim):
        other = tuple(i for i in range(union.ndim) if i != axis)
        idx = np.flatnonzero(union.any(axis=other))
        slices.append(slice(max(int(idx[0]) - 1, 0), min(int(idx[-1]) + 2, union.shape[axis])))
    box = tuple(slices)
    return a[box], b[box]


def _directed(surface_from: np.ndarray, surface_to: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance (mm) from each voxel of ``surface_from`` to the nearest voxel of ``surface_to``."""
    edt = ndimage.distance_transform_edt(~surface_to, sampling=spacing)
    return np.asarray(edt[surface_from], dtype=np.float64)


def surface_distances(
    a: np.ndarray, b: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances between two non-empty boolean masks.

    Args:
        a: Boolean mask (any dimensionality; non-zero counts as foreground).
        b: Boolean mask of the same shape.
        spacing: Voxel spacing in mm, one entry per axis.

    Returns:
        ``(d_ab, d_ba)``: float64 distances (mm) from each surface voxel of ``a`` to the surface of
        ``b`` (in C order of the voxels), and from each surface voxel of ``b`` to the surface of ``a``.

    Raises:
        ValueError: On a shape mismatch, wrong spacing, or an empty mask.
    """
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    sp = _check_spacing(spacing, a.ndim)
    if not a.any() or not b.any():
        raise ValueError("surface distances need two non-empty masks")
    a, b = _crop(a, b)
    sa, sb = _surface(a), _surface(b)
    return _directed(sa, sb, sp), _directed(sb, sa, sp)


def class_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> ClassMetrics:
    """Metrics of one boolean mask pair.

    Args:
        pred: Predicted boolean mask (3D or 2D; non-zero counts as foreground).
        gt: Reference boolean mask of the same shape.
        spacing: Voxel spacing in mm, one entry per axis.

    Returns:
        DSC, HD95, HD and ASSD; see the module docstring for the empty-mask convention.

    Raises:
        ValueError: On a shape mismatch or wrong spacing.
    """
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"shape mismatch: {pred.shape} vs {gt.shape}")
    _check_spacing(spacing, pred.ndim)
    n_pred, n_gt = int(pred.sum()), int(gt.sum())
    if n_pred == 0 and n_gt == 0:
        return ClassMetrics(dice=1.0, hd95=0.0, hd=0.0, assd=0.0)
    if n_pred == 0 or n_gt == 0:
        return ClassMetrics(dice=0.0, hd95=None, hd=None, assd=None)
    dice = 2.0 * int(np.count_nonzero(pred & gt)) / (n_pred + n_gt)
    d_pg, d_gp = surface_distances(pred, gt, spacing)
    hd95 = max(float(np.percentile(d_pg, 95)), float(np.percentile(d_gp, 95)))
    hd = max(float(d_pg.max()), float(d_gp.max()))
    assd = (float(d_pg.sum()) + float(d_gp.sum())) / (d_pg.size + d_gp.size)
    return ClassMetrics(dice=dice, hd95=hd95, hd=hd, assd=assd)


def volume_metrics(
    pred: np.ndarray, gt: np.ndarray, labels: Sequence[int], spacing: Sequence[float]
) -> dict[int, ClassMetrics]:
    """Metrics of each label of two integer label volumes.

    Args:
        pred: Predicted integer label volume.
        gt: Reference integer label volume of the same shape.
        labels: Label values to evaluate (e.g. ``[1, 2, 3]``); absent labels follow the empty-mask rule.
        spacing: Voxel spacing in mm, one entry per axis.

    Returns:
        ``{label: ClassMetrics}`` in the order of ``labels``.

    Raises:
        ValueError: On a shape mismatch or a spacing of the wrong length.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"shape mismatch: {pred.shape} vs {gt.shape}")
    _check_spacing(spacing, pred.ndim)
    return {int(label): class_metrics(pred == label, gt == label, spacing) for label in labels}
