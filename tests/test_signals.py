"""store/signals.py: signal handlers held back while the store holds what a raising handler would leak or break."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from fraisier_textfile.store.signals import DeferredSignals


@contextmanager
def noting_sigusr1(seen: list[str]) -> Iterator[None]:
    """SIGUSR1's handler notes "handled" in ``seen``; it is the handler again at the end."""

    def handler(signum: int, frame: FrameType | None) -> None:
        seen.append("handled")

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        yield
        assert signal.getsignal(signal.SIGUSR1) is handler
    finally:
        signal.signal(signal.SIGUSR1, previous)


def signalled() -> None:
    os.kill(os.getpid(), signal.SIGUSR1)
    for _ in range(1000):  # Python runs handlers between bytecodes: give it many chances
        pass


def test_a_signal_during_the_deferred_section_runs_its_handler_after_it_once() -> None:
    seen: list[str] = []
    with noting_sigusr1(seen):
        with DeferredSignals():
            signalled()
            seen.append("inside")
        assert seen == ["inside", "handled"]


def test_signals_held_back_within_another_hold_run_once_at_the_outer_end() -> None:
    """The walk's opens hold signals back within a merge that holds them already: the inner hold swaps nothing, and
    a signal during it runs its handler once, when the outer hold ends, not at the inner's."""
    seen: list[str] = []
    with noting_sigusr1(seen):
        with DeferredSignals():
            with DeferredSignals():
                signalled()
            seen.append("inner ended")
            signalled()
            seen.append("inside")
        assert seen == ["inner ended", "inside", "handled", "handled"]
