"""The recorder's life in its process: what every recorder of the process shares (the lock-wait budget, the
problems logged, the writers with events still to write), the background thread (the flush of long-lived
processes, and the follow-ups record calls leave it: :func:`merge_soon`), and every fork and exit hook of the
recorder, in one place: a forked child forgets its parent's state, and at exit each recorder's writer writes what
it still holds, within the budget."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Collection
from typing import TYPE_CHECKING

from fraisier_textfile import imports, settings, validate
from fraisier_textfile.settings import DEFAULT_LOCK_WAIT_BUDGET
from fraisier_textfile.store.lock import waitable
from fraisier_textfile.store.textfile import TextfileStore

if TYPE_CHECKING:
    from fraisier_textfile.recorder.recorder import MetricsRecorder
    from fraisier_textfile.recorder.writer import Writer

# The recorder's logger (policy.py): one name for every line of the recorder's.
log = logging.getLogger("fraisier_textfile.recorder.recorder")


BUDGET_REFILL_SECONDS = 60.0
"""Seconds in which a spent lock-wait budget comes back whole: it refills at the budget per this many seconds (a
token bucket). So a process spends at most about the budget on writing in any minute, in bursts of at most the
budget: a long-lived one (Fraisier's webhook server, its deploy daemon) is bounded like a short one in each
minute, rather than spending its budget once in its life and then handing over without fsyncs for ever."""


class _ProcessBudget:
    """The time this process spends writing textfiles, shared by all its recorders (Fraisier makes several):
    the budget bounds what metrics cost the process, not each recorder. What is spent is owed back to the budget,
    and the debt is paid off over time (see :data:`BUDGET_REFILL_SECONDS`)."""

    def __init__(self) -> None:
        self.spent = 0.0
        """Seconds spent in all, over the life of the process (what the summary shows)."""
        self._owed = 0.0
        self._owed_at = time.monotonic()
        self._lock = threading.Lock()

    def _owed_now(self, budget: float, now: float) -> float:
        # Paid off at the budget per refill time. A budget of 0 never refills: nothing is ever left of it.
        return max(0.0, self._owed - (now - self._owed_at) * budget / BUDGET_REFILL_SECONDS)

    def left(self, budget: float) -> float:
        return max(0.0, budget - self._owed_now(budget, time.monotonic()))

    def spend(self, seconds: float, budget: float) -> None:
        with self._lock:
            now = time.monotonic()
            self._owed = self._owed_now(budget, now) + seconds
            self._owed_at = now
            self.spent += seconds


process_budget = _ProcessBudget()


# Problems already logged in this process, by textfile directory and kind.
logged_problems: set[tuple[str, str]] = set()


# The writers of recorders holding events not yet written. Normal process exit writes them; a strong reference,
# so that a recorder dropped with pending events (a hot loop in a function that returned) is not lost.
unflushed: set[Writer] = set()


every_recorder: weakref.WeakSet[MetricsRecorder] = weakref.WeakSet()


# The background flush: long-lived processes (Fraisier's webhook server, its deploy daemon) write what they
# recorded within seconds, not only at exit.

FLUSH_INTERVAL_ENVIRONMENT = "FRAISIER_FLUSH_INTERVAL"


DEFAULT_FLUSH_INTERVAL = 5.0
"""Seconds between two rounds of the background flush; ``FRAISIER_FLUSH_INTERVAL=0`` turns it off."""


class _BackgroundFlush:
    """One daemon thread per process, started only once a recorder holds something to write later (a recorder made
    with ``auto_flush=False``, events a failed write kept, hand-overs waiting for a merge) or a record call leaves
    it a follow-up (:func:`merge_soon`): a process whose record calls all merged alone never has it (a thread of
    ours would make every later ``os.fork()`` of the program a fork of a multi-threaded process, which Python 3.12
    warns about). Every ``interval`` seconds it writes what each such recorder holds without waiting for a busy lock
    (it hands over). It never waits for a recording thread either: a recorder busy recording is left to the next
    round. For an ``auto_flush=False`` recorder it holds the recorder only to hand the events over (a small file)
    and merges outside it, so that the record calls, which only update memory, never wait for a merge; for an
    auto-flushed one it writes as the next record call would, holding the recorder as that call does. Nothing it
    does raises."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()
        self._stopping = threading.Event()
        self._woken = threading.Event()
        """Set by :func:`merge_soon`: a round of merges of hand-overs now, not at the next interval."""
        self.interval: float | None = None
        """Seconds between rounds, once started; 0: turned off."""

    def start(self) -> None:
        if self._thread is not None or self.interval == 0:
            return
        with self._starting:
            if self._thread is not None or self.interval == 0:
                return
            self.interval = _flush_interval()
            if not self.interval:
                return
            thread = threading.Thread(target=self._run, args=(self.interval,), name="fraisier-textfile-flush",
                                      daemon=True)
            try:
                thread.start()
            except RuntimeError:
                # No thread to be had now (the user's task limit reached: a container's pids.max, systemd's
                # TasksMax): the record calls make their tries themselves, as with no thread, and the next one
                # that needs the thread asks again.
                return
            self._thread = thread
            global _stop_registered
            if not _stop_registered:
                # Registered after _write_at_exit, so run before it (atexit runs the last registered first).
                atexit.register(_stop_background_flush)
                _stop_registered = True

    @property
    def running(self) -> bool:
        return self._thread is not None

    def wake(self) -> None:
        self._woken.set()

    def stop(self, timeout: float) -> None:
        """No more rounds; wait at most ``timeout`` for the one under way (its merge takes no lock wait), so that
        the exit's write neither races it nor finds its hand-overs half merged by a thread about to be frozen."""
        self._stopping.set()
        self._woken.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(waitable(timeout))

    def _run(self, interval: float) -> None:
        next_round = time.monotonic() + interval
        while True:
            woken = self._woken.wait(waitable(max(0.0, next_round - time.monotonic())))
            if self._stopping.is_set():
                return
            try:
                # A round may import anywhere in a merge or a hand-over (a hand-over's codec, first needed here):
                # under the lock a fork waits for (imports.py), or a child forked meanwhile would hang on that module.
                with imports.guarded():
                    if woken:
                        self._woken.clear()
                        _merge_soon_in_background()
                    else:
                        next_round = time.monotonic() + interval
                        _flush_in_background()
            except Exception as error:  # a bug of ours: the next round tries again, the exit writes the rest
                log.debug("fraisier metrics: the background flush failed: %r", error, exc_info=True)


_stop_registered = False


def _stop_background_flush() -> None:
    background_flush.stop(timeout=max(0.1, process_budget.left(DEFAULT_LOCK_WAIT_BUDGET)))


def _flush_interval() -> float:
    # A typo is one warning and the default, as for every setting (read strictly: ASCII digits).
    return settings.from_environment(FLUSH_INTERVAL_ENVIRONMENT, validate.check_seconds, DEFAULT_FLUSH_INTERVAL)


def _flush_in_background() -> None:
    for writer in list(unflushed):
        # Never wait for a recording thread: one that holds the recorder writes itself (auto-flush), or the next
        # round writes what it recorded.
        if not writer.lock.acquire(blocking=False):
            continue
        try:
            if writer.auto_flush:
                # Its record calls write under the recorder too: this is the write the next one would make.
                if writer.pending:
                    writer.write(longest_wait=0.0, spend_budget=False)
            else:
                writer.hand_over()  # and the merge, the long part, outside the recorder's lock
            merge_hand_overs = writer.handed_over_since_merge and writer.failed_write is None
            if merge_hand_overs:
                writer.handed_over_since_merge = False  # set again below if they stay
        finally:
            writer.lock.release()
        if merge_hand_overs and not _merge_hand_overs(writer):
            with writer.lock:
                writer.handed_over_since_merge = True
        if not writer.pending and not writer.handed_over_since_merge:
            unflushed.discard(writer)


def _merge_hand_overs(writer: Writer, seen: Collection[str] = (), look: bool = True) -> bool:
    """Merge what is handed over in the recorder's directory, if the lock is free (else its holder does, once it
    lets go), with a store of the background flush's own: the recorder's may be merging in another thread.
    ``seen``: hand-overs the recorder's own store has seen (applied or left); ``look=False``: one is known to
    wait (TextfileStore.merge_waiting). True when none is left waiting by it."""
    store = _background_stores.get(writer)
    if store is None:
        mine = writer.store
        store = TextfileStore(mine.directory, mine.lock_timeout, lifecycle=mine.lifecycle,
                              participants=mine.sources, schema=mine.schema, markers=mine.marker_rules)
        _background_stores[writer] = store
    return store.merge_waiting(seen, look=look)


_merge_soon: dict[Writer, tuple[Collection[str], bool]] = {}
"""Writers whose record call owes the hand-over invariant a try for the lock (TextfileStore.merge_or_hand_over:
after a hand-over, the try once more; after a merge, the merge of the hand-overs that arrived meanwhile), with the
hand-overs their store has seen and whether the directory needs a look first (not after a hand-over of their
own): made by the background thread at once, so that no record call pays for a whole merge of everyone's
hand-overs."""


def merge_soon(writer: Writer, seen: Collection[str], look: bool = True) -> bool:
    """Have the background thread try the lock for the hand-overs waiting in ``writer``'s directory now (see
    :data:`_merge_soon`). False when there is no background thread (``FRAISIER_FLUSH_INTERVAL=0``): the caller
    tries itself."""
    background_flush.start()
    if not background_flush.running:
        return False
    before = _merge_soon.get(writer)
    _merge_soon[writer] = (seen, look and (before is None or before[1]))
    background_flush.wake()
    return True


def _merge_soon_in_background() -> None:
    while _merge_soon:
        try:
            writer, (seen, look) = _merge_soon.popitem()
        except KeyError:
            return
        _merge_hand_overs(writer, seen, look)


_background_stores: weakref.WeakKeyDictionary[Writer, TextfileStore] = weakref.WeakKeyDictionary()


def keep_for_later(writer: Writer) -> None:
    """``writer`` holds events (or hand-overs) to write later: by the background flush, at the latest at exit."""
    unflushed.add(writer)
    background_flush.start()


background_flush = _BackgroundFlush()


def _forget_parents_state() -> None:
    """In a forked child: the parent's pending events and in-flight deployments are the parent's to write
    (writing them here too would count them twice), and its locks may have been held at the fork."""
    global process_budget, background_flush
    unflushed.clear()
    _merge_soon.clear()
    process_budget = _ProcessBudget()  # a new process, with its own budget
    background_flush = _BackgroundFlush()  # the parent's thread does not exist here
    _background_stores.clear()  # their lock state is the parent's
    for recorder in list(every_recorder):
        recorder._after_fork()
        if not recorder.auto_flush:
            background_flush.start()


@atexit.register
def _write_at_exit() -> None:
    """Pending events are merged or handed over within what is left of each recorder's budget, so that a
    process exiting while another holds the lock loses nothing.

    Ctrl-C meanwhile (a user who sees the exit wait for a busy lock) means: do not wait. The events are handed over
    at once (a hand-over waits for nothing, and is made with handlers held back), so that none is lost; a second
    Ctrl-C ends the exit's writing. No KeyboardInterrupt escapes: Python would print its traceback."""
    patient = True
    for writer in list(unflushed):
        try:
            _write_one_at_exit(writer, patient)
        except KeyboardInterrupt:
            if not patient:
                log.warning("interrupted again: events recorded in this process may not be written to %s",
                            writer.textfile_path)
                return
            patient = False
            log.warning("interrupted: handing the events recorded in this process over to the next merge of %s "
                        "instead of waiting for its lock; Ctrl-C again to exit now", writer.textfile_path)
            try:
                _write_one_at_exit(writer, patient)
            except KeyboardInterrupt:
                return
    if patient:
        # What record calls left to the background thread and it has not made (stopped, or not yet woken): their
        # hand-overs' writers found the lock held by this process and left them to it. A try each, no wait.
        try:
            _merge_soon_in_background()
        except KeyboardInterrupt:
            return


def _write_one_at_exit(writer: Writer, patient: bool) -> None:
    """``writer``'s pending events merged, or handed over; ``patient``: waiting for a busy lock (its timeout, within
    the budget), else not at all."""
    # A daemon thread may still hold the recorder (it runs during atexit): never hang the exit on it.
    if not writer.lock.acquire(timeout=waitable(max(0.1, process_budget.left(writer.lock_wait_budget)))):
        log.error("fraisier metrics: events recorded in this process were not written to %s: another "
                  "thread was still recording at exit", writer.textfile_path)
        return
    try:
        writer.problems.noted.clear()
        try:
            writer.write(longest_wait=writer.store.lock_timeout if patient else 0.0)
        except Exception as error:
            log.error("fraisier metrics: writing %s at exit failed: %r", writer.textfile_path, error)
        if patient and writer.handed_over_since_merge and writer.failed_write is None:
            # Not needed (the next merge by any process writes them), but if the lock is free by now the
            # file need not wait for that: one try, no wait.
            writer.store.merge_waiting()
        if writer.pending:
            log.error("fraisier metrics: %d events recorded in this process were not written to %s: %s",
                      writer.series.events, writer.textfile_path, writer.problems.last_error)
    finally:
        writer.lock.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parents_state)
