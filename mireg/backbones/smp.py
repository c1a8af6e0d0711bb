"""Backbones from ``segmentation_models_pytorch`` (smp), with feature taps named by depth.

``[backbone] name = "smp"`` wraps an smp ``Unet``, ``UnetPlusPlus`` or ``FPN`` with any smp encoder,
timm ones included through the ``tu-`` prefix (``tu-resnet18``, ``tu-efficientnet_b0``).

Tap naming (``encoder_depth = D``, at most 5):

* ``enc1 .. encD`` (kind ``"encoder"``): the encoder's stage outputs at strides 2, 4, ..., 2**D, i.e.
  ``encK`` is the map at stride ``2**K`` with ``encoder.out_channels[K]`` channels. smp's stride-1
  stage (the input image itself for most encoders) is not a tap. Transformer-style timm encoders
  (ConvNeXt, Swin, ...) have no stride-2 stage; smp feeds an empty placeholder there, so those
  encoders have no ``enc1`` and the others keep their stride-based names.
* ``dec1 .. decM`` (kind ``"decoder"``): the decoder's blocks in the order they run, from the
  deepest (coarsest) to the shallowest (finest) map.

  - ``Unet``: its ``D`` upsampling blocks; ``decK`` is at stride ``2**(D-K)`` (``decD`` at full
    resolution) with ``(256, 128, 64, 32, 16)[5-D:][K-1]`` channels.
  - ``UnetPlusPlus``: the ``D`` blocks of the nested decoder's top path (``x_0_0 .. x_0_{D-1}``),
    same strides and channels as ``Unet``.
  - ``FPN``: the four pyramid levels ``P5 .. P2`` (``dec1 .. dec4``, 256 channels), at strides
    ``2**D .. 2**(D-3)``.

With ``Unet`` / ``resnet34`` / depth 5: ``enc1..enc5`` have 64, 64, 128, 256, 512 channels at strides
2..32 and ``dec1..dec5`` have 256, 128, 64, 32, 16 channels at strides 16..1.

smp encoders return all stages from one call, so there is no module whose output is a single stage;
each encoder stage therefore passes through an ``nn.Identity`` tap point (``encoder_taps[name]``) that
forward hooks can attach to. Decoder blocks return one tensor each and are tapped directly. Neither
costs anything when no hook is registered.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import segmentation_models_pytorch as smp
import torch
from pydantic import Field, field_validator
from torch import nn

from mireg.contract import Backbone, BackboneConfig, Tap

__all__ = ["SUPPORTED_ARCHITECTURES", "SMPBackbone", "SMPConfig"]

Architecture = Literal["Unet", "UnetPlusPlus", "FPN"]

#: The smp architectures whose decoders this module knows how to tap.
SUPPORTED_ARCHITECTURES: tuple[str, ...] = get_args(Architecture)

# smp's default decoder widths for depth 5, deepest block first. At a smaller depth the *last* entries
# are used, so a block at a given stride keeps the width it has at depth 5 (and smp requires one
# width per block, so its own default would fail for depth < 5).
_UNET_DECODER_CHANNELS = (256, 128, 64, 32, 16)


class SMPBackbone(Backbone):
    """An smp segmentation model with ``encK`` / ``decK`` feature taps (see the module docstring).

    Args:
        architecture: One of :data:`SUPPORTED_ARCHITECTURES`.
        encoder: smp encoder name, or ``tu-<timm model>`` for a timm encoder.
        encoder_weights: ``None`` for random initialisation; otherwise the pretrained weights smp
            should download (e.g. ``"imagenet"``), which needs internet access.
        encoder_depth: Number of encoder stages, 3 to 5.
        in_channels: Image channels.
        num_classes: Output classes (background included).

    Raises:
        ValueError: Unsupported architecture, or an encoder / weights smp cannot build.

    Input height and width must be multiples of ``2**encoder_depth``.
    """

    def __init__(
        self,
        architecture: str = "Unet",
        encoder: str = "resnet34",
        encoder_weights: str | None = None,
        encoder_depth: int = 5,
        in_channels: int = 1,
        num_classes: int = 2,
    ) -> None:
        super().__init__()
        if architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(_unsupported(architecture))
        if not 3 <= encoder_depth <= 5:
            raise ValueError(f"encoder_depth must be 3, 4 or 5, got {encoder_depth}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.architecture = architecture
        self.encoder_depth = encoder_depth

        decoder_channels = _UNET_DECODER_CHANNELS[5 - encoder_depth :]
        extra: dict[str, object] = {}
        if architecture == "FPN":
            # smp's FPN always upsamples its stride-4 (at depth 5) output by 4; at a smaller depth the
            # pyramid ends 2**(5 - depth) times finer, so the logits would come out too large.
            extra["upsampling"] = 2 ** (encoder_depth - 3)
        else:
            extra["decoder_channels"] = decoder_channels
        # timm (``tu-``) encoders take a bool; smp warns on a string and then loads timm's default
        # pretrained weights anyway, so pass that meaning explicitly.
        weights: str | bool | None = encoder_weights
        if encoder.startswith("tu-") and encoder_weights is not None:
            weights = True
        try:
            # smp's models declare no attribute types (``encoder``, ``decoder``, ...): keep an
            # untyped handle for reaching into them.
            model: Any = smp.create_model(
                architecture,
                encoder_name=encoder,
                encoder_weights=weights,
                encoder_depth=encoder_depth,
                in_channels=in_channels,
                classes=num_classes,
                **extra,
            )
        except (KeyError, RuntimeError, ValueError) as err:
            # smp raises KeyError (unknown smp encoder or weights, with a list of ~150 names), timm
            # RuntimeError (unknown model, no feature extraction) or ValueError; name the culprit.
            reason = str(err.args[0]) if err.args else type(err).__name__
            if len(reason) > 300:
                reason = reason[:300] + " ..."
            raise ValueError(
                f"smp cannot build encoder {encoder!r} (encoder_weights={encoder_weights!r}) for "
                f"{architecture}: {reason}. Use an smp encoder name "
                "(segmentation_models_pytorch.encoders.get_encoder_names()) or 'tu-<timm model>'."
            ) from err
        self.model: nn.Module = model

        stage_channels = list(model.encoder.out_channels)[1:]
        # Per encoder stage (stride 2, 4, ...): the tap name, or None for smp's 0-channel placeholder.
        self._stage_taps: list[str | None] = [
            f"enc{k}" if c > 0 else None for k, c in enumerate(stage_channels, start=1)
        ]
        self.encoder_taps = nn.ModuleDict(
            {name: nn.Identity() for name in self._stage_taps if name is not None}
        )

        blocks, block_channels = self._decoder_blocks(decoder_channels)
        # A plain dict, not a ModuleDict: the blocks are already registered under ``model.decoder``
        # and must not appear twice in the state dict.
        self._decoder_taps: dict[str, nn.Module] = {f"dec{k}": b for k, b in enumerate(blocks, 1)}
        self.taps = {
            **{
                name: Tap("encoder", c)
                for name, c in zip(self._stage_taps, stage_channels, strict=True)
                if name is not None
            },
            **{f"dec{k}": Tap("decoder", c) for k, c in enumerate(block_channels, 1)},
        }

    def _decoder_blocks(self, decoder_channels: tuple[int, ...]) -> tuple[list[nn.Module], list[int]]:
        """The decoder modules to tap, deepest first, and their output channels."""
        decoder: Any = self._smp.decoder
        if self.architecture == "Unet":
            return list(decoder.blocks), list(decoder_channels)
        if self.architecture == "UnetPlusPlus":
            # The top row of the nested decoder is the path to the output; the other nodes are
            # intermediate dense skips.
            return [decoder.blocks[f"x_0_{k}"] for k in range(len(decoder_channels))], list(decoder_channels)
        pyramid: int = decoder.p5.out_channels
        return [decoder.p5, decoder.p4, decoder.p3, decoder.p2], [pyramid] * 4

    def tap_module(self, name: str) -> nn.Module:
        """Return the module whose forward output is the feature map ``name``.

        Raises:
            KeyError: ``name`` is not a tap.
        """
        if name in self.encoder_taps:
            return self.encoder_taps[name]
        if name in self._decoder_taps:
            return self._decoder_taps[name]
        raise KeyError(name)

    @property
    def output_stride(self) -> int:
        """The factor H and W must be divisible by (``2**encoder_depth``)."""
        stride: int = self._smp.encoder.output_stride
        return stride

    @property
    def size_multiple(self) -> int | None:
        """:attr:`output_stride`."""
        return self.output_stride

    @property
    def _smp(self) -> Any:
        # ``self.model`` without its static type: smp's models declare no attribute types.
        return self.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes, H, W)``; the same computation as ``self.model(x)``.

        Raises:
            ValueError: H or W is not divisible by :attr:`output_stride`.
        """
        stride = self.output_stride
        if x.shape[-1] % stride or x.shape[-2] % stride:
            # smp's Unet would accept any size and resample skips, but then the taps' resolutions
            # are no longer exact powers of two of the input's; refuse like mireg's UNet does.
            raise ValueError(
                f"smp {self.architecture} with encoder_depth {self.encoder_depth} needs H and W "
                f"divisible by {stride}, got {tuple(x.shape[-2:])}"
            )
        model = self._smp
        features: list[torch.Tensor] = model.encoder(x)
        tapped = [features[0]] + [
            f if name is None else self.encoder_taps[name](f)
            for name, f in zip(self._stage_taps, features[1:], strict=True)
        ]
        out: torch.Tensor = model.segmentation_head(model.decoder(tapped))
        return out


