"""The write policy: when and how a recorder's events reach the textfile.

The events of a call (or of a batch of calls, such as a tracked block) are written once, at its end, under the
recorder's lock: merged when the lock on the file is free; handed over at once when another process holds it,
so that the holder, right after its own merge, or the next merge by any process writes them exactly once (a
record call does not wait: ``RECORD_CALL_WAIT``; after a hand-over it probes the lock once more, and a merge of
what waits is the background thread's, process.merge_soon). While writers race, a call joins the hand-overs
waiting rather than merging them all (``JOIN_WITHIN``). The whole process spends at most its lock-wait budget on
writing; after a merge failed for another reason (a full disk) it hands over until a merge may succeed again
(``FailedWrite``). What cannot be written now is kept for the background flush and the process's exit
(process.py).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fraisier_textfile import preload
from fraisier_textfile.changes import Changes
from fraisier_textfile.errors import FraisierTextfileError, LockTimeoutError
from fraisier_textfile.fraisier_store import FraisierStore
from fraisier_textfile.recorder import process
from fraisier_textfile.recorder.policy import LOCK_BUSY, Problems
from fraisier_textfile.recorder.series import ProcessSeries
from fraisier_textfile.settings import LOCK_WAIT_BUDGET_ENVIRONMENT
from fraisier_textfile.store.files import TEXTFILE_NAME
from fraisier_textfile.store.lifecycle import SeriesLifecycle
from fraisier_textfile.store.textfile import TextfileStore

RECORD_CALL_WAIT = 0.0
"""Seconds one record call waits for a busy lock (within the budget): none. Under contention a waiter that
hands its events over writes one small file, one that waits and then merges a file another process wrote
reads, parses and writes the whole file, and the holder merges the hand-overs in one go after its own merge
(group commit): waiting made the slowest calls of a race several times slower (bench/bench_race.py)."""


JOIN_WITHIN = 1.0
"""Seconds after one of its writes found the lock busy during which a record call that finds hand-overs waiting
hands its events over behind them, without trying the lock. Writers race then, each finding the lock busy; the
call that finds it free would pay for a whole merge of the file and of all of them, the slowest calls of a race.
Its follow-up (the background thread's) merges them all instead: group commit, off the call. Past that time (a
first call, hand-overs left long ago, merges that fail on a corrupt file), the call tries the lock as usual, so
that it merges them or says what stops every merge."""


LOADED_AHEAD = ("fraisier_textfile.format", "fraisier_textfile.store", "fraisier_textfile.recorder")
"""What a recorder's process loads once it lives on after its first write (preload.py): every module a later write
may import, such as a hand-over's codec, while the installation is still the one the process started from."""


def make_store(directory: Path | str, lock_timeout: float, *, strict: bool) -> TextfileStore:
    # Strict: a typo in FRAISIER_EXPIRE_AFTER or FRAISIER_MAX_SERIES_PER_FAMILY raises (else logged once).
    lifecycle = SeriesLifecycle.from_environment(os.path.join(os.fspath(directory), TEXTFILE_NAME), strict=strict)
    return FraisierStore(directory, lock_timeout, lifecycle=lifecycle)


class FailedWrite:
    """When and in what state of the file and its filesystem a merge failed for another reason than a busy
    lock. Merging again is worth its cost (reading and rendering the whole file) only once the file changed
    (the operator's fix), its filesystem has more room, or a minute has passed."""

    RETRY_AFTER = 60.0

    def __init__(self, store: TextfileStore) -> None:
        self._store = store
        self._at = time.monotonic()
        self._state = self._now()

    def _now(self) -> tuple[object, ...]:
        try:
            status = os.stat(self._store.path)
            # The ctime too: two versions the store wrote in one second with one layout line have the same mtime
            # (its seal, store/vouching.py), and the second may get the first one's inode number and size. Nobody
            # sets a ctime, and all it is compared for is equality: a stepped clock does not make two alike.
            file: object = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)
        except OSError as error:
            file = error.errno
        try:
            room: object = os.statvfs(self._store.directory).f_bavail
        except OSError as error:
            room = error.errno
        return file, room

    def may_succeed_now(self) -> bool:
        if time.monotonic() - self._at > self.RETRY_AFTER:
            return True
        (file, room), (file_then, room_then) = self._now(), self._state
        more_room = isinstance(room, int) and (not isinstance(room_then, int) or room > room_then)
        return file != file_then or more_room


