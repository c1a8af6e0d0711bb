"""Global and local mutual-information regularisation with cluster heads (docs/methods.md).

On an encoder tap ``F``: ``L = L_global(head(F(x_u)), head(F(T(x_u))))`` (pooling makes it an
invariance). On a decoder tap: ``L = L_local(head(T(F(x_u))), head(F(T(x_u))); r)`` (equivariance).
Each layer's loss is averaged over its sub-heads; layers are combined by their importances:
``L_MI = sum_l w_l L_l / sum_l w_l``. Gradients flow through both sides of every pair.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from mireg.contract import Backbone, Regularizer, RegularizerConfig, RegularizerOutput, StepContext
from mireg.losses import global_mi_loss, local_mi_loss
from mireg.regularizers.heads import ClusterHead

__all__ = ["MutualInformation", "MutualInformationConfig"]


class MutualInformation(Regularizer):
    """The MI regulariser over a set of tapped layers.

    Args:
        layers: tap name -> ``(kind, channels)`` from the backbone, in the recipe's order.
        importance: One weight per layer.
        radius: tap name -> displacement radius, for decoder (local) layers.
        subheads: ``S``; clusters: ``K``; head: head variant; patch: local MI window (None: whole map).
    """

    def __init__(
        self,
        layers: Mapping[str, tuple[str, int]],
        importance: list[float],
        radius: dict[str, int],
        subheads: int = 5,
        clusters: int = 20,
        head: Literal["linear", "mlp"] = "linear",
        patch: int | None = None,
    ) -> None:
        super().__init__()
        self.taps = tuple(layers)
        self.kinds = {name: kind for name, (kind, _) in layers.items()}
        self.importance = dict(zip(layers, importance, strict=True))
        self.radius = radius
        self.patch = patch
        self.heads = nn.ModuleDict(
            {
                name: ClusterHead(channels, clusters, subheads, head, pooled=kind == "encoder")
                for name, (kind, channels) in layers.items()
            }
        )

    def layer_loss(self, name: str, ctx: StepContext) -> torch.Tensor:
        """Minus the MI of one layer, averaged over its sub-heads."""
        _, f_u, f_tu = ctx.features[name]
        head = self.heads[name]
        if self.kinds[name] == "encoder":
            z, z_t = head(f_u), head(f_tu)  # (N, S, K)
            per_subhead = [
                global_mi_loss(z[:, s], z_t[:, s], reduction=ctx.reduction) for s in range(z.shape[1])
            ]
            return torch.stack(per_subhead).mean()
        # The head is pointwise, so T(head(F)) = head(T(F)): flipping F moves fewer channels.
        z, z_t = head(ctx.transform(f_u)), head(f_tu)  # (N, S, K, H, W)
        return local_mi_loss(z, z_t, self.radius[name], self.patch, reduction=ctx.reduction).mean()

    def forward(self, ctx: StepContext) -> RegularizerOutput:
        per_layer = {name: self.layer_loss(name, ctx) for name in self.taps}
        total = sum(self.importance[n] * loss for n, loss in per_layer.items())
        loss = total / sum(self.importance.values())
        assert isinstance(loss, torch.Tensor)
        return RegularizerOutput(loss, {name: value.detach() for name, value in per_layer.items()})


class MutualInformationConfig(RegularizerConfig):
    """``[[regularizers]] name = "mutual_information"``.

    ``layers`` are backbone taps: encoder taps get global heads, decoder taps local heads. ``radius``
    has one entry per decoder layer, in the order they appear in ``layers``.
    """

    layers: list[str] = Field(default_factory=lambda: ["Conv5", "Up_conv3", "Up_conv2"], min_length=1)
    importance: list[float] | None = Field(default_factory=lambda: [1.0, 0.5, 0.5])
    radius: list[int] = Field(default_factory=lambda: [1, 3])
    subheads: int = Field(5, ge=1)
    clusters: int = Field(20, ge=2)
    head: Literal["linear", "mlp"] = "linear"
    patch: int | None = Field(None, ge=2)

    @model_validator(mode="after")
    def _check_lengths(self) -> MutualInformationConfig:
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers has duplicates: {self.layers}")
        if self.importance is not None:
            if len(self.importance) != len(self.layers):
                raise ValueError(
                    f"importance has {len(self.importance)} entries for {len(self.layers)} layers"
                )
            if any(w < 0 for w in self.importance) or sum(self.importance) <= 0:
                raise ValueError("importance values must be >= 0 with a positive sum")
        if any(r < 0 for r in self.radius):
            raise ValueError(f"radius values must be >= 0, got {self.radius}")
        return self

    def build(self, backbone: Backbone) -> MutualInformation:
        unknown = [name for name in self.layers if name not in backbone.taps]
        if unknown:
            raise ValueError(f"layers {unknown} are not taps of the backbone; it has {list(backbone.taps)}")
        local = [name for name in self.layers if backbone.taps[name].kind == "decoder"]
        if len(self.radius) != len(local):
            raise ValueError(
                f"radius has {len(self.radius)} entries but layers has {len(local)} decoder "
                f"(local) layers {local}: give one radius per decoder layer"
            )
        layers = {n: (backbone.taps[n].kind, backbone.taps[n].channels) for n in self.layers}
        importance = self.importance or [1.0] * len(self.layers)
        return MutualInformation(
            layers,
            importance,
            dict(zip(local, self.radius, strict=True)),
            self.subheads,
            self.clusters,
            self.head,
            self.patch,
        )
