"""Every registered plugin, built-in or installed, obeys the plugin contract (mireg.testing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from mireg import registry
from mireg.data.acdc import preprocess_acdc
from mireg.data.phantom import generate_cohort
from mireg.data.stored import StoredDatasetConfig
from mireg.testing import ContractError, check_backbone, check_dataset, check_regularizer

from .helpers import DEVICES


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", registry.available("backbone"))
def test_backbone_contract(name: str, device: str) -> None:
    config = registry.load("backbone", name)
    check_backbone(config.model_validate({"name": name, "num_classes": 3}), device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", registry.available("regularizer"))
def test_regularizer_contract(name: str, device: str) -> None:
    config = registry.load("regularizer", name)
    check_regularizer(config.model_validate({"name": name, "weight": 1.0}), device=device)


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("contract")
    generate_cohort(root / "raw", n_patients=5, seed=0)
    preprocess_acdc(root / "raw", root / "store", spacing=6.0, canvas=32)
    return root / "store"


@pytest.mark.parametrize("name", registry.available("dataset"))
def test_dataset_contract(name: str, tiny_store: Path) -> None:
    config = registry.load("dataset", name)
    if issubclass(config, StoredDatasetConfig):  # any store-backed dataset reads the same store format
        fields = {"name": name, "root": str(tiny_store)}
    elif name == "phantom":
        fields = {"name": name, "patients": 5, "spacing": 6.0, "canvas": 32}
    else:
        try:
            config.model_validate({"name": name})
        except ValidationError as exc:
            pytest.skip(f"third-party dataset {name!r} needs configuration to load: {exc.errors()[0]}")
        fields = {"name": name}
    check_dataset(config.model_validate(fields))


def test_a_broken_plugin_is_reported_with_its_name() -> None:
    from mireg.backbones.unet import UNetConfig

    class Shapeless(UNetConfig):
        def build(self):  # type: ignore[no-untyped-def]
            net = super().build()
            net.taps = {**net.taps, "Conv1": type(net.taps["Conv1"])("encoder", 999)}
            return net

    with pytest.raises(ContractError, match=r"backbone 'unet': tap Conv1: shape .* declared 999"):
        check_backbone(Shapeless(name="unet", num_classes=2, base_channels=2), size=32)


@pytest.mark.parametrize(
    ("layer", "broken"),
    [
        ("batch_norm", "depends on the rest of its batch"),
        ("dropout", "draws random numbers"),
        ("running_statistics", "changes the network's buffers"),
    ],
)
def test_a_backbone_that_wrongly_says_it_computes_each_sample_alone_is_caught(
    layer: str, broken: str
) -> None:
    """``independent_samples`` lets a supervised step skip the unlabelled slices, so a false promise
    would change training: the contract check runs the network to see it hold."""
    from torch import nn

    from mireg.backbones.plain_unet import PlainUNetConfig

    class Claiming(PlainUNetConfig):
        def build(self):  # type: ignore[no-untyped-def]
            net = super().build()
            norm = net.encoder[0][0][1]  # the first stage's first instance norm
            assert isinstance(norm, nn.InstanceNorm2d)
            if layer == "batch_norm":
                net.encoder[0][0][1] = nn.BatchNorm2d(norm.num_features, track_running_stats=False)
            elif layer == "dropout":
                net.encoder[0][0].append(nn.Dropout2d(0.5))
            else:
                net.encoder[0][0][1] = nn.InstanceNorm2d(norm.num_features, track_running_stats=True)
            return net

    config = {"name": "plain_unet", "num_classes": 2, "stages": 3, "base_channels": 4}
    assert check_backbone(PlainUNetConfig(**config), size=32).independent_samples  # the real one holds
    with pytest.raises(ContractError, match=f"independent_samples is True, but .*{broken}"):
        check_backbone(Claiming(**config), size=32)


@pytest.mark.parametrize("claimed", [frozenset({"unlabelled"}), frozenset({"transformed"}), frozenset()])
def test_the_regularizer_check_catches_a_group_it_says_it_does_not_read(claimed: frozenset[str]) -> None:
    """Training leaves out the groups a regulariser says it does not read (on some networks), so a
    false claim would train on empty logits: the check finds it."""
    from mireg.regularizers.consistency import ConsistencyConfig

    class Claiming(ConsistencyConfig):  # the consistency loss reads f(x_u) and f(T(x_u))
        def build(self, backbone):  # type: ignore[no-untyped-def]
            reg = super().build(backbone)
            reg.reads = claimed
            return reg

    with pytest.raises(ContractError, match=r"reads is .*, but its loss changes with"):
        check_regularizer(Claiming(name="consistency", weight=1.0))


def test_the_store_imports_nothing_of_the_contract() -> None:
    # The contract re-exports the store types; the store importing the contract back would be a cycle.
    code = (
        "import sys, mireg.preprocessing.store, mireg.preprocessing.volume; "
        "assert 'mireg.contract' not in sys.modules, 'mireg.contract was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_the_contract_exposes_what_a_dataset_plugin_needs() -> None:
    import mireg.contract as contract
    from mireg.preprocessing.store import VolumeInfo, VolumeStore
    from mireg.preprocessing.volume import StoreBuilder
    from mireg.progress import Progress

    expected = {
        "VolumeStore": VolumeStore,
        "VolumeInfo": VolumeInfo,
        "StoreBuilder": StoreBuilder,
        "Progress": Progress,
    }
    for name, value in expected.items():
        assert name in contract.__all__ and getattr(contract, name) is value, name
