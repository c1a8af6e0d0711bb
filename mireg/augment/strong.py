"""nnU-Net v2's default 2D training augmentation, batched on the training device.

:func:`augment_strong_batch` reimplements the transforms that nnU-Net v2 (2.8.1,
``nnUNetTrainer.get_training_transforms``, with batchgeneratorsv2 0.3.6) applies to a 2D training
patch, in nnU-Net's order, as small functions of device tensors:

1. :func:`spatial`: crop, rotation (p 0.2, [-180, 180] degrees), scaling (p 0.2, [0.7, 1.4]) and
   mirroring (p 0.5 per axis) as one affine per sample, applied with one ``grid_sample``;
2. :func:`gaussian_noise` (p 0.1);
3. :func:`gaussian_blur` (p 0.2, then 0.5 per channel);
4. :func:`multiplicative_brightness` (p 0.15);
5. :func:`contrast` (p 0.15, range preserved);
6. :func:`simulate_low_resolution` (p 0.25, then 0.5 per channel);
7. :func:`gamma` with inversion (p 0.1), then without (p 0.3), statistics retained.

Labels follow the geometry (nearest neighbour) and are never touched by the intensity transforms.

What differs from nnU-Net, and why:

* The crop's position is uniform on the canvas (as :func:`mireg.augment.paper.augment_batch` draws it);
  nnU-Net's foreground oversampling (a third of each batch centred on a foreground voxel) is a
  property of its data loader, not of the transforms, and is not reproduced.
* nnU-Net rotates and scales a larger patch cut from the (zero padded) image, then centre-crops;
  here the crop window is warped straight from the canvas, so samples that fall outside it read 0
  (the canvas minimum-ish value in mireg's [0, 1] scaling, where nnU-Net's 0 is the z-scored mean).
* Labels are warped by nearest neighbour; nnU-Net interpolates one-hot segmentations bilinearly
  (``mode_seg='bilinear'``) and takes the arg-max, which smooths label edges slightly.
* Mirroring, nnU-Net's last transform, is folded into the affine: flips commute with every
  intensity transform below (per-sample scalars, i.i.d. noise, symmetric blur kernels), except for
  the sampling phase of the nearest-neighbour downsampling of :func:`simulate_low_resolution`,
  which shifts by under one low-resolution pixel; the distribution of the outputs is the same.
* Gaussian noise is scale-free: its standard deviation is the drawn sigma times the plane's own
  standard deviation (nnU-Net's images are z-scored to standard deviation 1; mireg's are min-max
  scaled to [0, 1]).
* Random numbers come from the run's generator through :func:`mireg.contract.uniform` (normals by
  Box-Muller), drawn and turned into parameters where the generator lives, then moved to the data:
  a seed gives the same augmentation on the CPU and on a GPU.
* Elastic deformation is off in nnU-Net's 2D configuration and is not implemented. nnU-Net's
  post-processing of the label map (-1 to 0, deep-supervision downsampling) is mireg's business
  elsewhere.

Like nnU-Net, nothing clips the output intensities to [0, 1] (noise, brightness and gamma leave
that range); every transform is guarded against constant planes (zero spread), so no NaN or
infinity appears.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from mireg.augment.warp import gaussian_kernels, warp_batch
from mireg.contract import uniform

__all__ = [
    "SpatialDraw",
    "augment_strong_batch",
    "bg_contrast",
    "contrast",
    "draw_spatial",
    "gamma",
    "gaussian_blur",
    "gaussian_noise",
    "multiplicative_brightness",
    "simulate_low_resolution",
    "spatial",
    "spatial_theta",
    "warp",
]

Range = tuple[float, float]


# --------------------------------------------------------------------------------------------------
# Random draws


def _draw(size: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Uniform draws on [0, 1) where the generator lives; parameters are computed there, then moved."""
    return uniform(size, generator, generator.device)