class Writer:
    """Writes a recorder's events (its ``ProcessSeries``) into its store, noting problems in its ``Problems``.

    ``lock`` is the recorder's: one thread records or writes at a time, and a batch holds it from its first event
    to its write. ``depth`` counts the calls and batches under way; the outermost one's end writes
    (``settle``)."""

    def __init__(
        self, store: TextfileStore, series: ProcessSeries, problems: Problems, *, auto_flush: bool,
        lock_wait_budget: float,
    ) -> None:
        self.store = store
        self.series = series
        self.problems = problems
        self.auto_flush = auto_flush
        self.lock_wait_budget = lock_wait_budget
        self.lock = threading.RLock()
        self.depth = 0
        self.handed_over_events = 0
        self.handed_over_since_merge = False
        """Events of this recorder were handed over since its last merge: a merge without a wait (the background
        flush's, the exit's) may write them sooner than the next merge by another process."""
        self.failed_write: FailedWrite | None = None
        self.found_busy_at: float | None = None
        """When a write of this recorder last found the lock busy (time.monotonic), for :data:`JOIN_WITHIN`."""

    @property
    def textfile_path(self) -> Path:
        return self.store.path

    @property
    def pending(self) -> bool:
        """Whether events wait to be written."""
        return self.series.pending

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Record several events with one write at the end."""
        with self.lock:
            self.depth += 1
            try:
                yield
            finally:
                # Also when an event of the batch was refused: the events before it are recorded.
                self.depth -= 1
                if not self.depth:
                    self.settle()

    def settle(self) -> None:
        """The end of a call or a batch: write what is pending (auto-flush), or keep it for later. Never raises."""
        if not self.auto_flush:
            process.unflushed.add(self)  # kept alive until written, at the latest at exit
            return
        try:
            self.write(join_waiting=True)
        except Exception as error:  # a bug below us: the events stay pending
            self.problems.note("unexpected write", f"writing {self.textfile_path} failed unexpectedly: {error!r}; "
                               "please report this as a bug of fraisier_textfile (the events are kept)", error,
                               exc_info=True)
            process.keep_for_later(self)

    def write(self, longest_wait: float = RECORD_CALL_WAIT, *, spend_budget: bool = True, join_waiting: bool = False
              ) -> None:
        """Write what is pending, waiting for a busy lock at most ``longest_wait`` and what is left of the
        lock-wait budget: merged, or handed over to the next writer when the lock stays busy. Never raises: a
        problem is noted, and the events are handed over if the merge failed for another reason (a corrupt file),
        else kept for the next call, the background flush and exit. ``spend_budget=False``: the background
        flush, whose time delays no caller, leaves the budget to the process's own calls and its exit.

        ``join_waiting`` (a record call): see :data:`JOIN_WITHIN`."""
        pending = self.series.gather()
        if not pending:
            return
        if preload.requested is None:
            preload.ask(LOADED_AHEAD)
        left = process.process_budget.left(self.lock_wait_budget)
        wait = min(self.store.lock_timeout, left, longest_wait)
        # Once the budget is spent, hand-overs skip their fsyncs: under a lock held for long, two fsyncs per
        # call would go on delaying the process past its budget. They still survive its death (a SIGKILL).
        durable = left > 0
        started = time.monotonic()
        try:
            if self.failed_write is not None and not self.problems.strict and not self.failed_write.may_succeed_now():
                # The last merge failed (a full disk, say) and nothing suggests this one would not: trying
                # again would render the whole file per event (seconds for a big one). Hand over only.
                merged = False
                self.store.hand_over(pending, durable=durable)
            else:
                merged = self._merge_or_hand_over(pending, wait, durable, join_waiting)
        except Exception:
            merged = False  # the hand-over failed too: the events stay pending, the problem is noted already
        finally:
            # Every second spent here counts, not only the lock wait: the budget bounds how long metrics delay
            # the process in all. A merge that may not wait any more still merges when the lock is free.
            if spend_budget:
                process.process_budget.spend(time.monotonic() - started, self.lock_wait_budget)
        if pending:
            process.keep_for_later(self)
        else:
            self._written(merged)

    def _merge_or_hand_over(self, pending: Changes, wait: float, durable: bool, join_waiting: bool) -> bool:
        try:
            merged = self.store.merge_or_hand_over(pending, wait, durable=durable, follow_up=False,
                                                   join=join_waiting and self._racing())
            joined = self.store.joined
            if not joined:
                self.failed_write = None
                if not merged:
                    self.found_busy_at = time.monotonic()
            self._follow_up(merged)
            if not merged and not joined:  # joining others' hand-overs is no problem: it is how writers race
                lock_path = self.store.transaction.lock.path  # a string: no Path built per hand-over
                self.problems.note(
                    LOCK_BUSY,
                    f"another process held {lock_path} (a record call does not wait for it; at exit, within a "
                    f"lock-wait budget of {self.lock_wait_budget:g}s a minute, {LOCK_WAIT_BUDGET_ENVIRONMENT}): "
                    "the events were handed over, and that process, right after its merge, or the next merge by "
                    "any fraisier process writes them. "
                    f"If it lasts, find the process that holds the lock (fuser {lock_path})",
                    LockTimeoutError(lock_path, wait),
                )
        except Exception as error:  # of any type (a probe's OverflowError, a bug of ours): none may reach a deployment
            self.failed_write = FailedWrite(self.store)
            self.problems.write_problem(error)
            try:
                # The events go to the next merge rather than wait in memory for an exit that may never write them.
                self.store.hand_over(pending, durable=durable)
            except Exception:
                pass  # the same problem (an unwritable directory), noted already
            return False
        return merged

    def _racing(self) -> bool:
        """Whether a write of this recorder found the lock busy within :data:`JOIN_WITHIN`, and merges did not fail
        since. Joining does not renew it: a counter that says hand-overs wait when none do (one this process may
        not write, so that merges cannot note they took them) costs at most a second of joining."""
        found_busy_at = self.found_busy_at
        return (self.failed_write is None and found_busy_at is not None
                and time.monotonic() - found_busy_at < JOIN_WITHIN)

    def _follow_up(self, merged: bool) -> None:
        """What the call owes the hand-over invariant once its events are merged or durably handed over (see
        TextfileStore.merge_or_hand_over), left to the background thread: after a hand-over, the try once more for
        the lock; after a merge, the merge of the hand-overs that arrived while it held the lock. Either may be a
        whole merge of everyone's hand-overs, which the caller need not wait for. After a merge the look is made
        here (a process whose calls all merge alone starts no thread); after a hand-over the lock is probed here,
        and the thread is woken only if it is free (under contention it almost never is, and the holder then
        writes this hand-over: waking a thread per call to find the lock busy cost more CPU than the probe). With
        no background thread (FRAISIER_FLUSH_INTERVAL=0), the call makes the try itself."""
        if not self.store.late_handovers:
            return
        # After a hand-over its own waits: the try needs no look at the directory first.
        if not process.merge_soon(self, self.store.handovers.handled, look=merged):
            self.store.merge_waiting(look=merged)

    def _written(self, merged: bool) -> None:
        """The pending events are in the file (merged) or handed over."""
        if merged:
            self.problems.resolved()
            process.unflushed.discard(self)
        else:
            self.handed_over_events += self.series.events
            # The background flush and the exit merge the hand-overs, if the lock is free by then.
            process.keep_for_later(self)
        self.handed_over_since_merge = not merged
        self.series.events = 0

    def flush(self) -> None:
        """Merge every pending event now, waiting up to the store's lock timeout; raises the store's errors (the
        events then stay pending)."""
        with self.lock:
            pending = self.series.gather()
            if not pending:
                return
            try:
                self.store.merge(pending)
            except BaseException:
                process.keep_for_later(self)  # the background flush and the exit try again
                raise
            self._written(merged=True)

    def hand_over(self) -> None:
        """Under the lock: hand the events of an ``auto_flush=False`` recorder over (a small file, not fsynced:
        like the events in memory, it survives this process's death but not the machine's), without merging. The
        background flush merges the whole file, the long part, outside the lock: the record calls, which only
        update memory, wait for this hand-over at most, never for a merge."""
        pending = self.series.gather()
        if not pending:
            return
        try:
            self.store.hand_over(pending, durable=False)
        except (FraisierTextfileError, OSError) as error:  # the events stay pending; the next round tries again
            self.problems.write_problem(error)
            return
        self.series.events = 0
        self.handed_over_since_merge = True

    def after_fork(self) -> None:
        """In a forked child: a new lock (the parent's may have been held at the fork), no write under way, and
        a store of its own (its lock state is the parent's)."""
        self.lock = threading.RLock()
        self.depth = 0
        self.handed_over_since_merge = False
        self.found_busy_at = None
        self.failed_write = None
        self.store = FraisierStore(self.store.directory, self.store.lock_timeout, lifecycle=self.store.lifecycle)
