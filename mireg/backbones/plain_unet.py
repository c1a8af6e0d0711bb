"""nnU-Net v2's 2D plain convolutional UNet (``PlainConvUNet``, its default 2D network), with deep
supervision and feature taps named by depth.

``[backbone] name = "plain_unet"``. ``stages`` resolution stages (6 is what nnU-Net plans for a 224x224
patch, 7 for 256x256); stage ``s`` works at stride ``2**s`` with ``min(max_channels, base_channels * 2**s)``
channels (32, 64, 128, 256, 512, 512 by default).

* Encoder stage ``s``: two conv blocks (3x3 conv with bias, instance norm with affine parameters and no
  running statistics, leaky ReLU 0.01); the first conv of every stage but stage 0 has stride 2 (no
  pooling).
* Decoder stage ``s`` (``s = stages-2 .. 0``, deepest first): a 2x2 stride-2 transposed conv from the map
  below to stage ``s``'s channels, concatenated with encoder stage ``s``'s map, then two conv blocks.
* A 1x1 conv head on every decoder stage (deep supervision, ``deep_supervision = true``, nnU-Net's
  default; ``false`` builds the stride-1 head only). ``forward`` returns the stride-1 head's logits;
  in training mode the other heads run too and :meth:`PlainUNet.auxiliary_logits` returns them, at
  strides 2, 4, ..., ``2**(stages-2)`` (``stages - 2`` maps), which the training step's supervised loss
  then weighs as nnU-Net does (:mod:`mireg.training.supervised`). In eval mode only the main head runs.
* Convolution and transposed-convolution weights are He-normal initialised for leaky ReLU
  (``a = 0.01``), biases zero.

H and W must be multiples of :attr:`PlainUNet.size_multiple` ``= 2**(stages-1)`` (32 by default).

Tap naming:

* ``enc0 .. enc{stages-1}`` (kind ``"encoder"``): encoder stage ``s``'s output at stride ``2**s``, as the
  decoder receives it (skip, or for the deepest stage the bottleneck): each passes through an
  ``nn.Identity`` in ``skips``, so that a hook that changes the map reaches the decoder only, not the
  deeper encoder stages.
* ``dec{stages-2} .. dec0`` (kind ``"decoder"``, in the order they run): decoder stage ``s``'s output at
  stride ``2**s``, with stage ``s``'s channels.

With the defaults (``stages = 6``) at 224x224:

======  ==========  ========  ==========  ==========  ========
tap     resolution  channels  tap         resolution  channels
======  ==========  ========  ==========  ==========  ========
enc0    224 (1/1)   32        dec4        14 (1/16)   512
enc1    112 (1/2)   64        dec3        28 (1/8)    256
enc2    56 (1/4)    128       dec2        56 (1/4)    128
enc3    28 (1/8)    256       dec1        112 (1/2)   64
enc4    14 (1/16)   512       dec0        224 (1/1)   32
enc5    7 (1/32)    512
======  ==========  ========  ==========  ==========  ========

The paper UNet's mutual-information layers map to this network by role: ``Conv5`` (the bottleneck) is
``enc5`` (one level deeper than the paper's, 1/32 rather than 1/16; ``enc4`` is the encoder map at
Conv5's 1/16), ``Up_conv3`` (the decoder map at 1/4) is ``dec2`` and ``Up_conv2`` (the full-resolution
decoder map) is ``dec0``: ``layers = ["enc5", "dec2", "dec0"]``.

The default network (1 input channel, 4 classes) has 20,621,076 parameters.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from mireg.contract import Backbone, BackboneConfig, Tap

__all__ = ["PlainUNet", "PlainUNetConfig", "stage_channels"]

#: Leaky ReLU slope; also the ``a`` of the He initialisation.
NEGATIVE_SLOPE = 0.01


def stage_channels(stages: int, base_channels: int = 32, max_channels: int = 512) -> list[int]:
    """Channels of each stage, highest resolution first: ``min(max_channels, base_channels * 2**s)``."""
    return [min(max_channels, base_channels * 2**s) for s in range(stages)]


class ConvBlock(nn.Sequential):
    """3x3 conv (with bias) + instance norm (affine, no running statistics) + leaky ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=True),
            nn.InstanceNorm2d(c_out, eps=1e-5, affine=True, track_running_stats=False),
            nn.LeakyReLU(negative_slope=NEGATIVE_SLOPE, inplace=True),
        )


