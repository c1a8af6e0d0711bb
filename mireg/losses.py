"""The pure loss math of the method (docs/methods.md), free of modules, recipes and training state.

Global and local mutual information (Peng, Pedersoli, Desrosiers, "Boosting Semi-supervised Image
Segmentation with Global and Local Mutual Information Regularization"; Ji et al., "Invariant
Information Clustering") and the transform-consistency loss. All functions return *minus* the mutual
information, so minimising them maximises it. Joints and logarithms are computed in float32 even
under autocast: the joints are sums of up to millions of products and the MI values are small.

The losses that reduce over the batch take a :class:`Reduction`: how a batch statistic (a joint, a
batch mean) is reduced over the processes of a run. The default, :data:`SINGLE_PROCESS`, reduces over
this process's batch only; a multi-process run passes the one of its process group
(``mireg.training.distributed.reduction()``), so every process computes the loss of the global batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = [
    "SINGLE_PROCESS",
    "Reduction",
    "consistency_loss",
    "global_mi_loss",
    "local_joints",
    "local_mi_loss",
    "mi_from_joint",
]

GLOBAL_EPS = 1e-10
LOCAL_EPS = 1e-16
#: The smallest radius whose joints ``local_joints(method="auto")`` computes by FFT (see
#: ``JOINT_METHODS``): at ``r = 0`` the single product is the cheaper one, from ``r = 1`` on the FFT,
#: whose cost does not grow with the radius.
FFT_MIN_RADIUS = 1

JointsMethod = Literal["auto", "shift", "fft"]


@dataclass(frozen=True)
class Reduction:
    """How a loss reduces a batch statistic over the processes that each hold a shard of the batch.

    Attributes:
        sum: ``sum(t)``: ``t`` (a sum over this process's samples) summed over all processes,
            differentiably; the identity in a single process.
        mean: ``mean(values)``: the mean of ``values`` (one entry per sample, pixel, ...) over the
            global batch; exactly ``values.mean()`` in a single process.
    """

    sum: Callable[[torch.Tensor], torch.Tensor]
    mean: Callable[[torch.Tensor], torch.Tensor]


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _mean(values: torch.Tensor) -> torch.Tensor:
    return values.mean()


#: The reduction of a single process: the batch is the whole batch.
SINGLE_PROCESS = Reduction(sum=_identity, mean=_mean)


def _at_least_float32(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Half-precision inputs are promoted to float32; float32 and float64 are kept."""
    return tuple(t.float() if t.element_size() < 4 else t for t in tensors)


def mi_from_joint(p: torch.Tensor, eps: float) -> torch.Tensor:
    """Minus the mutual information of normalised joint distribution(s).

    Args:
        p: ``(..., K, K)`` joints, each summing to one.
        eps: Added inside every logarithm.

    Returns:
        ``(...)``: ``-sum_ij p_ij (log(p_ij + e) - log(pi_i + e) - log(pj_j + e))``.
    """
    pi = p.sum(dim=-1, keepdim=True)
    pj = p.sum(dim=-2, keepdim=True)
    return -(p * (torch.log(p + eps) - torch.log(pi + eps) - torch.log(pj + eps))).sum(dim=(-2, -1))


def global_mi_loss(
    z1: torch.Tensor, z2: torch.Tensor, *, reduction: Reduction = SINGLE_PROCESS
) -> torch.Tensor:
    """Minus the mutual information between two batches of categorical distributions.

    Args:
        z1: ``(N, K)`` probabilities (rows sum to one), e.g. a global head on ``F(x)``.
        z2: ``(N, K)`` probabilities of the paired samples, e.g. the head on ``F(T(x))``.
        reduction: How the joint is summed over processes.

    Returns:
        Scalar ``L_global(z1, z2)`` of docs/methods.md: the joint ``sum_n z1_n z2_n^T`` is symmetrised and
        normalised, and ``-I`` is computed with ``e = 1e-10``.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(
            f"expected two (N, K) tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    with torch.autocast(device_type=z1.device.type, enabled=False):
        z1, z2 = _at_least_float32(z1, z2)
        p = reduction.sum(z1.t() @ z2)
        p = (p + p.t()) / 2
        p = p / p.sum()
        return mi_from_joint(p, GLOBAL_EPS)


class _ShiftedJoints(torch.autograd.Function):
    """Joints ``P[d] = sum_t a[..., t] b[..., t + shift_d]^T`` over a window of flattened maps.

    ``a`` and ``b`` are ``(S, K, T)`` zero-padded maps flattened so that a 2D displacement is a shift
    of the last axis; every displacement is then one batched matrix product of strided views (no
    copies). The backward is the same kind of product, accumulated in place into the two gradients
    (autograd's own backward would allocate a full-size gradient per displacement).
    """

    @staticmethod
    def forward(
        ctx: Any, a: torch.Tensor, b: torch.Tensor, shifts: list[int], start: int, length: int
    ) -> torch.Tensor:
        s, k, _ = a.shape
        out = a.new_empty(len(shifts), s, k, k)
        window = a[..., start : start + length]
        for index, shift in enumerate(shifts):
            partner = b[..., start + shift : start + shift + length]
            torch.bmm(window, partner.transpose(1, 2), out=out[index])
        ctx.save_for_backward(a, b)
        ctx.shifts, ctx.start, ctx.length = shifts, start, length
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        a, b = ctx.saved_tensors
        start, length = ctx.start, ctx.length
        grad_a = torch.zeros_like(a) if ctx.needs_input_grad[0] else None
        grad_b = torch.zeros_like(b) if ctx.needs_input_grad[1] else None
        window = a[..., start : start + length]
        for index, shift in enumerate(ctx.shifts):
            lo, hi = start + shift, start + shift + length
            if grad_a is not None:
                grad_a[..., start : start + length].baddbmm_(grad[index], b[..., lo:hi])
            if grad_b is not None:
                grad_b[..., lo:hi].baddbmm_(grad[index].transpose(1, 2), window)
        return grad_a, grad_b, None, None, None


def _shifted_joints(z1: torch.Tensor, z2: torch.Tensor, radius: int) -> torch.Tensor:
    """:func:`local_joints` of ``(N, S, K, H, W)`` maps by one batched product per displacement."""
    n, s, k, h, w = z1.shape
    hp, wp = h + 2 * radius, w + 2 * radius

    def flat(z: torch.Tensor) -> torch.Tensor:
        # (N, S, K, H, W) -> zero-padded (S, K, N * Hp * Wp): a displacement is a shift of the last
        # axis, and a window from the first to the last interior pixel never reads past the ends.
        padded = F.pad(z, (radius, radius, radius, radius))
        return padded.permute(1, 2, 0, 3, 4).reshape(s, k, n * hp * wp)

    start = radius * wp + radius
    length = (n - 1) * hp * wp + (h - 1) * wp + w
    shifts = [dy * wp + dx for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
    joints: torch.Tensor = _ShiftedJoints.apply(flat(z1), flat(z2), shifts, start, length)
    return joints


def _fft_size(n: int) -> int:
    """The smallest size ``>= n`` whose only prime factors are 2, 3 and 5 (fast FFT lengths)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def _displacement_phases(
    size: int, frequencies: int, radius: int, sign: float, device: torch.device
) -> torch.Tensor:
    """``exp(sign 2 pi i f d / size)`` for frequencies ``f < frequencies`` and ``d`` in ``-r..r``.

    ``(frequencies, 2r+1)``, complex128.
    """
    d = torch.arange(-radius, radius + 1, device=device, dtype=torch.float64)
    f = torch.arange(frequencies, device=device, dtype=torch.float64)
    return torch.exp(sign * 2j * math.pi * torch.outer(f, d) / size)


def _overlapping(size: int, radius: int, device: torch.device) -> torch.Tensor:
    """1.0 for the displacements in ``-r..r`` shorter than ``size`` (they overlap the map), else 0.0."""
    d = torch.arange(-radius, radius + 1, device=device, dtype=torch.float64)
    return (d.abs() < size).to(torch.float64)


class _FourierJoints(torch.autograd.Function):
    """Joints of ``(N, S, K, H, W)`` maps for all displacements within ``r``, through the Fourier domain.

    All ``K x K`` cross-correlations of a sub-head are ``sum_n conj(A_n(f)) B_n(f)^T`` per frequency
    ``f``: one batched complex product over the zero-padded spectra ``A``, ``B`` (the padding keeps
    the circular wrap-around out of the displacements read). Only the ``(2r+1)^2`` displacements are
    transformed back, as two small DFT products instead of a full inverse FFT. The cost is
    ``O(K^2 N HW)`` whatever the radius, against ``O((2r+1)^2 K^2 N HW)`` for the shifts.

    The backward stays in the Fourier domain too: the gradient of a correlation with the map ``b`` is
    a correlation of ``b`` with the incoming ``(2r+1)^2`` gradient ``G`` as kernel, so
    ``dA_n(f) = conj(G(f)) B_n(f)`` and ``dB_n(f) = G(f)^T A_n(f)`` (``G(f)`` the DFT of the kernel
    on the padded grid), then one inverse real FFT per input. Autograd's own backward would take a
    full complex inverse FFT of a zero-filled spectrum per input and several layout copies.
    """

    @staticmethod
    def forward(ctx: Any, z1: torch.Tensor, z2: torch.Tensor, radius: int) -> torch.Tensor:
        _, s, k, h, w = z1.shape
        # At least r zeros after each map, and room for all 2r + 1 displacements when a map is <= r.
        hp, wp = _fft_size(max(h, radius + 1) + radius), _fft_size(max(w, radius + 1) + radius)
        wf, dn = wp // 2 + 1, 2 * radius + 1
        # Spectra as (S, Hp, Wf, N, K): per frequency an N x K matrix.
        spectrum_1 = torch.fft.rfft2(z1, s=(hp, wp)).permute(1, 3, 4, 0, 2).contiguous()
        spectrum_2 = torch.fft.rfft2(z2, s=(hp, wp)).permute(1, 3, 4, 0, 2).contiguous()
        cross = torch.matmul(spectrum_1.mH, spectrum_2)  # (S, Hp, Wf, K, K)
        # Inverse DFT at the displacements only: along H, then along the half spectrum of W, where
        # every frequency but 0 and Nyquist stands for itself and its conjugate.
        rows = _displacement_phases(hp, hp, radius, 1.0, z1.device).t()  # (D, Hp)
        weight = torch.full((wf,), 2.0, device=z1.device, dtype=torch.float64)
        weight[0] = 1.0
        if wp % 2 == 0:
            weight[-1] = 1.0
        cols = _displacement_phases(wp, wf, radius, 1.0, z1.device) * (weight / (hp * wp))[:, None]
        # Displacements as long as the map overlap nothing: their joints are exactly zero.
        mask_h, mask_w = _overlapping(h, radius, z1.device), _overlapping(w, radius, z1.device)
        rows, cols = (rows * mask_h[:, None]).to(cross.dtype), (cols * mask_w[None, :]).to(cross.dtype)
        cross = torch.matmul(rows, cross.reshape(s, hp, wf * k * k))  # (S, Dy, Wf * K * K)
        cross = cross.reshape(s, dn, wf, k * k).transpose(2, 3)  # (S, Dy, K * K, Wf)
        joints = torch.matmul(cross, cols).real  # (S, Dy, K * K, Dx)
        ctx.save_for_backward(spectrum_1, spectrum_2)
        ctx.shape, ctx.radius = (h, w, hp, wp), radius
        return joints.permute(1, 3, 0, 2).reshape(dn * dn, s, k, k)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        spectrum_1, spectrum_2 = ctx.saved_tensors
        h, w, hp, wp = ctx.shape
        radius = ctx.radius
        s, _, wf, _, k = spectrum_1.shape
        dn = 2 * radius + 1
        device, dtype = grad.device, spectrum_1.dtype
        mask = _overlapping(h, radius, device)[:, None] * _overlapping(w, radius, device)[None, :]
        kernel = grad.reshape(dn, dn, s, k, k) * mask[..., None, None, None].to(grad.dtype)

        def spectrum_of(taps: torch.Tensor, sign: float) -> torch.Tensor:
            # sum_d taps_d exp(sign 2 pi i f d) on the padded grid, along H then W: (S, Hp, Wf, K, K).
            along_h = _displacement_phases(hp, hp, radius, sign, device).to(dtype)  # (Hp, Dy)
            out = torch.matmul(along_h, taps.to(dtype).reshape(dn, dn * s * k * k))
            out = out.reshape(hp, dn, s, k * k).permute(2, 0, 1, 3)  # (S, Hp, Dx, K * K)
            along_w = _displacement_phases(wp, wf, radius, sign, device).to(dtype)  # (Wf, Dx)
            return torch.matmul(along_w, out).reshape(s, hp, wf, k, k)

        def to_maps(spectrum: torch.Tensor) -> torch.Tensor:
            # (S, Hp, Wf, N, K) -> the real (N, S, K, H, W) map, cropped from the padded grid.
            maps: torch.Tensor = torch.fft.irfft2(spectrum.permute(3, 0, 4, 1, 2), s=(hp, wp))
            return maps[..., :h, :w]

        # dA = B conj(G)^T and dB = A G, per frequency; conj(G)^T is the + transform of G^T.
        grad_1 = grad_2 = None
        if ctx.needs_input_grad[0]:
            grad_1 = to_maps(torch.matmul(spectrum_2, spectrum_of(kernel.transpose(-2, -1), 1.0)))
        if ctx.needs_input_grad[1]:
            grad_2 = to_maps(torch.matmul(spectrum_1, spectrum_of(kernel, -1.0)))
        return grad_1, grad_2, None


def _fourier_joints(z1: torch.Tensor, z2: torch.Tensor, radius: int) -> torch.Tensor:
    """:func:`local_joints` of ``(N, S, K, H, W)`` maps through the Fourier domain."""
    joints: torch.Tensor = _FourierJoints.apply(z1, z2, radius)
    return joints


#: The two ways to compute the joints of ``(N, S, K, H, W)`` maps, ``((2r+1)^2, S, K, K)``, by name.
#: ``local_joints(method="auto")`` chooses between them by the radius:
#:
#: * ``"shift"``: one batched matrix product per displacement, exact in the input's precision; its cost
#:   grows with ``(2r+1)^2``. Used below ``FFT_MIN_RADIUS``, i.e. at ``r = 0``.
#: * ``"fft"``: through the Fourier domain; its cost is independent of ``r``; equal to ``"shift"`` up to
#:   float rounding (relative ``1e-6`` in float32). Used from ``r = FFT_MIN_RADIUS`` on.
JOINT_METHODS: dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "shift": _shifted_joints,
    "fft": _fourier_joints,
}


def local_joints(
    z1: torch.Tensor, z2: torch.Tensor, radius: int, method: JointsMethod = "auto"
) -> torch.Tensor:
    """Unnormalised joints of cluster maps for every displacement within ``radius``.

    ``P_d[i, j] = sum_{n,h,w} z1[n, i, h, w] * z2[n, j, h + dy, w + dx]`` with zero padding, for
    ``d = (dy, dx)`` in ``{-r..r}^2`` in row-major order, for every sub-head at once.

    Args:
        z1: ``(N, S, K, H, W)`` probabilities of ``S`` sub-heads (or ``(N, K, H, W)`` for one).
        z2: Same shape as ``z1``.
        radius: Displacement radius ``r >= 0``.
        method: A name in :data:`JOINT_METHODS` (``"shift"`` or ``"fft"``), or ``"auto"``: ``"fft"``
            from ``r = FFT_MIN_RADIUS`` on, ``"shift"`` below.

    Returns:
        ``((2r+1)^2, S, K, K)`` joints (``((2r+1)^2, K, K)`` for 4D inputs).
    """
    single = z1.dim() == 4
    if single:
        z1, z2 = z1.unsqueeze(1), z2.unsqueeze(1)
    if method == "auto":
        method = "fft" if radius >= FFT_MIN_RADIUS else "shift"
    if method not in JOINT_METHODS:
        names = ", ".join(repr(name) for name in ["auto", *JOINT_METHODS])
        raise ValueError(f"unknown joints method {method!r}; expected one of {names}")
    joints = JOINT_METHODS[method](z1, z2, radius)
    return joints[:, 0] if single else joints


def _local_mi_whole(z1: torch.Tensor, z2: torch.Tensor, radius: int, reduction: Reduction) -> torch.Tensor:
    """Per sub-head ``L_local`` of ``(N, S, K, H, W)`` maps: ``(S,)``."""
    p = reduction.sum(local_joints(z1, z2, radius))  # (D, S, K, K)
    # The authors shift all joints by their (detached) minimum before normalising; kept for parity.
    p = p - p.amin(dim=(0, 2, 3), keepdim=True).detach() + 1e-16
    p = p / p.sum(dim=(-2, -1), keepdim=True)
    p = (p + p.transpose(-2, -1)) / 2
    return mi_from_joint(p, LOCAL_EPS).mean(dim=0)


def local_mi_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    radius: int,
    patch: int | None = None,
    *,
    reduction: Reduction = SINGLE_PROCESS,
) -> torch.Tensor:
    """Minus the local (displacement-averaged) mutual information between two cluster maps.

    Maps of ``S`` sub-heads are given together, ``(N, S, K, H, W)``: their losses are computed at once
    and returned one per sub-head.

    Args:
        z1: ``(N, K, H, W)`` or ``(N, S, K, H, W)`` probabilities (softmax over K), e.g.
            ``head(T(F(x)))``.
        z2: Same shape, e.g. ``head(F(T(x)))``.
        radius: Displacement radius ``r``; the loss averages over ``(2r+1)^2`` displacements.
        patch: If given and smaller than the map, the maps are cut into ``patch x patch`` windows
            with stride ``patch // 2`` and the loss is averaged over windows; otherwise the whole map
            is one window (the authors' default, 1024, exceeds every map).
        reduction: How the joints are summed over processes.

    Returns:
        Scalar ``L_local(z1, z2; r)`` of docs/methods.md for ``(N, K, H, W)`` maps; ``(S,)`` losses, one per
        sub-head, for ``(N, S, K, H, W)`` maps.
    """
    if z1.shape != z2.shape or z1.dim() not in (4, 5):
        raise ValueError(
            f"expected two (N, K, H, W) or (N, S, K, H, W) tensors of one shape, got "
            f"{tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    single = z1.dim() == 4
    if single:
        z1, z2 = z1.unsqueeze(1), z2.unsqueeze(1)
    with torch.autocast(device_type=z1.device.type, enabled=False):
        z1, z2 = _at_least_float32(z1, z2)
        h, w = z1.shape[-2:]
        if patch is None or (patch >= h and patch >= w):
            losses = _local_mi_whole(z1, z2, radius, reduction)
        else:
            ph, pw = min(patch, h), min(patch, w)
            stride = max(1, patch // 2)
            windows = [
                _local_mi_whole(
                    z1[..., i : i + ph, j : j + pw], z2[..., i : i + ph, j : j + pw], radius, reduction
                )
                for i in range(0, h - ph + 1, stride)
                for j in range(0, w - pw + 1, stride)
            ]
            losses = torch.stack(windows).mean(dim=0)
    return losses[0] if single else losses


def consistency_loss(
    p_transformed: torch.Tensor,
    target: torch.Tensor,
    kind: Literal["mse", "kl"] = "mse",
    *,
    reduction: Reduction = SINGLE_PROCESS,
) -> torch.Tensor:
    """Transform consistency between predictions on ``T(x)`` and the transformed predictions on ``x``.

    Args:
        p_transformed: ``(N, C, H, W)`` probabilities ``p(T(x))`` (gradients flow here).
        target: ``(N, C, H, W)`` probabilities ``T(p(x))``; detached here (stop-gradient).
        kind: ``"mse"``, the mean over all ``N*C*H*W`` entries (default), or ``"kl"``,
            ``KL(target || p_transformed)`` summed over classes and averaged over pixels.
        reduction: How the mean is taken over the batch of all processes.

    Returns:
        Scalar loss.
    """
    with torch.autocast(device_type=p_transformed.device.type, enabled=False):
        p, t = _at_least_float32(p_transformed, target.detach())
        if kind == "mse":
            return reduction.mean((p - t).square())
        if kind == "kl":
            kl = t * (torch.log(t + LOCAL_EPS) - torch.log(p + LOCAL_EPS))
            return reduction.mean(kl.sum(dim=1))
        raise ValueError(f"unknown consistency kind {kind!r}")
