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

**The seal.** Most files a merge reads are as the store wrote them, and checksumming one took a new process about
half a millisecond of CPU (a 1.4 MB file), which on two cores the writeback did not hide. So the store seals each
file it writes: once its bytes are written, the nanoseconds of its mtime are set to a number its layout line gives
(layout.seal_of), its second left as the kernel set it. Whoever changes the file in place (an editor, a script, a
copy) has the kernel set its mtime again, which breaks the seal; a file whose mtime still shows it, the same before
and after the read, is the one the store wrote, and is taken as laid out without a checksum. Whoever puts the mtime
back by hand forges it, as whoever can write the file can write any value into it (layout.py): the seal, like the
checksums, guards against mistakes, not forgers. And a merge that fails on a file it took at its seal checks the
claims then, as one that took it unchecked does (transaction.py), in the same process too while the document is
cached: a forged seal gets the same refusal, with its line. Nor does a merge checksum anew bytes it took unchecked
(a segment it edits, a header, another writer's family) before it checks them against their claims
(layout.check_claimed): a broken line there would otherwise be written on under a checksum of its own, vouched for
to every reader after. What a forged seal does let through is a broken line in a segment the merge leaves as it is:
it goes on with the checksum claimed for it, until a merge changes that segment or a reader checks the claims.
A filesystem that keeps whole seconds keeps no seal: its files are checksummed, as before.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from fraisier_textfile.format.layout import seal_of

if TYPE_CHECKING:
    from fraisier_textfile.format.layout import Claims

_SECOND = 1_000_000_000


def seal(descriptor: int, line: str) -> None:
    """Seal the file open at ``descriptor``, written, whose layout line's value is ``line``: its mtime's nanoseconds
    set to ``line``'s seal, its second the kernel's (node_exporter's node_textfile_mtime_seconds and
    rules.clock_is_behind read it: the kernel's clock, not this process's, which faketime or a stepped clock may
    have moved). A filesystem that refuses it leaves the file unsealed: checksummed when read, as before."""
    try:
        status = os.fstat(descriptor)
        mtime = status.st_mtime_ns - status.st_mtime_ns % _SECOND + seal_of(line)
        os.utime(descriptor, ns=(status.st_atime_ns, mtime))
    except OSError:
        pass


def sealed(claims: Claims, mtime_ns: int) -> bool:
    """Whether a file read with ``claims`` and whose mtime was ``mtime_ns`` before and after the read shows its
    layout line's seal."""
    return mtime_ns % _SECOND == seal_of(claims.line)


class Check:
    """The check of one file's claims: made at the first :meth:`holds`, its verdict kept."""

    __slots__ = ("_claims", "_verdict", "sealed")

    def __init__(self, claims: Claims, sealed: bool = False) -> None:
        self._claims = claims
        self._verdict: bool | None = None
        self.sealed = sealed
        """The file showed its seal: the merge renames without checking, and checks only if it fails."""

    def holds(self) -> bool:
        """Whether every claim holds (checked at the first call). A check that fails in any way (not even memory for
        a checksum) is a claim that does not hold: the file is then read line by line."""
        if self._verdict is None:
            try:
                self._verdict = self._claims.hold()
            except Exception:
                self._verdict = False
        return self._verdict
