"""Group commit: a merge or a hand-over, and what each owes the hand-overs of other writers.

Under contention, writers that find the lock busy hand their changes over (handovers.py) and one holder writes them
all in its merge. What makes every hand-over written once, soon, is a rule on both sides (see
:meth:`GroupCommit.merge_late_handovers`): a writer hands over *before* it tries the lock once more, and every
holder looks for hand-overs *after* it lets go. :class:`GroupCommit` is that policy for one store: merge or hand
over, the try once more (a probe of the lock), the look and the merges after a release, the backlog. The store
(textfile.py) keeps the public methods and hands them to it; transaction.py runs each merge.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

from fraisier_textfile import logger
from fraisier_textfile.errors import FraisierTextfileError, LockTimeoutError
from fraisier_textfile.store import fs, handovers
from fraisier_textfile.store.changes import Changes
from fraisier_textfile.store.closing import CloseAfterCall
from fraisier_textfile.store.signals import DeferredSignals

if TYPE_CHECKING:
    from fraisier_textfile.format.schema import Schema
    from fraisier_textfile.store import deployments
    from fraisier_textfile.store.files import Textfile
    from fraisier_textfile.store.transaction import Transaction

log = logger.get_logger("fraisier_textfile.store.textfile")  # the store's lines, under the name users know


QUIET_SECONDS = 1.0
"""How long before a look the hand-over directory must have last changed for a look that found none to stand
until it changes again (see GroupCommit.handovers_waiting): well past the granularity of its modification time."""


class CallOutcome(threading.local):
    """What a thread's last call of :meth:`GroupCommit.merge_or_hand_over` leaves for its caller to read, one per
    thread: threads that share a store never read each other's."""

    joined = False
    late_handovers = False


