"""The order of hand-overs: ids numbered by a counter kept in the hand-over directory, under a flock, never by
the wall clock (after a clock step back, a later report must still win the latest gauges), and the bound on how
many may wait.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time

from fraisier_textfile.errors import TextfileWriteError, UnexpectedFileError
from fraisier_textfile.store import fs, process

# Order


SEQUENCE_FILE = "sequence"
"""The counter that orders hand-overs (no dot: names starting with one are temporaries; no .json: not a
hand-over)."""
_SEQUENCE_WAIT = 1.0
"""Seconds a writer waits for the counter's lock, once per process. Its holders only read and write a few bytes,
but on a loaded machine a holder can be descheduled for tens of milliseconds between taking the lock and
dropping it, and a shorter wait then gives two racing writers the same number. A writer of the directory holding
the lock for ever must not delay a deployment more than once: past this wait the counter is read without the
lock (two hand-overs may then share a number; both are applied, in an arbitrary order between them, as two
concurrent ones would be), and this process never waits for the counter's lock again (:data:`_HELD_FOR_EVER`)."""
_HELD_FOR_EVER = ("hand-over counter's lock held for ever",)
"""What this process remembers (process.py) once it waited :data:`_SEQUENCE_WAIT` for the counter's lock in
vain: a lock held that long is held on purpose, and a process recording many events must not pay the wait at
each. Inherited by a forked child, which is right: the holder is the same."""
_SEQUENCE_DIGITS = 20
_LONGEST_PAUSE = 0.001
"""Seconds between two tries for the counter's lock at most (see _lock_sequence)."""


def new_id(directory: fs.Directory) -> str:
    """A hand-over's id: ``s<sequence>-<pid>-<random>``. Sorting ids sorts the hand-overs by when they were
    written, so that the latest value of a gauge wins.

    The sequence is a counter in the hand-over directory (``sequence``), taken and incremented under a flock,
    not the wall clock: a clock stepped back (NTP, a VM restored, a process under faketime) would make a later
    report sort first and an older value win. The counter is not fsynced (it would add a journal commit to
    each hand-over): after a power loss it may go back, and a merger that lists a hand-over numbered at or
    past it moves it on (:func:`note_merged`), so only hand-overs written between the reboot and the
    first merge may sort before older ones."""
    return id_for(_next_sequence(directory))


def id_for(sequence: int) -> str:
    """The id of a hand-over numbered ``sequence`` by this process."""
    return f"s{sequence:0{_SEQUENCE_DIGITS}d}-{os.getpid()}-{os.urandom(6).hex()}"


def writer_of(handover_id: str) -> int | None:
    """The pid of the process that wrote the hand-over ``handover_id`` (see :func:`id_for`), None for an id of
    another shape (an earlier version's)."""
    parts = handover_id.split("-")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def sequence_of(handover_id: str) -> int | None:
    if handover_id[:1] != "s":
        return None
    number = handover_id[1 : 1 + _SEQUENCE_DIGITS]
    return int(number) if len(number) == _SEQUENCE_DIGITS and number.isdigit() and number.isascii() else None


def _next_sequence(directory: fs.Directory) -> int:
    descriptor = _open_sequence(directory)
    if descriptor is None:
        return 0
    try:
        _lock_sequence(descriptor)
        last, before_oldest_waiting = _read_sequence(descriptor)
        if last - before_oldest_waiting >= PENDING_LIMIT:
            raise TooManyWaiting(
                directory.path,
                f"{last - before_oldest_waiting} hand-overs wait unapplied in {directory.path}, the most kept: no "
                "merge has applied them (each says why in the log; check the textfile and its lock), so these "
                "events are not handed over",
                errno.ENOSPC,
            )
        value = last + 1
        try:
            _write_sequence(descriptor, value, before_oldest_waiting)
        except OSError:
            pass  # a counter owned by another user, read-only to us: the number is still past every earlier one
        return value
    finally:
        os.close(descriptor)  # also drops the lock


def numbered_since_merge(directory: fs.Directory) -> bool:
    """Whether hand-overs were numbered since the last merge noted where the waiting ones start
    (:func:`note_merged`): some wait, unless that merge could not note it. A hint, read without the counter's lock
    (a read racing a write may see either; garbage reads as none waiting)."""
    descriptor = _open_sequence(directory, create=False)
    if descriptor is None:
        return False
    try:
        last, before_oldest_waiting = _read_sequence(descriptor)
    finally:
        os.close(descriptor)
    return last > before_oldest_waiting


PENDING_LIMIT = 100_000
"""Hand-overs at most waiting unapplied (while merges keep failing: a corrupt file, a lock held for ever);
past it a hand-over is refused (TooManyWaiting: the caller keeps its events or says they are lost), so that a
broken set-up cannot fill the disk with them. Counted in the file as PENDING_FAMILY."""


