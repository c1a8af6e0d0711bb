"""Ctrl-C and kill: what mireg does on SIGINT and SIGTERM, the two signals that stop it.

Every handler mireg sets is set for a block and the previous ones are put back when it ends
(:func:`interrupts_handled_by`). The commands' choices are made where they run:

- ``mireg preprocess`` and ``mireg study`` raise ``KeyboardInterrupt`` (:func:`interrupts_raised`), so
  that what was half-written is removed;
- a training run asks its trainer to checkpoint and stop (``mireg.training.workflow``), and an
  nnU-Net run forwards the stop to nnU-Net's command (``mireg.nnunet.workflow``);
- the instant a temporary file or folder is created, both wait (:func:`interrupts_deferred`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["INTERRUPTS", "interrupts_deferred", "interrupts_handled_by", "interrupts_raised"]

INTERRUPTS = (signal.SIGINT, signal.SIGTERM)

Handler = Callable[[int, FrameType | None], Any]


@contextmanager
def interrupts_handled_by(handler: Handler) -> Iterator[None]:
    """SIGINT and SIGTERM call ``handler`` inside the block; the handlers they had come back after
    it (also those a ``handler`` changed meanwhile)."""
    previous = {sig: signal.signal(sig, handler) for sig in INTERRUPTS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def interrupts_raised() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt, so that what was half-written is removed. SIGINT
    is set too: a command started in the background by a script (``mireg study ... &``) inherits
    SIGINT ignored, and would otherwise run on through ``kill -INT`` (``mireg train`` stops on it)."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    with interrupts_handled_by(interrupt):
        yield


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM that arrive inside the block are acted on when it ends, as if they arrived
    then (their handlers, e.g. :func:`interrupts_raised`'s, are not changed).

    For the short step that creates a temporary file or folder and hands it to the code that removes
    it: open that code's ``try`` first, create inside this block, so that an interrupt is raised
    where the temporary is already known. Outside the main thread (where Python runs no signal
    handlers), or where a handler was set outside Python, it does nothing.
    """
    in_python = all(signal.getsignal(sig) is not None for sig in INTERRUPTS)  # else not restorable
    if threading.current_thread() is not threading.main_thread() or not in_python:
        yield
        return
    arrived: list[int] = []

    def wait(signum: int, frame: FrameType | None) -> None:
        arrived.append(signum)

    try:
        with interrupts_handled_by(wait):
            yield
    finally:
        for signum in dict.fromkeys(arrived):
            signal.raise_signal(signum)