def _standard_normal(rows: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``(rows, count)`` standard normal draws from uniform ones (Box-Muller, both halves used)."""
    half = (count + 1) // 2
    u = _draw((2, rows, half), generator)
    radius = torch.sqrt(-2 * torch.log1p(-u[0]))  # 1 - u lies in (0, 1]: the logarithm is finite
    angle = 2 * math.pi * u[1]
    return torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)[:, :count]


def _fire(n: int, c: int, p: float, p_per_channel: float, generator: torch.Generator) -> torch.Tensor:
    """``(n * c,)`` bool: which (sample, channel) planes a transform changes.

    batchgeneratorsv2 wraps each transform in ``RandomTransform(apply_probability=p)`` (one draw per
    sample), and some transforms then pick each channel with ``p_per_channel``.
    """
    u_sample = _draw((n, 1), generator)
    u_channel = _draw((n, c), generator)
    return ((u_sample < p) & (u_channel < p_per_channel)).reshape(-1)


def _on_planes(
    x: torch.Tensor, fire: torch.Tensor, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``x`` (N, C, H, W) with ``fn(planes, rows)`` replacing the planes where ``fire`` (N * C,) holds.

    ``planes`` are the chosen ``(k, H, W)`` planes on ``x``'s device, ``rows`` their indices on
    ``fire``'s device (to pick their parameters); the other planes are returned unchanged.
    """
    rows = fire.nonzero().flatten()
    if rows.numel() == 0:
        return x
    n, c, h, w = x.shape
    planes = x.reshape(n * c, h, w)
    at = rows.to(x.device)
    out = planes.clone()
    out[at] = fn(planes[at], rows)
    return out.view(n, c, h, w)


def _param(values: torch.Tensor, rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-plane parameters ``values[rows]`` as ``(k, 1, 1)`` on ``like``'s device and dtype."""
    return values[rows].to(like.device, like.dtype).view(-1, 1, 1)


def bg_contrast(choice: torch.Tensor, value: torch.Tensor, value_range: Range) -> torch.Tensor:
    """Factors drawn as batchgeneratorsv2's ``BGContrast`` draws them, from two uniform draws each.

    With probability 0.5 (``choice < 0.5``), when the range reaches below 1, the factor is uniform
    on ``(low, 1)``; otherwise it is uniform on ``(max(low, 1), high)``. So half the factors shrink
    and half enlarge, however asymmetric the range (``(0.7, 1.5)``: 0.5 below 1, not 0.375).

    Args:
        choice: Uniform draws on [0, 1) choosing the branch.
        value: Uniform draws on [0, 1) placing the factor in its branch.
        value_range: ``(low, high)``.
    """
    low, high = value_range
    shrink = choice < 0.5 if low < 1 else torch.zeros_like(choice, dtype=torch.bool)
    up_low = max(low, 1.0)
    return torch.where(shrink, low + value * (1 - low), up_low + value * (high - up_low))


# --------------------------------------------------------------------------------------------------
# Spatial


class SpatialDraw(NamedTuple):
    """One spatial transform per sample (tensors on the generator's device).

    Attributes:
        corner: ``(N, 2)`` float, the crop's integer top-left corner (row, column) on the canvas.
        angle: ``(N,)`` rotation in radians, 0 where the sample is not rotated.
        scale: ``(N,)`` scale factor (> 1 zooms out: objects get smaller), 1 where not scaled.
        flip: ``(N, 2)`` bool, mirror along (H, W).
    """

    corner: torch.Tensor
    angle: torch.Tensor
    scale: torch.Tensor
    flip: torch.Tensor


def draw_spatial(
    n: int,
    canvas: tuple[int, int],
    crop: int,
    generator: torch.Generator,
    p_rotation: float = 0.2,
    rotation: float = 180.0,
    p_scaling: float = 0.2,
    scaling: Range = (0.7, 1.4),
    p_mirror: float = 0.5,
) -> SpatialDraw:
    """Draw nnU-Net's 2D ``SpatialTransform`` and ``MirrorTransform`` parameters per sample.

    nnU-Net (``SpatialTransform(p_rotation=0.2, rotation=(-pi, pi), p_scaling=0.2,
    scaling=(0.7, 1.4), p_synchronize_scaling_across_axes=1, p_elastic_deform=0)``) rotates with
    probability 0.2 by an angle uniform in [-180, 180] degrees (its 2D range for a patch whose
    sides differ by at most 1.5x) and, independently, scales with probability 0.2 by one factor
    uniform in [0.7, 1.4] for both axes; ``MirrorTransform(allowed_axes=(0, 1))`` flips each axis
    with probability 0.5. The crop's corner is uniform over the integer positions on the canvas
    (centred ranges when the crop is the larger), as :func:`mireg.augment.paper.augment_batch` draws it;
    nnU-Net's foreground oversampling is not reproduced.

    Args:
        n: Number of samples.
        canvas: ``(H, W)`` of the input images.
        crop: Side of the output.
        generator: Random generator (draws through :func:`~mireg.contract.uniform`).
        p_rotation: Probability that a sample is rotated.
        rotation: Largest rotation in degrees (angles uniform in ``[-rotation, rotation]``).
        p_scaling: Probability that a sample is scaled.
        scaling: Range of the scale factor, uniformly.
        p_mirror: Probability of each axis' flip.
    """
    u = _draw((n, 8), generator)
    corners = []
    for axis, size in enumerate(canvas):
        low, high = min(0, size - crop), max(0, size - crop)
        span = high - low + 1
        corners.append(low + (u[:, axis] * span).floor().clamp(max=span - 1))
    angle = torch.where(u[:, 2] < p_rotation, (2 * u[:, 3] - 1) * math.radians(rotation), 0.0)
    factor = scaling[0] + u[:, 5] * (scaling[1] - scaling[0])
    scale = torch.where(u[:, 4] < p_scaling, factor, 1.0)
    return SpatialDraw(torch.stack(corners, dim=1), angle, scale, u[:, 6:8] < p_mirror)


def spatial_theta(draw: SpatialDraw, canvas: tuple[int, int], crop: int) -> torch.Tensor:
    """``(N, 2, 3)`` affines (for ``affine_grid``) from crop-normalised to canvas-normalised coordinates.

    As in batchgeneratorsv2, the output pixel at offset ``p`` (pixels) from the crop's centre reads
    the input at ``centre + R(angle) @ diag(s, s) @ p`` (so ``s > 1`` samples a larger window: it
    zooms out), rotation and scaling about the crop's centre; the mirroring, applied by nnU-Net after
    everything, flips ``p`` first.
    """
    height, width = canvas
    cos, sin = torch.cos(draw.angle), torch.sin(draw.angle)
    flip_h = torch.where(draw.flip[:, 0], -1.0, 1.0)
    flip_w = torch.where(draw.flip[:, 1], -1.0, 1.0)
    # Output pixels -> source pixels, then source pixels -> normalised canvas coordinates.
    k = draw.scale * crop / 2
    kx, ky = k * 2 / width, k * 2 / height
    centre_y = (2 * draw.corner[:, 0] + crop) / height - 1
    centre_x = (2 * draw.corner[:, 1] + crop) / width - 1
    return torch.stack(
        [
            torch.stack([kx * cos * flip_w, -kx * sin * flip_h, centre_x], dim=1),
            torch.stack([ky * sin * flip_w, ky * cos * flip_h, centre_y], dim=1),
        ],
        dim=1,
    )


def warp(
    images: torch.Tensor, labels: torch.Tensor | None, draw: SpatialDraw, crop: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply a :class:`SpatialDraw` with one ``grid_sample`` per tensor.

    Images are sampled bilinearly with zero padding (batchgeneratorsv2 samples the data with
    ``grid_sample(mode='bilinear', padding_mode='zeros')``), labels by nearest neighbour with 0
    outside the canvas (nnU-Net interpolates one-hot labels bilinearly instead).

    Args:
        images: ``(N, C, H, W)`` float images.
        labels: ``(N, H, W)`` integer labels, or None.
        draw: The per-sample transforms (:func:`draw_spatial`).
        crop: Side of the output.

    Returns:
        ``(N, C, crop, crop)`` images and ``(N, crop, crop)`` int64 labels (or None).
    """
    height, width = images.shape[2:]
    theta = spatial_theta(draw, (height, width), crop).to(images.device, images.dtype)
    return warp_batch(images, labels, theta, crop)


def spatial(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    crop: int,
    generator: torch.Generator,
    p_rotation: float = 0.2,
    p_scaling: float = 0.2,
    p_mirror: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """nnU-Net's ``SpatialTransform`` and ``MirrorTransform``: :func:`draw_spatial` then :func:`warp`.

    Args:
        images: ``(N, C, H, W)`` float images on the canvas.
        labels: ``(N, H, W)`` integer labels, or None.
        crop: Side of the output.
        generator: Random generator (draws through :func:`~mireg.contract.uniform`).
        p_rotation: Probability that a sample is rotated.
        p_scaling: Probability that a sample is scaled.
        p_mirror: Probability of each axis' flip.
    """
    n, _, height, width = images.shape
    draw = draw_spatial(
        n, (height, width), crop, generator, p_rotation=p_rotation, p_scaling=p_scaling, p_mirror=p_mirror
    )
    return warp(images, labels, draw, crop)


# --------------------------------------------------------------------------------------------------
# Intensity


def gaussian_noise(
    x: torch.Tensor, generator: torch.Generator, p: float = 0.1, sigma: Range = (0.0, 0.1)
) -> torch.Tensor:
    """nnU-Net's ``GaussianNoiseTransform(noise_variance=(0, 0.1), synchronize_channels=True)``, p 0.1.

    A sample drawn (probability ``p``) gets one sigma uniform in ``sigma``, shared by its channels,
    and each pixel gets independent noise from N(0, (sigma * std)^2), where std is the plane's own
    standard deviation: scale-free, where nnU-Net adds N(0, sigma^2) to z-scored images (std 1).
    A constant plane (std 0) is left as it is.

    Args:
        x: ``(N, C, H, W)`` images.
        generator: Random generator (draws through :func:`~mireg.contract.uniform`).
        p: Probability that a sample gets noise.
        sigma: Range of the relative noise standard deviation, uniformly.
    """
    n, c, h, w = x.shape
    u = _draw((n, 2), generator)
    fire = (u[:, 0] < p).repeat_interleave(c)
    sigmas = (sigma[0] + u[:, 1] * (sigma[1] - sigma[0])).repeat_interleave(c)

    def add(planes: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        z = _standard_normal(len(rows), h * w, generator).to(planes.device, planes.dtype)
        std = planes.std(dim=(1, 2), correction=0, keepdim=True)
        return planes + z.view(-1, h, w) * _param(sigmas, rows, planes) * std

    return _on_planes(x, fire, add)


def gaussian_blur(
    x: torch.Tensor,
    generator: torch.Generator,
    p: float = 0.2,
    p_per_channel: float = 0.5,
    sigma: Range = (0.5, 1.0),
    truncate: float = 6.0,
) -> torch.Tensor:
    """nnU-Net's ``GaussianBlurTransform(blur_sigma=(0.5, 1), synchronize_channels=False,
    synchronize_axes=False, p_per_channel=0.5)``, applied with probability 0.2.

    Each chosen plane (probability ``p`` per sample, then ``p_per_channel`` per channel: 0.1 for
    one channel) is blurred by a separable Gaussian with an independent sigma per axis, uniform in
    ``sigma`` (pixels), truncated at ``truncate`` times the largest sigma (nnU-Net truncates each
    kernel at 6 sigma; the weights this keeps beyond are below 2e-8) and normalised to sum 1, with
    reflected edges. One grouped convolution per axis over all chosen planes; the others are
    returned unchanged.

    Args:
        x: ``(N, C, H, W)`` images.
        generator: Random generator (draws through :func:`~mireg.contract.uniform`).
        p: Probability that a sample is considered.
        p_per_channel: Probability that each of its channels is blurred.
        sigma: Range of the standard deviations, uniformly (``0 < low <= high``).
        truncate: Kernel radius in units of ``sigma[1]`` (clipped to the image).
    """
    if not 0 < sigma[0] <= sigma[1]:
        raise ValueError(f"sigma must be a range (low, high) with 0 < low <= high, got {sigma}")
    n, c, h, w = x.shape
    fire = _fire(n, c, p, p_per_channel, generator)
    sigmas = sigma[0] + _draw((n * c, 2), generator) * (sigma[1] - sigma[0])  # along (H, W)
    radius = math.ceil(truncate * sigma[1])
    radius_h, radius_w = min(radius, h - 1), min(radius, w - 1)  # reflect padding needs pad < size

    def blur(planes: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        k = len(rows)
        kernel_h = gaussian_kernels(sigmas[rows, 0], radius_h).to(planes.device, planes.dtype)
        kernel_w = gaussian_kernels(sigmas[rows, 1], radius_w).to(planes.device, planes.dtype)
        padded = F.pad(planes[None], (radius_w, radius_w, radius_h, radius_h), mode="reflect")
        out = F.conv2d(padded, kernel_h.view(k, 1, -1, 1), groups=k)
        return F.conv2d(out, kernel_w.view(k, 1, 1, -1), groups=k)[0]

    return _on_planes(x, fire, blur)


def multiplicative_brightness(
    x: torch.Tensor, generator: torch.Generator, p: float = 0.15, multiplier: Range = (0.75, 1.25)
) -> torch.Tensor:
    """nnU-Net's ``MultiplicativeBrightnessTransform(multiplier_range=BGContrast((0.75, 1.25)),
    synchronize_channels=False, p_per_channel=1)``, applied with probability 0.15.

    A chosen sample's every channel is multiplied by its own factor drawn by :func:`bg_contrast`.

    Args:
        x: ``(N, C, H, W)`` images.
        generator: Random generator (draws through :func:`~mireg.contract.uniform`).
        p: Probability that a sample is changed.
        multiplier: Range of the factor, drawn BGContrast-style.
    """
    n, c, _, _ = x.shape
    fire = _fire(n, c, p, 1.0, generator)
    u = _draw((n * c, 2), generator)
    factors = bg_contrast(u[:, 0], u[:, 1], multiplier)
    return _on_planes(x, fire, lambda planes, rows: planes * _param(factors, rows, planes))


def contrast(
    x: torch.Tensor,
    generator: torch.Generator,
    p: float = 0.15,
    factor: Range = (0.75, 1.25),
    preserve_range: bool = True,
) -> torch.Tensor:
    """nnU-Net's ``ContrastTransform(contrast_range=BGContrast((0.75, 1.25)), preserve_range=True,
    synchronize_channels=False, p_per_channel=1)``, applied with probability 0.15.

    A chosen plane becomes ``(x - mean) * f + mean`` with its own mean and a factor ``f`` drawn by
    :func:`bg_contrast`, then (``preserve_range``) is clamped to its [min, max] before the change.

    Args:
        x: ``(N, C, H, W)`` images.
        generator: Random generator (draws through :func:`~mireg.contract.uniform`).
        p: Probability that a sample is changed.
        factor: Range of the contrast factor, drawn BGContrast-style.
        preserve_range: Clamp the result to the plane's range before the change.
    """
    n, c, _, _ = x.shape
    fire = _fire(n, c, p, 1.0, generator)
    u = _draw((n * c, 2), generator)
    factors = bg_contrast(u[:, 0], u[:, 1], factor)

    def stretch(planes: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        mean = planes.mean(dim=(1, 2), keepdim=True)
        out = (planes - mean) * _param(factors, rows, planes) + mean
        if not preserve_range:
            return out
        low = planes.amin(dim=(1, 2), keepdim=True)
        high = planes.amax(dim=(1, 2), keepdim=True)
        return torch.maximum(torch.minimum(out, high), low)

    return _on_planes(x, fire, stretch)


def simulate_low_resolution(
    x: torch.Tensor,
    generator: torch.Generator,
    p: float = 0.25,
    p_per_channel: float = 0.5,
    zoom: Range = (0.5, 1.0),
) -> torch.Tensor:
    """nnU-Net's ``SimulateLowResolutionTransform(scale=(0.5, 1), synchronize_channels=False,
    synchronize_axes=True, p_per_channel=0.5)``, applied with probability 0.25.

    A chosen plane (probability ``p`` per sample, then ``p_per_channel`` per channel: 0.125 for one
    channel) is downsampled to ``round(size * z)`` per axis, one zoom ``z`` uniform in ``zoom`` for
    both axes, by nearest neighbour (``'nearest-exact'``), and upsampled back bilinearly
    (``align_corners=False``). Planes that share a low-resolution size are resampled together.

    Args:
        x: ``(N, C, H, W)`` images.
        generator: Random generator (draws through :func:`~mireg.contract.uniform`).
        p: Probability that a sample is considered.
        p_per_channel: Probability that each of its channels is changed.
        zoom: Range of the zoom factor, uniformly (``0 < low <= high <= 1``).
    """
    n, c, h, w = x.shape
    fire = _fire(n, c, p, p_per_channel, generator)
    zooms = zoom[0] + _draw((n * c,), generator) * (zoom[1] - zoom[0])

    def lowres(planes: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        sizes = [(max(1, round(h * z)), max(1, round(w * z))) for z in zooms[rows].tolist()]
        out = torch.empty_like(planes)
        for size in sorted(set(sizes)):
            at = torch.tensor([i for i, s in enumerate(sizes) if s == size], device=planes.device)
            small = F.interpolate(planes[at][:, None], size=size, mode="nearest-exact")
            out[at] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        return out

    return _on_planes(x, fire, lowres)


def gamma(
    x: torch.Tensor,
    generator: torch.Generator,
    p: float,
    invert: bool,
    gamma_range: Range = (0.7, 1.5),
    retain_stats: bool = True,
) -> torch.Tensor:
    """nnU-Net's ``GammaTransform(gamma=BGContrast((0.7, 1.5)), p_invert_image=1 or 0,
    synchronize_channels=False, p_per_channel=1, p_retain_stats=1)``, applied with probability 0.1
    (inverted) and then 0.3 (not inverted).

    A chosen plane (negated first when ``invert``) is mapped to its [min, max], raised to a power
    drawn by :func:`bg_contrast`, mapped back; with ``retain_stats`` it is then shifted and scaled to
    its mean and (unbiased) standard deviation before the change; negated back when ``invert``.
    nnU-Net draws inversion and retention with probabilities; it uses only 0 and 1.

    Args:
        x: ``(N, C, H, W)`` images.
        generator: Random generator (draws through :func:`~mireg.contract.uniform`).
        p: Probability that a sample is changed.
        invert: Apply the power to the negated image.
        gamma_range: Range of the exponent, drawn BGContrast-style.
        retain_stats: Restore each plane's mean and standard deviation.
    """
    n, c, h, w = x.shape
    fire = _fire(n, c, p, 1.0, generator)
    u = _draw((n * c, 2), generator)
    gammas = bg_contrast(u[:, 0], u[:, 1], gamma_range)
    correction = 1 if h * w > 1 else 0

    def power(planes: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        y = -planes if invert else planes
        mean = y.mean(dim=(1, 2), keepdim=True)
        std = y.std(dim=(1, 2), correction=correction, keepdim=True)
        low = y.amin(dim=(1, 2), keepdim=True)
        spread = y.amax(dim=(1, 2), keepdim=True) - low
        y = ((y - low) / spread.clamp(min=1e-7)) ** _param(gammas, rows, planes) * spread + low
        if retain_stats:
            new_std = y.std(dim=(1, 2), correction=correction, keepdim=True)
            y = (y - y.mean(dim=(1, 2), keepdim=True)) * std / new_std.clamp(min=1e-7) + mean
        return -y if invert else y

    return _on_planes(x, fire, power)


# --------------------------------------------------------------------------------------------------
# The pipeline


def augment_strong_batch(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    crop: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """nnU-Net v2's default 2D training augmentation of a batch, on its device.

    :func:`spatial` (crop, rotation, scaling, mirroring), then :func:`gaussian_noise`,
    :func:`gaussian_blur`, :func:`multiplicative_brightness`, :func:`contrast`,
    :func:`simulate_low_resolution`, :func:`gamma` inverted (p 0.1) and :func:`gamma` (p 0.3), with
    nnU-Net's probabilities and ranges. Labels only follow the geometry. Intensities are not clipped.

    Args:
        images: ``(N, C, S, S)`` float images on the canvas (values in [0, 1]).
        labels: ``(N, S, S)`` integer labels, or None for unlabelled images.
        crop: Side of the output.
        generator: Random generator (on any device, :func:`~mireg.contract.uniform`).

    Returns:
        ``(N, C, crop, crop)`` images and ``(N, crop, crop)`` int64 labels (or None).
    """
    out, warped = spatial(images, labels, crop, generator)
    out = gaussian_noise(out, generator)
    out = gaussian_blur(out, generator)
    out = multiplicative_brightness(out, generator)
    out = contrast(out, generator)
    out = simulate_low_resolution(out, generator)
    out = gamma(out, generator, p=0.1, invert=True)
    out = gamma(out, generator, p=0.3, invert=False)
    return out, warped
