"""The store's life in its process: what the store keeps per process, and every fork and exit hook of the store,
in one place (recorder/process.py is the recorder's).

What a process keeps:

- the in-flight markers it holds (markers.py), by id, the lock under which one is made and noted as held, and
  the lock under which one is released;
- the background thread that deletes the hand-overs a merge applied when there are more than a few
  (handovers.py), off the record call that merged them;
- the versions of the file that its merges replaced and has not closed yet (closing.close_off_path closes them
  in another thread, after the rename: the last close of a replaced file frees its blocks), those they are
  writing, and the directories whose fsync that thread owes;
- what it has already met (:func:`first_time`, :func:`remember`, :func:`met`): a problem that every merge meets
  again (an unusable marker, a family at its series bound, a clock behind the file's) is logged once per
  process, not with every event, and a wait that was once in vain (the hand-over counter's lock held for ever)
  is not waited again. A child remembers what its parent met: the log is the same, and so is the holder.

Caches of facts about the process stay beside what computes them (process_identity.own_identity, which a child
recomputes from its own PID; lock.py's signal numbers): they hold as well in a child.

A fork makes another process. The child does not carry its parent's deployments: it closes its copies of their
lock descriptors at once, and only closes them (unlocking would release the lock the parent holds through the
open file description they share), so that a child outliving its parent never keeps the parent's deployment
alive. So it does with the textfile's lock when another thread of the parent held it at the fork (a merge of the
recorder's background thread): a parent killed mid-merge must not leave the lock held by a child that lives on.
Threads do not survive a fork, and another thread of the parent may have held the store's thread locks at that
moment: the child starts with new locks and a background thread of its own (started at its first job), and closes
its copies of the versions of the file another thread's merge was replacing or writing (none of its threads
would). A fork
waits while another thread makes a marker (:data:`creating`): between taking the marker's lock and noting it as
held, a child would inherit a lock this hook does not know of, and keep the deployment alive after its process.

At exit a process waits for its background deletions at most EXIT_WAIT seconds; what is left, a later merge
deletes (the file lists those hand-overs as applied). Then, as long again at most, for the threads closing the
versions its last merges replaced (:data:`closing`): one still running when the interpreter finalizes can crash
the process. The recorder's exit hook registers after this one, so it runs first (atexit runs the last
registered first): the hand-overs a last merge applies are deleted too, and its closes waited for. A merge made
after this hook (by a program's own exit hook registered before the package was imported) has nothing left to wait
for another thread: it makes its rename durable and closes what it replaced itself (:data:`exiting`).
"""

from __future__ import annotations

import _thread
import atexit
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING

from fraisier_textfile import imports
from fraisier_textfile.logger import get_logger

if TYPE_CHECKING:
    import queue

    from fraisier_textfile.store.files import FileVersion
    from fraisier_textfile.store.lock import Lock
    from fraisier_textfile.store.markers import Marker
    from fraisier_textfile.store.signals import DeferredSignals

log = get_logger(__name__)

EXIT_WAIT = 0.2
"""Seconds a process waits at exit for its background deletions; what is left, a later merge deletes."""


class BackgroundWork:
    """One daemon thread per process that runs jobs in the order they were queued, started at the first one."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.queue: queue.SimpleQueue[Callable[[], None]] | None = None
        self.idle = threading.Condition()
        self.outstanding = 0
        self.thread: threading.Thread | None = None

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job`` for the thread; run it now, in the caller's thread, where no thread can be started."""
        with self.idle:
            jobs = self.queue if self.thread is not None else self._start()
            if jobs is not None:
                self.outstanding += 1
        if jobs is None:
            job()
        else:
            jobs.put(job)

    def _start(self) -> queue.SimpleQueue[Callable[[], None]] | None:
        """Start the thread (under :attr:`idle`); None if none can be had now (the user's task limit reached: a
        container's pids.max, systemd's TasksMax), and a later job asks again."""
        import queue  # with the thread: a process that never has a job does not import it

        jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        thread = threading.Thread(target=self._run, args=(jobs,), name=self.name, daemon=True)
        try:
            thread.start()
        except RuntimeError:
            return None
        self.queue, self.thread = jobs, thread
        return jobs

    def _run(self, jobs: queue.SimpleQueue[Callable[[], None]]) -> None:
        while True:
            job = jobs.get()
            try:
                with imports.guarded():  # a job may import (a log line's logging): never under a fork
                    job()
            except Exception:  # a bug in one job must not kill the thread: the jobs queued after it still run
                log.exception("a background job of the store failed")
            with self.idle:
                self.outstanding -= 1
                self.idle.notify_all()

    def wait(self, timeout: float) -> bool:
        """Wait until the jobs queued so far are done (at most ``timeout`` seconds); True if they are."""
        with self.idle:
            return self.idle.wait_for(lambda: self.outstanding == 0, timeout)


