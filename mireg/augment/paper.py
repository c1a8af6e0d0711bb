"""The paper's training augmentation (``[augment] preset = "paper"``, :func:`augment_batch`):
rotation, flips and a random crop composed into one ``(N, 2, 3)`` affine per sample and applied with
a single ``grid_sample`` (bilinear for images, nearest for labels), then brightness and contrast
jitter."""

from __future__ import annotations

import math

import torch

from mireg.augment.views import intensity_jitter
from mireg.augment.warp import warp_batch
from mireg.contract import uniform
from mireg.recipe import AugmentConfig

__all__ = ["augment_batch"]


def _affine(
    n: int, canvas: int, cfg: AugmentConfig, g: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Random ``(n, 2, 3)`` affines from crop-normalised to canvas-normalised coordinates."""
    u = uniform((n, 5), g, device)
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
    return intensity_jitter(x, g, cfg.brightness, cfg.contrast)


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
        generator: Random generator (on any device, :func:`~mireg.contract.uniform`).

    Returns:
        ``(N, C, crop, crop)`` images and ``(N, crop, crop)`` int64 labels (or None).
    """
    n, _, size, _ = images.shape
    out, warped = warp_batch(images, labels, _affine(n, size, cfg, generator, images.device), cfg.crop)
    return _jitter(out, cfg, generator), warped