class Stage(nn.Sequential):
    """Two conv blocks; the first has stride ``stride``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__(ConvBlock(c_in, c_out, stride), ConvBlock(c_out, c_out))


class PlainUNet(Backbone):
    """nnU-Net's 2D ``PlainConvUNet`` with deep supervision (see the module docstring).

    Args:
        in_channels: Image channels.
        num_classes: Output classes (background included).
        stages: Resolution stages, at least 2; H and W must be multiples of ``2**(stages-1)``.
        base_channels: Channels of stage 0.
        max_channels: Cap on the channels of any stage.

    Attributes:
        encoder: ``encoder[s]`` is encoder stage ``s``.
        skips: Identity tap points ``enc0 ..``: the encoder maps as the decoder receives them.
        up: ``up[s]`` is the transposed conv from stage ``s+1``'s map up to stage ``s`` (``s < stages-1``).
        decoder: ``decoder[s]`` is decoder stage ``s``, the tap ``dec{s}``.
        heads: ``heads[s]`` is the 1x1 conv to the classes on decoder stage ``s``; ``heads[0]`` gives
            the logits, the others the auxiliary logits.
    """

    #: Instance norm without running statistics, no dropout: each sample is computed alone.
    independent_samples = True

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 4,
        stages: int = 6,
        base_channels: int = 32,
        max_channels: int = 512,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        if stages < 2:
            raise ValueError(f"PlainUNet needs at least 2 stages, got {stages}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.stages = stages
        c = stage_channels(stages, base_channels, max_channels)
        self.channels = c
        self.encoder = nn.ModuleList(
            Stage(in_channels if s == 0 else c[s - 1], c[s], stride=1 if s == 0 else 2) for s in range(stages)
        )
        self.skips = nn.ModuleDict({f"enc{s}": nn.Identity() for s in range(stages)})
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(c[s + 1], c[s], kernel_size=2, stride=2, bias=True) for s in range(stages - 1)
        )
        self.decoder = nn.ModuleList(Stage(2 * c[s], c[s]) for s in range(stages - 1))
        self.deep_supervision = deep_supervision
        heads = stages - 1 if deep_supervision else 1
        self.heads = nn.ModuleList(nn.Conv2d(c[s], num_classes, 1, bias=True) for s in range(heads))
        self.taps = {
            **{f"enc{s}": Tap("encoder", c[s]) for s in range(stages)},
            **{f"dec{s}": Tap("decoder", c[s]) for s in reversed(range(stages - 1))},
        }
        self._auxiliary: list[torch.Tensor] = []
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal (``a = 0.01``) conv and transposed-conv weights, zero biases; instance norms at
        weight 1, bias 0."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, a=NEGATIVE_SLOPE)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.InstanceNorm2d):
                module.reset_parameters()

    def tap_module(self, name: str) -> nn.Module:
        """Return the module whose forward output is the feature map ``name``.

        Raises:
            KeyError: ``name`` is not a tap.
        """
        if name in self.skips:
            return self.skips[name]
        if name in self.taps:  # dec{s}
            module: nn.Module = self.decoder[int(name[3:])]
            return module
        raise KeyError(name)

    @property
    def size_multiple(self) -> int | None:
        """``stages - 1`` stride-2 stages: H and W must be multiples of ``2**(stages-1)``."""
        multiple: int = 2 ** (self.stages - 1)
        return multiple

    def auxiliary_logits(self) -> list[torch.Tensor]:
        """The deep-supervision logits of the last training-mode forward, at strides 2, 4, ...,
        ``2**(stages-2)``; ``[]`` after an eval-mode forward."""
        return list(self._auxiliary)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes, H, W)`` (in training mode the auxiliary logits are kept too).

        Raises:
            ValueError: H or W is not a multiple of :attr:`size_multiple`.
        """
        multiple: int = 2 ** (self.stages - 1)
        if x.shape[-1] % multiple or x.shape[-2] % multiple:
            raise ValueError(
                f"PlainUNet with {self.stages} stages needs H and W divisible by {multiple}, "
                f"got {tuple(x.shape[-2:])}"
            )
        skips: list[torch.Tensor] = []
        for s, stage in enumerate(self.encoder):
            x = stage(x)
            skips.append(self.skips[f"enc{s}"](x))
        d = skips[-1]
        auxiliary: list[torch.Tensor] = []
        for s in reversed(range(self.stages - 1)):
            d = self.decoder[s](torch.cat([skips[s], self.up[s](d)], dim=1))
            if s > 0 and self.training and self.deep_supervision:
                auxiliary.append(self.heads[s](d))
        auxiliary.reverse()
        self._auxiliary = auxiliary
        out: torch.Tensor = self.heads[0](d)
        return out


class PlainUNetConfig(BackboneConfig):
    """``[backbone] name = "plain_unet"``: nnU-Net's default 2D network.

    Attributes:
        stages: Resolution stages (6: nnU-Net's plan for 224x224 patches, 7 for 256x256); H and W must
            be multiples of ``2**(stages-1)``.
        base_channels: Channels of the first stage (nnU-Net: 32).
        max_channels: Cap on a stage's channels (nnU-Net: 512).
        deep_supervision: Heads on every decoder stage, whose logits the supervised loss weighs as
            nnU-Net does (nnU-Net: on).
    """

    stages: int = Field(6, ge=2)
    base_channels: int = Field(32, ge=1)
    max_channels: int = Field(512, ge=1)
    deep_supervision: bool = True

    def build(self) -> PlainUNet:
        return PlainUNet(
            self.in_channels,
            self.num_classes,
            self.stages,
            self.base_channels,
            self.max_channels,
            self.deep_supervision,
        )
