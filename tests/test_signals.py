"""store/signals.py: signal handlers held back while the store holds what a raising handler would leak or break."""

from __future__ import annotations

import os
import signal
from types import FrameType

from fraisier_textfile.store.signals import DeferredSignals


def test_a_signal_during_the_deferred_section_runs_its_handler_after_it_once() -> None:
    seen: list[str] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        seen.append("handled")

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        with DeferredSignals():
            os.kill(os.getpid(), signal.SIGUSR1)
            for _ in range(1000):  # Python runs handlers between bytecodes: give it many chances
                pass
            seen.append("inside")
        assert seen == ["inside", "handled"]
        assert signal.getsignal(signal.SIGUSR1) is handler
    finally:
        signal.signal(signal.SIGUSR1, previous)
