"""The paper's 2D UNet (docs/methods.md), with feature taps named after its blocks.

Encoder blocks ``Conv1..Conv5`` (16..256 channels with the default ``base_channels = 16``), 2x2 max
pooling between them; decoder ``Up5..Up2`` (nearest x2 upsampling + 3x3 conv + BN + ReLU), each
concatenated with its skip and fed to ``Up_conv5..Up_conv2``; a 1x1 conv to the classes. About 2.16 M
parameters at the default width. The encoder taps ``Conv1..Conv5`` are the blocks' maps on their way
to the decoder (see ``skips``).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from mireg.contract import Backbone, BackboneConfig, Tap

__all__ = ["UNet", "UNetConfig"]


class ConvBlock(nn.Sequential):
    """Two 3x3 conv + BN + ReLU layers (no bias before BN)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class UpConv(nn.Sequential):
    """Nearest x2 upsampling then 3x3 conv + BN + ReLU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class UNet(Backbone):
    """The paper's UNet.

    Args:
        in_channels: Image channels.
        num_classes: Output classes (background included).
        base_channels: Width of ``Conv1``; block ``k`` has ``base * 2**(k-1)`` channels.

    Input height and width must be multiples of 16.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 4, base_channels: int = 16) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        c = [base_channels * 2**k for k in range(5)]
        self.pool = nn.MaxPool2d(2)
        self.Conv1 = ConvBlock(in_channels, c[0])
        self.Conv2 = ConvBlock(c[0], c[1])
        self.Conv3 = ConvBlock(c[1], c[2])
        self.Conv4 = ConvBlock(c[2], c[3])
        self.Conv5 = ConvBlock(c[3], c[4])
        self.Up5, self.Up_conv5 = UpConv(c[4], c[3]), ConvBlock(c[4], c[3])
        self.Up4, self.Up_conv4 = UpConv(c[3], c[2]), ConvBlock(c[3], c[2])
        self.Up3, self.Up_conv3 = UpConv(c[2], c[1]), ConvBlock(c[2], c[1])
        self.Up2, self.Up_conv2 = UpConv(c[1], c[0]), ConvBlock(c[1], c[0])
        self.head = nn.Conv2d(c[0], num_classes, 1)
        # The encoder taps are the maps as the decoder receives them: identity points on the skip
        # (and bottleneck) path, so that a hook that changes a map (a feature perturbation) reaches
        # the decoder only, not the deeper encoder blocks. No parameters; free without hooks.
        self.skips = nn.ModuleDict({f"Conv{k + 1}": nn.Identity() for k in range(5)})
        self.taps = {
            **{f"Conv{k + 1}": Tap("encoder", c[k]) for k in range(5)},
            **{f"Up_conv{k + 2}": Tap("decoder", c[k]) for k in (3, 2, 1, 0)},
        }

    def tap_module(self, name: str) -> nn.Module:
        if name not in self.taps:
            raise KeyError(name)
        module: nn.Module = self.skips[name] if name in self.skips else getattr(self, name)
        return module

    @property
    def size_multiple(self) -> int | None:
        """Four poolings by 2: H and W must be multiples of 16."""
        return 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(f"UNet needs H and W divisible by 16, got {tuple(x.shape[-2:])}")
        e1 = self.Conv1(x)
        e2 = self.Conv2(self.pool(e1))
        e3 = self.Conv3(self.pool(e2))
        e4 = self.Conv4(self.pool(e3))
        e5 = self.Conv5(self.pool(e4))
        skip = self.skips
        d5 = self.Up_conv5(torch.cat([skip["Conv4"](e4), self.Up5(skip["Conv5"](e5))], dim=1))
        d4 = self.Up_conv4(torch.cat([skip["Conv3"](e3), self.Up4(d5)], dim=1))
        d3 = self.Up_conv3(torch.cat([skip["Conv2"](e2), self.Up3(d4)], dim=1))
        d2 = self.Up_conv2(torch.cat([skip["Conv1"](e1), self.Up2(d3)], dim=1))
        out: torch.Tensor = self.head(d2)
        return out


class UNetConfig(BackboneConfig):
    """``[backbone] name = "unet"``."""

    base_channels: int = Field(16, ge=1)

    def build(self) -> UNet:
        return UNet(self.in_channels, self.num_classes, self.base_channels)
