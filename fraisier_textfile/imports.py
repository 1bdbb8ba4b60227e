"""Imports by the package's own threads, which a fork waits for.

A fork copies one thread, the one that forks. A module another thread was importing at that moment stays
half-imported in the child, its import lock held by a thread the child does not have, and the child's first use of
it waits for ever: a record call, and the deployment it records. The package imports much only when first needed (a
hand-over's codec at the first hand-over, ``logging`` at the first log line), and its threads (the background flush,
the removal of applied hand-overs, loading ahead, any thread's first log line) meet those imports too. So its threads
import under :data:`lock`, which the store's fork hook (store/process.py) takes before the fork:

- :func:`import_modules`, for imports made by name (loading ahead, a logger's ``logging``);
- :func:`guarded`, around a whole job of a thread that may meet a lazy import anywhere in it (a round of the
  background flush: a merge or a hand-over).

The fork waits at most :data:`FORK_WAIT` (a job is milliseconds, a disk that stalls may keep one for longer), then
goes on as it did before; a fork that gave up on a job does not wait for that same job again (a stalled one would
cost each fork of a multiprocessing pool or a pre-forking server a second), only for the next one. The main thread,
which is the one that forks, imports without the lock: it cannot be in the middle of an import when it forks, and
must not wait for another thread's job.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable

FORK_WAIT = 1.0
"""Seconds a fork waits at most for the import or the job under way in another thread of ours."""
lock = threading.RLock()
"""Held while a thread of ours imports or runs a job that may import (reentrant: a job's log line imports within
it), and by a fork, from before it until after it in the parent; the child has a new one."""
_fork_held = False
"""Whether the fork under way holds :data:`lock` (it gave up past FORK_WAIT)."""
_jobs = 0
"""How many times :data:`lock` was taken for an import or a job (counted under it): which job holds it."""
_given_up_on: int | None = None
"""The job (:data:`_jobs` then) a fork waited FORK_WAIT for and gave up on: a later fork that finds it still
running tries the lock without waiting."""


def import_modules(names: Iterable[str]) -> None:
    """Import those of ``names`` (dotted) not imported yet; in a thread other than the main one, under :data:`lock`
    (waited for at most FORK_WAIT: past that, as without it). Raises what the import raises."""
    missing = [name for name in names if name not in sys.modules]
    if not missing:
        return
    if threading.current_thread() is threading.main_thread():
        for name in missing:
            __import__(name)
        return
    with guarded():
        for name in missing:
            __import__(name)


def guarded() -> _Guarded:
    """``with guarded():`` runs the block under :data:`lock` (waited for at most FORK_WAIT), so that no fork copies
    the process in the middle of an import the block makes."""
    return _Guarded()


class _Guarded:
    __slots__ = ("_held",)

    def __enter__(self) -> None:
        global _jobs
        taken = lock  # the one released at the end, whatever a fork in another thread rebinds meanwhile
        self._held = taken if taken.acquire(timeout=FORK_WAIT) else None
        if self._held is not None:
            _jobs += 1

    def __exit__(self, *exception: object) -> None:
        if self._held is not None:
            self._held.release()


def before_fork() -> None:
    """Before a fork (store/process.py's hook): wait for the import or the job under way, and hold off the next
    until :func:`after_fork_in_parent`."""
    global _fork_held, _given_up_on
    _fork_held = lock.acquire(blocking=False) if _given_up_on == _jobs else lock.acquire(timeout=FORK_WAIT)
    _given_up_on = None if _fork_held else _jobs


def after_fork_in_parent() -> None:
    global _fork_held
    if _fork_held:
        _fork_held = False
        lock.release()


def after_fork_in_child() -> None:
    """In the child: a lock of its own (the parent's may be held by a thread the child does not have)."""
    global lock, _fork_held, _given_up_on
    lock = threading.RLock()
    _fork_held = False
    _given_up_on = None