def _unsupported(architecture: object) -> str:
    supported = ", ".join(repr(a) for a in SUPPORTED_ARCHITECTURES)
    return (
        f"architecture {architecture!r} is not supported by the smp backbone (supported: {supported}); "
        "the names are case-sensitive"
    )


class SMPConfig(BackboneConfig):
    """``[backbone] name = "smp"``: an smp model with a (timm or smp) encoder.

    Attributes:
        architecture: smp decoder architecture: ``"Unet"`` (default), ``"UnetPlusPlus"`` or ``"FPN"``.
        encoder: smp encoder (``"resnet34"``, ``"efficientnet-b0"``, ...) or a timm model with the
            ``tu-`` prefix (``"tu-resnet18"``, ``"tu-efficientnet_b0"``, ``"tu-convnext_tiny"``).
        encoder_weights: ``None`` (default): random initialisation, nothing is downloaded. A value
            such as ``"imagenet"`` makes smp download pretrained encoder weights at build time,
            which needs internet access (or a filled Hugging Face cache). For ``tu-`` encoders any
            value loads timm's default pretrained weights; pick a tag with ``tu-<model>.<tag>``.
        encoder_depth: Encoder stages, 3 to 5; H and W must be multiples of ``2**encoder_depth``.
    """

    architecture: Architecture = "Unet"
    encoder: str = Field("resnet34", min_length=1)
    encoder_weights: str | None = None
    encoder_depth: int = Field(5, ge=3, le=5)

    @field_validator("architecture", mode="before")
    @classmethod
    def _supported_architecture(cls, value: object) -> object:
        # Runs before the Literal check so that the error names the value and the supported ones.
        if value not in SUPPORTED_ARCHITECTURES:
            raise ValueError(_unsupported(value))
        return value

    def build(self) -> SMPBackbone:
        return SMPBackbone(
            self.architecture,
            self.encoder,
            self.encoder_weights,
            self.encoder_depth,
            self.in_channels,
            self.num_classes,
        )
