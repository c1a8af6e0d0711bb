"""Child processes that end with the mireg process that started them (a study's runs, nnU-Net's
commands): killed with it, they checkpoint and stop instead of training on unwatched."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

__all__ = ["ending_with_parent"]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM (and so checkpoints and stops) if its parent dies."""
    import ctypes

    libc = ctypes.CDLL(None)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def ending_with_parent() -> Callable[[], None] | None:
    """``preexec_fn`` for :class:`subprocess.Popen` (None where the platform has no such signal)."""
    return _die_with_parent if sys.platform == "linux" else None
