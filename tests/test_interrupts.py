"""SIGINT and SIGTERM: handlers set for a block and put back after it, a KeyboardInterrupt, or a wait."""

from __future__ import annotations

import os
import signal

import pytest

from mireg.interrupts import INTERRUPTS, interrupts_deferred, interrupts_handled_by, interrupts_raised


def test_both_signals_call_the_handler_in_the_block_and_get_their_own_back_after() -> None:
    seen: list[object] = []
    before = {sig: signal.getsignal(sig) for sig in INTERRUPTS}

    def later(signum: int, frame: object) -> None:
        seen.append(("later", signum))

    def handler(signum: int, frame: object) -> None:
        seen.append(signum)
        signal.signal(signal.SIGINT, later)  # a handler may change a handler, as a trainer's does

    with interrupts_handled_by(handler):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
    assert seen == [signal.SIGINT, signal.SIGTERM, ("later", signal.SIGINT)]
    assert {sig: signal.getsignal(sig) for sig in INTERRUPTS} == before


def test_the_handlers_come_back_when_the_block_raises() -> None:
    before = {sig: signal.getsignal(sig) for sig in INTERRUPTS}
    with pytest.raises(RuntimeError), interrupts_handled_by(lambda signum, frame: None):
        raise RuntimeError("boom")
    assert {sig: signal.getsignal(sig) for sig in INTERRUPTS} == before


@pytest.mark.parametrize("sig", INTERRUPTS)
def test_an_interrupt_raises_keyboard_interrupt(sig: signal.Signals) -> None:
    with pytest.raises(KeyboardInterrupt), interrupts_raised():
        os.kill(os.getpid(), sig)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_deferred_interrupt_is_acted_on_once_when_the_block_ends() -> None:
    seen: list[int] = []

    def handler(signum: int, frame: object) -> None:
        seen.append(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            waited = list(seen)
        assert waited == [] and seen == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, previous)
