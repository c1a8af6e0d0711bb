"""The smp backbone plugin: contract, taps, errors, and the MI regulariser on top of it.

Encoders are tiny (timm's ``test_*`` models, resnet18) and inputs 64x64 so the file runs in seconds on
a CPU. Every test runs with outgoing connections refused: nothing here may download weights.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import torch

from mireg.backbones.smp import SMPBackbone, SMPConfig
from mireg.contract import StepContext
from mireg.regularizers.mutual_information import MutualInformationConfig
from mireg.testing import step_context


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if anything (smp, timm, huggingface_hub) tries to reach the network."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("test_smp_backbone must not use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _build(**fields: Any) -> SMPBackbone:
    return SMPConfig(name="smp", num_classes=3, **fields).build()


def _record(net: SMPBackbone) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    for name in net.taps:
        net.tap_module(name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
    return seen


def test_defaults_are_unet_resnet34_without_pretrained_weights() -> None:
    cfg = SMPConfig(name="smp", num_classes=4)
    assert (cfg.architecture, cfg.encoder, cfg.encoder_weights, cfg.encoder_depth) == (
        "Unet",
        "resnet34",
        None,
        5,
    )
    net = cfg.build()
    assert (net.in_channels, net.num_classes) == (1, 4)
    assert list(net.taps) == [f"enc{k}" for k in range(1, 6)] + [f"dec{k}" for k in range(1, 6)]
    assert [t.channels for t in net.taps.values()] == [64, 64, 128, 256, 512, 256, 128, 64, 32, 16]
    assert [t.kind for t in net.taps.values()] == ["encoder"] * 5 + ["decoder"] * 5
    # Tap points hold no parameters: the state dict is exactly the smp model's.
    assert list(net.state_dict()) == [f"model.{k}" for k in net.model.state_dict()]


# (architecture, encoder, depth, expected decoder strides deepest first)
CASES = [
    ("Unet", "resnet18", 5, [16, 8, 4, 2, 1]),
    ("UnetPlusPlus", "tu-test_resnet", 4, [8, 4, 2, 1]),
    ("FPN", "tu-test_efficientnet", 5, [32, 16, 8, 4]),
    ("FPN", "tu-test_resnet", 3, [8, 4, 2, 1]),
    # Transformer-style timm encoder: no stride-2 stage, hence no enc1.
    ("Unet", "tu-test_convnext", 3, [4, 2, 1]),
]


@pytest.mark.parametrize(("architecture", "encoder", "depth", "dec_strides"), CASES)
def test_output_equals_smp_and_every_tap_fires_as_declared(
    architecture: str, encoder: str, depth: int, dec_strides: list[int]
) -> None:
    torch.manual_seed(0)
    net = _build(architecture=architecture, encoder=encoder, encoder_depth=depth).eval()
    seen = _record(net)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        out = net(x)
        reference = net.model(x)
    assert out.shape == (2, 3, 64, 64)
    torch.testing.assert_close(out, reference, rtol=0, atol=0)

    assert set(seen) == set(net.taps)
    enc = [n for n, t in net.taps.items() if t.kind == "encoder"]
    dec = [n for n, t in net.taps.items() if t.kind == "decoder"]
    assert list(net.taps) == enc + dec  # network order: encoder first
    expected_enc = [f"enc{k}" for k in range(1, depth + 1)]
    if encoder == "tu-test_convnext":
        expected_enc = expected_enc[1:]
    assert enc == expected_enc
    assert dec == [f"dec{k}" for k in range(1, len(dec_strides) + 1)]
    for name, tap in net.taps.items():
        assert isinstance(seen[name], torch.Tensor)
        assert seen[name].shape[:2] == (2, tap.channels), name
    for name in enc:
        stride = 2 ** int(name[3:])
        assert seen[name].shape[-2:] == (64 // stride, 64 // stride), name
    assert [64 // seen[name].shape[-1] for name in dec] == dec_strides


def test_unet_matches_smp_in_training_mode_too() -> None:
    torch.manual_seed(0)
    net = _build(encoder="tu-test_resnet").train()
    x = torch.rand(2, 1, 64, 64)
    torch.testing.assert_close(net(x), net.model(x), rtol=0, atol=0)


def test_timm_encoder_with_tu_prefix() -> None:
    net = _build(encoder="tu-resnet18", in_channels=2)
    assert [net.taps[f"enc{k}"].channels for k in range(1, 6)] == [64, 64, 128, 256, 512]
    assert net(torch.rand(2, 2, 64, 64)).shape == (2, 3, 64, 64)


@pytest.mark.parametrize("architecture", ["DeepLabV3Plus", "unet", "Segformer"])
def test_unsupported_architectures_are_refused_with_the_supported_list(architecture: str) -> None:
    with pytest.raises(ValueError, match=rf"{architecture}.*supported: 'Unet', 'UnetPlusPlus', 'FPN'"):
        SMPConfig(name="smp", num_classes=2, architecture=architecture)


@pytest.mark.parametrize("encoder", ["resnet999", "tu-no_such_timm_model"])
def test_unknown_encoders_are_named(encoder: str) -> None:
    with pytest.raises(ValueError, match=rf"cannot build encoder '{encoder}'"):
        _build(encoder=encoder)


def test_unknown_weights_are_named_without_downloading() -> None:
    with pytest.raises(ValueError, match=r"'resnet18' \(encoder_weights='no-such-weights'\)"):
        _build(encoder="resnet18", encoder_weights="no-such-weights")


def test_config_is_strict() -> None:
    with pytest.raises(ValueError, match="encoder_depth"):
        SMPConfig(name="smp", num_classes=2, encoder_depth=6)
    with pytest.raises(ValueError, match="decoder"):
        SMPConfig(name="smp", num_classes=2, decoder="Unet")  # type: ignore[call-arg]


def test_sizes_not_divisible_by_the_output_stride_are_refused() -> None:
    net = _build(encoder="tu-test_resnet")
    with pytest.raises(ValueError, match=r"divisible by 32, got \(48, 64\)"):
        net(torch.rand(1, 1, 48, 64))
    shallow = _build(encoder="tu-test_resnet", encoder_depth=3)
    assert shallow(torch.rand(1, 1, 40, 24)).shape == (1, 3, 40, 24)
    with pytest.raises(ValueError, match="divisible by 8"):
        shallow(torch.rand(1, 1, 44, 24))


def test_unknown_tap_raises_key_error() -> None:
    with pytest.raises(KeyError):
        _build(encoder="tu-test_resnet").tap_module("Conv5")


def _context(net: SMPBackbone, taps: tuple[str, ...], n_l: int = 2, n_u: int = 3) -> StepContext:
    """One training step's context, as the trainer builds it (see tests/test_regularizers.py)."""
    return step_context(net, taps, n_labeled=n_l, n_unlabeled=n_u, size=64)


def test_mutual_information_regulariser_attaches_and_trains_the_backbone() -> None:
    torch.manual_seed(0)
    net = _build(encoder="tu-test_resnet")
    reg = MutualInformationConfig(
        name="mutual_information",
        weight=0.1,
        layers=["enc5", "dec3", "dec4"],
        importance=[1, 0.5, 0.5],
        radius=[1, 1],
        subheads=2,
        clusters=5,
    ).build(net)
    assert reg.taps == ("enc5", "dec3", "dec4")
    out = reg(_context(net, reg.taps))
    assert torch.isfinite(out.loss) and set(out.logs) == {"enc5", "dec3", "dec4"}
    out.loss.backward()
    stem = next(net.model.parameters())  # the encoder's first convolution
    for module in (net.tap_module("dec3"), net.tap_module("dec4"), reg.heads["enc5"], reg.heads["dec4"]):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert stem.grad is not None and stem.grad.abs().sum() > 0
