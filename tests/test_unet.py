from __future__ import annotations

import pytest
import torch

from mireg.backbones.unet import UNet, UNetConfig


def test_default_unet_has_the_papers_size_and_taps() -> None:
    net = UNetConfig(name="unet", num_classes=4).build()
    params = sum(p.numel() for p in net.parameters())
    assert 2.0e6 < params < 2.3e6  # method.md: ~2.16 M
    assert list(net.taps) == [
        "Conv1",
        "Conv2",
        "Conv3",
        "Conv4",
        "Conv5",
        "Up_conv5",
        "Up_conv4",
        "Up_conv3",
        "Up_conv2",
    ]
    assert [net.taps[f"Conv{k}"].channels for k in range(1, 6)] == [16, 32, 64, 128, 256]
    assert [net.taps[f"Up_conv{k}"].channels for k in (5, 4, 3, 2)] == [128, 64, 32, 16]


def test_tapped_modules_produce_the_declared_channels_and_resolutions() -> None:
    net = UNet(1, 3, base_channels=4).eval()
    seen: dict[str, torch.Size] = {}
    for name in net.taps:
        net.tap_module(name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.shape))
    out = net(torch.rand(2, 1, 32, 48))
    assert out.shape == (2, 3, 32, 48)
    for name, tap in net.taps.items():
        assert seen[name][1] == tap.channels
    assert seen["Conv5"][-2:] == (2, 3) and seen["Up_conv2"][-2:] == (32, 48)
    assert {t.kind for n, t in net.taps.items() if n.startswith("Conv")} == {"encoder"}


def test_sizes_not_divisible_by_16_are_refused() -> None:
    with pytest.raises(ValueError, match="divisible by 16"):
        UNet(1, 2, 4)(torch.rand(1, 1, 40, 32))