class TooManyWaiting(TextfileWriteError):
    """PENDING_LIMIT hand-overs wait unapplied: no more is written."""


def note_merged(directory: fs.Directory, newest: int, oldest_waiting: int | None) -> None:
    """After a merge listed the hand-overs numbered up to ``newest`` and left those from ``oldest_waiting`` on
    (None: none), keep the counter past ``newest`` (never fsynced, it may have gone back in a power loss) and
    note where the waiting ones start, for PENDING_LIMIT. The counter is not created here: a writer does."""
    descriptor = _open_sequence(directory, create=False)
    if descriptor is None:
        return
    try:
        _lock_sequence(descriptor)
        last, _ = _read_sequence(descriptor)
        # None waiting of those listed: those written since (numbered past newest) are not applied yet, but with
        # nothing listed newest is unknown (0), and they are counted as applied: an undercount, never a refusal.
        before_oldest_waiting = oldest_waiting - 1 if oldest_waiting is not None else newest or last
        _write_sequence(descriptor, max(last, newest), before_oldest_waiting)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _open_sequence(directory: fs.Directory, create: bool = True) -> int | None:
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    created = False
    try:
        for _ in range(5):  # made or removed by another writer between two looks: looked at again
            try:
                descriptor = os.open(SEQUENCE_FILE, flags, dir_fd=directory.descriptor)
                break
            except FileNotFoundError:
                if not create:
                    return None
            try:
                # O_EXCL: what this process made, and only that, gets its mode and owner below.
                descriptor = os.open(SEQUENCE_FILE, flags | os.O_CREAT | os.O_EXCL, 0o664,
                                     dir_fd=directory.descriptor)
                created = True
                break
            except FileExistsError:
                pass  # another writer made it since our look: open that one
        else:
            return None  # made and removed over and over: numbered 0 this once (see order)
    except PermissionError:
        try:
            descriptor = directory.open_regular(SEQUENCE_FILE)
        except (OSError, UnexpectedFileError):
            return None
    except OSError:
        return None  # a symlink or a FIFO planted there: refused; the hand-over is numbered 0 (see order)
    try:
        status = os.fstat(descriptor)
        # A hard link has other names elsewhere (a writer's link to a file of root's it may write): writing the
        # counter would change that file. Refused as a symlink is.
        # One found there that its writers may not read (a file of root's one of them moved there): as root,
        # neither read nor written.
        if not stat.S_ISREG(status.st_mode) or status.st_nlink > 1 or (not created and directory.hides(status)):
            os.close(descriptor)
            return None
        if created:
            directory.settle_new(descriptor, 0o664)  # the users of one group share the counter
    except OSError:
        pass
    return descriptor


def _lock_sequence(descriptor: int) -> None:
    deadline = time.monotonic() + (0.0 if process.met(*_HELD_FOR_EVER) else _SEQUENCE_WAIT)
    pause = 0.0002
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                process.remember(*_HELD_FOR_EVER)
                return
            time.sleep(pause)
            # A holder that got the CPU back releases at once: a pause longer than the textfile lock's longest
            # poll would keep the waiter asleep well after that, which racing writers pay in their slowest calls.
            pause = min(pause * 2, _LONGEST_PAUSE)
        except OSError:
            return


def _read_sequence(descriptor: int) -> tuple[int, int]:
    """The counter: the last number given, and the number before the oldest hand-over waiting."""
    try:
        fields = os.pread(descriptor, 64, 0).split()[:2]
    except OSError:
        return 0, 0
    # Anything but the numbers we write (a writer of the directory is trusted with the metrics, not with
    # crashing this process or refusing every hand-over): counted from 0, bounded so that the id keeps its width.
    if not fields or not all(field.isdigit() and len(field) < _SEQUENCE_DIGITS for field in fields):
        return 0, 0
    last = int(fields[0])
    return last, min(int(fields[1]), last) if len(fields) == 2 else last


_SEQUENCE_WIDTH = 2 * _SEQUENCE_DIGITS
"""Bytes the counter's two numbers take at most, padded with blanks to that width: every write covers the one
before, so no ftruncate is needed (one system call less while the counter is locked, and no change of the file's
size to journal at each hand-over). Earlier versions read it as it is (two numbers split by blanks)."""


def _write_sequence(descriptor: int, last: int, before_oldest_waiting: int) -> None:
    data = f"{last} {before_oldest_waiting}".ljust(_SEQUENCE_WIDTH).encode() + b"\n"
    os.pwrite(descriptor, data, 0)
