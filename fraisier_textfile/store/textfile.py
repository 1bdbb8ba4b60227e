"""The textfile store: lock, read, merge, atomic replace.

Every process merges what it recorded since its last flush into ``<directory>/fraisier.prom``, which
node_exporter's textfile collector (or ``fraisier metrics``) serves:

    lock fraisier.prom.lock -> read fraisier.prom (or reuse what this process wrote last) -> apply the
    hand-overs waiting in .fraisier-handover/ -> merge -> render -> write .fraisier.prom.tmp.<random> -> fsync
    -> rename over fraisier.prom -> fsync dir -> unlock -> delete the hand-overs applied

The file holds the true totals over every process that ever ran: counters and histograms are summed, so an
increment is neither lost nor counted twice whatever number of processes race, and a process killed at any
moment leaves either the old file or the new one, never a partial one. A process that cannot get the lock in
time may hand its changes over (see handovers.py) instead of waiting longer.

The store's paths are only ever what it created: fraisier.prom and the lock a regular file, its directories
directories. Anything else there (a symlink, a FIFO, a device) is refused with UnexpectedFileError, never
followed and never opened in a way that could block.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import os
import signal
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from fraisier_textfile import catalogue as c
from fraisier_textfile.changes import Changes, HistogramDelta, Labels, deployment_crashed
from fraisier_textfile.errors import (
    CorruptTextfileError,
    FraisierTextfileError,
    InvalidValueError,
    LockTimeoutError,
    TextfileWriteError,
    UnexpectedFileError,
    write_error,
)
from fraisier_textfile.format.model import Block, Document
from fraisier_textfile.format.reader import parse, parse_bytes
from fraisier_textfile.format.schema import Schema, default
from fraisier_textfile.format.syntax import ParseError, label_text, parse_series_key, series_key
from fraisier_textfile.store import fs, handovers, inflight
from fraisier_textfile.store.lifecycle import SeriesLifecycle
from fraisier_textfile.store.participants import Participant

TEXTFILE_NAME = "fraisier.prom"
LOCK_SUFFIX = ".lock"
# node_exporter reads every file whose name ends in .prom, hidden ones included: ours must not.
TEMPORARY_PREFIX = ".fraisier.prom.tmp."
DEFAULT_LOCK_TIMEOUT = 10.0
DIRECTORY_ENVIRONMENT = "FRAISIER_TEXTFILE_DIR"
LOCK_TIMEOUT_ENVIRONMENT = "FRAISIER_LOCK_TIMEOUT"
CLOCK_TOLERANCE = 300.0
"""Seconds. A last-deployment timestamp in the file further ahead of the merging process's clock than this was
written while some clock was wrong (stepped back since, or a process with a fake time): a merge that touches
it replaces it with its own value instead of keeping the larger one, unless the file itself was last written
further ahead than this of its clock: then its clock is the wrong one, and the stored value stays."""
LITTER_INTERVAL = 60.0
"""Seconds between two looks of one store for killed writers' temporary files (textfile, markers, hand-overs).
They are litter, not data (a hand-over's is kept an hour anyway), and listing directories that 16 writers keep
changing waited on their locks: 10-20 ms of some merges. A new process looks at its first merge."""
HANDOVERS_PER_MERGE = 256
"""Hand-overs one merge reads and applies at most, oldest first. Its wait for the lock is bounded by the
caller's budget; its work must be too: after a long lock hold thousands wait, and applying them all would make
one record call pay for them (15,000 took 1.35 s). The rest is left for the next merges (this process's late
merges, other processes' merges, ``fraisier textfile refresh``); under contention one merge applies about a
hundred (group commit), well under this."""
LATE_MERGE_BUDGET = 0.025
"""Seconds a process may spend, after its own merge, merging hand-overs that arrived while it held the lock:
one or two merges. Under sustained contention the other writers' own merges take the rest; a holder that kept
on merging would make its own caller the slowest."""
# Waiters poll the lock (flock cannot wait with a timeout). They start at 0.1 ms and double up to 1 ms, so
# that one gets it within about a millisecond of its release, at a cost of at most 1,000 wake-ups a second.
FIRST_POLL = 0.0001
LONGEST_POLL = 0.001

log = logging.getLogger(__name__)


def default_textfile_directory() -> Path:
    """``$FRAISIER_TEXTFILE_DIR``, else a directory any user can write with no set-up:
    ``$XDG_STATE_HOME/fraisier/textfile`` (``~/.local/state/fraisier/textfile``)."""
    configured = os.environ.get(DIRECTORY_ENVIRONMENT)
    if configured:
        return Path(configured)
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "fraisier" / "textfile"


def default_lock_timeout() -> float:
    configured = os.environ.get(LOCK_TIMEOUT_ENVIRONMENT)
    if not configured:
        return DEFAULT_LOCK_TIMEOUT
    return c.check_seconds(LOCK_TIMEOUT_ENVIRONMENT, configured)


def _unexpected(path: Path, status: os.stat_result | None, wanted: str = "a regular file") -> UnexpectedFileError:
    """The error for something at ``path`` that fraisier did not put there."""
    if status is not None and stat.S_ISLNK(status.st_mode):
        try:
            target = os.path.realpath(path)
        except OSError:
            target = "elsewhere"
        if path.name == TEXTFILE_NAME:
            return UnexpectedFileError(
                path,
                f"{path} is a symlink (to {target}): fraisier replaces the file by a rename and would replace "
                f"the link, or write through it; point --textfile-dir (FRAISIER_TEXTFILE_DIR) at the link's "
                f"real directory, {os.path.dirname(target)}",
            )
        return UnexpectedFileError(path, f"{path} is a symlink (to {target}), not {wanted}: remove it")
    kinds = (
        (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file"),
    )
    kind = next((name for test, name in kinds if status is not None and test(status.st_mode)), "not a file")
    return UnexpectedFileError(
        path, f"{path} is {kind}, not {wanted}: fraisier never reads or writes it; remove it (it creates its own)"
    )


class FileVersion:
    """One version of the textfile, held open.

    A merger or a server that has the file's content in memory must know whether the file on disk is still
    that version. (inode, size, mtime) alone can be fooled: ext4 hands a freed inode to the next new file at
    once, and before Linux 6.13 mtime moves only once per kernel tick, so two merges within a tick can
    leave a file with the old inode, size and mtime but other content. While this descriptor is open the
    inode cannot be reused, so the same inode on disk is this very file.
    """

    __slots__ = ("_descriptor", "key", "path")

    def __init__(self, path: Path, descriptor: int) -> None:
        self.path = path
        self._descriptor = descriptor
        status = os.fstat(descriptor)
        self.key = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)

    def is_current(self) -> bool:
        """Whether the path still names this version, unchanged (a symlink put in its place does not)."""
        try:
            status = os.lstat(self.path)
        except OSError:
            return False
        return self._descriptor >= 0 and (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns) == self.key

    def close(self) -> None:
        if self._descriptor >= 0:
            os.close(self._descriptor)
            self._descriptor = -1

    def __del__(self) -> None:
        self.close()


class _Lock:
    """``fraisier.prom.lock``, held with flock(2) on a descriptor of the file at that path.

    A lock is only as good as its path: if the file is removed or replaced while held (a tmp cleaner, an admin
    "removing a stale lock"), the next writer creates and locks a new inode while we still hold the old one,
    and both merge at once. So, once locked, the descriptor's inode must be the one at the path; if not, it
    is unlocked and the file now at the path is locked instead. Threads of one process take turns first
    (flock locks belong to a descriptor, not a thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._descriptor = -1
        # Reentrant: a signal handler run while this thread waits for the lock may itself merge.
        self._threads = threading.RLock()

    def acquire(self, deadline: float, timeout: float, safe_point: Callable[[], None]) -> None:
        """Take the lock, waiting until ``deadline`` (time.monotonic) at most; ``timeout`` is the whole wait
        allowed, for the error's message. ``safe_point`` is called while waiting."""
        remaining = deadline - time.monotonic()
        if not self._threads.acquire(timeout=remaining) if remaining > 0 else not self._threads.acquire(False):
            raise LockTimeoutError(self.path, timeout)
        try:
            self._descriptor = self._lock_file(deadline, timeout, safe_point)
        except BaseException:
            self._threads.release()
            raise

    def release(self) -> None:
        descriptor, self._descriptor = self._descriptor, -1
        try:
            # Unlocked explicitly: a child forked meanwhile shares the descriptor, and closing ours alone
            # would leave the lock held by its copy.
            fcntl.flock(descriptor, fcntl.LOCK_UN)
        except OSError:
            pass
        finally:
            os.close(descriptor)
            self._threads.release()

    def _lock_file(self, deadline: float, timeout: float, safe_point: Callable[[], None]) -> int:
        delay = FIRST_POLL
        attempts = 0
        while True:
            attempts += 1
            descriptor = self._open()
            try:
                while not _try_lock(descriptor, self.path):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise LockTimeoutError(self.path, timeout)
                    time.sleep(min(delay, remaining))
                    delay = min(delay * 2, LONGEST_POLL)
                    safe_point()
                if self._is_at_path(descriptor):
                    return descriptor
            except BaseException:
                os.close(descriptor)
                raise
            os.close(descriptor)  # removed or replaced while we waited: lock the file at the path now
            if attempts >= 3 and time.monotonic() > deadline:
                raise LockTimeoutError(self.path, timeout)

    def _open(self) -> int:
        try:
            status: os.stat_result | None = os.lstat(self.path)
        except FileNotFoundError:
            status = None
        except OSError as error:
            raise write_error(self.path, "use the lock file", error) from None
        if status is not None and not stat.S_ISREG(status.st_mode):
            raise _unexpected(self.path, status)
        try:
            descriptor = os.open(
                self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, 0o664
            )
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise _unexpected(self.path, _lstat_or_none(self.path)) from None
            if error.errno in (errno.EACCES, errno.EPERM) and status is not None:
                # The file's mode, not the directory's, is what refuses: "make the directory writable" misleads.
                raise TextfileWriteError(
                    self.path,
                    f"cannot open the lock file {self.path}: {error.strerror}; it belongs to "
                    f"{_owner_name(status.st_uid)} with mode {stat.S_IMODE(status.st_mode):04o}: make it writable "
                    "by the group its users share (chgrp, chmod 664), or remove it (fraisier creates it)",
                    error.errno,
                ) from None
            raise write_error(self.path, "create the lock file", error) from None
        try:
            status = os.fstat(descriptor)
            if not stat.S_ISREG(status.st_mode):
                raise _unexpected(self.path, status)
            # Group-writable, so that the users of one group (say, a deploy user and root) can share a
            # directory; not world-writable, so that an unrelated user cannot hold the lock.
            if stat.S_IMODE(status.st_mode) != 0o664 and status.st_uid == os.geteuid():
                try:
                    os.fchmod(descriptor, 0o664)
                except OSError:
                    pass
        except BaseException:
            os.close(descriptor)
            raise
        return descriptor

    def is_held(self) -> bool:
        """Whether this process holds the lock of the file now at the lock path (see :class:`_Lock`)."""
        return self._descriptor >= 0 and self._is_at_path(self._descriptor)

    def _is_at_path(self, descriptor: int) -> bool:
        try:
            at_path = os.lstat(self.path)
            locked = os.fstat(descriptor)
        except FileNotFoundError:
            return False
        except OSError as error:
            raise write_error(self.path, "use the lock file", error) from None
        return (at_path.st_dev, at_path.st_ino) == (locked.st_dev, locked.st_ino)


def _try_lock(descriptor: int, path: Path) -> bool:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            return False
        raise write_error(path, "lock", error) from None
    return True


def _owner_name(uid: int) -> str:
    import pwd  # here, not at the top: only errors need it

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _lstat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


class _LockLost(Exception):
    """The lock file was removed or replaced during a merge (never escapes the store)."""


class _DeferredSignals:
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

    def __enter__(self) -> _DeferredSignals:
        global _signal_numbers
        if threading.current_thread() is threading.main_thread():
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
        return self

    def _note(self, signum: int, frame: Any) -> None:
        self._noted.append(signum)

    def deliver(self) -> None:
        """A safe point: run the handlers of the signals noted so far (they may raise)."""
        while self._noted:
            signum = self._noted.pop(0)
            self._replaced[signum](signum, None)

    def __exit__(self, *exception: object) -> None:
        self._restore()
        while self._noted:
            signum = self._noted.pop(0)
            try:
                self._replaced[signum](signum, None)
            except BaseException:
                for later in self._noted:
                    signal.raise_signal(later)  # handled at the next chance, as Python itself would
                raise

    def _restore(self) -> None:
        for signum, handler in self._replaced.items():
            _raw_signal.signal(signum, handler)


# The C functions under the signal module: its Python wrappers convert every number and handler to an enum,
# which made holding signals back cost a merge a third of a millisecond.
_raw_signal: Any = getattr(signal, "_signal", signal)
_signal_numbers: tuple[int, ...] | None = None


class TextfileStore:
    """One textfile directory: merges changes into ``fraisier.prom`` and reads it back."""

    def __init__(self, directory: Path | str, lock_timeout: float = DEFAULT_LOCK_TIMEOUT, *,
                 lifecycle: SeriesLifecycle | None = None, participants: Iterable[Participant] = (),
                 schema: Schema | None = None) -> None:
        """``lifecycle``: the settings of expiry and the series bound; by default read from the environment
        (``SeriesLifecycle.from_environment``, which raises InvalidValueError for a bad value).
        ``participants``: sources that add their changes to every merge (see store/participants.py).
        ``schema``: the families this store's file owns and rewrites (format/schema.py); by default Fraisier's
        catalogue. Changes merged must name families of this schema."""
        self.directory = Path(directory)
        self.schema = schema or default()
        self.path = self.directory / TEXTFILE_NAME
        self.lock_path = self.directory / (TEXTFILE_NAME + LOCK_SUFFIX)
        self.lock_timeout = c.check_seconds("lock timeout", lock_timeout)
        self._lock = _Lock(self.lock_path)
        # What this process last wrote, and the identity of the file it wrote: while the file on disk is
        # still that one, nobody else has merged since and it need not be read or parsed again.
        self._cached: tuple[FileVersion, Document] | None = None
        self._corrupt: tuple[FileVersion, CorruptTextfileError] | None = None
        """The version of the file that failed to parse, and how: see _load."""
        # The hand-overs the last merge found (applied, or set aside): the others arrived since.
        self._handled_handovers: set[str] = set()
        self._backlog_left = False  # the last merge left older hand-overs for later (HANDOVERS_PER_MERGE)
        self._next_litter_check = 0.0  # see LITTER_INTERVAL
        # Expiry, the series bound, bucket migration and forgetting, run inside each merge (lifecycle.py).
        self.lifecycle = SeriesLifecycle.from_environment(self.path) if lifecycle is None else lifecycle
        self.participants: list[Participant] = list(participants)

    # Reading

    def read(self) -> Document:
        """The file as it is now, without taking the lock: it is only ever replaced whole, so a reader sees
        the old file or the new one. A missing file is an empty document. Histograms with other bounds than
        the catalogue's are read as they are: the next merge migrates them (lifecycle.migrate_histogram)."""
        return self.read_version(check_histograms=False)[1]

    def read_version(self, check_histograms: bool = True) -> tuple[FileVersion | None, Document]:
        """The file as :meth:`read` gives it, and the version of exactly the bytes read (None if there is no
        file): a reader can skip reading again while ``version.is_current()``."""
        version, data = self.read_data()
        return version, self.parse_data(data, check_histograms)

    def read_text(self) -> tuple[FileVersion | None, str]:
        """The file's text ("" if there is none) and its version, unparsed (see :meth:`read_data`)."""
        version, data = self.read_data()
        try:
            return version, data.decode("utf-8")
        except UnicodeDecodeError as error:
            if version is not None:
                version.close()
            raise CorruptTextfileError(self.path, f"not UTF-8 text (byte {error.start})") from None

    def read_data(self) -> tuple[FileVersion | None, bytes]:
        """The file's bytes (empty if there is none) and its version, unparsed. Anything but a regular file at
        the path (a symlink, a FIFO, a device, a directory) is refused without being followed or read."""
        try:
            status = os.lstat(self.path)
        except FileNotFoundError:
            return None, b""
        except OSError as error:
            raise write_error(self.path, "read", error) from None
        if not stat.S_ISREG(status.st_mode):
            raise _unexpected(self.path, status)
        try:
            # O_NOFOLLOW|O_NONBLOCK: what was a regular file a moment ago may have been replaced by a symlink
            # or a FIFO since; neither is followed or waited on.
            descriptor = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None, b""
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise _unexpected(self.path, _lstat_or_none(self.path)) from None
            raise TextfileWriteError(
                self.path, f"cannot read {self.path}: {error.strerror}; check its permissions", error.errno
            ) from None
        try:
            status = os.fstat(descriptor)
            if not stat.S_ISREG(status.st_mode):
                raise _unexpected(self.path, status)
            # One read of the size fstat gives, into one buffer: no list of chunks to join, so the bytes are
            # copied once, by the kernel, and decoded once. (Only a file that changed meanwhile, which the
            # lock rules out for a merge, needs more reads.)
            data = os.read(descriptor, status.st_size + 1)
            more = os.read(descriptor, 1 << 20) if data else b""
            if more:
                chunks = [data, more]
                while chunk := os.read(descriptor, 1 << 20):
                    chunks.append(chunk)
                data = b"".join(chunks)
            version = FileVersion(self.path, descriptor)
        except OSError as error:
            os.close(descriptor)
            raise write_error(self.path, "read", error) from None
        except BaseException:
            os.close(descriptor)
            raise
        return version, data

    def parse_text(self, text: str, check_histograms: bool = True) -> Document:
        try:
            return parse(text, check_histograms, self.schema)
        except ParseError as error:
            raise CorruptTextfileError(self.path, error.problem, error.line_number) from None

    def parse_data(self, data: bytes, check_histograms: bool = True) -> Document:
        """The document of the file's bytes (see format.reader.parse_bytes: one this package wrote is not
        checked line by line again)."""
        try:
            return parse_bytes(data, check_histograms, self.schema)
        except ParseError as error:
            raise CorruptTextfileError(self.path, error.problem, error.line_number) from None

    def active_deployments(self, retired_markers: Collection[str]) -> dict[str, int]:
        """Deployments running now in live processes, by provider (for a reader serving the file live).
        ``retired_markers`` are those the file already accounts for (``inflight.RETIRED_MARKERS``)."""
        counts: dict[str, int] = {}
        textfile = fs.open_directory(self.directory)
        if textfile is None:
            return counts
        with textfile:
            markers, directory = self._read_markers(textfile)
        if directory is not None:
            directory.close()
        for marker in markers:
            if marker.id not in retired_markers and inflight.is_alive(marker):
                counts[marker.provider] = counts.get(marker.provider, 0) + 1
        self._add_participants_active(counts)
        return counts

    def _add_participants_active(self, counts: dict[str, int]) -> None:
        """Deployments a participant knows to be running without an in-flight marker (a row of Fraisier's
        database, say): a participant with an ``active_deployments()`` method adds its live count."""
        for participant in self.participants:
            active = getattr(participant, "active_deployments", None)
            if active is not None:
                for provider, count in active().items():
                    counts[provider] = counts.get(provider, 0) + count

    # Merging

    def merge(self, changes: Changes, *, timeout: float | None = None) -> None:
        """Merge ``changes``, and every hand-over waiting, into the textfile under the lock, waiting for it
        at most ``timeout`` seconds (None: the store's lock timeout; 0: not at all). On success ``changes``
        is emptied. On any error nothing is written, the file is left byte-identical, and ``changes`` is
        untouched so that it can be merged again later. Raises only FraisierTextfileError subclasses
        (LockTimeoutError when the lock stayed busy)."""
        try:
            self._merge_once(changes, self.lock_timeout if timeout is None else timeout)
        except FraisierTextfileError:
            # Also after a failure: this process may have held the lock (a lock timeout too, when its lock
            # file was replaced mid-merge and the new one stayed busy).
            self._merge_late_handovers(failed=True)
            raise
        self._merge_late_handovers()

    def hand_over(self, changes: Changes, *, durable: bool = True) -> None:
        """Write ``changes`` for the next merge by any process to apply exactly once, without the lock, and
        empty ``changes``. ``durable``: fsynced (two fsyncs, milliseconds on a disk), so that they survive a
        power loss; without, they survive this process's death, not the machine's. Raises TextfileWriteError
        (``changes`` untouched) if they cannot be written."""
        if not changes:
            return
        with _DeferredSignals(), self._open_directory() as textfile:
            directory = handovers.open_directory(textfile, create=True)
            assert directory is not None
            with directory:
                temporary, final = handovers.write(directory, changes, durable)
                handovers.publish(directory, temporary, final, durable)
                changes.clear()

    def merge_or_hand_over(self, changes: Changes, wait: float, *, durable: bool = True) -> bool:
        """Merge ``changes``, waiting at most ``wait`` seconds for the lock; if it stays busy, hand them over.
        True: merged now. False: handed over; the next merge by any process writes them (this process tries
        once more at once). Either way ``changes`` is emptied. Raises what :meth:`merge` raises for other
        problems (a corrupt file, a full disk), with ``changes`` untouched."""
        try:
            self.merge(changes, timeout=wait)
            return True
        except LockTimeoutError:
            pass
        self.hand_over(changes, durable=durable)
        # The hand-over is on disk before this try. If the lock is busy, its holder will look for hand-overs
        # after releasing it (see _merge_late_handovers), and so sees this one.
        try:
            self.merge(Changes(), timeout=0)
        except FraisierTextfileError as error:
            log.debug("hand-over left for the next merge: %s", error)
        return False

    def _merge_once(self, changes: Changes, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with _DeferredSignals() as signals, self._open_directory() as textfile:
            for attempt in itertools.count(1):
                if attempt > 3 and time.monotonic() > deadline:  # something removes the lock file over and over
                    raise LockTimeoutError(self.lock_path, timeout)
                self._lock.acquire(deadline, timeout, signals.deliver)
                held = _Subdirectories()
                try:
                    try:
                        applied, to_remove = self._merge_locked(changes, textfile, held)
                    except _LockLost:
                        log.warning("%s was removed or replaced during a merge: merging again", self.lock_path)
                        continue
                    finally:
                        self._lock.release()
                    # After the release: removing files waits on the filesystem's journal, which under load (other
                    # writers' fsyncs) can take seconds for a few hundred hand-overs, and the lock was held all
                    # that time. Nothing below may fail the merge: the file is written. A hand-over or a marker
                    # not removed yet (or ever) stays listed in the file, so no merger counts it again. Both are
                    # removed through the descriptors of the directories they were listed in, never by name: a
                    # writer may have swapped a directory for a symlink since the lock was released.
                    if held.handovers is not None:
                        if held.noted and held.newest is not None:
                            handovers.note_merged(held.handovers, held.newest, held.oldest_waiting)
                        if applied:
                            handovers.remove_soon(held.handovers, applied)
                    if held.markers is not None:
                        for marker_id in to_remove:
                            inflight.remove_marker(held.markers, marker_id)
                finally:
                    held.close()
                for participant in self.participants:
                    participant.after_commit()
                return
            raise AssertionError("unreachable")

    def _merge_late_handovers(self, failed: bool = False) -> None:
        """After releasing the lock, merge the hand-overs that arrived while it was held.

        The invariant that makes every hand-over written once, soon: a process that hands over writes its
        file *before* trying the lock once without waiting, and every holder of the lock looks for
        hand-overs *after* releasing it. So when the hand-over's own try fails, the lock had a holder that
        releases it after the file existed, and that holder's look finds it; if its own try fails in turn,
        the next holder's look does, and so on until one gets the lock. (A holder killed meanwhile leaves the
        hand-over to the next merge, by any process.) This is also group commit: under contention the waiters
        hand over and one holder writes them all in one merge.

        Under sustained contention new hand-overs keep arriving, and a holder that looped for ever would hold
        up the deployment it belongs to: it stops after LATE_MERGE_BUDGET seconds, leaving what remains to
        the next merge of any process (under such load, one within milliseconds; otherwise at the latest the
        next ``fraisier textfile refresh``). Nothing is lost or applied twice either way. A failure with the
        ``reported`` message (the caller's own, raised to its caller) is not logged a second time."""
        stop = time.monotonic() + LATE_MERGE_BUDGET
        # A merge that left older hand-overs (HANDOVERS_PER_MERGE) has done its share: those that arrived
        # meanwhile are behind them, for the next merge of any process, as they are.
        while time.monotonic() < stop and not self._backlog_left and self._handovers_waiting():
            try:
                self._merge_once(Changes(), timeout=0)
            except LockTimeoutError:
                return  # its holder looks again after releasing it
            except FraisierTextfileError as error:
                # After a failed merge this is most likely the same problem, which its caller reports: a
                # recorder hit by a corrupt file would otherwise log it again with every event.
                log.log(logging.DEBUG if failed else logging.WARNING,
                        "hand-overs waiting in %s were not merged: %s", self.directory, error)
                return

    def _handovers_waiting(self) -> bool:
        try:
            textfile = fs.open_directory(self.directory)
            if textfile is None:
                return False
            with textfile:
                directory = handovers.open_directory(textfile)
            if directory is None:
                return False
            with directory:
                names = directory.names()
        except (OSError, FraisierTextfileError):
            return False
        suffix = handovers.SUFFIX
        return any(
            name.endswith(suffix) and not name.startswith(handovers.TEMPORARY_PREFIX)
            and name[: -len(suffix)] not in self._handled_handovers
            for name in names
        )

    def handovers_waiting(self) -> bool:
        """Whether hand-overs wait in the directory that no merge by this store has seen yet."""
        return self._handovers_waiting()

    def merge_backlog(self, *, timeout: float | None = None) -> None:
        """Merge until no hand-over is left (each merge applies at most HANDOVERS_PER_MERGE): for a command
        whose job is a complete file (``fraisier textfile refresh``), not for a record call. Raises what
        :meth:`merge` raises."""
        self.merge(Changes(), timeout=timeout)
        for _ in range(100_000):  # bounded: writers that never stop handing over must not keep it for ever
            if not self._handovers_waiting():
                return
            before = set(self._handled_handovers)
            self.merge(Changes(), timeout=timeout)
            if self._handled_handovers == before:
                return  # only hand-overs left for a newer version, or set aside: nothing more to apply

    def _open_directory(self) -> fs.Directory:
        """The textfile directory, created with mode 0755 whatever the umask if missing (node_exporter runs as
        another user: it must be able to enter it)."""
        directory = fs.open_directory(self.directory, create=True)
        assert directory is not None
        return directory

    def _merge_locked(
        self, changes: Changes, textfile: fs.Directory, held: _Subdirectories
    ) -> tuple[list[str], set[str]]:
        """Merge under the lock; return the hand-overs applied and the markers retired, which the written file
        lists as such: the caller removes them once the lock is released, through the directories ``held``
        keeps open."""
        document = self._load(textfile)
        cached, self._cached = self._cached, None  # the document is about to change; cached again once written
        read_from_disk = cached is None or document is not cached[1]  # not what we wrote
        if cached is not None:
            cached[0].close()
        # Markers are probed before the hand-overs are listed. A process whose end could not wait for the lock
        # hands it over and only then releases its marker: so a marker found released here has its hand-over
        # in the directory already, and the listing below finds it (listed first, the hand-over could be
        # missed and the deployment counted crashed as well as ended).
        markers = self._probe_markers(inflight.RETIRED_MARKERS.get(document), textfile, held)
        applied, handed_over, backlog = self._collect_handovers(document, textfile, held)
        if backlog and changes.latest and held.handovers is not None:
            # Older hand-overs wait for a later merge (see HANDOVERS_PER_MERGE): applied now, this process's
            # latest gauges would be overwritten by older reports when those are applied. They are handed over
            # behind them instead, and taken out of ``changes``: should this merge fail after this, the rest
            # of ``changes`` is left to its caller as always, and the gauges are in the hand-over.
            self._hand_over_latest(changes, held.handovers)
        collected = [part for part in (p.collect(document) for p in self.participants) if part]
        if handed_over is not None or collected:
            combined = _combined([*([handed_over] if handed_over is not None else []), *collected, changes])
        else:
            combined = changes
        to_apply = self.lifecycle.before_merge(document, combined, read_from_disk)
        if held.markers is None:
            # Made since the probe, by a deployment whose start and end were both handed over meanwhile: its
            # marker must be seen, or its retired id would be dropped and the next merger count it crashed.
            held.markers = inflight.open_directory(textfile)
        to_remove = self._account_markers(document, to_apply, markers, held.markers)
        _apply(document, to_apply, self.path, time.time(), self._clock_is_behind())
        self.lifecycle.after_merge(document, to_apply)
        handovers.APPLIED.put(document, tuple(applied))
        temporary, descriptor = self._write_temporary(document.parts(), textfile)
        if not self._lock.is_held():
            # Someone removed the lock file while we held it: another merger may have locked a new one and
            # read the file we are about to replace. Start again under the lock now at the path.
            os.close(descriptor)
            _unlink_quietly(textfile, temporary)
            raise _LockLost
        # Signals are held back (see _DeferredSignals): the rename and the clear happen together.
        version = self._rename(temporary, descriptor, textfile)
        self._cached = None if version is None else (version, document)
        changes.clear()
        return applied, to_remove

    def _clock_is_behind(self) -> bool:
        """Whether the textfile was last written in this process's future (its mtime, which the kernel set
        then, is ahead of our clock by more than CLOCK_TOLERANCE): then this clock is behind (a host before its
        NTP sync, a clock stepped back, faketime), and a stored time ahead of it is right, not to be replaced."""
        status = _lstat_or_none(self.path)
        if status is None:
            return False
        ahead = status.st_mtime - time.time()
        if ahead <= CLOCK_TOLERANCE:
            return False
        if not _warned_clock_behind:
            _warned_clock_behind.append(True)
            log.warning(
                "this process's clock is behind: %s was last written %.0fs in its future; the last-deployment "
                "times it holds are kept (check the clock: timedatectl, chronyc tracking)", self.path, ahead,
            )
        return True

    def _collect_handovers(
        self, document: Document, textfile: fs.Directory, held: _Subdirectories
    ) -> tuple[list[str], Changes | None, bool]:
        """The ids of the hand-overs now in the directory that the file will account for, the changes of those
        it does not hold yet, combined in their order (None if there are none), and whether older ones are
        left for a later merge: at most HANDOVERS_PER_MERGE are read, oldest first. The directory stays open in
        ``held``, for their removal."""
        self._backlog_left = False
        directory = held.handovers = handovers.open_directory(textfile)
        if directory is None:
            self._handled_handovers = set()
            return [], None, False
        held.noted = True
        ids, kept_aside = handovers.pending(directory)
        newest = (handovers.sequence_of(ids[-1]) or 0) if ids else 0
        already = set(handovers.APPLIED.get(document))
        read: dict[str, Changes] = {}
        handled = set()
        newer = 0
        left: list[str] = []
        for number, handover_id in enumerate(ids):
            if handover_id in already:
                handled.add(handover_id)
                continue
            if len(read) >= HANDOVERS_PER_MERGE:
                # The work a merge does is bounded like its wait for the lock: the rest waits for the next
                # merger (the one after this process's own, or `fraisier textfile refresh`). Each is applied
                # exactly once all the same: only the ids read here are listed as applied.
                left = [other for other in ids[number:] if other not in already]
                break
            handled.add(handover_id)
            try:
                read[handover_id] = handovers.read(directory, handover_id)
            except handovers.NewerHandover as error:
                newer += 1
                if handover_id not in _newer_handovers_logged:
                    _newer_handovers_logged.add(handover_id)
                    log.warning(
                        "the hand-over %s was written by a newer version of fraisier_textfile (%s): left for a "
                        "merger of that version; upgrade this one",
                        directory.path / f"{handover_id}{handovers.SUFFIX}", error,
                    )
            except handovers.UnreadableHandover as error:
                kept_aside += handovers.set_aside(directory, handover_id, str(error))
        # One that can never be summed into this file would fail this merge and every later one: set aside.
        # Checked for all at once (amounts are >= 0, so if their total can be summed into the file, each can),
        # and one by one only when that fails, to find the one at fault.
        combined = _combined(list(read.values()))
        try:
            _check_summable(document, combined, self.path)
        except InvalidValueError:
            # Checked in order with those kept before it, not alone: each may fit the file while their total
            # overflows, and then none would be set aside and this merge and every later one would fail.
            kept: list[Changes] = []
            for handover_id, changes in list(read.items()):
                try:
                    _check_summable(document, _combined([*kept, changes]), self.path)
                except InvalidValueError as error:
                    kept_aside += handovers.set_aside(directory, handover_id, str(error))
                    del read[handover_id]
                else:
                    kept.append(changes)
            combined = _combined(kept)
        self._handled_handovers = handled
        self._backlog_left = bool(left)
        applied = [handover_id for handover_id in ids if handover_id in already or handover_id in read]
        handovers.count_in(document, len(left) + newer, kept_aside)
        held.newest = newest
        held.oldest_waiting = handovers.sequence_of(left[0]) if left else None
        return applied, combined if read else None, bool(left)

    def _hand_over_latest(self, changes: Changes, directory: fs.Directory) -> None:
        """Hand over the latest gauges of ``changes`` behind the hand-overs waiting, and take them out of it."""
        latest = Changes()
        latest.latest.update(changes.latest)
        try:
            temporary, final = handovers.write(directory, latest, durable=False)
            handovers.publish(directory, temporary, final, durable=False)
        except FraisierTextfileError as error:
            log.debug("latest gauges applied now, not behind the hand-overs waiting: %s", error)
            return
        changes.latest.clear()

    def _load(self, textfile: fs.Directory) -> Document:
        if self._cached is not None:
            cached_version, document = self._cached
            if cached_version.is_current():
                return document
            cached_version.close()
            self._cached = None
        if self._corrupt is not None:
            corrupt_version, error = self._corrupt
            if corrupt_version.is_current():
                raise error.with_traceback(None)
            corrupt_version.close()
            self._corrupt = None
        if time.monotonic() >= self._next_litter_check:
            self._next_litter_check = time.monotonic() + LITTER_INTERVAL
            self._remove_stale_temporaries(textfile)
        version, data = self.read_data()
        try:
            document = self.parse_data(data, check_histograms=False)
        except CorruptTextfileError as error:
            # The same bytes fail the same way. Until the file changes (the operator's fix), merges answer
            # from here rather than read and parse it again: for a big file that costs seconds, and a
            # recorder hit by it would pay them with every event it records.
            if version is not None:
                self._corrupt = (version, error)
            raise
        if version is not None:
            version.close()
        return document

    def _probe_markers(
        self, accounted: Collection[str], textfile: fs.Directory, held: _Subdirectories
    ) -> list[tuple[inflight.Marker, bool]]:
        """Every in-flight marker, and whether its deployment is alive (not probed for those ``accounted``)."""
        markers, held.markers = self._read_markers(textfile)
        return [(marker, marker.id not in accounted and inflight.is_alive(marker)) for marker in markers]

    def _account_markers(
        self,
        document: Document,
        changes: Changes,
        markers: list[tuple[inflight.Marker, bool]],
        directory: fs.Directory | None,
    ) -> set[str]:
        """Count live deployments, turn dead ones into ``crashed`` deployments, and list in the document the
        markers it now accounts for. Those are removed only after the file is written, and the list stays in
        the file until they are gone: so a merger killed at any point leaves each deployment counted once."""
        accounted = inflight.RETIRED_MARKERS.get(document) | changes.retired_markers
        active: dict[str, int] = {provider: 0 for provider in changes.active_providers}
        existing = set()
        crashed = Changes()
        for marker, alive in markers:
            existing.add(marker.id)
            if marker.id in accounted:
                continue
            active.setdefault(marker.provider, 0)
            if alive:
                active[marker.provider] += 1
            else:
                deployment_crashed(crashed, marker.provider, marker.fraise_type, marker.id)
        # A marker made after the probe whose deployment's start and end were handed over since: this merge
        # applies its end, so it stays listed (else the next merger would count it crashed) and is removed.
        for marker_id in changes.retired_markers - existing:
            if (
                directory is not None and marker_id and "/" not in marker_id and not marker_id.startswith(".")
                and marker_id not in (".", "..") and directory.exists(marker_id)
            ):
                existing.add(marker_id)
        accounted |= crashed.retired_markers
        _apply(document, crashed, self.path, time.time())
        self._add_participants_active(active)
        _set_active(document, active)
        inflight.RETIRED_MARKERS.put(document, frozenset(accounted & existing))
        return set(inflight.RETIRED_MARKERS.get(document))

    def _read_markers(self, textfile: fs.Directory) -> tuple[list[inflight.Marker], fs.Directory | None]:
        """The in-flight markers and their directory held open (None if there is none), once the directory is
        known to hold only what fraisier writes there: regular files (a FIFO in it would block the reader for
        ever)."""
        directory = inflight.open_directory(textfile)
        if directory is None:
            return [], None
        try:
            for entry in directory.entries():
                if not entry.is_file(follow_symlinks=False):
                    raise directory.unexpected(entry.name)
            return inflight.read_markers_in(directory), directory
        except OSError as error:
            directory.close()
            raise write_error(directory.path, "read the marker directory", error) from None
        except BaseException:
            directory.close()
            raise

    def _remove_stale_temporaries(self, textfile: fs.Directory) -> None:
        """Temporary files are only made under the lock, which we hold: any left are from killed writers. Each
        directory is scanned and cleaned through its checked descriptor: one a writer swapped for a symlink is
        refused (the merge says so), never followed."""
        try:
            for entry in list(textfile.entries()):
                if entry.name.startswith(TEMPORARY_PREFIX) and entry.is_file(follow_symlinks=False):
                    _unlink_quietly(textfile, entry.name)
        except OSError:
            return
        for open_directory, remove in (
            (inflight.open_directory, inflight.remove_stale_temporaries),
            (handovers.open_directory, handovers.remove_stale_temporaries),
        ):
            try:
                directory = open_directory(textfile)
            except FraisierTextfileError:
                continue  # refused with one clear line by the merge itself
            if directory is None:
                continue
            with directory:
                try:
                    remove(directory)
                except OSError:
                    pass  # litter only: a later merger tries again

    def _write_temporary(self, parts: Iterable[bytes | memoryview], textfile: fs.Directory) -> tuple[str, int]:
        """Write the text ``parts`` make durably to a new temporary file; return its name and its open
        descriptor."""
        temporary = f"{TEMPORARY_PREFIX}{_random_suffix()}"
        try:
            # O_EXCL|O_NOFOLLOW, 0644 by fchmod: never through a symlink or into a file someone else prepared,
            # and readable by node_exporter's user whatever our umask.
            descriptor = textfile.create(temporary, fs.FILE_MODE)
        except OSError as error:
            raise write_error(self.directory, "create a temporary file in", error) from None
        try:
            try:
                _write_parts(descriptor, parts)
                # Durable content before the rename: after a power loss the name must not point at an
                # empty file.
                os.fsync(descriptor)
            except BaseException:
                os.close(descriptor)
                raise
        except OSError as error:
            _unlink_quietly(textfile, temporary)
            raise write_error(self.path, "write", error) from None
        except BaseException:
            _unlink_quietly(textfile, temporary)
            raise
        return temporary, descriptor

    def _rename(self, temporary: str, descriptor: int, textfile: fs.Directory) -> FileVersion | None:
        """Rename the written temporary over the textfile; return the new file's version, held open (None if it
        cannot be had: the next merge reads the file). Once renamed, nothing here raises: the caller must
        forget the changes the file now holds."""
        try:
            textfile.replace(temporary, TEXTFILE_NAME)
        except OSError as error:
            os.close(descriptor)
            _unlink_quietly(textfile, temporary)
            raise self._replace_error(error) from None
        textfile.fsync()
        try:
            return FileVersion(self.path, descriptor)
        except OSError:
            os.close(descriptor)
            return None

    def _replace_error(self, error: OSError) -> TextfileWriteError:
        """The error for a rename over the textfile that failed. In a sticky directory (mode 1777, as /tmp)
        only the file's owner may replace it, however writable the directory: say so, not "make it writable"."""
        if error.errno in (errno.EPERM, errno.EACCES):
            try:
                directory, target = os.stat(self.directory), os.lstat(self.path)
            except OSError:
                pass
            else:
                if directory.st_mode & stat.S_ISVTX and target.st_uid != os.geteuid():
                    owner = _owner_name(target.st_uid)
                    return TextfileWriteError(
                        self.path,
                        f"cannot write {self.path}: {error.strerror}; it belongs to {owner} and its directory is "
                        f"sticky (chmod +t), so only {owner} can replace it: share a directory without the sticky "
                        "bit (a group directory, chmod 2775), or choose another --textfile-dir",
                        error.errno,
                    )
        return write_error(self.path, "write", error)


def _write_parts(descriptor: int, parts: Iterable[bytes | memoryview]) -> None:
    """Write ``parts`` with writev(2), up to IOV_MAX at a time: the spans of the file read go from where they
    are, never joined into one copy of the file (a merge of a large file would need twice its size), and a
    fresh 10,000-series merge makes one system call instead of one per part (0.15 ms less than joining small
    parts and writing them apart)."""
    pending = [memoryview(part) for part in parts if len(part)]
    while pending:
        batch = pending[:_IOV_MAX]
        written = os.writev(descriptor, batch)
        if not written:  # not for a regular file (a full disk raises ENOSPC): never loop on it
            raise OSError(errno.EIO, "write(2) wrote nothing")
        # A regular file takes it all unless the disk is full or a signal lands: then go on from where it ended.
        for number, part in enumerate(batch):
            if written < len(part):
                pending = [part[written:], *batch[number + 1 :], *pending[len(batch) :]]
                break
            written -= len(part)
        else:
            pending = pending[len(batch) :]


_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024


def _unlink_quietly(directory: fs.Directory, name: str) -> None:
    try:
        directory.unlink(name)
    except OSError:
        pass


class _Subdirectories:
    """The hand-over and marker directories one merge listed, held open until the files it applied or retired
    are removed (see fs.py)."""

    __slots__ = ("handovers", "markers", "newest", "noted", "oldest_waiting")

    def __init__(self) -> None:
        self.handovers: fs.Directory | None = None
        self.markers: fs.Directory | None = None
        self.noted = False
        """Whether the merge listed the hand-overs (then newest and oldest_waiting say what it saw)."""
        self.newest: int | None = None
        self.oldest_waiting: int | None = None

    def close(self) -> None:
        for directory in (self.handovers, self.markers):
            if directory is not None:
                directory.close()
        self.handovers = self.markers = None


def _random_suffix() -> str:
    return os.urandom(8).hex()


def _key(family: c.Family, labels: Labels, suffix: str = "") -> str:
    return series_key(family.name + suffix, family.labels, labels)


_warned_clock_behind: list[bool] = []
_newer_handovers_logged: set[str] = set()


def _apply(document: Document, changes: Changes, path: Path, now: float, clock_is_behind: bool = False) -> None:
    """Apply ``changes`` to the document: counters and histograms summed, gauges replaced or maximised.
    ``clock_is_behind``: ``now`` is known to be behind, so stored times ahead of it are kept as the maximum.
    Raises before the file is written when a sum cannot be honest (see :func:`_summed`)."""
    for (family, labels), amount in changes.added.items():
        block = document.block(family)
        key = _key(family, labels)
        block.set(key, _summed(block, key, amount, path))
    for (family, labels), delta in changes.observed.items():
        block = document.block(family)
        pairs = label_text(family.labels, labels)
        bucket_prefix = f"{family.name}_bucket{{{pairs}," if pairs else f"{family.name}_bucket{{"
        cumulative = 0
        for bound, count in zip(family.bucket_bounds, delta.buckets):
            cumulative += count
            key = f'{bucket_prefix}le="{bound}"}}'
            block.set(key, _summed(block, key, cumulative, path))
        key = _key(family, labels, "_sum")
        block.set(key, _summed(block, key, delta.sum, path))
        key = _key(family, labels, "_count")
        block.set(key, _summed(block, key, delta.count, path))
    for (family, labels), value in changes.latest.items():
        document.block(family).set(_key(family, labels), value)
    for (family, labels), value in changes.maximum.items():
        block = document.block(family)
        key = _key(family, labels)
        current = block.value(key)
        # A stored time too far ahead of our clock was written by a wrong clock: replaced, not kept for ever,
        # unless our own clock is the wrong one. (NaN is replaced whatever the clocks.)
        if (
            current is None
            or value > current
            or current != current
            or (not clock_is_behind and not current <= now + CLOCK_TOLERANCE)
        ):
            block.set(key, value)


def _check_summable(document: Document, changes: Changes, path: Path) -> None:
    """Raise InvalidValueError if a sum of ``changes`` into the document would overflow to +Inf (what
    :func:`_apply` would raise; a value already in the file that cannot be summed is the file's problem, left
    to the merge)."""
    # A family not in the file yet is checked too (as empty): its first values may overflow on their own.
    for (family, labels), amount in changes.added.items():
        block = document.blocks.get(family.name) or Block(family.name, owned=family)
        _check_sum(block, _key(family, labels), amount, path)
    for (family, labels), delta in changes.observed.items():
        block = document.blocks.get(family.name) or Block(family.name, owned=family)
        _check_sum(block, _key(family, labels, "_sum"), delta.sum, path)


def _check_sum(block: Block, key: str, amount: float, path: Path) -> None:
    try:
        _summed(block, key, amount, path)
    except CorruptTextfileError:
        pass


def _summed(block: Block, key: str, amount: float, path: Path) -> float:
    """The file's value of a counter or histogram sample plus ``amount``. A value already in the file that is
    not a finite, non-negative number, or a sum that would overflow to +Inf, would poison the total for ever:
    refused, before anything is written."""
    current = block.value(key)
    if current is None:
        # A new series is checked too: two hand-overs (or two observations in one process) of huge values make a
        # first value of +Inf, which every later sum of that series would refuse.
        if not float(amount) < _INFINITY:
            raise InvalidValueError(
                f"adding {amount:g} to {key} (a new series) in {path} would make it +Inf: a value that large "
                "cannot be summed; check the value recorded (durations are in seconds)"
            )
        return float(amount)
    if not 0.0 <= current < _INFINITY:
        raise CorruptTextfileError(
            path,
            f"{key} is {current} in the file; a counter or histogram sample must be a finite number >= 0 to be "
            "summed: remove that line to restart this series from 0",
        )
    total = current + amount
    if total == _INFINITY:
        raise InvalidValueError(
            f"adding {amount:g} to {key} (now {current:g}) in {path} would make it +Inf: a value that large "
            "cannot be summed; check the value recorded (durations are in seconds)"
        )
    return total


_INFINITY = float("inf")


def _combined(parts: list[Changes]) -> Changes:
    """One Changes holding ``parts`` in order, each kind combined by its own rule (see changes.Changes):
    summed, later replaces, larger wins, sets joined."""
    combined = Changes()
    for part in parts:
        for key, amount in part.added.items():
            combined.added[key] = combined.added.get(key, 0.0) + amount
        for key, delta in part.observed.items():
            total = combined.observed.get(key)
            if total is None:
                total = combined.observed[key] = HistogramDelta([0] * len(delta.buckets))
            total.buckets = [mine + theirs for mine, theirs in zip(total.buckets, delta.buckets)]
            total.sum += delta.sum
            total.count += delta.count
        combined.latest.update(part.latest)
        for key, value in part.maximum.items():
            current = combined.maximum.get(key)
            if current is None or value > current:
                combined.maximum[key] = value
        combined.active_providers |= part.active_providers
        combined.retired_markers |= part.retired_markers
    return combined


def _set_active(document: Document, active: dict[str, int]) -> None:
    family = c.ACTIVE_DEPLOYMENTS
    if family.name in document.blocks or active:
        count_active_deployments(document.block(family), active)


def count_active_deployments(block: Block, counts: Mapping[str, int]) -> None:
    """Set the active-deployments block to ``counts``: every provider the block already has keeps its series
    (0 with nothing running), and providers new to it follow. The store does this at each merge, and
    ``fraisier metrics`` at each scrape, so both write the same block."""
    family = c.ACTIVE_DEPLOYMENTS
    known = [parse_series_key(key)[1].get("provider", "") for key, _ in block.samples()]
    for provider in known:
        if provider:
            block.set(_key(family, (provider,)), float(counts.get(provider, 0)))
    for provider in sorted(set(counts) - set(known)):
        block.set(_key(family, (provider,)), float(counts[provider]))
