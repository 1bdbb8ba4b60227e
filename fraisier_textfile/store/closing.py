"""The closing thread: what a merge leaves once its caller has its answer, done off the caller's path.

A merge holds the version of the file it replaces open until its rename (so that the rename only moves a name),
then a bare thread of its own closes it (freeing its blocks) and, when nothing else waits for it, makes the rename
durable (the directory's fsync). Within a call (:class:`CloseAfterCall`) the thread gets its work once the call is
done. The versions and the fsyncs owed are noted in process.py, whose fork hook closes a child's copies and whose exit
waits for them.
"""

from __future__ import annotations

import _thread
import os
import sys
import threading
from typing import TYPE_CHECKING

from fraisier_textfile.store import process

if TYPE_CHECKING:
    from fraisier_textfile.store import fs
    from fraisier_textfile.store.files import FileVersion


def close_off_path(versions: list[FileVersion], closer: Closer | None = None,
                   durable: fs.Directory | None = None) -> None:
    """Close the versions a merge replaced, and empty ``versions``, without making the caller wait for it; first,
    with ``durable`` (the textfile directory, held open), make the merge's rename durable (its fsync).

    The last descriptor of a file that a rename unlinked frees its blocks, and that costs about as much as
    writing a few hundred kilobytes (bench/README.md). A merge holds the version it replaces open until after its
    rename, so the rename itself only moves a name, and closes it here, in another thread: a bare thread that ends
    with the close. Not a thread that lives on, which would make every later fork of the program a fork of a
    multi-threaded process; nor the store's background thread where it runs (process.py), whose queue may hold
    seconds of hand-overs' removals on a busy disk, which the directory's fsync must not wait behind. In the
    caller's own thread where no thread can be had (the task limit reached). ``closer``: a thread started for it
    ahead of time (:class:`Closer`), which is handed them (none too: it then ends). Each version stays in
    :func:`replacing`'s set until closed: a child forked before that closes its copy at once (process.py), since the
    thread that would close it is not in the child.

    The directory's fsync goes the same way when the merge left nothing that must wait for it (transaction.py
    decides): the caller has its answer once the rename is made, as a reader sees it, and the rename is durable a
    journal commit later. The fsync comes before the closes, which only free blocks. The exit waits for it
    (process.syncing), so a process that recorded and ended left its rename durable, as before; what a power loss
    within that commit can take is the last merge, whole, never a part of one. Not in a forked child or a
    multiprocessing worker, whose end (os._exit) runs no exit hook, nor past the store's exit hook (process.py).
    One fsync at most is owed at a time: a merge that finds one still owed makes its own, as its caller's wait, so
    a disk slower than the merges throttles them as it did, rather than pile up threads and descriptors until
    merges fail for want of one."""
    handed = versions[:]
    versions.clear()
    synced = -1
    if durable is not None and (process.exiting or process.syncing or process.may_end_without_exit_hooks()):
        # Where no exit hook may wait for another thread (past the store's, or an end by os._exit); or
        # behind an fsync still owed: the disk syncs slower than the process merges, and each fsync owed holds a
        # thread, a descriptor and the versions replaced.
        durable.fsync()
    elif durable is not None:
        try:
            with process.creating:  # a fork waits: a child closes the duplicates noted, and only those
                synced = process.syncing_started(os.dup(durable.descriptor))
        except OSError:  # no descriptor to be had: made durable here, as the caller's wait
            durable.fsync()
    if closer is None and not handed and synced < 0:
        return
    if _handing.depth:
        _handing.pending.append((closer, handed, synced))
    else:
        _hand(closer, handed, synced)


def _hand(closer: Closer | None, versions: list[FileVersion], synced: int) -> None:
    """Hand ``closer`` (None: a thread started now) the closes and the fsync of :func:`close_off_path`."""
    if closer is None:
        try:
            closer = Closer()
        except RuntimeError:
            _close_all(versions, synced)
            return
    closer.hand(versions, synced)


class _Handing(threading.local):
    """The closers a thread's call has not handed their work yet (see :class:`CloseAfterCall`)."""

    depth = 0

    def __init__(self) -> None:
        self.pending: list[tuple[Closer | None, list[FileVersion], int]] = []


