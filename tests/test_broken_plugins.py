"""Broken third-party plugins are shown with their reason and break nothing else."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mireg import registry
from mireg.errors import PluginError


def _install_fake_distribution(site: Path, name: str, entry_points: str, modules: dict[str, str]) -> None:
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)
    for module, source in modules.items():
        (site / f"{module}.py").write_text(source)


@pytest.fixture
def broken_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    _install_fake_distribution(
        tmp_path,
        "mireg-broken",
        "[mireg.regularizers]\n"
        "explodes = broken_mod:Config\n"
        "not_a_config = plain_mod:NotAConfig\n"
        "[mireg.backbones]\n"
        "unet = plain_mod:NotAConfig\n",
        {
            "broken_mod": "raise RuntimeError('boom at import')\n",
            "plain_mod": "class NotAConfig:\n    pass\n",
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.discover.cache_clear()
    registry.load.cache_clear()
    yield tmp_path
    registry.discover.cache_clear()
    registry.load.cache_clear()
    for module in ("broken_mod", "plain_mod"):
        sys.modules.pop(module, None)


def test_each_kind_of_breakage_has_its_reason(broken_site: Path) -> None:
    with pytest.raises(PluginError, match=r"mireg-broken\[explodes\] failed to import: RuntimeError: boom"):
        registry.load("regularizer", "explodes")
    with pytest.raises(
        PluginError,
        match=r"mireg-broken\[not_a_config\].*not a subclass of "
        r"mireg.contract.RegularizerConfig",
    ):
        registry.load("regularizer", "not_a_config")
    with pytest.raises(
        PluginError,
        match=r"backbone 'unet' is registered by two distributions: "
        r"mireg\[unet\] and mireg-broken\[unet\]",
    ):
        registry.load("backbone", "unet")
    assert registry.load("regularizer", "consistency")  # everything else still loads


def test_plugins_command_lists_broken_plugins_and_recipes_naming_them_fail(
    cli,
    broken_site: Path,
    write_recipe,  # type: ignore[no-untyped-def]
) -> None:
    result = cli("plugins", "--check")
    assert result.code == 0, result
    assert "boom at import" in result.out and "mireg-broken" in result.out
    assert "consistency" in result.out
    recipe = write_recipe(regularizers=[{"name": "explodes", "weight": 1.0}])
    result = cli("train", recipe)
    assert result.code == 1 and "mireg-broken[explodes] failed to import" in result.err
    assert "Traceback" not in result.err


def test_listing_plugins_imports_none_of_them(cli, broken_site: Path) -> None:  # type: ignore[no-untyped-def]
    result = cli("plugins")
    assert result.code == 0, result
    for text in ("explodes", "not_a_config", "mireg-broken", "broken_mod:Config", "plain_mod:NotAConfig"):
        assert text in result.out
    assert "boom" not in result.out and "status" not in result.out
    assert "broken_mod" not in sys.modules and "plain_mod" not in sys.modules


def test_autoloading_third_party_plugins_can_be_switched_off(
    broken_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(registry.DISABLE_ENV, "1")
    registry.discover.cache_clear()
    assert "explodes" not in registry.available("regularizer")
    assert registry.load("backbone", "unet")  # no duplicate once the third party is ignored


def test_a_broken_reader_plugin_breaks_no_other_format_and_is_named_where_nothing_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nibabel as nib
    import numpy as np

    from mireg.errors import DataError
    from mireg.predict import collect_inputs

    site = tmp_path / "site"
    _install_fake_distribution(
        site,
        "mireg-broken-reader",
        "[mireg.readers]\nexplodes = broken_reader_mod:Reader\n",
        {"broken_reader_mod": "raise RuntimeError('boom at import')\n"},
    )
    monkeypatch.syspath_prepend(str(site))
    registry.discover.cache_clear()
    try:
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4)), str(tmp_path / "scan.nii.gz"))
        assert [s.name for s in collect_inputs([tmp_path / "scan.nii.gz"])] == ["scan"]
        (tmp_path / "scan.txt").write_text("x")
        with pytest.raises(
            DataError, match=r"scan.txt: not a NIfTI file .*mireg-broken-reader\[explodes\] failed"
        ):
            collect_inputs([tmp_path / "scan.txt"])
    finally:
        registry.discover.cache_clear()
        sys.modules.pop("broken_reader_mod", None)
