"""Schedules: the per-epoch learning rate (the paper's linear warm-up then cosine annealing, or
nnU-Net's polynomial decay), and the optional ramp-up of a regulariser's weight."""

from __future__ import annotations

import math

from mireg.recipe import OptimConfig

__all__ = ["lr_at_epoch", "rampup"]


def lr_at_epoch(epoch: int, epochs: int, cfg: OptimConfig) -> float:
    """Learning rate of epoch ``epoch`` (0-based).

    Warm-up for ``E = warmup_epochs`` epochs: ``lr_e = base * ((m - 1) * e / E + 1)``, reaching
    ``base * m`` at ``e = E``; then cosine annealing from ``base * m`` to ``min_lr`` over the remaining
    ``epochs - E`` epochs. With ``schedule = "poly"`` (nnU-Net's ``PolyLRScheduler``):
    ``base * m * (1 - epoch / epochs) ** poly_exponent``.
    """
    base, m, warm = cfg.lr, cfg.multiplier, cfg.warmup_epochs
    if cfg.schedule == "poly":
        return float(base * m * (1 - epoch / epochs) ** cfg.poly_exponent)
    if epoch < warm:
        return base * ((m - 1) * epoch / warm + 1)
    peak = base * m
    span = max(1, epochs - warm)
    t = min(epoch - warm, span) / span
    return cfg.min_lr + (peak - cfg.min_lr) * (1 + math.cos(math.pi * t)) / 2


def rampup(epochs_done: float, rampup_epochs: float) -> float:
    """The factor on a regulariser's weight after ``epochs_done`` (fractional) epochs of training.

    ``exp(-5 (1 - t)^2)`` with ``t = min(1, epochs_done / rampup_epochs)``: it rises smoothly from
    ``exp(-5)`` (about 0.007) at the first step to 1 at ``rampup_epochs``, the sigmoid-shaped ramp-up
    of Laine & Aila (2017). ``rampup_epochs = 0`` (the default, and the paper's setting) is always 1.
    """
    if rampup_epochs <= 0:
        return 1.0
    t = min(1.0, epochs_done / rampup_epochs)
    return math.exp(-5.0 * (1.0 - t) ** 2)
