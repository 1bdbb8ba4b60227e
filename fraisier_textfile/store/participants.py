"""The seam through which a protocol takes part in a merge, under the store's lock.

A merge is one transaction: lock → load the file → each participant collects its changes (and may update the
bookkeeping lines it owns in ``document.meta``) → apply → write → atomic rename → release → each participant's
``after_commit``. What a participant collects and the bookkeeping it writes land in the same rename, so a
process killed at any point leaves either both or neither: this is what makes a source's cursor exact.

Participants run in the order the store was given them, after the store's own protocols (in-flight markers,
then hand-overs) and before the series lifecycle."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from fraisier_textfile.changes import Changes
    from fraisier_textfile.format.model import Document


class Participant(Protocol):
    """A protocol of the store's directory, or a source of events read under the lock."""

    def collect(self, document: Document) -> Changes | None:
        """Under the lock, with the file as loaded: the changes to merge now (None: nothing). May set or remove
        the ``document.meta`` keys this participant owns, and no others. Must not raise for a problem of its
        own source (log it and return None): a failing participant must not stop the merge of the others."""
        ...

    def after_commit(self) -> None:
        """After the file was renamed into place and the lock released: clean-up that may wait (deleting files
        the written file already accounts for). Never raises."""
        ...
