"""Shared fixtures: a tiny synthetic cohort, tiny recipes, and an in-process CLI runner."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mireg.recipe import dump_toml

from .helpers import tiny_recipe


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` skip themselves, with the reason, where torch sees no GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: run `pytest -m cuda` on a machine with one")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test shares one phantom cache of its own, never the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MIREG_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture
def write_recipe(tmp_path: Path) -> Callable[..., Path]:
    """Write ``tiny_recipe(...)`` (with changes) to a TOML file and return its path."""

    def write(filename: str = "tiny.toml", **changes: Any) -> Path:
        path = tmp_path / filename
        path.write_text(dump_toml(tiny_recipe(tmp_path / "runs", **changes)))
        return path

    return write


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, out={self.out[-2000:]!r}, err={self.err[-2000:]!r})"


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., CliResult]:
    """Run ``mireg ARGS`` in-process through its real entry point (error boundary included)."""
    from mireg.cli import main

    def run(*args: str | Path) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["mireg", *map(str, args)])
        monkeypatch.setenv("COLUMNS", "200")
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
