"""Signal handlers held back while the store holds something a raising handler would leak or break, and run at
the end or at a safe point (:class:`DeferredSignals`).

Its own module, importing nothing of ours but process.py (where the hold in force is noted): the lowest helpers
(fs.py's opens and the walk of the textfile directory's path) use it as a merge does, imported with them, never
lazily (a lazy import in the walk once broke it when run as another user: test_trust.py runs it so).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from fraisier_textfile.store import process

# The C functions under the signal module, used without it: its Python wrappers convert every number and handler
# to an enum at each call, and importing it builds those enums in every process that records.
try:
    import _signal as _raw_signal  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # an interpreter without the C module
    import signal as _raw_signal

if TYPE_CHECKING:
    from collections.abc import Callable


class DeferredSignals:
    """Signal handlers held back while a merge or a hand-over runs, and run at its safe points or at its end.

    Between "rename the new file into place" and "forget the changes it holds", a KeyboardInterrupt, a SIGTERM
    handler that raises SystemExit, or an alarm-based timeout would leave the events both in the file and
    pending, and a later flush (at exit, say) would count them twice. One landing between taking the lock and
    noting its descriptor would leave it held for the life of the process. So no handler runs in the middle
    of a merge: only while it waits for the lock (:meth:`deliver`, a safe point, where nothing is held but a
    descriptor that an exception closes), and after it.

    Python runs signal handlers only in the main thread, between bytecodes, whichever thread the signal was
    delivered to. Blocking signals in this thread (pthread_sigmask) is therefore not enough in a process with
    other threads: the kernel delivers the signal to one of them and the main thread runs the handler anyway.
    So each Python-level handler is swapped for one that notes the signal, and the noted signals are handed
    to their own handlers later. In another thread nothing can interrupt a merge, and nothing is swapped.
    """

    def __init__(self) -> None:
        self._noted: list[int] = []
        self._replaced: dict[int, Callable[[int, Any], Any]] = {}
        self.thread = 0
        """The thread that swapped the handlers (the main one), once it did."""

    def __enter__(self) -> DeferredSignals:
        global _signal_numbers
        if process.holding_signals is None and threading.current_thread() is threading.main_thread():
            # Only the outermost swaps: one within notes nothing of its own, the outer one notes every signal
            # meanwhile and runs their handlers at its safe points and at its end (the walk's opens within a merge).
            if _signal_numbers is None:
                _signal_numbers = tuple(map(int, _raw_signal.valid_signals()))  # ints: the wrapper makes enums
            try:
                for signum in _signal_numbers:
                    handler = _raw_signal.getsignal(signum)
                    if callable(handler):
                        _raw_signal.signal(signum, self._note)
                        self._replaced[signum] = handler
            except BaseException:
                self._restore()
                raise
            self.thread = threading.get_ident()
            process.holding_signals = self
        return self

    def _note(self, signum: int, frame: Any) -> None:
        self._noted.append(signum)

    def deliver(self) -> None:
        """A safe point: run the handlers of the signals noted so far (they may raise). Within another hold of this
        thread, that one's: it notes every signal meanwhile."""
        holding = process.holding_signals
        if holding is not None and holding is not self and holding.thread == threading.get_ident():
            holding.deliver()
            return
        while self._noted:
            signum = self._noted.pop(0)
            self._replaced[signum](signum, None)

    def __exit__(self, *exception: object) -> None:
        if process.holding_signals is not self:
            return  # within another, or in another thread: nothing swapped, nothing noted
        process.holding_signals = None
        self._restore()
        while self._noted:
            signum = self._noted.pop(0)
            try:
                self._replaced[signum](signum, None)
            except BaseException:
                for later in self._noted:
                    _raw_signal.raise_signal(later)  # handled at the next chance, as Python itself would
                raise

    def forget_in_child(self) -> None:
        """In a child forked by another thread while this hold was in force (store/process.py's fork hook): the hold
        is the parent's, and would never end here. The child's handlers are put back; the signals noted were the
        parent's."""
        process.holding_signals = None
        self._noted.clear()
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._replaced.items():
            _raw_signal.signal(signum, handler)


_signal_numbers: tuple[int, ...] | None = None
