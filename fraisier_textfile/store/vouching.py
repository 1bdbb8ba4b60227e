"""Checking what a file's layout line claims while the disk works, not before.

A merge of a file read from disk takes it as its layout line lays it out (format/reader.py, ``read_claimed``) and
checks the CRC-32s that vouch for it (format/layout.py) here, in a thread started when the new version is about to
be written: zlib lets the merge's own thread write and fsync meanwhile, so on a disk the check costs no wall time
(bench/README.md has the figures). The merge renames nothing before the check is done: a file whose claims do not
hold (someone changed it since we wrote it) is merged again from the start, read line by line (transaction.py),
and nothing taken from it on trust is ever written.

A file too small for a thread to pay (starting one costs about what checking :data:`THREAD_FROM` bytes does) is
checked in the merge's own thread, as is any where no thread can be started (the interpreter shutting down, no
resources), as a reader that is not merging checks them.
"""

from __future__ import annotations

import _thread
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fraisier_textfile.format.layout import Claims

THREAD_FROM = 1 << 19
"""Bytes claimed from which the check gets a thread of its own: below, checking them in the merge's thread costs
less than a thread's start (measured: bench/README.md)."""


class Check:
    """The check of one file's claims: begun with :meth:`start` (at most once), its verdict awaited with
    :meth:`holds`."""

    __slots__ = ("_claims", "_done", "_verdict")

    def __init__(self, claims: Claims) -> None:
        self._claims = claims
        self._done: _thread.LockType | None = None  # held until the thread has its verdict
        self._verdict: bool | None = None

    def start(self) -> None:
        """Begin the check in a thread of its own (for a small file, or if none can be started, :meth:`holds`
        checks)."""
        if self._done is not None or self._verdict is not None or self._claims.size < THREAD_FROM:
            return
        done = _thread.allocate_lock()
        done.acquire()
        try:
            _thread.start_new_thread(self._run, (done,))
        except RuntimeError:
            return
        self._done = done

    def _run(self, done: _thread.LockType) -> None:
        try:
            self._verdict = self._claims.hold()
        except BaseException:  # not even memory for a checksum: the file is read line by line
            self._verdict = False
        finally:
            done.release()

    def holds(self) -> bool:
        """Whether every claim holds: the thread's verdict once it has one, else checked now."""
        done = self._done
        if done is not None:
            done.acquire()
            self._done = None
        elif self._verdict is None:
            self._verdict = self._claims.hold()
        return self._verdict is True
