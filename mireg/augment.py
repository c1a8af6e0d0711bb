"""Batched training augmentation on the training device: one affine warp per sample.

Rotation, flips and a random crop are composed into one ``(N, 2, 3)`` affine and applied with a single
``grid_sample`` (bilinear for images, nearest for labels); brightness and contrast jitter follow.
Nothing runs per sample on the CPU, so augmentation never bounds a GPU step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mireg.recipe import AugmentConfig

__all__ = ["augment_batch", "center_crop"]


def _affine(n: int, canvas: int, cfg: AugmentConfig, g: torch.Generator,
            device: torch.device) -> torch.Tensor:
    """Random ``(n, 2, 3)`` affines from crop-normalised to canvas-normalised coordinates."""
    u = torch.rand(n, 5, generator=g, device=device)
    angle = (2 * u[:, 0] - 1) * math.radians(cfg.rotation)
    flip_x = torch.where(u[:, 1] < cfg.flip_prob, -1.0, 1.0)
    flip_y = torch.where(u[:, 2] < cfg.flip_prob, -1.0, 1.0)
    scale = cfg.crop / canvas
    # Integer top-left corner of the crop; its centre in normalised canvas coordinates.
    span = canvas - cfg.crop + 1
    corners = (u[:, 3:5] * span).floor().clamp(max=span - 1)
    centre = (2 * corners + cfg.crop) / canvas - 1
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([scale * cos * flip_x, -scale * sin * flip_y, centre[:, 0]], dim=1),
            torch.stack([scale * sin * flip_x, scale * cos * flip_y, centre[:, 1]], dim=1),
        ],
        dim=1,
    )
    return theta


def _jitter(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    u = torch.rand(n, 2, generator=g, device=x.device)
    brightness = cfg.brightness[0] + u[:, 0] * (cfg.brightness[1] - cfg.brightness[0])
    contrast = cfg.contrast[0] + u[:, 1] * (cfg.contrast[1] - cfg.contrast[0])
    x = x * brightness.view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast.view(n, 1, 1, 1) + mean).clamp(0, 1)


def augment_batch(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    cfg: AugmentConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Augment a batch on its device.

    Args:
        images: ``(N, C, S, S)`` float images on the canvas (values in [0, 1]).
        labels: ``(N, S, S)`` integer labels, or None for unlabelled images.
        cfg: Augmentation settings.
        generator: Random generator on the images' device.

    Returns:
        ``(N, C, crop, crop)`` images and ``(N, crop, crop)`` int64 labels (or None).
    """
    n, c, size, _ = images.shape
    theta = _affine(n, size, cfg, generator, images.device)
    grid = F.affine_grid(theta, [n, c, cfg.crop, cfg.crop], align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = _jitter(out, cfg, generator)
    if labels is None:
        return out, None
    warped = F.grid_sample(labels[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                           align_corners=False)
    return out, warped[:, 0].long()


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre crop the last two dimensions to ``size``."""
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]
