"""Checkpoints: written atomically, loaded safely (``weights_only=True``: a file cannot run code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mireg.errors import CheckpointError
from mireg.files import atomic_write

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` via a temporary file, flush, fsync and rename.

    A kill at any moment leaves either the previous file or the new one, never a torn one.
    """
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors and plain data only)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        raise CheckpointError(
            f"{path}: cannot load checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    if not isinstance(state, dict) or "model" not in state or "recipe" not in state:
        raise CheckpointError(f"{path}: not a mireg checkpoint (no model or recipe inside)")
    return state
