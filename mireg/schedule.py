"""The per-epoch learning-rate schedule of method.md: linear warm-up, then cosine annealing."""

from __future__ import annotations

import math

from mireg.recipe import OptimConfig

__all__ = ["lr_at_epoch"]


def lr_at_epoch(epoch: int, epochs: int, cfg: OptimConfig) -> float:
    """Learning rate of epoch ``epoch`` (0-based).

    Warm-up for ``E = warmup_epochs`` epochs: ``lr_e = base * ((m - 1) * e / E + 1)``, reaching
    ``base * m`` at ``e = E``; then cosine annealing from ``base * m`` to ``min_lr`` over the remaining
    ``epochs - E`` epochs.
    """
    base, m, warm = cfg.lr, cfg.multiplier, cfg.warmup_epochs
    if epoch < warm:
        return base * ((m - 1) * epoch / warm + 1)
    peak = base * m
    span = max(1, epochs - warm)
    t = min(epoch - warm, span) / span
    return cfg.min_lr + (peak - cfg.min_lr) * (1 + math.cos(math.pi * t)) / 2
