"""The loss math against slow, direct implementations of method.md's formulas."""

from __future__ import annotations

import ast
import functools
import math
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import mireg.losses
from mireg.losses import (
    FFT_MIN_RADIUS,
    JOINT_METHODS,
    SINGLE_PROCESS,
    Reduction,
    consistency_loss,
    global_mi_loss,
    local_joints,
    local_mi_loss,
)


def _probs(*shape: int, seed: int = 0, dim: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).mul(2).softmax(dim=dim)


def _mi_direct(p: list[list[float]], eps: float) -> float:
    k = len(p)
    pi = [sum(p[i][j] for j in range(k)) for i in range(k)]
    pj = [sum(p[i][j] for i in range(k)) for j in range(k)]
    return -sum(
        p[i][j] * (math.log(p[i][j] + eps) - math.log(pi[i] + eps) - math.log(pj[j] + eps))
        for i in range(k)
        for j in range(k)
    )


def global_direct(z1: torch.Tensor, z2: torch.Tensor) -> float:
    n, k = z1.shape
    p = [[sum(float(z1[m, i] * z2[m, j]) for m in range(n)) for j in range(k)] for i in range(k)]
    p = [[(p[i][j] + p[j][i]) / 2 for j in range(k)] for i in range(k)]
    total = sum(map(sum, p))
    p = [[v / total for v in row] for row in p]
    return _mi_direct(p, 1e-10)


def local_direct(z1: torch.Tensor, z2: torch.Tensor, r: int) -> float:
    n, k, h, w = z1.shape
    joints = []
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            p = [[0.0] * k for _ in range(k)]
            for m in range(n):
                for y in range(h):
                    for x in range(w):
                        if 0 <= y + dy < h and 0 <= x + dx < w:
                            for i in range(k):
                                for j in range(k):
                                    p[i][j] += float(z1[m, i, y, x] * z2[m, j, y + dy, x + dx])
            joints.append(p)
    low = min(v for p in joints for row in p for v in row)
    losses = []
    for p in joints:
        p = [[v - low + 1e-16 for v in row] for row in p]
        total = sum(map(sum, p))
        p = [[v / total for v in row] for row in p]
        p = [[(p[i][j] + p[j][i]) / 2 for j in range(k)] for i in range(k)]
        losses.append(_mi_direct(p, 1e-16))
    return sum(losses) / len(losses)


def local_authors(z1: torch.Tensor, z2: torch.Tensor, r: int) -> torch.Tensor:
    """The authors' formulation: one conv2d with the whole map as the kernel."""
    p = F.conv2d(z1.permute(1, 0, 2, 3), weight=z2.permute(1, 0, 2, 3), padding=r)  # (K, K, D, D)
    p = p - p.min().detach() + 1e-16
    p = p / p.sum(dim=(0, 1), keepdim=True)
    p = (p + p.permute(1, 0, 2, 3)) / 2
    pi, pj = p.sum(dim=1, keepdim=True), p.sum(dim=0, keepdim=True)
    mi = (p * (torch.log(p + 1e-16) - torch.log(pi + 1e-16) - torch.log(pj + 1e-16))).sum((0, 1))
    return -mi.mean()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_global_mi_matches_direct_formula(seed: int) -> None:
    z1, z2 = _probs(7, 5, seed=seed), _probs(7, 5, seed=seed + 10)
    assert global_mi_loss(z1, z2).item() == pytest.approx(global_direct(z1, z2), rel=1e-6, abs=1e-9)


def test_global_mi_of_identical_one_hot_batches_is_minus_log_k() -> None:
    z = torch.eye(4, dtype=torch.float64).repeat(3, 1)  # balanced, confident, identical pairs
    assert global_mi_loss(z, z).item() == pytest.approx(-math.log(4), rel=1e-6)


def test_global_mi_of_independent_uniform_pairs_is_zero() -> None:
    z = torch.full((6, 5), 0.2, dtype=torch.float64)
    assert global_mi_loss(z, z).item() == pytest.approx(0.0, abs=1e-8)  # eps-sized


METHODS = list(JOINT_METHODS)


