"""Batched augmentation on the training device.

The training augmentation (:func:`augment_batch`): rotation, flips and a random crop composed into
one ``(N, 2, 3)`` affine per sample and applied with a single ``grid_sample`` (bilinear for images,
nearest for labels), then brightness and contrast jitter.

The strong augmentations that pseudo-labelling regularisers apply to their own views of a batch:
:func:`intensity_jitter`, :func:`gaussian_blur`, and CutMix-style box mixing (:func:`cutmix_boxes`
draws the boxes, :func:`mix` pastes them, for images and labels alike). All are plain functions of
device tensors: nothing runs per sample on the CPU.

Random numbers come from :func:`mireg.contract.uniform`: drawn from the run's generator, which
lives on the CPU, then moved to the data's device. A seed therefore gives the same draws on the CPU
and on a GPU (a generator on CUDA draws other numbers than one on the CPU from the same seed), so a
run trains the same steps on either, up to floating-point rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mireg.contract import uniform
from mireg.recipe import AugmentConfig

__all__ = [
    "augment_batch",
    "cutmix_boxes",
    "gaussian_blur",
    "gaussian_kernels",
    "intensity_jitter",
    "mix",
    "warp_batch",
]


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


# --------------------------------------------------------------------------------------------------
# Strong augmentations


def intensity_jitter(
    x: torch.Tensor,
    generator: torch.Generator,
    brightness: tuple[float, float] = (0.5, 1.5),
    contrast: tuple[float, float] = (0.5, 1.5),
) -> torch.Tensor:
    """Per-sample brightness (a factor) then contrast (about the sample's mean), clipped to [0, 1].

    Args:
        x: ``(N, C, H, W)`` images with values in [0, 1].
        generator: Random generator (on any device, :func:`~mireg.contract.uniform`).
        brightness: Range the brightness factor is drawn from, uniformly.
        contrast: Range the contrast factor is drawn from, uniformly.
    """
    n = x.shape[0]
    u = uniform((n, 2), generator, x.device)
    b = brightness[0] + u[:, 0] * (brightness[1] - brightness[0])
    c = contrast[0] + u[:, 1] * (contrast[1] - contrast[0])
    x = x * b.view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * c.view(n, 1, 1, 1) + mean).clamp(0, 1)


def gaussian_blur(
    x: torch.Tensor,
    generator: torch.Generator,
    sigma: tuple[float, float] = (0.1, 2.0),
    p: float = 0.5,
) -> torch.Tensor:
    """Blur each sample, with probability ``p``, by a Gaussian of its own width (in pixels).

    One separable, grouped convolution over the whole batch (edges reflected); samples drawn not to
    be blurred are returned unchanged.

    Args:
        x: ``(N, C, H, W)`` images.
        generator: Random generator (on any device, :func:`~mireg.contract.uniform`).
        sigma: Range the standard deviation is drawn from, uniformly (``0 < low <= high``).
        p: Probability that a sample is blurred.
    """
    if not 0 < sigma[0] <= sigma[1]:
        raise ValueError(f"sigma must be a range (low, high) with 0 < low <= high, got {sigma}")
    n, c, h, w = x.shape
    u = uniform((n, 2), generator, x.device)
    sigmas = sigma[0] + u[:, 0] * (sigma[1] - sigma[0])
    radius = min(math.ceil(3 * sigma[1]), (min(h, w) - 1) // 2)
    kernel = gaussian_kernels(sigmas.to(x.dtype), radius).repeat_interleave(c, dim=0)  # (N*C, K)
    flat = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, -1, 1), groups=n * c)
    blurred = F.conv2d(flat, kernel.view(n * c, 1, 1, -1), groups=n * c).view(n, c, h, w)
    return torch.where((u[:, 1] < p).view(n, 1, 1, 1), blurred, x)


def cutmix_boxes(
    n: int,
    height: int,
    width: int,
    generator: torch.Generator,
    area: tuple[float, float] = (0.02, 0.4),
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    p: float = 0.5,
    device: torch.device | None = None,
) -> torch.Tensor:
    """One random box per sample, as a boolean mask (CutMix; Yun et al., 2019).

    The box's area is a uniform share of the image in ``area``, its aspect ratio (height / width)
    log-uniform in ``aspect``, its position uniform with the box inside the image. A side longer
    than the image's is cut to it (with the defaults about 3 % of the boxes, which then cover about
    5 % less than drawn). With probability ``1 - p`` a sample gets no box (an all-false mask).

    Args:
        n: Number of samples.
        height: Image height.
        width: Image width.
        generator: Random generator (on any device, :func:`~mireg.contract.uniform`).
        area: Range of the box's share of the image area.
        aspect: Range of the box's height / width.
        p: Probability that a sample gets a box.
        device: Where the masks are made (default: the generator's device).

    Returns:
        ``(n, height, width)`` bool masks, true inside the box.
    """
    device = generator.device if device is None else device
    u = uniform((n, 5), generator, device)
    share = area[0] + u[:, 0] * (area[1] - area[0])
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    ratio = torch.exp(log_lo + u[:, 1] * (log_hi - log_lo))
    box_h = (torch.sqrt(share * ratio) * height).round().clamp(1, height)
    box_w = (torch.sqrt(share / ratio) * width).round().clamp(1, width)
    top = ((height - box_h + 1) * u[:, 2]).floor().clamp(max=height - box_h)
    left = ((width - box_w + 1) * u[:, 3]).floor().clamp(max=width - box_w)
    rows = torch.arange(height, device=device)[None, :, None]
    cols = torch.arange(width, device=device)[None, None, :]
    inside_rows = (rows >= top.view(n, 1, 1)) & (rows < (top + box_h).view(n, 1, 1))
    inside_cols = (cols >= left.view(n, 1, 1)) & (cols < (left + box_w).view(n, 1, 1))
    return inside_rows & inside_cols & (u[:, 4] < p).view(n, 1, 1)


def mix(a: torch.Tensor, b: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``b`` inside the boxes, ``a`` outside: images ``(N, C, H, W)``, labels ``(N, H, W)`` or
    probabilities ``(N, K, H, W)``, with ``boxes`` from :func:`cutmix_boxes`."""
    if a.shape != b.shape:
        raise ValueError(f"cannot mix tensors of shapes {tuple(a.shape)} and {tuple(b.shape)}")
    mask = boxes if a.dim() == 3 else boxes[:, None]
    return torch.where(mask, b, a)