class GroupCommit:
    """The hand-over policy around the merges of one store (see the module's note)."""

    def __init__(self, directory: str, file: Textfile, transaction: Transaction, participant: handovers.Handovers,
                 schema: Schema) -> None:
        self._directory = directory
        self.file = file
        self.transaction = transaction
        self.handovers = participant
        self.schema = schema
        self._calls = CallOutcome()
        self._none_waiting: tuple[tuple[int, int, int], Collection[str]] | None = None
        """The hand-over directory (device, inode, modification time) at the last look of handovers_waiting that
        found none waiting, and the hand-overs the store's last merge had seen then: a merge since that saw
        others makes the look again."""

    @property
    def joined(self) -> bool:
        """After :meth:`merge_or_hand_over` (this thread's last): whether it joined the hand-overs waiting
        (``join=True``)."""
        return self._calls.joined

    @property
    def late_handovers(self) -> bool:
        """After :meth:`merge_or_hand_over` with ``follow_up=False`` (this thread's last): whether the caller owes a
        merge of the hand-overs waiting. After a merge: hand-overs that no merge of this store has seen were waiting
        once it released the lock; after a hand-over: the lock was free when probed, once the hand-over was
        written."""
        return self._calls.late_handovers

    def merge(self, changes: Changes, timeout: float) -> None:
        """TextfileStore.merge."""
        # Opened and checked once for the merge and for the look for late hand-overs after it: for root, the
        # check looks at every directory on the path. Signal handlers held back by one hold for the whole call, as in
        # merge_or_hand_over: the closing thread is handed its work at the call's end (closing.CloseAfterCall), and a
        # handler that raised there would leave the rename's fsync owed with no thread to make it.
        with DeferredSignals(), CloseAfterCall(), self.file.open_directory() as textfile:
            self.merge_in(textfile, changes, timeout)

    def merge_in(self, textfile: fs.Directory, changes: Changes, timeout: float, look: bool = True) -> None:
        """:meth:`merge`, in the textfile directory held open by ``textfile``. ``look=False``: the look for late
        hand-overs after a successful merge is left to the caller (see :meth:`merge_or_hand_over`)."""
        started = time.monotonic()
        ending = changes.ended
        try:
            self.transaction.run(changes, timeout, textfile)
        except FraisierTextfileError:
            # Also after a failure, if this call held the lock (a corrupt file; a lock timeout too, when its
            # lock file was replaced mid-merge and the new one stayed busy). A call that never held it owes no
            # look: the holder looks after releasing it, and listing the directory all writers change is most
            # of what a busy lock would otherwise cost each of them.
            if self.transaction.held_lock:
                self.merge_late_handovers(textfile, started, failed=True)
            raise
        finally:
            # Only the commit empties the changes: written, even if a signal's handler held back until the end
            # of the merge raised since (the process may catch it and go on).
            if ending and not changes.ended:
                _release_written(ending)
        if look:
            self.merge_late_handovers(textfile, started)

    def hand_over(self, changes: Changes, *, durable: bool = True) -> None:
        """Write ``changes`` for the next merge by any process to apply exactly once, without the lock, and
        empty ``changes``. ``durable``: fsynced (two fsyncs, milliseconds on a disk), so that they survive a
        power loss; without, they survive this process's death, not the machine's. Once written, the markers of
        the deployments they end are released. Raises TextfileWriteError (``changes`` untouched) if they cannot be
        written."""
        if not changes:
            return
        with self.file.open_directory() as textfile:
            self.hand_over_in(textfile, changes, durable)

    def hand_over_in(self, textfile: fs.Directory, changes: Changes, durable: bool) -> None:
        """:meth:`hand_over`, in the textfile directory held open by ``textfile``."""
        if not changes:
            return
        ending = changes.ended
        with DeferredSignals():
            directory = handovers.open_directory(textfile, create=True)
            assert directory is not None
            with directory:
                temporary, final, descriptor = handovers.write(directory, changes, self.schema)
                handovers.publish(directory, temporary, final, descriptor, durable)
                changes.clear()
                # Before the signal handlers held back run: one may raise, and the process go on.
                if ending:
                    _release_written(ending)

    def merge_or_hand_over(self, changes: Changes, wait: float, *, durable: bool = True, follow_up: bool = True,
                           join: bool = False) -> bool:
        """Merge ``changes``, waiting at most ``wait`` seconds for the lock; if it stays busy, hand them over.
        True: merged now. False: handed over; the next merge by any process writes them (this process tries
        once more at once). Either way ``changes`` is emptied. Raises what :meth:`merge` raises for other
        problems (a corrupt file, a full disk), with ``changes`` untouched.

        ``follow_up=False`` leaves to the caller what a call owes the hand-over invariant (see
        merge_late_handovers) once its own part is done: after a hand-over, the try once more (the lock's holder
        may have looked before this one was there); after a merge, the look for hand-overs that arrived while it
        held the lock. After a merge the call still looks, once the lock is released; after a hand-over it probes
        the lock (a busy lock's holder looks for hand-overs after releasing it, and finds this one); either leaves
        in :attr:`late_handovers` whether a merge is still owed. The caller must make it after this call returned
        (:meth:`merge_waiting`; after a merge, with the hand-overs this store saw, ``handovers.handled``), from a
        thread of its own say: either may merge every hand-over waiting, a whole merge that the caller of a record
        call need not wait for.

        ``join=True``: if the hand-overs' counter says some wait, hand over behind them without trying the lock, as
        if it were busy (the caller knows that writers race, and leaves the merge of everyone's hand-overs to its
        follow-up); :attr:`joined` says whether it did."""
        # One descriptor of the directory, checked once (for root, every directory of the path), for the look at the
        # counter, the try, the hand-over and the try once more. Signal handlers are held back by one hold for the
        # whole call (the walk's, the merge's and the looks' holds are then within it: each swap of the handlers is
        # two system calls a handler), delivered while the lock is waited for and at the end. The replaced
        # version's closing thread is handed its work once the call is done (closing.CloseAfterCall).
        with DeferredSignals(), CloseAfterCall(), self.file.open_directory() as textfile:
            calls = self._calls
            calls.joined = join and self._numbered_in(textfile)
            if not calls.joined:
                try:
                    self.merge_in(textfile, changes, wait, look=follow_up)
                except LockTimeoutError:
                    pass
                else:
                    if not follow_up:
                        calls.late_handovers = self.handovers.waiting_in(textfile)
                    return True
            self.hand_over_in(textfile, changes, durable)
            # The hand-over is on disk before this try. If the lock is busy, its holder will look for hand-overs
            # after releasing it (see merge_late_handovers), and so sees this one.
            if follow_up:
                try:
                    self.merge_in(textfile, Changes(), 0)
                except FraisierTextfileError as error:
                    log.debug("hand-over left for the next merge: %s", error)
            else:
                # A probe, for a fraction of what a try that would merge costs: under contention the lock is
                # almost always busy, and then nothing more is owed. A probe that got the lock owes what every
                # holder owes, the look after letting go (a writer that found it busy meanwhile counts on it):
                # the caller's follow-up merges.
                calls.late_handovers = not self.lock_busy(textfile)
        return False

    @staticmethod
    def _numbered_in(textfile: fs.Directory) -> bool:
        """Whether hand-overs were written since the last merge noted them, as their counter in the textfile
        directory held open says (handover_order.numbered_since_merge): a hint that some wait, and so that writers
        race, got without listing the directory they keep changing. False when there is no counter, or it cannot be
        read (a merge says why)."""
        try:
            directory = handovers.open_directory(textfile)
            if directory is None:
                return False
            with directory:
                from fraisier_textfile.store.handover_order import numbered_since_merge

                return numbered_since_merge(directory)
        except (OSError, FraisierTextfileError):
            return False

    def merge_waiting(self, seen: Collection[str] = (), *, look: bool = True) -> bool:
        """Merge the hand-overs waiting that no merge by this store has seen (nor are in ``seen``), if there are
        any and the lock is free, without waiting for it: what a call of :meth:`merge_or_hand_over` owes the
        hand-over invariant (see there), or a later try. ``look=False``: the caller knows that one waits (its
        own, just handed over): the lock is tried without listing the directory first. True: none is left
        waiting by this try (merged, or there were none); False: the lock was busy (its holder merges them once
        it lets go) or the merge failed (logged at debug level: the next merge by any process says why). Never
        raises FraisierTextfileError."""
        try:
            with self.file.open_directory() as textfile:
                if not look or self.handovers.waiting_in(textfile, seen):
                    self.merge_in(textfile, Changes(), 0)
        except FraisierTextfileError as error:
            log.debug("hand-overs left for the next merge: %s", error)
            return False
        return True

    def merge_late_handovers(self, textfile: fs.Directory, started: float, failed: bool = False) -> None:
        """After releasing the lock, merge the hand-overs that arrived while it was held (``started``: when the
        call began, time.monotonic).

        The invariant that makes every hand-over written once, soon: a process that hands over writes its
        file *before* trying the lock once without waiting, and every holder of the lock looks for
        hand-overs *after* releasing it. So when the hand-over's own try fails, the lock had a holder that
        releases it after the file existed, and that holder's look finds it and merges it; if its own try fails
        in turn, the next holder's look does, and so on until one gets the lock. (A holder killed meanwhile
        leaves the hand-over to the next merge, by any process.) This is also group commit: under contention
        the waiters hand over and one holder writes them all in one merge.

        Under sustained contention new hand-overs keep arriving, and a holder that looped for ever would hold
        up the deployment it belongs to: after the first late merge, it starts another only if that one, taking
        as long as the one before, ends within handovers.LATE_MERGE_BUDGET of the call's start, and leaves what
        remains to the next merge of any process (under such load, one within milliseconds; otherwise at the
        latest the next ``fraisier textfile refresh``). Nothing is lost or applied twice either way. A failure
        with the ``reported`` message (the caller's own, raised to its caller) is not logged a second time."""
        stop = started + handovers.LATE_MERGE_BUDGET
        last: float | None = None  # how long the late merge before took
        # A merge that left older hand-overs (HANDOVERS_PER_MERGE) has done its share: those that arrived
        # meanwhile are behind them, for the next merge of any process, as they are.
        while not self.handovers.backlog_left:
            begun = time.monotonic()
            if last is not None and begun + last > stop:
                return
            if not self.handovers.waiting_in(textfile):
                return
            try:
                self.transaction.run(Changes(), 0, textfile)
            except LockTimeoutError:
                return  # its holder looks again after releasing it
            except FraisierTextfileError as error:
                # After a failed merge this is most likely the same problem, which its caller reports: a
                # recorder hit by a corrupt file would otherwise log it again with every event.
                log.log(logger.DEBUG if failed else logger.WARNING,
                        "hand-overs waiting in %s were not merged: %s", self._directory, error)
                return
            last = time.monotonic() - begun

    def lock_busy(self, textfile: fs.Directory) -> bool:
        """Whether another holder has the lock now, probed without waiting and without merging. False when the
        lock is free, or the probe failed: then the caller makes the whole try, which says why."""
        try:
            return self.transaction.lock.busy(textfile)
        except (OSError, FraisierTextfileError):
            return False

    def handovers_waiting(self) -> bool:
        """Whether hand-overs wait in the directory that no merge by this store has seen yet. Asked again and
        again (a server asks at each scrape), it lists the hand-over directory only when the directory changed
        since the last look that found none, or a merge of this store saw others since: it may hold 100,000
        names (handovers.PENDING_LIMIT), a listing of tens of milliseconds."""
        try:
            textfile = fs.open_directory(self._directory)
        except (OSError, FraisierTextfileError):
            return False
        if textfile is None:
            return False
        with textfile:
            now = time.time()
            try:
                status = textfile.lstat(handovers.HANDOVER_DIRECTORY)
            except OSError:
                status = None
            if status is None:
                return self.handovers.waiting_in(textfile)
            found = (status.st_dev, status.st_ino, status.st_mtime_ns)
            if self._none_waiting is not None and self._none_waiting == (found, self.handovers.handled):
                return False
            waiting = self.handovers.waiting_in(textfile)
            # The directory's time has the granularity of a clock tick (or of a second): a hand-over written in
            # the tick of this listing, after it, would leave the time as found. So the look stands only for a
            # directory that had last changed well before it. A time that lies (another host's clock, over NFS)
            # costs no event: the hand-overs wait for the next change, merge or refresh, as before scrapes looked.
            if not waiting and status.st_mtime_ns < (now - QUIET_SECONDS) * 1e9:
                self._none_waiting = (found, self.handovers.handled)
            return waiting

    def merge_backlog(self, timeout: float) -> None:
        """Merge until no hand-over is left (each merge applies at most handovers.HANDOVERS_PER_MERGE), and return
        once the files of those applied are deleted: for a command whose job is a complete file and a tidy
        directory (``fraisier textfile refresh``), not for a record call. Raises what :meth:`merge` raises."""
        try:
            self.merge(Changes(), timeout)
            for _ in range(100_000):  # bounded: writers that never stop handing over must not keep it for ever
                if not self.handovers_waiting():
                    return
                before = set(self.handovers.handled)
                self.merge(Changes(), timeout)
                if self.handovers.handled == before:
                    return  # only hand-overs left for a newer version, or set aside: nothing more to apply
        finally:
            handovers.wait_for_removals()  # those past a few are deleted by a background thread


def _release_written(ending: Iterable[deployments.Deployment]) -> None:
    """Release the markers of the deployments whose end was just written (store/deployments.py, loaded by the
    first merge that ends one: a record run that starts none has no use for it)."""
    from fraisier_textfile.store import deployments

    deployments.release_written(ending)
