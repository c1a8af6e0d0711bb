"""Plugin discovery and loading through entry points.

Built-in and third-party plugins take one path: each is an entry point in group
``mireg.backbones``, ``mireg.datasets`` or ``mireg.regularizers`` whose name is the ``name`` a recipe
uses and whose value is the plugin's config class. Discovery lists entry points without importing
anything; only what a recipe names is imported, so a broken plugin breaks nothing else. Errors name
the plugin as ``distribution[name]``.

File formats are plugins too: scan readers and label-map writers of ``mireg predict``
(:mod:`mireg.io.formats`, groups ``mireg.readers`` and ``mireg.writers``) and exporters of
``mireg export`` (:mod:`mireg.export.exporters`, group ``mireg.exporters``), each an entry point whose
value is the format's class. mireg's own formats are registered here, in :data:`BUILT_IN_FORMATS`,
rather than as entry points, so that the torch-free ``mireg-runtime`` distribution, which ships the
same package without mireg's entry points, reads and writes them too.

Set ``MIREG_DISABLE_PLUGIN_AUTOLOAD=1`` to ignore every plugin that mireg itself does not ship.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, Literal

from mireg.errors import PluginError

if TYPE_CHECKING:
    from mireg.contract import PluginConfig

__all__ = [
    "BUILT_IN_FORMATS",
    "KINDS",
    "PluginInfo",
    "available",
    "discover",
    "format_of",
    "installed",
    "is_own",
    "load",
    "plugin_status",
]

Kind = Literal["backbone", "dataset", "regularizer", "reader", "writer", "exporter"]

#: kind -> (entry-point group, the module and name of the class its plugins subclass). The class is
#: looked up only when a plugin is loaded, so that discovery imports neither the contract nor torch.
KINDS: dict[str, tuple[str, str, str]] = {
    "backbone": ("mireg.backbones", "mireg.contract", "BackboneConfig"),
    "dataset": ("mireg.datasets", "mireg.contract", "DatasetConfig"),
    "regularizer": ("mireg.regularizers", "mireg.contract", "RegularizerConfig"),
    "reader": ("mireg.readers", "mireg.io.formats", "ScanReader"),
    "writer": ("mireg.writers", "mireg.io.formats", "LabelMapWriter"),
    "exporter": ("mireg.exporters", "mireg.export.exporters", "Exporter"),
}

#: mireg's own formats: kind -> name -> class (``module:Class``), registered as if by entry points of
#: the distribution ``mireg``.
BUILT_IN_FORMATS: dict[str, dict[str, str]] = {
    "reader": {"nifti": "mireg.io.nifti:NiftiReader", "dicom": "mireg.io.dicom_scan:DicomReader"},
    "writer": {"nifti": "mireg.io.nifti:NiftiWriter", "seg": "mireg.io.dicom_seg:SegWriter"},
    "exporter": {
        "onnx": "mireg.export.exporters:OnnxExporter",
        "torchscript": "mireg.export.exporters:TorchScriptExporter",
    },
}
DISABLE_ENV = "MIREG_DISABLE_PLUGIN_AUTOLOAD"
#: The distribution of mireg's own plugins and formats.
OWN = "mireg"


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
    group, _, _ = KINDS[kind]
    found: dict[str, list[PluginInfo]] = {}
    third_party_off = os.environ.get(DISABLE_ENV, "") not in ("", "0")
    built_in = [
        PluginInfo(kind, name, value, OWN, _own_version())
        for name, value in BUILT_IN_FORMATS.get(kind, {}).items()
    ]
    for info in built_in + [_info(kind, ep) for ep in entry_points(group=group)]:
        if third_party_off and info.distribution != OWN:
            continue
        same = found.setdefault(info.name, [])
        if all(i.distribution != info.distribution for i in same):  # the same dist seen twice
            same.append(info)
            same.sort(key=lambda i: i.distribution)
    return dict(sorted(found.items()))


def _own_version() -> str:
    import mireg

    return mireg.__version__


def available(kind: str) -> list[str]:
    return list(discover(kind))


def is_own(kind: str, name: str) -> bool:
    """Whether plugin ``name`` of ``kind`` is mireg's own (no other distribution registers it)."""
    return all(info.distribution == OWN for info in discover(kind)[name])


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
    """Import the config class of plugin ``name`` of ``kind`` (a backbone, dataset or regulariser).

    Raises:
        PluginError: Unknown name, duplicate registration, import failure or a class that does not
            subclass the contract's config class for ``kind``.
    """
    config: type[PluginConfig] = _load(kind, name)
    return config


def format_of(kind: str, name: str) -> Any:
    """The file format ``name`` of ``kind`` (``reader``, ``writer`` or ``exporter``): an instance of
    its class.

    Raises:
        PluginError: As :func:`load`.
    """
    return _format_class(kind, name)()


@cache
def _format_class(kind: str, name: str) -> Any:
    return _load(kind, name)


def _load(kind: str, name: str) -> Any:
    """The class plugin ``name`` of ``kind`` registers, imported and checked."""
    info = _single(kind, name)
    group, module, base_name = KINDS[kind]
    base: type = getattr(importlib.import_module(module), base_name)
    try:
        obj = EntryPoint(info.name, info.value, group).load()
    except Exception as exc:  # any import-time failure of a plugin is the plugin's
        raise PluginError(
            f"{kind} plugin {info.label} failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise PluginError(
            f"{kind} plugin {info.label}: {info.value} is not a subclass of {module}.{base.__name__}"
        )
    return obj


def plugin_status() -> list[tuple[PluginInfo, str | None]]:
    """Every discovered plugin with ``None`` if it loads, else the reason it does not."""
    rows: list[tuple[PluginInfo, str | None]] = []
    for info in installed():
        try:
            _load(info.kind, info.name)
            error = None
        except PluginError as exc:
            error = exc.message
        rows.append((info, error))
    return rows
