"""The warp both training presets apply (one affine per sample, one ``grid_sample`` per tensor),
and the Gaussian kernels both blur."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["gaussian_kernels", "warp_batch"]


def warp_batch(
    images: torch.Tensor, labels: torch.Tensor | None, theta: torch.Tensor, crop: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One affine per sample, one ``grid_sample`` per tensor: images bilinearly with zero padding,
    labels by nearest neighbour with 0 outside.

    Args:
        images: ``(N, C, H, W)`` float images.
        labels: ``(N, H, W)`` integer labels, or None.
        theta: ``(N, 2, 3)`` affines from crop-normalised to image-normalised coordinates.
        crop: Side of the output.

    Returns:
        ``(N, C, crop, crop)`` images and ``(N, crop, crop)`` int64 labels (or None).
    """
    n, c = images.shape[:2]
    grid = F.affine_grid(theta, [n, c, crop, crop], align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if labels is None:
        return out, None
    warped = F.grid_sample(
        labels[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    return out, warped[:, 0].long()


def gaussian_kernels(sigmas: torch.Tensor, radius: int) -> torch.Tensor:
    """``(k, 2 * radius + 1)`` Gaussian kernels of the standard deviations ``sigmas`` ``(k,)``
    (pixels), each normalised to sum 1."""
    offsets = torch.arange(-radius, radius + 1, dtype=sigmas.dtype, device=sigmas.device)
    kernels = torch.exp(-0.5 * (offsets[None] / sigmas[:, None]) ** 2)
    return kernels / kernels.sum(dim=1, keepdim=True)