held_markers: dict[str, Marker] = {}
"""The markers this process holds, by id."""
held_locks: dict[Lock, int] = {}
"""The textfile locks this process holds (lock.py), each with the thread holding it (threading.get_ident)."""
every_lock: weakref.WeakSet[Lock] = weakref.WeakSet()
"""Every textfile lock of this process (lock.py), for the fork hook: a child makes anew the thread lock of each
that another thread of the parent held at the fork."""
creating = threading.RLock()
"""Held while a marker is made and noted in :data:`held_markers`, while a directory's descriptor is duplicated and
noted in :data:`syncing` and while it is taken out and closed, and by a fork (see the module's note): a child
closes what is noted, and only that. Reentrant: a signal handler that forks while its own thread makes a marker must
not wait for itself."""
releasing = threading.Lock()
"""Held while a marker is released: two threads must not both close its descriptor (the second could close
another file that got the number meanwhile)."""
background = BackgroundWork("fraisier-store")
"""The thread that deletes applied hand-overs (handovers.remove_soon)."""
closing: set[_thread.LockType] = set()
"""One lock per bare thread closing replaced versions of the file (closing.py), held until its close is done. The
exit waits for them (at most EXIT_WAIT): a thread still running Python when the interpreter finalizes is ended by
pthread_exit as soon as it wants the GIL back, which can crash the process (CPython gh-87135)."""
replaced_versions: set[FileVersion] = set()
"""The versions of the file that merges replaced (or are about to), from the merge's load until they are closed
(closing.close_off_path): a child forked meanwhile closes its copies at once, since the thread that would is not in
the child, and each holds the blocks of a file nobody can see for as long as the child lives."""
writing: dict[int, int] = {}
"""The descriptors of the new versions of the file that merges are writing (files.Textfile.write_temporary), each
with the thread writing it, until renamed into place or closed: a child forked meanwhile by another thread closes
its copies (that merge's thread is not in the child, and the version it wrote would be the child's to the end)."""
holding_signals: DeferredSignals | None = None
"""The outermost hold on signal handlers in force in the main thread (signals.py), if any: one within it swaps
nothing. A child forked within it goes on in it, and ends it as the parent would."""
_met: set[tuple[Hashable, ...]] = set()


def _held_lock() -> _thread.LockType:
    """A lock taken now, released when what it stands for is done (see :func:`_all_done`)."""
    done = _thread.allocate_lock()
    done.acquire()
    return done


def _all_done(dones: Iterable[_thread.LockType], timeout: float) -> bool:
    """Wait until each of ``dones`` is released (at most ``timeout`` seconds in all); True if they are."""
    deadline = time.monotonic() + timeout
    for done in dones:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not done.acquire(timeout=remaining):
            return False
        done.release()
    return True


def closing_started() -> _thread.LockType:
    """A closing thread is about to start: the lock it releases when done (:func:`closing_ended`)."""
    done = _held_lock()
    closing.add(done)
    return done


def closing_ended(done: _thread.LockType) -> None:
    closing.discard(done)
    done.release()


forked = False
"""Whether this process is a forked child (of a parent that had imported the package): see
:func:`may_end_without_exit_hooks`."""


def may_end_without_exit_hooks() -> bool:
    """Whether this process may well end with os._exit, which runs no exit hook (so no wait for another thread):
    a forked child (the idiom), or a worker of multiprocessing however started (it ends its workers so; forkserver's,
    Python 3.14's default on Linux, are forked before they import the package). What such a process merges it makes
    durable in its own thread (closing.close_off_path)."""
    if forked:
        return True
    workers = sys.modules.get("multiprocessing.process")  # looked up, never imported: a worker has it
    parent = getattr(workers, "parent_process", None)
    return parent is not None and parent() is not None


syncing: dict[int, _thread.LockType] = {}
"""The duplicated descriptors of textfile directories whose fsync (the durability of a merge's rename) was left to
another thread (closing.close_off_path), each with the lock released once it is done. The exit waits for them up to
SYNC_EXIT_WAIT, far longer than for closes: a merge's caller waited for that fsync before the thread took it. A
child forked meanwhile closes its copies (the thread is not in the child). A merge that finds one owed makes its
own fsync itself (closing.close_off_path): one is owed at a time, bar threads racing."""

SYNC_EXIT_WAIT = 30.0
"""Seconds an exit waits for the fsyncs left to other threads: a disk that takes longer has a problem the
journal's own commit (seconds) will meet first; an exit never hangs on a directory that cannot be synced."""


def syncing_started(descriptor: int) -> int:
    """Note ``descriptor`` (a directory's, duplicated for another thread to fsync) as owed an fsync; returns it."""
    syncing[descriptor] = _held_lock()
    return descriptor


