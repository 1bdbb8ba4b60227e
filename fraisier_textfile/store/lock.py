"""The store's lock, and every policy of waiting for it.

``fraisier.prom.lock`` is held with flock(2) for the whole of a merge; a lock file removed or replaced while
held is noticed and the merge starts again under the lock now at the path. Signal handlers are held back
during a merge (:class:`DeferredSignals`) and run at its safe points.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
import time
from typing import TYPE_CHECKING

from fraisier_textfile import validate
from fraisier_textfile.errors import LockTimeoutError, TextfileWriteError, write_error
from fraisier_textfile.store import fs, process
from fraisier_textfile.store.files import lstat_in, unexpected
from fraisier_textfile.store.signals import DeferredSignals

if TYPE_CHECKING:
    from collections.abc import Callable

LOCK_SUFFIX = ".lock"


DEFAULT_LOCK_TIMEOUT = 10.0


LOCK_TIMEOUT_ENVIRONMENT = "FRAISIER_LOCK_TIMEOUT"


# Waiters poll the lock (flock cannot wait with a timeout). They start at 0.1 ms and double up to 1 ms, so
# that one gets it within about a millisecond of its release, at a cost of at most 1,000 wake-ups a second.
FIRST_POLL = 0.0001


LONGEST_POLL = 0.001


def waitable(seconds: float) -> float:
    """``seconds`` as a thread can wait them (for a lock, an event, another thread): at most threading.TIMEOUT_MAX,
    about 292 years, past which Python raises OverflowError. A setting in seconds may be any finite number, and a
    huge one (1e10) is how people say "never give up": that is the longest wait there is."""
    return min(seconds, threading.TIMEOUT_MAX)


def default_lock_timeout(strict: bool = False) -> float:
    """``$FRAISIER_LOCK_TIMEOUT``; a typo there is logged once and the default used (``strict``: raised)."""
    from fraisier_textfile.settings import from_environment

    return from_environment(LOCK_TIMEOUT_ENVIRONMENT, validate.check_seconds, DEFAULT_LOCK_TIMEOUT, strict=strict)


class Lock:
    """``fraisier.prom.lock``, held with flock(2) on a descriptor of the file of that name in the textfile
    directory, which is held open (fs.Directory): the lock file is opened, and checked while held, relative to
    it, never by resolving the directory's path again.

    A lock is only as good as its name: if the file is removed or replaced while held (a tmp cleaner, an admin
    "removing a stale lock"), the next writer creates and locks a new inode while we still hold the old one,
    and both merge at once. So, once locked, the descriptor's inode must be the one of that name; if not, it
    is unlocked and the file now of that name is locked instead. Threads of one process take turns first
    (flock locks belong to a descriptor, not a thread). Each merge opens the file and closes it: a descriptor kept
    open between merges would need a process-wide list of them, a bound and an owner each (a signal handler's merge
    during a wait keeps one too), for a saving within the bench's spread (bench/README.md)."""

    def __init__(self, path: fs.PathName) -> None:
        self.path = os.fspath(path)
        """For messages: the file is opened by its name in the directory held (see :meth:`acquire`)."""
        self.name = os.path.basename(self.path)
        self._descriptor = -1
        self._identity: tuple[int, int] = (-1, -1)
        """The device and inode of the file of ``_descriptor`` once locked, as its open found them."""
        self._directory: fs.Directory | None = None
        self._own_directory = False
        # Reentrant: a signal handler run while this thread waits for the lock may itself merge.
        self._threads = threading.RLock()
        process.every_lock.add(self)  # for the fork hook: see renew_in_child

    def acquire(self, deadline: float, timeout: float, safe_point: Callable[[], None],
                directory: fs.Directory | None = None) -> None:
        """Take the lock, waiting until ``deadline`` (time.monotonic) at most; ``timeout`` is the whole wait
        allowed, for the error's message. ``safe_point`` is called while waiting. ``directory``: the textfile
        directory held open, which the lock file is opened in and checked against until :meth:`release` (the
        caller keeps it open meanwhile); None: the directory of the lock's path, opened here."""
        remaining = deadline - time.monotonic()
        took = self._threads.acquire(timeout=waitable(remaining)) if remaining > 0 else self._threads.acquire(False)
        if not took:
            raise LockTimeoutError(self.path, timeout)
        own = directory is None
        try:
            if directory is None:
                directory = fs.open_directory(os.path.dirname(self.path) or ".")
                if directory is None:
                    raise write_error(self.path, "create the lock file",
                                      OSError(errno.ENOENT, os.strerror(errno.ENOENT)))
            self._directory, self._own_directory = directory, own
            # Noted before the flock, each descriptor as soon as it is open (_lock_file): a child forked by another
            # thread at any moment from here on closes its copy (store/process.py).
            process.held_locks[self] = holder = threading.get_ident()
            self._descriptor = self._lock_file(directory, deadline, timeout, safe_point)
            # Again: a merge by a signal handler while we waited let go of the lock and of its directory.
            process.held_locks[self] = holder
            self._directory, self._own_directory = directory, own
        except BaseException:
            process.held_locks.pop(self, None)
            self._directory, self._own_directory = directory, own and directory is not None
            self._let_go_of_directory()
            self._threads.release()
            raise

    def release(self) -> None:
        process.held_locks.pop(self, None)
        descriptor, self._descriptor = self._descriptor, -1
        try:
            # Unlocked explicitly: a child forked meanwhile shares the descriptor, and closing ours alone
            # would leave the lock held by its copy.
            fcntl.flock(descriptor, fcntl.LOCK_UN)
        except OSError:
            pass
        finally:
            os.close(descriptor)
            self._let_go_of_directory()
            self._threads.release()

    def forget_in_child(self) -> None:
        """In a forked child, for a lock another thread of the parent held at the fork (store/process.py): close
        the child's copy of the descriptor, never unlock it (the lock is the parent's, through the open file
        description they share), so that the child never holds the lock once its parent is gone. The thread that
        held it does not exist here: nobody will release it."""
        descriptor, self._descriptor = self._descriptor, -1
        if descriptor >= 0:
            os.close(descriptor)
        self._let_go_of_directory()
        self._threads = threading.RLock()

    def renew_in_child(self) -> None:
        """In a forked child (store/process.py), for every lock: a thread lock that the forking thread does not hold
        is made anew. Held, it was by a thread the child does not have: one between taking it and noting the lock as
        held, or between no longer noting it and letting go of it (a lock noted as held is forgotten apart, see
        :meth:`forget_in_child`); every wait of the child for it would time out."""
        if not self._threads._is_owned():  # type: ignore[attr-defined]
            self._threads = threading.RLock()

    def _let_go_of_directory(self) -> None:
        directory, self._directory = self._directory, None
        if self._own_directory and directory is not None:
            directory.close()
        self._own_directory = False

    def _lock_file(self, directory: fs.Directory, deadline: float, timeout: float,
                   safe_point: Callable[[], None]) -> int:
        delay = FIRST_POLL
        attempts = 0
        while True:
            attempts += 1
            descriptor = -1
            try:
                # Signal handlers held back until the number is kept (a merge holds them already; a caller of its own
                # may not): one that raises right after the open would leave the lock file open for good. The device
                # and inode are this descriptor's, kept here: a handler's merge at the safe point below notes its own.
                with DeferredSignals():
                    descriptor, identity = self._open(directory)
                    self._descriptor = descriptor
                while not try_lock(descriptor, self.path):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise LockTimeoutError(self.path, timeout)
                    time.sleep(min(delay, remaining))
                    delay = min(delay * 2, LONGEST_POLL)
                    safe_point()
                if self._is_at_path(directory, identity):
                    self._identity = identity
                    return descriptor
            except BaseException:
                self._descriptor = -1
                if descriptor >= 0:
                    os.close(descriptor)
                raise
            self._descriptor = -1
            try:
                fcntl.flock(descriptor, fcntl.LOCK_UN)  # explicitly, as release does
            except OSError:
                pass
            os.close(descriptor)  # removed or replaced while we waited: lock the file of that name now
            if attempts >= 3 and time.monotonic() > deadline:
                raise LockTimeoutError(self.path, timeout)

    def _open(self, directory: fs.Directory) -> tuple[int, tuple[int, int]]:
        """The lock file opened in ``directory``, and its device and inode."""
        try:
            status = directory.lstat(self.name)
        except OSError as error:
            raise write_error(self.path, "use the lock file", error) from None
        if status is not None and not stat.S_ISREG(status.st_mode):
            raise unexpected(self.path, status)
        try:
            descriptor, created = self._open_or_make(directory)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise unexpected(self.path, lstat_in(directory, self.name)) from None
            if error.errno in (errno.EACCES, errno.EPERM) and status is not None:
                # The file's mode, not the directory's, is what refuses: "make the directory writable" misleads.
                raise TextfileWriteError(
                    self.path,
                    f"cannot open the lock file {self.path}: {error.strerror}; it belongs to "
                    f"{fs.owner_name(status.st_uid)} with mode {stat.S_IMODE(status.st_mode):04o}: make it writable "
                    "by the group its users share (chgrp, chmod 664), or remove it (fraisier creates it)",
                    error.errno,
                ) from None
            raise write_error(self.path, "create the lock file", error) from None
        try:
            status = os.fstat(descriptor)
            # A hard link is a file with other names elsewhere (another user's link to a file of root's).
            # (No name at all: removed since the open, which the check that it is still at the path sees.)
            if not stat.S_ISREG(status.st_mode) or status.st_nlink > 1:
                raise unexpected(self.path, status)
            if created:
                # Group-writable, so that the users of one group (say, a deploy user and root) can share a
                # directory; not world-writable, so that an unrelated user cannot hold the lock.
                try:
                    directory.settle_new(descriptor, 0o664)
                except OSError:
                    pass
        except BaseException:
            os.close(descriptor)
            raise
        return descriptor, (status.st_dev, status.st_ino)

    def _open_or_make(self, directory: fs.Directory) -> tuple[int, bool]:
        """The lock file opened, and whether this process made it (O_EXCL: what it made, and only that, gets its
        mode and owner)."""
        for _ in range(5):  # made or removed by another writer between two tries: looked at again
            try:
                return os.open(self.name, _OPEN_LOCK, dir_fd=directory.descriptor), False
            except FileNotFoundError:
                pass
            try:
                return os.open(self.name, _OPEN_LOCK | os.O_CREAT | os.O_EXCL, 0o664, dir_fd=directory.descriptor), True
            except FileExistsError:
                pass
        raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))

    def busy(self, directory: fs.Directory) -> bool:
        """Whether another holder has the lock now: one try without waiting, let go of at once if it succeeds
        (a probe, for a hand-over's try once more: see TextfileStore.merge_or_hand_over). A holder in this process
        counts (its descriptor is another open file: flock makes them conflict)."""
        descriptor, _ = self._open(directory)
        try:
            if not try_lock(descriptor, self.path):
                return True
            fcntl.flock(descriptor, fcntl.LOCK_UN)  # explicitly: a child forked meanwhile shares the descriptor
            return False
        finally:
            os.close(descriptor)

    def is_held(self) -> bool:
        """Whether this process holds the lock of the file now of the lock's name (see :class:`Lock`)."""
        directory = self._directory
        return (self._descriptor >= 0 and directory is not None
                and self._is_at_path(directory, self._identity))

    def _is_at_path(self, directory: fs.Directory, identity: tuple[int, int]) -> bool:
        """Whether the file named as the lock in ``directory`` is the one of ``identity`` (the device and inode of the
        lock's descriptor's file, as :meth:`_open` found them)."""
        try:
            at_path = directory.lstat(self.name)
        except OSError as error:
            raise write_error(self.path, "use the lock file", error) from None
        return at_path is not None and (at_path.st_dev, at_path.st_ino) == identity


_OPEN_LOCK = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def try_lock(descriptor: int, path: fs.PathName) -> bool:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            return False
        raise write_error(path, "lock", error) from None
    return True


class LockLost(Exception):
    """The lock file was removed or replaced during a merge (never escapes the store)."""
