"""``tiny_unet``: a three-level UNet with named feature taps, small enough for any CPU."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from mireg.contract import Backbone, BackboneConfig, Tap


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class TinyUNet(Backbone):
    """Encoder ``enc1..enc3`` (width w, 2w, 4w), decoder ``dec2, dec1``; H and W multiples of 4."""

    def __init__(self, in_channels: int, num_classes: int, width: int) -> None:
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        w = width
        self.enc1, self.enc2, self.enc3 = _block(in_channels, w), _block(w, 2 * w), _block(2 * w, 4 * w)
        self.dec2, self.dec1 = _block(4 * w + 2 * w, 2 * w), _block(2 * w + w, w)
        self.head = nn.Conv2d(w, num_classes, 1)
        # Taps are what mutual-information heads may attach to: encoder maps get global heads,
        # decoder maps local ones. tap_module(name) must return the module producing that map.
        self.taps = {
            "enc1": Tap("encoder", w),
            "enc2": Tap("encoder", 2 * w),
            "enc3": Tap("encoder", 4 * w),
            "dec2": Tap("decoder", 2 * w),
            "dec1": Tap("decoder", w),
        }

    def tap_module(self, name: str) -> nn.Module:
        if name not in self.taps:
            raise KeyError(name)
        module: nn.Module = getattr(self, name)
        return module

    @property
    def size_multiple(self) -> int | None:
        # Two poolings by 2: the input's height and width must be multiples of 4 (mireg's contract
        # check tries such a size; exports record it for deployers).
        return 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = nn.functional.interpolate
        e1 = self.enc1(x)
        e2 = self.enc2(nn.functional.max_pool2d(e1, 2))
        e3 = self.enc3(nn.functional.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([e2, up(e3, scale_factor=2.0)], dim=1))
        d1 = self.dec1(torch.cat([e1, up(d2, scale_factor=2.0)], dim=1))
        out: torch.Tensor = self.head(d1)
        return out


class TinyUNetConfig(BackboneConfig):
    """``[backbone] name = "tiny_unet"``: ``num_classes``, ``in_channels`` and ``width``."""

    width: int = Field(8, ge=1)

    def build(self) -> TinyUNet:
        return TinyUNet(self.in_channels, self.num_classes, self.width)
