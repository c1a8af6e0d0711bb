from __future__ import annotations

import pytest

from mireg import registry
from mireg.contract import BackboneConfig, DatasetConfig, RegularizerConfig
from mireg.errors import PluginError

BUILT_INS = {
    "backbone": {"smp", "unet"},
    "dataset": {"acdc", "acdc-png", "msd", "phantom"},
    "regularizer": {"consistency", "mutual_information"},
}


def test_built_ins_are_discovered_through_entry_points() -> None:
    for kind, names in BUILT_INS.items():
        found = registry.discover(kind)
        assert names <= set(found)
        for name in names:
            assert found[name][0].distribution == "mireg"


@pytest.mark.parametrize(
    ("kind", "base"),
    [("backbone", BackboneConfig), ("dataset", DatasetConfig), ("regularizer", RegularizerConfig)],
)
def test_every_registered_plugin_loads_as_its_kinds_config(kind: str, base: type) -> None:
    for name in registry.available(kind):
        assert issubclass(registry.load(kind, name), base)


def test_unknown_plugins_list_what_is_installed() -> None:
    with pytest.raises(PluginError, match=r"unknown regularizer 'nope'; installed: .*consistency"):
        registry.load("regularizer", "nope")


def test_plugins_command_lists_every_built_in(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("plugins")
    assert result.code == 0, result
    for names in BUILT_INS.values():
        for name in names:
            assert name in result.out
    assert "mireg.regularizers.consistency:ConsistencyConfig" in result.out
    result = cli("plugins", "--check")
    assert result.code == 0, result
    for names in BUILT_INS.values():
        for name in names:
            assert name in result.out
    assert "broken" not in result.out


def test_help_lists_the_commands(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("--help")
    assert result.code == 0
    for command in ("preprocess", "train", "eval", "predict", "plugins"):
        assert command in result.out