@pytest.fixture(params=METHODS)
def joints_method(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Makes ``local_joints(method="auto")``, and so the MI losses, use one method at every radius."""
    monkeypatch.setattr(mireg.losses, "FFT_MIN_RADIUS", 0 if request.param == "fft" else sys.maxsize)
    return str(request.param)


@pytest.mark.parametrize(("r", "hw"), [(0, (4, 5)), (1, (5, 4)), (2, (4, 4)), (3, (3, 5))])
def test_local_mi_matches_direct_formula(r: int, hw: tuple[int, int], joints_method: str) -> None:
    z1, z2 = _probs(2, 3, *hw, seed=r), _probs(2, 3, *hw, seed=r + 5)
    loss = local_mi_loss(z1, z2, r).item()
    assert loss == pytest.approx(local_direct(z1, z2, r), rel=1e-6)


@pytest.mark.parametrize("r", [0, 1, 3])
def test_local_mi_matches_the_authors_conv2d_formulation(r: int, joints_method: str) -> None:
    z1, z2 = _probs(4, 6, 12, 10, seed=r), _probs(4, 6, 12, 10, seed=r + 1)
    loss = local_mi_loss(z1, z2, r).item()
    assert loss == pytest.approx(local_authors(z1, z2, r).item(), rel=1e-7)


def test_local_mi_gradients_match_the_authors_formulation_on_both_sides(joints_method: str) -> None:
    a = _probs(2, 4, 8, 8, seed=3).requires_grad_()
    b = _probs(2, 4, 8, 8, seed=4).requires_grad_()
    ga = torch.autograd.grad(local_mi_loss(a, b, 2), (a, b))
    gb = torch.autograd.grad(local_authors(a, b, 2), (a, b))
    for x, y in zip(ga, gb, strict=True):
        assert x.abs().sum() > 0
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("hw", [(17, 23), (30, 16)])
def test_fft_and_shift_joints_agree_in_float32_on_odd_sizes(hw: tuple[int, int]) -> None:
    z1 = _probs(3, 2, 5, *hw, seed=11, dim=2).float().requires_grad_()
    z2 = _probs(3, 2, 5, *hw, seed=12, dim=2).float().requires_grad_()
    shift, fft = local_joints(z1, z2, 3, "shift"), local_joints(z1, z2, 3, "fft")
    assert shift.shape == fft.shape == (49, 2, 5, 5)
    torch.testing.assert_close(fft, shift, rtol=1e-5, atol=1e-4)
    weights = torch.randn_like(shift)
    g_shift = torch.autograd.grad((shift * weights).sum(), (z1, z2))
    g_fft = torch.autograd.grad((fft * weights).sum(), (z1, z2))
    for x, y in zip(g_fft, g_shift, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("r", "hw"), [(1, (5, 7)), (3, (6, 9)), (2, (2, 3))])  # r >= a side: masked
def test_joints_backward_passes_gradcheck(method: str, r: int, hw: tuple[int, int]) -> None:
    z1 = _probs(2, 2, 3, *hw, seed=r, dim=2).requires_grad_()
    z2 = _probs(2, 2, 3, *hw, seed=r + 7, dim=2).requires_grad_()
    check = functools.partial(torch.autograd.gradcheck, fast_mode=True)
    assert check(lambda a, b: local_joints(a, b, r, method), (z1, z2))  # type: ignore[arg-type]
    # One side only (the other a constant), as when a tap is detached.
    assert check(lambda a: local_joints(a, z2.detach(), r, method), (z1,))  # type: ignore[arg-type]


def test_auto_joints_use_shifts_below_fft_min_radius_and_the_fft_from_it_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    used: list[str] = []
    for name, joints in list(JOINT_METHODS.items()):

        def recorded(
            *args: object, name: str = name, joints: Callable[..., torch.Tensor] = joints
        ) -> torch.Tensor:
            used.append(name)
            return joints(*args)

        monkeypatch.setitem(JOINT_METHODS, name, recorded)
    z = _probs(1, 2, 4, 4)
    for r in (0, FFT_MIN_RADIUS, FFT_MIN_RADIUS + 2):
        local_joints(z, z, r)
    local_mi_loss(z, z, 0)
    local_mi_loss(z, z, FFT_MIN_RADIUS)
    assert FFT_MIN_RADIUS == 1 and used == ["shift", "fft", "fft", "shift", "fft"]


def test_unknown_joints_method_is_refused() -> None:
    z = _probs(1, 2, 4, 4)
    with pytest.raises(ValueError, match="joints method"):
        local_joints(z, z, 1, "direct")  # type: ignore[arg-type]


def test_local_mi_patches_average_the_windows() -> None:
    z1, z2 = _probs(2, 3, 8, 8, seed=7), _probs(2, 3, 8, 8, seed=8)
    windows = [(i, j) for i in (0, 2, 4) for j in (0, 2, 4)]
    expected = sum(
        local_mi_loss(z1[..., i : i + 4, j : j + 4], z2[..., i : i + 4, j : j + 4], 1).item()
        for i, j in windows
    ) / len(windows)
    assert local_mi_loss(z1, z2, 1, patch=4).item() == pytest.approx(expected, rel=1e-9)
    assert local_mi_loss(z1, z2, 1, patch=1024).item() == local_mi_loss(z1, z2, 1).item()


@pytest.mark.parametrize(("r", "patch"), [(0, None), (1, None), (3, None), (1, 4)])
def test_local_mi_of_subheads_is_each_subheads_local_mi(r: int, patch: int | None) -> None:
    z1, z2 = _probs(2, 3, 4, 8, 7, seed=r, dim=2), _probs(2, 3, 4, 8, 7, seed=r + 1, dim=2)
    losses = local_mi_loss(z1, z2, r, patch)
    assert losses.shape == (3,)
    separately = torch.stack([local_mi_loss(z1[:, s], z2[:, s], r, patch) for s in range(3)])
    torch.testing.assert_close(losses, separately, rtol=1e-12, atol=0.0)


def test_losses_accumulate_in_float32_under_autocast() -> None:
    z1, z2 = _probs(2, 3, 16, 16, seed=1).float(), _probs(2, 3, 16, 16, seed=2).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = local_mi_loss(z1.bfloat16(), z2.bfloat16(), 1)
        g = global_mi_loss(z1[:, :, 0, 0].bfloat16(), z2[:, :, 0, 0].bfloat16())
    assert loss.dtype == torch.float32 and g.dtype == torch.float32


def test_consistency_mse_is_the_mean_over_all_entries_and_stops_the_target_gradient() -> None:
    p = _probs(2, 3, 4, 4, seed=1).requires_grad_()
    t = _probs(2, 3, 4, 4, seed=2).requires_grad_()
    loss = consistency_loss(p, t, "mse")
    assert loss.item() == pytest.approx(((p - t) ** 2).mean().item())
    loss.backward()
    assert p.grad is not None and t.grad is None


def test_consistency_kl_is_zero_for_equal_maps_and_positive_otherwise() -> None:
    p, q = _probs(2, 3, 4, 4, seed=1), _probs(2, 3, 4, 4, seed=2)
    assert consistency_loss(p, p, "kl").item() == pytest.approx(0.0, abs=1e-12)
    direct = (q * (q.log() - p.log())).sum(1).mean().item()
    assert consistency_loss(p, q, "kl").item() == pytest.approx(direct, rel=1e-6)


def test_shape_errors_are_reported() -> None:
    with pytest.raises(ValueError, match="tensors of one shape"):
        global_mi_loss(torch.rand(3, 4), torch.rand(3, 5))
    with pytest.raises(ValueError, match="radius"):
        local_mi_loss(torch.rand(1, 2, 3, 3), torch.rand(1, 2, 3, 3), -1)
    with pytest.raises(ValueError, match="tensors of one shape"):
        local_mi_loss(torch.rand(2, 3, 3), torch.rand(2, 3, 3), 1)


def recording_reduction() -> tuple[Reduction, list[str]]:
    """A single-process reduction that records which of its two reductions each call used."""
    calls: list[str] = []

    def total(t: torch.Tensor) -> torch.Tensor:
        calls.append("sum")
        return SINGLE_PROCESS.sum(t)

    def mean(values: torch.Tensor) -> torch.Tensor:
        calls.append("mean")
        return SINGLE_PROCESS.mean(values)

    return Reduction(sum=total, mean=mean), calls


def test_the_single_process_reduction_is_the_identity_and_the_plain_mean() -> None:
    t = _probs(3, 4, 5, seed=9)
    assert SINGLE_PROCESS.sum(t) is t
    assert torch.equal(SINGLE_PROCESS.mean(t), t.mean())


def test_losses_reduce_over_the_batch_through_the_reduction_they_are_given() -> None:
    z1, z2 = _probs(2, 3, 8, 8, seed=1), _probs(2, 3, 8, 8, seed=2)
    cases = [
        (lambda **kw: global_mi_loss(z1[..., 0, 0], z2[..., 0, 0], **kw), ["sum"]),
        (lambda **kw: local_mi_loss(z1, z2, 1, **kw), ["sum"]),
        (lambda **kw: local_mi_loss(z1, z2, 1, patch=4, **kw), ["sum"] * 9),  # one joint per window
        (lambda **kw: consistency_loss(z1, z2, "mse", **kw), ["mean"]),
        (lambda **kw: consistency_loss(z1, z2, "kl", **kw), ["mean"]),
    ]
    for loss, expected in cases:
        reduction, calls = recording_reduction()
        assert torch.equal(loss(reduction=reduction), loss())
        assert calls == expected


def test_the_loss_math_imports_nothing_from_mireg() -> None:
    tree = ast.parse(Path(mireg.losses.__file__).read_text())
    imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    ]
    assert not [name for name in imported if name.split(".")[0] == "mireg"]
