"""Cluster heads: feature map -> ``S`` independent categorical distributions over ``K`` clusters."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["ClusterHead"]


class ClusterHead(nn.Module):
    """``S`` sub-heads mapping a feature map to cluster probabilities, computed as one conv stack.

    A global head pools the map first and returns ``(N, S, K)``; a local head keeps the resolution and
    returns ``(N, S, K, H, W)``. The ``linear`` variant is one 1x1 conv (a linear layer after pooling);
    the ``mlp`` variant adds a hidden layer (128 for global heads, 64 for local heads) with
    LeakyReLU(0.01). Sub-heads share nothing: the second conv is grouped by sub-head.

    Args:
        channels: Channels of the input feature map.
        clusters: ``K``.
        subheads: ``S``.
        kind: ``"linear"`` or ``"mlp"``.
        pooled: Global (pool then classify) or local (per-pixel) head.
    """

    def __init__(
        self,
        channels: int,
        clusters: int,
        subheads: int,
        kind: Literal["linear", "mlp"] = "linear",
        pooled: bool = False,
    ) -> None:
        super().__init__()
        self.clusters, self.subheads, self.pooled = clusters, subheads, pooled
        out = clusters * subheads
        if kind == "linear":
            self.net: nn.Module = nn.Conv2d(channels, out, 1)
        else:
            hidden = 128 if pooled else 64
            self.net = nn.Sequential(
                nn.Conv2d(channels, hidden * subheads, 1),
                nn.LeakyReLU(0.01),
                nn.Conv2d(hidden * subheads, out, 1, groups=subheads),
            )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.pooled:
            features = features.mean(dim=(-2, -1), keepdim=True)
        logits: torch.Tensor = self.net(features)
        n, _, h, w = logits.shape
        probs = logits.view(n, self.subheads, self.clusters, h, w).softmax(dim=2)
        return probs[..., 0, 0] if self.pooled else probs
