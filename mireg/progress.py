"""How library code reports progress: the one callback type, and the training loop's observer.

Library code never prints. Long stages report ``progress(done, total, description)``; the training
loop reports its events to an :class:`Observer`. The CLI renders both with rich. This module imports
nothing heavy, so the CLI can name these types without importing torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Observer", "Progress"]

#: Progress callback: ``progress(done, total, description)``, called as a stage advances.
Progress = Callable[[int, int, str], None]


class Observer:
    """Receives progress from the training loop; the CLI renders it. Every method does nothing here."""

    def message(self, text: str) -> None:
        """A one-line status message."""

    def progress(self, done: int, total: int, description: str) -> None:
        """Progress of a preparation stage (data generation, preprocessing): a :data:`Progress`."""

    def epoch_start(self, epoch: int, epochs: int, iterations: int) -> None:
        """An epoch begins (0-based ``epoch``)."""

    def step(self, done: int, logs: dict[str, float]) -> None:
        """``done`` steps of the epoch are finished; ``logs`` are running means of the epoch."""

    def epoch_end(self, row: dict[str, Any]) -> None:
        """The epoch's metrics row (also written to ``metrics.csv``)."""

    def stopping(self, signal_name: str) -> None:
        """A signal (``SIGINT``, ``SIGTERM``) asked training to stop: it saves a checkpoint after
        the current step (a second Ctrl-C stops at once)."""
