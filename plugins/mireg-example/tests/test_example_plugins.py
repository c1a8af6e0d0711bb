"""The example plugins obey mireg's contract, checked with mireg.testing."""

from __future__ import annotations

import ast
from pathlib import Path

import mireg_example
from mireg_example.backbone import TinyUNetConfig
from mireg_example.dataset import EllipsesConfig
from mireg_example.regularizer import SmoothnessConfig

from mireg import registry
from mireg.testing import check_backbone, check_dataset, check_regularizer


def test_backbone() -> None:
    check_backbone(TinyUNetConfig(name="tiny_unet", num_classes=3), size=32)


def test_regularizer_on_mireg_unet_and_on_our_backbone() -> None:
    check_regularizer(SmoothnessConfig(name="smoothness", weight=1.0))
    check_regularizer(
        SmoothnessConfig(name="smoothness", weight=1.0, on="transformed"),
        backbone=TinyUNetConfig(name="tiny_unet", num_classes=2),
    )


def test_dataset() -> None:
    store = check_dataset(EllipsesConfig(name="ellipses"))
    assert store.classes == ["background", "ellipse"]


def test_the_entry_points_are_installed() -> None:
    assert registry.discover("backbone")["tiny_unet"][0].distribution == "mireg-example"
    assert registry.load("regularizer", "smoothness") is SmoothnessConfig
    assert registry.load("dataset", "ellipses") is EllipsesConfig


#: What plugins may import of mireg: the contract (training plugins) and the formats' base classes.
PLUGIN_API = {"mireg.contract", "mireg.io.formats"}


def test_the_plugins_import_nothing_of_mireg_but_the_contract() -> None:
    package = Path(mireg_example.__file__).parent
    for source in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert name.split(".")[0] != "mireg" or name in PLUGIN_API, f"{source.name}: {name}"
