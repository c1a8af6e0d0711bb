"""Build hooks of mireg-runtime: mireg's version, and the repository's ``mireg`` package as its files.

The sources live one folder above this project (``../mireg``), where hatchling's file selection
does not look, so each module is force-included under ``mireg/``; the version is the one
``../pyproject.toml`` gives mireg. Built from an sdist, the sources are its own ``mireg/`` (put there
by this hook when the sdist was made) and hatchling reads the version from its PKG-INFO. Only
``*.py`` files are taken, as the setuptools build of ``mireg`` itself takes: bytecode, editor
backups and anything else lying in a working tree stay out.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface
from hatchling.metadata.plugin.interface import MetadataHookInterface

if sys.version_info >= (3, 11):
    import tomllib
else:  # hatchling depends on tomli there
    import tomli as tomllib

#: The package this project ships, and the distribution that declares it in ``../pyproject.toml``.
PACKAGE = "mireg"


def find_repository(root: Path) -> Path:
    """The repository holding this project (``root``): the folder above it, with mireg's
    pyproject.toml and package.

    Raises:
        FileNotFoundError: The project was copied out of its repository (pip before 21.3 copies a
            local folder before building it), which this project cannot be built from.
    """
    repository = root.parent
    if (repository / PACKAGE / "__init__.py").is_file() and (repository / "pyproject.toml").is_file():
        return repository
    raise FileNotFoundError(
        f"mireg-runtime is built from the repository around it, and {repository} holds no "
        f"{PACKAGE}/ package and pyproject.toml: install it from a clone (pip install ./runtime) or a "
        "git URL (#subdirectory=runtime) with pip >= 21.3, which builds in place "
        "(python -m pip install --upgrade pip)"
    )


def read_version(root: Path) -> str:
    """mireg's version, from the repository's pyproject.toml."""
    with open(find_repository(root) / "pyproject.toml", "rb") as fh:
        project = tomllib.load(fh)["project"]
    if project.get("name") != PACKAGE:
        raise ValueError(f"{find_repository(root) / 'pyproject.toml'} declares {project.get('name')!r}")
    version: str = project["version"]
    return version


def find_sources(root: Path) -> Path:
    """The ``mireg`` package folder: an sdist's own, else the repository's."""
    if (root / PACKAGE / "__init__.py").is_file():
        return root / PACKAGE
    return find_repository(root) / PACKAGE


def source_files(package: Path) -> dict[str, str]:
    """Every module of ``package``: its path -> its path in the distribution (``mireg/...``)."""
    return {
        str(path): (Path(PACKAGE) / path.relative_to(package)).as_posix()
        for path in sorted(package.rglob("*.py"))
        if "__pycache__" not in path.relative_to(package).parts
    }


class MiregVersionHook(MetadataHookInterface):
    """Sets ``version`` (dynamic) to mireg's; not called from an sdist, whose PKG-INFO has it."""

    PLUGIN_NAME = "mireg-version"

    def update(self, metadata: dict[str, Any]) -> None:
        metadata["version"] = read_version(Path(self.root))


class MiregSourcesHook(BuildHookInterface):  # type: ignore[type-arg]
    """Adds ``mireg``'s modules to the sdist and the wheel (not to an editable install)."""

    PLUGIN_NAME = "mireg-sources"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version == "editable":
            raise RuntimeError(
                "mireg-runtime cannot be installed in editable mode (its sources are another "
                "project's); for development, install mireg itself: pip install -e '.[clinic,onnx]'"
            )
        build_data["force_include"].update(source_files(find_sources(Path(self.root))))