def sync_and_close(descriptor: int) -> None:
    """The fsync owed to ``descriptor`` (see :data:`syncing`), then its close; the exit's wait for it ends."""
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename is atomic all the same
    with creating:  # out of the set and closed as one step for a fork: a child closes only those in the set
        done = syncing.pop(descriptor, None)
        try:
            os.close(descriptor)
        except OSError:
            pass
    if done is not None:
        done.release()


def wait_for_syncs(timeout: float) -> bool:
    """Wait until the fsyncs left to other threads so far are done (at most ``timeout`` seconds); True if they are."""
    return _all_done(list(syncing.values()), timeout)


def wait_for_closes(timeout: float) -> bool:
    """Wait until the closing threads started so far are done (at most ``timeout`` seconds); True if they are."""
    return _all_done(list(closing), timeout)


def first_time(*what: Hashable) -> bool:
    """Whether this process meets ``what`` (a kind of problem, and what it is about) for the first time; it is
    remembered from now on."""
    if what in _met:
        return False
    _met.add(what)
    return True


def remember(*what: Hashable) -> None:
    _met.add(what)


def met(*what: Hashable) -> bool:
    """Whether this process has met ``what`` before (without remembering it now)."""
    return what in _met


def _before_fork() -> None:
    # The package's threads import under a lock (imports.py): a fork in the middle of one of their imports would leave
    # the child that module's import lock, held for ever. Taken first: a job under it may take the next.
    imports.before_fork()
    creating.acquire()


def _after_fork_in_parent() -> None:
    creating.release()
    imports.after_fork_in_parent()


def _in_child() -> None:
    global creating, releasing, background, closing, forked
    forked = True
    imports.after_fork_in_child()
    closing = set()  # the parent's closing threads are not here: nothing to wait for
    creating = threading.RLock()
    releasing = threading.Lock()
    for marker in list(held_markers.values()):
        marker.forget_in_child()
    held_markers.clear()
    forking_thread = threading.get_ident()
    if holding_signals is not None and holding_signals.thread != forking_thread:
        holding_signals.forget_in_child()  # the main thread's merge is not in the child: its handlers held for good
    for lock, holder in list(held_locks.items()):
        if holder != forking_thread:  # the forking thread's own lock is its to release, here too
            lock.forget_in_child()
            del held_locks[lock]
    for lock in list(every_lock):
        lock.renew_in_child()
    background = BackgroundWork(background.name)
    for version in list(replaced_versions):
        try:
            version.close()  # its merge, if the child goes on with it, finds it closed and closes nothing
        except OSError:
            pass
    replaced_versions.clear()
    for descriptor in list(syncing):
        del syncing[descriptor]
        try:
            os.close(descriptor)  # the parent's thread makes the rename durable
        except OSError:
            pass
    for descriptor, thread in list(writing.items()):
        if thread != forking_thread:  # the forking thread's own merge goes on in the child
            del writing[descriptor]
            try:
                os.close(descriptor)
            except OSError:
                pass
    loading = sys.modules.get("fraisier_textfile.preload")  # loading ahead (preload.py): the parent's thread's
    if loading is not None:
        loading.forget()
    # The forking thread's call may have handed nothing yet (closing.CloseAfterCall): what it would hand is closed
    # above.
    closing_module = sys.modules.get("fraisier_textfile.store.closing")
    if closing_module is not None:
        closing_module.forget_pending_in_child()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_in_child)


exiting = False
"""Set once the store's exit hook has begun: nothing waits for another thread after it, so a merge made later (by a
program's own exit hook, registered before it imported the package) makes its rename durable and closes what it
replaced in its own thread (closing.Closer refuses to start)."""


def _at_exit() -> None:
    global exiting
    exiting = True
    # Loading ahead (preload.py) is a store thread's last work (closing.Closer): called off first, so that a thread
    # waiting to load ends now. Looked up, not imported: a process that never asked for it has nothing to call off.
    loading = sys.modules.get("fraisier_textfile.preload")
    if loading is not None:
        loading.call_off()
    # Ctrl-C meanwhile (a user who sees the command hang on a stalled disk): what was merged is in the file already,
    # only its durability is waited for. The first says so and the wait goes on; a second ends the waits at once.
    # Either way no KeyboardInterrupt escapes: Python would print its traceback as "Exception ignored in atexit".
    deadline = time.monotonic() + SYNC_EXIT_WAIT
    interrupted = False
    while True:
        try:
            wait_for_syncs(max(0.0, deadline - time.monotonic()))
            background.wait(EXIT_WAIT)
            wait_for_closes(EXIT_WAIT)
            return
        except KeyboardInterrupt:
            if interrupted:
                log.warning("interrupted again: exiting without waiting; the textfile holds what this process merged, "
                            "and the kernel makes it durable within seconds")
                return
            interrupted = True
            log.warning("waiting at most %.0f s more for the disk to make this process's last write to the textfile "
                        "durable; Ctrl-C again to exit now", max(0.0, deadline - time.monotonic()))


atexit.register(_at_exit)