_handing = _Handing()


class CloseAfterCall:
    """Within it, :func:`close_off_path` hands the closing thread its work at the end, not at once: the thread wakes
    once the caller's call is done, rather than take turns with it for the interpreter's lock (the GIL) while the
    call finishes (its release, its look for hand-overs). Nested: the outermost hands. A merge started meanwhile
    hands what is pending first (:func:`hand_pending`), so that it never finds an fsync owed that no thread is
    making. Within a hold of signal handlers (signals.DeferredSignals), which it must end within: a handler that
    raised as the work is handed would leave it to nobody."""

    __slots__ = ()

    def __enter__(self) -> None:
        _handing.depth += 1

    def __exit__(self, *exception: object) -> None:
        _handing.depth -= 1
        if not _handing.depth:
            hand_pending()


def forget_pending_in_child() -> None:
    """In a forked child (process.py), whose forking thread was within a call: forget its pending work. The fork hook
    closed the child's copies of all of it (the versions replaced, the directory owed an fsync), whose numbers the
    child may reuse; the parent's call hands it to the parent's thread."""
    _handing.pending.clear()


def hand_pending() -> None:
    """Hand the closers of this thread their work now (see :class:`CloseAfterCall`)."""
    pending = _handing.pending
    while pending:
        _hand(*pending.pop(0))


def replacing(version: FileVersion, versions: list[FileVersion]) -> None:
    """Add ``version``, which a merge is about to replace, to ``versions`` (the merge's, closed by
    :func:`close_off_path`), and to the process's versions not yet closed (process.replaced_versions)."""
    process.replaced_versions.add(version)
    versions.append(version)


def kept(version: FileVersion, versions: list[FileVersion]) -> None:
    """Take ``version`` back out of ``versions`` and the process's versions not yet closed (see :func:`replacing`):
    the caller keeps it open."""
    versions.remove(version)
    process.replaced_versions.discard(version)


class Closer:
    """The bare thread of :func:`close_off_path`, waiting to be handed the versions, then closing them. A merge
    that can starts it while the device writes its new version back (transaction.py), where its start costs no wall
    time, rather than after the rename, on its caller's path. Its end is waited for at exit (process.closing).
    Raises RuntimeError where no thread can be had, or none would be waited for (process.exiting)."""

    __slots__ = ("_handed", "_synced", "_versions")

    def __init__(self) -> None:
        if process.exiting:
            raise RuntimeError("the process is exiting: a thread started now would not be waited for")
        self._versions: list[FileVersion] = []
        self._synced = -1
        self._handed = _thread.allocate_lock()
        self._handed.acquire()
        done = process.closing_started()  # waited for at exit (process.closing)
        try:
            _thread.start_new_thread(self._run, (done,))
        except BaseException:
            process.closing_ended(done)
            raise

    def _run(self, done: _thread.LockType) -> None:
        self._handed.acquire()
        try:
            _close_all(self._versions, self._synced)
        finally:
            process.closing_ended(done)
        # A thread that ends now: it loads ahead, if that was asked for (preload.py). Looked up, not imported: only
        # a process that asked has the module (a recorder's), and a `fraisier record` pays nothing for it.
        loading = sys.modules.get("fraisier_textfile.preload")
        if loading is not None:
            loading.take_over()

    def hand(self, versions: list[FileVersion], synced: int = -1) -> None:
        """Close ``versions`` in the thread, which then ends, after the fsync of ``synced`` (a directory's
        descriptor noted in process.syncing; -1: none). Once only."""
        self._versions = versions
        self._synced = synced
        self._handed.release()


def _close_all(versions: list[FileVersion], synced: int = -1) -> None:
    if synced >= 0:
        process.sync_and_close(synced)
    for version in versions:
        # Out of the process's set first: a child forked between the two keeps a copy (it ends with the child),
        # where the other order could have it close a number the parent had reused meanwhile.
        process.replaced_versions.discard(version)
        try:
            version.close()
        except OSError:
            pass
