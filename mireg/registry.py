"""Plugin discovery and loading through entry points.

Built-in and third-party plugins take one path: each is an entry point in group
``mireg.backbones``, ``mireg.datasets`` or ``mireg.regularizers`` whose name is the ``name`` a recipe
uses and whose value is the plugin's config class. Discovery lists entry points without importing
anything; only what a recipe names is imported, so a broken plugin breaks nothing else. Errors name
the plugin as ``distribution[name]``.

Set ``MIREG_DISABLE_PLUGIN_AUTOLOAD=1`` to ignore every plugin that mireg itself does not ship.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Literal

from mireg.errors import PluginError

if TYPE_CHECKING:
    from mireg.contract import PluginConfig

__all__ = ["KINDS", "PluginInfo", "available", "discover", "installed", "load", "plugin_status"]

Kind = Literal["backbone", "dataset", "regularizer"]

#: kind -> (entry-point group, name of its base config class in :mod:`mireg.contract`). The class is
#: looked up only when a plugin is loaded, so that discovery imports neither the contract nor torch.
KINDS: dict[str, tuple[str, str]] = {
    "backbone": ("mireg.backbones", "BackboneConfig"),
    "dataset": ("mireg.datasets", "DatasetConfig"),
    "regularizer": ("mireg.regularizers", "RegularizerConfig"),
}
DISABLE_ENV = "MIREG_DISABLE_PLUGIN_AUTOLOAD"


@dataclass(frozen=True)
class PluginInfo:
    """An entry point as discovered (nothing imported)."""

    kind: str
    name: str
    value: str
    distribution: str
    version: str

    @property
    def label(self) -> str:
        return f"{self.distribution}[{self.name}]"


def _info(kind: str, ep: EntryPoint) -> PluginInfo:
    dist = ep.dist
    return PluginInfo(kind, ep.name, ep.value, dist.name if dist else "?", dist.version if dist else "?")


@cache
def discover(kind: str) -> dict[str, list[PluginInfo]]:
    """Entry points of ``kind`` by name, sorted; a name with two distributions has two entries."""
    group, _ = KINDS[kind]
    found: dict[str, list[PluginInfo]] = {}
    third_party_off = os.environ.get(DISABLE_ENV, "") not in ("", "0")
    for ep in entry_points(group=group):
        info = _info(kind, ep)
        if third_party_off and info.distribution != "mireg":
            continue
        same = found.setdefault(info.name, [])
        if all(i.distribution != info.distribution for i in same):  # the same dist seen twice
            same.append(info)
            same.sort(key=lambda i: i.distribution)
    return dict(sorted(found.items()))


def available(kind: str) -> list[str]:
    return list(discover(kind))


def installed() -> list[PluginInfo]:
    """Every discovered plugin of every kind, by kind and name (nothing imported)."""
    return [info for kind in KINDS for infos in discover(kind).values() for info in infos]


def _single(kind: str, name: str) -> PluginInfo:
    found = discover(kind).get(name)
    if not found:
        names = ", ".join(available(kind)) or "none"
        raise PluginError(
            f"unknown {kind} {name!r}; installed: {names}", "`mireg plugins` lists what is installed"
        )
    if len(found) > 1:
        both = " and ".join(i.label for i in found)
        raise PluginError(
            f"{kind} {name!r} is registered by two distributions: {both}", "uninstall one of them"
        )
    return found[0]


@cache
def load(kind: str, name: str) -> type[PluginConfig]:
    """Import the config class of plugin ``name`` of ``kind``.

    Raises:
        PluginError: Unknown name, duplicate registration, import failure or a class that does not
            subclass the contract's config class for ``kind``.
    """
    from mireg import contract

    info = _single(kind, name)
    group, base_name = KINDS[kind]
    base: type[PluginConfig] = getattr(contract, base_name)
    try:
        obj = EntryPoint(info.name, info.value, group).load()
    except Exception as exc:  # any import-time failure of a plugin is the plugin's
        raise PluginError(
            f"{kind} plugin {info.label} failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise PluginError(
            f"{kind} plugin {info.label}: {info.value} is not a subclass of mireg.contract.{base.__name__}"
        )
    return obj


def plugin_status() -> list[tuple[PluginInfo, str | None]]:
    """Every discovered plugin with ``None`` if it loads, else the reason it does not."""
    rows: list[tuple[PluginInfo, str | None]] = []
    for info in installed():
        try:
            load(info.kind, info.name)
            error = None
        except PluginError as exc:
            error = exc.message
        rows.append((info, error))
    return rows
