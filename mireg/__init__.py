"""mireg: semi-supervised medical image segmentation with mutual-information regularisation."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]


def _version() -> str:
    """The installed version: of ``mireg``, or of ``mireg-runtime`` (the torch-free install of the
    same package, ``runtime/``)."""
    for distribution in ("mireg", "mireg-runtime"):
        try:
            return version(distribution)
        except PackageNotFoundError:
            continue
    return "0.0.0+unknown"  # running from a source tree that was never installed


__version__ = _version()
