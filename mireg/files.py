"""Atomic file writes: the one way mireg writes a file a user keeps.

A file is written to a temporary sibling (same folder, same extension, so writers that pick the
format from the name still work), flushed to disk, then renamed over the target. A failure or a
kill at any moment leaves the previous file (or none), never a torn one, and no temporary behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text"]


def _extension(path: Path) -> str:
    return ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Create or replace ``path`` with what ``write(tmp)`` writes to a temporary sibling ``tmp``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_extension(path), dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Create or replace the text file ``path`` atomically (UTF-8, newlines as given)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)

    atomic_write(path, write)
