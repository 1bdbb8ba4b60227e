"""Checking what a file's layout line claims while the disk works, not before.

A merge of a file read from disk takes it as its layout line lays it out (format/reader.py, ``read_claimed``) and
checks the CRC-32s that vouch for it (format/layout.py) once the new version is written, while the device writes it
back: the merge asks the kernel to start the writeback (files.start_writeback) before it checks, and fsyncs after, so
on a disk the check costs no wall time, in the merge's own thread (bench/README.md has the figures). The merge
renames nothing before the check is done: a file whose claims do not hold (someone changed it since we wrote it) is
merged again from the start, read line by line (transaction.py), and nothing taken from it on trust is ever
written.

Why no thread of its own, as the check had at first: starting one was paid on the merge's path by every new process
(most merges are a new process's), where the device's writeback overlaps the check without one (bench/README.md,
"The `merge4` round").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fraisier_textfile.format.layout import Claims


class Check:
    """The check of one file's claims: made at the first :meth:`holds`, its verdict kept."""

    __slots__ = ("_claims", "_verdict")

    def __init__(self, claims: Claims) -> None:
        self._claims = claims
        self._verdict: bool | None = None

    def holds(self) -> bool:
        """Whether every claim holds (checked at the first call). A check that fails in any way (not even memory for
        a checksum) is a claim that does not hold: the file is then read line by line."""
        if self._verdict is None:
            try:
                self._verdict = self._claims.hold()
            except Exception:
                self._verdict = False
        return self._verdict
