"""nnU-Net v2's 2D training augmentation (mireg.augment.strong): geometry, draws, statistics."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from mireg.augment import strong as aug
from mireg.augment.strong import (
    SpatialDraw,
    augment_strong_batch,
    bg_contrast,
    contrast,
    draw_spatial,
    gamma,
    gaussian_blur,
    gaussian_noise,
    multiplicative_brightness,
    simulate_low_resolution,
    spatial,
    warp,
)

N = 4000  # samples for the statistics: a fraction p is measured within 4 standard errors


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _assert_fraction(name: str, measured: float, p: float, n: int = N) -> None:
    se = math.sqrt(p * (1 - p) / n)
    print(f"{name}: measured {measured:.4f}, expected {p:.4f} (4 SE = {4 * se:.4f})")
    assert abs(measured - p) < 4 * se, (name, measured, p)


def _changed(out: torch.Tensor, x: torch.Tensor, atol: float = 0.0) -> torch.Tensor:
    """Per sample: does any value differ (by more than ``atol``)?"""
    return ((out - x).abs() > atol).flatten(1).any(dim=1)


def _blocks(n: int, seed: int = 0, classes: int = 4) -> torch.Tensor:
    """``(n, 48, 48)`` piecewise constant label maps (6 x 6 blocks of 8 pixels)."""
    blocks = torch.randint(0, classes, (n, 6, 6), generator=_gen(seed))
    return blocks.repeat_interleave(8, dim=1).repeat_interleave(8, dim=2)


# --------------------------------------------------------------------------------------------------
# Contract of the pipeline


def test_shapes_and_dtypes() -> None:
    x, y = torch.rand(5, 1, 48, 48), torch.randint(0, 4, (5, 48, 48), dtype=torch.int32)
    out, lab = augment_strong_batch(x, y, 32, _gen())
    assert out.shape == (5, 1, 32, 32) and out.dtype == torch.float32
    assert lab is not None and lab.shape == (5, 32, 32) and lab.dtype == torch.int64
    assert lab.min() >= 0 and lab.max() <= 3
    out, none = augment_strong_batch(x, None, 16, _gen())
    assert out.shape == (5, 1, 16, 16) and none is None


def test_the_transforms_run_in_nnunets_order(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def record(name: str) -> Callable[..., torch.Tensor]:
        def fn(x: torch.Tensor, generator: torch.Generator, **kwargs: object) -> torch.Tensor:
            calls.append(f"{name}{kwargs.get('invert', '')}")
            return x

        return fn

    names = ["gaussian_noise", "gaussian_blur", "multiplicative_brightness", "contrast"]
    for name in [*names, "simulate_low_resolution", "gamma"]:
        monkeypatch.setattr(aug, name, record(name))
    augment_strong_batch(torch.rand(2, 1, 32, 32), None, 16, _gen())
    assert calls == [*names, "simulate_low_resolution", "gammaTrue", "gammaFalse"]


def test_same_seed_same_output_and_only_the_generator_is_drawn_from() -> None:
    x, y = torch.rand(64, 1, 40, 40), _blocks(64)[:, 4:44, 4:44]
    state = torch.get_rng_state()
    a = augment_strong_batch(x, y, 32, _gen(3))
    b = augment_strong_batch(x, y, 32, _gen(3))
    c = augment_strong_batch(x, y, 32, _gen(4))
    assert torch.equal(torch.get_rng_state(), state)  # the global generator was never used
    assert torch.equal(a[0], b[0]) and a[1] is not None and b[1] is not None and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_intensity_transforms_never_touch_the_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    y = _blocks(16)
    x = torch.rand(16, 1, 48, 48)
    _, full = augment_strong_batch(x, y, 32, _gen(5))
    geometry_only, expected = spatial(x, y, 32, _gen(5))  # the spatial transform draws first
    assert full is not None and expected is not None and torch.equal(full, expected)
    for name in ["gaussian_noise", "gaussian_blur", "multiplicative_brightness", "contrast"]:
        monkeypatch.setattr(aug, name, lambda x, generator, **_: x)
    monkeypatch.setattr(aug, "simulate_low_resolution", lambda x, generator, **_: x)
    monkeypatch.setattr(aug, "gamma", lambda x, generator, **_: x)
    out, _ = augment_strong_batch(x, y, 32, _gen(5))
    assert torch.equal(out, geometry_only)


def test_constant_images_give_no_nan() -> None:
    for value in (0.0, 0.5, 1.0):
        x = torch.full((2000, 1, 16, 16), value)
        out, lab = augment_strong_batch(x, torch.zeros(2000, 16, 16, dtype=torch.long), 16, _gen(1))
        assert torch.isfinite(out).all() and lab is not None
        transforms: list[Callable[[torch.Tensor], torch.Tensor]] = [
            lambda t: gaussian_noise(t, _gen(), p=1.0),
            lambda t: gaussian_blur(t, _gen(), p=1.0, p_per_channel=1.0),
            lambda t: multiplicative_brightness(t, _gen(), p=1.0),
            lambda t: contrast(t, _gen(), p=1.0),
            lambda t: simulate_low_resolution(t, _gen(), p=1.0, p_per_channel=1.0),
            lambda t: gamma(t, _gen(), p=1.0, invert=True),
            lambda t: gamma(t, _gen(), p=1.0, invert=False),
        ]
        for fn in transforms:
            y = fn(x[:50])
            assert torch.isfinite(y).all()
            assert (y == y[:, :, :1, :1]).all()  # a constant plane stays constant
    single = torch.rand(4, 1, 1, 1)
    assert torch.isfinite(gamma(single, _gen(), p=1.0, invert=False)).all()


# --------------------------------------------------------------------------------------------------
# Spatial


def test_labels_follow_the_image_geometry_exactly() -> None:
    y = _blocks(32, seed=1)
    onehot = F.one_hot(y, 4).permute(0, 3, 1, 2).float()  # the image encodes its label, per channel
    # No rotation or scaling: crops and flips move whole pixels, images and labels alike.
    out, lab = spatial(onehot, y, 32, _gen(2), p_rotation=0.0, p_scaling=0.0)
    assert lab is not None
    torch.testing.assert_close(out, F.one_hot(lab, 4).permute(0, 3, 1, 2).float(), atol=1e-5, rtol=0)
    # Rotated and scaled: where the bilinear image is pure (all neighbours of one label, or all
    # outside the canvas), the nearest-neighbour label must be that label.
    out, lab = spatial(onehot, y, 32, _gen(3), p_rotation=1.0, p_scaling=1.0)
    assert lab is not None
    pure = out.amax(dim=1) > 1 - 1e-5
    outside = out.amax(dim=1) < 1e-5
    assert pure.float().mean() > 0.5 and outside.any()
    assert torch.equal(lab[pure], out.argmax(dim=1)[pure])
    assert (lab[outside] == 0).all()
    # Everywhere: the label is the nearest of the (up to four) source pixels, whose bilinear weight
    # is at least 1/4; outside the canvas counts as label 0.
    weight = out.gather(1, lab[:, None])[:, 0]
    weight = torch.where(lab == 0, weight + (1 - out.sum(dim=1)), weight)
    assert weight.min() > 0.25 - 1e-5


def test_rotation_scaling_and_mirroring_fire_at_nnunets_rates() -> None:
    x = torch.rand(N, 1, 16, 16)
    # crop = canvas: the corner is 0 and an untransformed sample comes back unchanged.
    rotated, _ = spatial(x, None, 16, _gen(10), p_scaling=0.0, p_mirror=0.0)
    # An identity warp reads pixel centres: exact up to float rounding (1e-7).
    _assert_fraction("rotated", _changed(rotated, x, 1e-5).float().mean().item(), 0.2)
    scaled, _ = spatial(x, None, 16, _gen(11), p_rotation=0.0, p_mirror=0.0)
    _assert_fraction("scaled", _changed(scaled, x, 1e-5).float().mean().item(), 0.2)
    mirrored, _ = spatial(x, None, 16, _gen(12), p_rotation=0.0, p_scaling=0.0)

    def flipped(fh: bool, fw: bool) -> torch.Tensor:
        t = x.flip(-2) if fh else x
        return t.flip(-1) if fw else t

    match = {
        (fh, fw): (mirrored - flipped(fh, fw)).abs().flatten(1).amax(dim=1) < 1e-5
        for fh in (False, True)
        for fw in (False, True)
    }
    assert torch.stack(list(match.values())).sum(dim=0).eq(1).all()  # exactly one flip pattern each
    _assert_fraction("mirrored along H", (match[True, False] | match[True, True]).float().mean().item(), 0.5)
    _assert_fraction("mirrored along W", (match[False, True] | match[True, True]).float().mean().item(), 0.5)
    _assert_fraction("mirrored along both", match[True, True].float().mean().item(), 0.25)
    # The draws themselves: angle uniform in [-180, 180] degrees, scale uniform in [0.7, 1.4].
    draw = draw_spatial(N, (48, 48), 32, _gen(13), p_rotation=1.0, p_scaling=1.0)
    assert draw.angle.min() < -3.0 and draw.angle.max() > 3.0 and draw.angle.abs().max() <= math.pi
    assert abs(draw.angle.mean().item()) < 0.1
    assert 0.7 <= draw.scale.min() < 0.71 and 1.39 < draw.scale.max() <= 1.4
    assert abs(draw.scale.mean().item() - 1.05) < 0.01
    assert draw.corner.min() == 0 and draw.corner.max() == 16 and draw.corner.eq(draw.corner.floor()).all()


def test_scaling_above_one_zooms_out() -> None:
    y = torch.zeros(1, 64, 64, dtype=torch.long)
    y[:, 22:42, 22:42] = 1  # a centred 20 x 20 square: area 400
    x = y[:, None].float()
    for s in (0.7, 1.4):
        draw = SpatialDraw(
            torch.zeros(1, 2), torch.zeros(1), torch.tensor([s]), torch.zeros(1, 2, dtype=torch.bool)
        )
        out, lab = warp(x, y, draw, 64)
        assert lab is not None
        expected = 400 / s**2  # s > 1: the object shrinks
        assert abs(lab.sum().item() - expected) < 0.1 * expected, (s, lab.sum())
        assert abs(out.sum().item() - expected) < 0.1 * expected, (s, out.sum())


def test_rotation_turns_about_the_crops_centre() -> None:
    y = torch.zeros(1, 64, 64, dtype=torch.long)
    y[:, 8:24, 30:34] = 1  # a bar above the centre, along H
    draw = SpatialDraw(
        torch.zeros(1, 2), torch.tensor([math.pi / 2]), torch.ones(1), torch.zeros(1, 2, dtype=torch.bool)
    )
    _, lab = warp(y[:, None].float(), y, draw, 64)
    assert lab is not None
    rows, cols = lab[0].nonzero().float().T
    assert abs(rows.mean().item() - 31.5) < 1  # now lying across, at the centre's height
    assert abs(abs(cols.mean().item() - 31.5) - 15.5) < 1  # as far from the centre as before


# --------------------------------------------------------------------------------------------------
# Intensity: rates


def test_intensity_transforms_fire_at_nnunets_rates() -> None:
    x = torch.rand(N, 1, 16, 16)
    rates = {
        "noised": (gaussian_noise(x, _gen(20)), 0.1),
        "blurred": (gaussian_blur(x, _gen(21)), 0.2 * 0.5),
        "brightened": (multiplicative_brightness(x, _gen(22)), 0.15),
        "contrasted": (contrast(x, _gen(23)), 0.15),
        # A zoom of 31/32 or more rounds 16 pixels back to 16: an identity, 1/16 of the zooms.
        "low-res": (simulate_low_resolution(x, _gen(24)), 0.25 * 0.5 * (1 - 1 / 16)),
        "gamma (inverted)": (gamma(x, _gen(25), p=0.1, invert=True), 0.1),
        "gamma": (gamma(x, _gen(26), p=0.3, invert=False), 0.3),
    }
    for name, (out, p) in rates.items():
        _assert_fraction(name, _changed(out, x).float().mean().item(), p)


def test_per_channel_choices_are_independent() -> None:
    x = torch.rand(N, 2, 16, 16)
    out = gaussian_blur(x, _gen(30))
    per_channel = (out != x).flatten(2).any(dim=2)  # (N, 2)
    _assert_fraction("blur, channel 0", per_channel[:, 0].float().mean().item(), 0.1)
    _assert_fraction("blur, both channels", per_channel.all(dim=1).float().mean().item(), 0.2 * 0.25)
    noised = (gaussian_noise(x, _gen(31)) != x).flatten(2).any(dim=2)
    assert torch.equal(noised[:, 0], noised[:, 1])  # nnU-Net synchronises the noise's channels


def test_bg_contrast_shrinks_half_the_time_whatever_the_range() -> None:
    u = torch.rand(2, 100_000, generator=_gen(40))
    f = bg_contrast(u[0], u[1], (0.7, 1.5))
    low, high = f[f < 1], f[f >= 1]
    assert abs(len(low) / len(f) - 0.5) < 0.01  # a plain uniform draw would give 0.375
    assert low.min() >= 0.7 and high.max() <= 1.5
    assert abs(low.mean().item() - 0.85) < 0.005 and abs(high.mean().item() - 1.25) < 0.005
    above = bg_contrast(u[0], u[1], (1.2, 1.5))
    assert above.min() >= 1.2 and above.max() <= 1.5


# --------------------------------------------------------------------------------------------------
# Intensity: what each transform does


def test_noise_is_scale_free_and_gaussian() -> None:
    x = torch.rand(500, 1, 16, 16)
    out = gaussian_noise(x, _gen(50), p=1.0, sigma=(0.1, 0.1))
    z = (out - x) / (0.1 * x.std(dim=(2, 3), correction=0, keepdim=True))
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01
    assert abs((z.abs() < 1).float().mean().item() - 0.6827) < 0.01
    torch.testing.assert_close(gaussian_noise(10 * x, _gen(50), p=1.0, sigma=(0.1, 0.1)), 10 * out)
    ratio = (gaussian_noise(x, _gen(51), p=1.0) - x).flatten(1).std(dim=1) / x.flatten(1).std(dim=1)
    assert ratio.max() < 0.1 * 1.25 and abs(ratio.mean().item() - 0.05) < 0.005  # sigma ~ U(0, 0.1)


def test_blur_is_normalised_separable_and_leaves_constants_alone() -> None:
    constant = torch.full((20, 1, 16, 16), 0.3)
    torch.testing.assert_close(gaussian_blur(constant, _gen(), p=1.0, p_per_channel=1.0), constant)
    impulse = torch.zeros(200, 1, 33, 33)
    impulse[:, :, 16, 16] = 1
    fixed = gaussian_blur(impulse[:1], _gen(), p=1.0, p_per_channel=1.0, sigma=(0.8, 0.8))
    d = torch.arange(-16, 17, dtype=torch.float64)
    g = torch.exp(-0.5 * (d / 0.8) ** 2)
    g[d.abs() > 6] = 0
    g = g / g.sum()
    torch.testing.assert_close(fixed[0, 0].double(), torch.outer(g, g), atol=1e-7, rtol=0)
    out = gaussian_blur(impulse, _gen(60), p=1.0, p_per_channel=1.0)
    torch.testing.assert_close(out.sum(dim=(1, 2, 3)), torch.ones(200))
    var_h = (out[:, 0].sum(dim=2) * d.float() ** 2).sum(dim=1)
    var_w = (out[:, 0].sum(dim=1) * d.float() ** 2).sum(dim=1)

    def discrete_variance(sigma: float) -> float:
        w = torch.exp(-0.5 * (d / sigma) ** 2)
        return float((w * d**2).sum() / w.sum())

    for var in (var_h, var_w):  # sigma uniform in [0.5, 1]
        assert discrete_variance(0.5) - 1e-4 < var.min() < discrete_variance(0.55)
        assert discrete_variance(0.95) < var.max() < discrete_variance(1.0) + 1e-4
    assert ((var_h - var_w).abs() > 0.05).float().mean() > 0.5  # one sigma per axis


def test_brightness_multiplies_each_sample_by_one_factor() -> None:
    x = torch.rand(N, 1, 16, 16) + 0.1
    out = multiplicative_brightness(x, _gen(70), p=1.0)
    ratio = (out / x).flatten(1)
    torch.testing.assert_close(ratio.amin(dim=1), ratio.amax(dim=1))
    factor = ratio[:, 0]
    assert factor.min() >= 0.75 and factor.max() <= 1.25
    assert abs((factor < 1).float().mean().item() - 0.5) < 0.04


def test_contrast_preserves_the_range() -> None:
    x = torch.rand(N, 1, 16, 16) * torch.rand(N, 1, 1, 1) + torch.rand(N, 1, 1, 1)
    out = contrast(x, _gen(80), p=1.0)
    flat, before = out.flatten(1), x.flatten(1)
    assert (flat.amin(dim=1) >= before.amin(dim=1) - 1e-6).all()
    assert (flat.amax(dim=1) <= before.amax(dim=1) + 1e-6).all()
    assert _changed(out, x).all()
    free = contrast(x, _gen(80), p=1.0, preserve_range=False).flatten(1)
    assert (free.amax(dim=1) > before.amax(dim=1) + 1e-4).float().mean() > 0.3  # the clamp acts
    mean = before.mean(dim=1, keepdim=True)
    centred = before - mean
    factor = ((free - mean) * centred).sum(dim=1, keepdim=True) / (centred**2).sum(dim=1, keepdim=True)
    torch.testing.assert_close(free - mean, factor * centred, atol=1e-5, rtol=0)  # about the mean
    assert factor.min() >= 0.75 - 1e-4 and factor.max() <= 1.25 + 1e-4


def test_low_resolution_downsamples_by_nearest_and_upsamples_bilinearly() -> None:
    x = torch.rand(10, 1, 16, 16)
    out = simulate_low_resolution(x, _gen(), p=1.0, p_per_channel=1.0, zoom=(0.5, 0.5))
    small = F.interpolate(x, size=(8, 8), mode="nearest-exact")
    torch.testing.assert_close(out, F.interpolate(small, size=(16, 16), mode="bilinear"))
    constant = torch.full((20, 1, 16, 16), 0.7)
    torch.testing.assert_close(simulate_low_resolution(constant, _gen(), p=1.0, p_per_channel=1.0), constant)


@pytest.mark.parametrize("invert", [True, False])
def test_gamma_retains_mean_and_std(invert: bool) -> None:
    x = torch.rand(500, 1, 16, 16) ** 2
    out = gamma(x, _gen(90), p=1.0, invert=invert)
    assert _changed(out, x).all()
    torch.testing.assert_close(out.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(2, 3)), x.std(dim=(2, 3)), atol=1e-5, rtol=1e-4)
    raw = gamma(x, _gen(90), p=1.0, invert=invert, retain_stats=False)
    assert (raw.mean(dim=(2, 3)) - x.mean(dim=(2, 3))).abs().max() > 1e-2  # retaining does something


def test_gamma_inversion_bends_the_other_way() -> None:
    x = torch.linspace(0, 1, 256).view(1, 1, 16, 16).repeat(200, 1, 1, 1)
    plain = gamma(x, _gen(91), p=1.0, invert=False, retain_stats=False)
    inverted = gamma(x, _gen(91), p=1.0, invert=True, retain_stats=False)  # same exponents
    # x ** g versus 1 - (1 - x) ** g: mirror images about the identity.
    torch.testing.assert_close(inverted, 1 - gamma(1 - x, _gen(91), p=1.0, invert=False, retain_stats=False))
    assert not torch.allclose(plain, inverted)


# --------------------------------------------------------------------------------------------------
# Devices


@pytest.mark.cuda
def test_cpu_and_gpu_agree_for_the_same_seed() -> None:
    x, y = torch.rand(256, 1, 48, 48), _blocks(256)
    cuda_state = torch.cuda.get_rng_state()
    cpu_out, cpu_lab = augment_strong_batch(x, y, 32, _gen(7))
    gpu_out, gpu_lab = augment_strong_batch(x.cuda(), y.cuda(), 32, _gen(7))
    assert torch.equal(torch.cuda.get_rng_state(), cuda_state)
    assert gpu_out.device.type == "cuda" and gpu_lab is not None and cpu_lab is not None
    torch.testing.assert_close(gpu_out.cpu(), cpu_out, atol=1e-4, rtol=1e-4)
    assert (gpu_lab.cpu() == cpu_lab).float().mean() > 0.999  # nearest-neighbour ties may round apart
