"""The strong augmentations that pseudo-labelling regularisers apply to their own views of a batch:
:func:`intensity_jitter`, :func:`gaussian_blur`, and CutMix-style box mixing (:func:`cutmix_boxes`
draws the boxes, :func:`mix` pastes them, for images and labels alike)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mireg.augment.warp import gaussian_kernels
from mireg.contract import uniform

__all__ = ["cutmix_boxes", "gaussian_blur", "intensity_jitter", "mix"]


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
