"""Hand-overs left for another merger: those this version cannot apply and another merger can (a newer version's,
a store of another schema's), remembered in the hand-over directory so that no merge of this store reads them
again.

Every merge reads the hand-overs waiting, oldest first, at most HANDOVERS_PER_MERGE of them (handovers.py). One
left for another merger stays where it is, never set aside (its merger must find it), so without a memory every
merge of every process read each of them again: during an upgrade thousands may wait, and every record call paid
for reading them all. A memory of one process would not do: a CLI run merges once. And bounding the reads alone
would starve the hand-overs written after them: each new process would read the same first ones and stop.

The memory is one file per textfile, format version and schema, ``<textfile name>.left-v<format>-<schema's
fingerprint>`` in the hand-over directory (no leading dot, no ``.json``: neither a temporary nor a hand-over to any
version): a line naming the schema again, then one id a line. Per format version, since during an upgrade both
versions merge the same textfile and each leaves what the other applies; per schema, since stores of two schemas
may share one textfile, and each leaves the other's. Shared, they would replace each other's memory at each merge,
and each would read the same first ones again and again.

Ids, not inodes: an id names one content for good (a counter, the writer's pid and 48 random bits; a hand-over is
published whole by a rename, never rewritten, and a spent one is reused under a new id), and taking the inodes
would cost a status call for each hand-over remembered at every merge (the listing's own inode numbers are not
the files' on an overlayfs, and a memory that never matched would starve the hand-overs behind it again).

A hint, written under the textfile's lock, never fsynced: lost, garbled or too large, it reads as empty, and the
hand-overs are read again, a bounded number at each merge. Ids no longer in the directory (applied by their merger)
are dropped from it when it is written again; with none left it is removed.
"""

from __future__ import annotations

import os

from fraisier_textfile.errors import FraisierTextfileError
from fraisier_textfile.logger import get_logger
from fraisier_textfile.store import fs
from fraisier_textfile.store.files import random_suffix, unlink_quietly, write_parts
from fraisier_textfile.store.handover_codec import FORMAT_VERSION

LARGEST = 16 * 1024 * 1024
"""Bytes the memory may hold at most (about 370,000 ids); a larger one is read as empty. PENDING_LIMIT bounds
what each version leaves waiting well under that."""
_HEADER = "fraisier_textfile hand-overs left for another merger, judged by the schema"
log = get_logger(__name__)


def memory_name(textfile_name: str, fingerprint: str) -> str:
    return f"{textfile_name}.left-v{FORMAT_VERSION}-{fingerprint}"


class LeftForOthers:
    """The hand-overs of ``directory`` that a merge of this store found it cannot apply: read from the memory at the
    first call of :meth:`remembered`, written back by :meth:`save` if the merge changed it."""

    def __init__(self, directory: fs.Directory, textfile_name: str, fingerprint: str) -> None:
        self._directory = directory
        self._name = memory_name(textfile_name, fingerprint)
        self._fingerprint = fingerprint
        self._remembered: set[str] | None = None
        self._found: list[str] = []

    def remembered(self) -> set[str]:
        """The ids remembered (read from the memory at the first call)."""
        if self._remembered is None:
            self._remembered = self._load()
        return self._remembered

    def note(self, handover_id: str) -> None:
        """A hand-over read now that another merger must apply."""
        self._found.append(handover_id)

    def save(self, waiting: list[str], remembered_waiting: int) -> None:
        """Write the memory back if it changed: the ids noted, and those remembered still ``waiting`` (the ids in
        the directory), of which the caller found ``remembered_waiting``."""
        remembered = self._remembered or set()
        if not self._found and remembered_waiting == len(remembered):
            return  # each still there, none new: as it is (no set of 100,000 ids made at each merge to find that)
        kept = remembered.intersection(waiting)
        ids = sorted(kept.union(self._found))
        if not ids:
            unlink_quietly(self._directory, self._name)
            return
        data = "\n".join((f"{_HEADER} {self._fingerprint}", *ids, "")).encode()
        temporary = f".{self._name}.{random_suffix()}"
        try:
            descriptor = self._directory.create(temporary, fs.FILE_MODE)
        except OSError as error:
            log.debug("cannot remember the hand-overs left for another merger in %s: %s", self._directory.path, error)
            return
        try:
            self._directory.settle_new(descriptor, fs.FILE_MODE)  # root's, in another user's directory: that user's
            write_parts(descriptor, (data,))
            self._directory.replace(temporary, self._name)
        except (OSError, FraisierTextfileError) as error:
            unlink_quietly(self._directory, temporary)
            log.debug("cannot remember the hand-overs left for another merger in %s: %s", self._directory.path, error)
        finally:
            os.close(descriptor)

    def _load(self) -> set[str]:
        try:
            data = self._directory.read_regular(self._name, largest=LARGEST)
        except (OSError, FraisierTextfileError):
            return set()  # none yet, or not one this store can use: the hand-overs are read again
        header, _, ids = data.decode("utf-8", "replace").partition("\n")
        if header != f"{_HEADER} {self._fingerprint}":
            return set()
        return set(ids.split())
