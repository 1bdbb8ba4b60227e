"""A merge is one transaction over the file, run by the store with its participants, one per protocol.

The steps, under the lock:

    load the file -> collect (each participant, in order) -> combine with the caller's changes
    -> before apply (in reverse order) -> apply -> after apply (in order) -> write a temporary file
    -> check the lock is still ours -> rename it over the file -> [release the lock]
    -> after commit (in order) -> close (in order, always)

A participant owns one protocol of the directory: its files, its bookkeeping line in the document (declared in
format/bookkeeping.py), its place in the order and its clean-up. What it collects and the bookkeeping it writes
land in the same rename as the caller's changes, so a process killed at any point leaves all of them or none:
this is what makes a hand-over, a marker or a source's cursor count exactly once.

**The order is the ordering rule.** The store runs, in this order: the in-flight markers, the hand-overs, the
sources it was given (Fraisier's state database, say), and the series lifecycle. Collecting goes forwards:
markers are probed before hand-overs are listed, because a process whose end could not wait for the lock hands
it over *before* it releases its marker (listed first, a hand-over could be missed and its deployment counted
crashed as well as ended). Before applying goes backwards, like leaving nested blocks: the lifecycle first
(migrating histograms to the schema's buckets and refusing series over the bound, which the accounting of markers
then sees), the markers last (a dead marker's crash is applied to the migrated document). After applying and after
committing go forwards again.

A participant never raises for a problem of its own source (it logs it and collects nothing), so that one broken
source cannot stop the merge of the others; it raises FraisierTextfileError only for what must stop the whole
merge (the file itself cannot be read).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fraisier_textfile.format.model import Document
    from fraisier_textfile.store import fs
    from fraisier_textfile.store.changes import Changes


class Merge:
    """One merge under way: what every participant sees, and where it adds its part."""

    __slots__ = ("changes", "directory", "document", "own", "path", "read_from_disk", "running", "textfile")

    def __init__(
        self, directory: Path, path: Path, textfile: fs.Directory, document: Document, own: Changes,
        read_from_disk: bool,
    ) -> None:
        self.directory = directory
        """The textfile directory, for messages (never opened again by path: see ``textfile``)."""
        self.path = path
        """The textfile, for messages."""
        self.textfile = textfile
        """The textfile directory, held open and checked: every file operation is relative to it."""
        self.document = document
        """The file as loaded, which the merge changes and writes."""
        self.own = own
        """The changes of the process merging, emptied once the file is renamed into place."""
        self.changes = own
        """What the merge applies: after collecting, the caller's changes combined with every participant's;
        a participant's ``before_apply`` may replace it (the lifecycle drops refused series)."""
        self.read_from_disk = read_from_disk
        """Whether the document was read from the file now, rather than kept from this process's last merge
        (then nobody merged since, and nothing in it needs migrating)."""
        self.running: dict[str, int] = {}
        """Deployments running by provider that sources know of without an in-flight marker (rows of
        Fraisier's database): the markers' accounting adds them to the active gauge."""


class Participant:
    """A protocol taking part in every merge of a store. Each hook does nothing unless overridden."""

    def collect(self, merge: Merge) -> Changes | None:
        """Under the lock, the file loaded: the changes this protocol adds to the merge (None: none). May set
        the bookkeeping lines it owns in ``merge.document``."""
        return None

    def before_apply(self, merge: Merge) -> None:
        """Once every participant has collected, before ``merge.changes`` is applied (in reverse order)."""

    def after_apply(self, merge: Merge) -> None:
        """Once ``merge.changes`` is applied, before the file is written (in order)."""

    def after_commit(self, merge: Merge) -> None:
        """Once the file is renamed into place and the lock released: clean-up that may wait (removing the
        files the written file already accounts for). Never raises."""

    def close(self) -> None:
        """After every merge, committed or not: let go of what ``collect`` held open. Never raises."""
