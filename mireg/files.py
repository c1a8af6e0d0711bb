"""Atomic file writes: the one way mireg writes a file a user keeps.

A file is written to a temporary sibling (same folder, same extension, so writers that pick the
format from the name still work), flushed to disk, then renamed over the target. A failure or a
kill at any moment leaves the previous file (or none), never a torn one, and no temporary behind.

The temporary file is created private (mode 0600, so that nobody reads it half-written); before
the rename it gets the mode any new file of the user gets (0666 less the umask: 0644 under the
usual 022), or the mode of the file it replaces, so that a PACS sender or a viewer running as
another user can read the results.

A temporary is created while SIGINT and SIGTERM wait (:func:`mireg.interrupts.interrupts_deferred`),
so a Ctrl-C or a kill arriving at that instant is acted on only once the code that removes it on
failure holds it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from mireg.interrupts import interrupts_deferred

__all__ = ["atomic_write", "atomic_write_text", "new_dir_mode", "new_file_mode"]


def _umask() -> int:
    """The process's umask, read from ``/proc`` where it tells (setting it to read it back, as the
    fallback does, is not safe while other threads create files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(path: Path | None = None) -> int:
    """The permission bits a file written at ``path`` gets: those of the file it replaces, else those
    of any new file (0666 less the umask)."""
    if path is not None:
        try:
            return os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            pass
    return 0o666 & ~_umask()


def new_dir_mode() -> int:
    """The permission bits of a new folder (0777 less the umask)."""
    return 0o777 & ~_umask()


def _extension(path: Path) -> str:
    return ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Create or replace ``path`` with what ``write(tmp)`` writes to a temporary sibling ``tmp``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp: Path | None = None
    try:
        with interrupts_deferred():
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_extension(path), dir=path.parent)
            tmp = Path(name)
            os.close(fd)
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, new_file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Create or replace the text file ``path`` atomically (UTF-8, newlines as given)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)

    atomic_write(path, write)
