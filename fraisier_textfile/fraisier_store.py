"""Fraisier's textfile store: the store (store/) opened with Fraisier's families and the rules of its deployments
in flight.

The store knows merge rules, not Fraisier: it is handed a schema (``catalogue.SCHEMA``) and what its markers
count (``changes.MARKER_RULES``). This is the one place the two meet, for the recorder, the CLI, the server and
users of ``fraisier_textfile.TextfileStore``; a store of other families is a ``store.textfile.TextfileStore``
given its own schema.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from fraisier_textfile.catalogue import SCHEMA
from fraisier_textfile.changes import MARKER_RULES
from fraisier_textfile.store.lifecycle import SeriesLifecycle
from fraisier_textfile.store.lock import DEFAULT_LOCK_TIMEOUT
from fraisier_textfile.store.textfile import TextfileStore
from fraisier_textfile.store.transaction import Participant

if TYPE_CHECKING:
    from fraisier_textfile.store import fs


class FraisierStore(TextfileStore):
    """A textfile directory of Fraisier's families, its deployments in flight counted by their markers."""

    def __init__(self, directory: fs.PathName, lock_timeout: float = DEFAULT_LOCK_TIMEOUT, *,
                 lifecycle: SeriesLifecycle | None = None, participants: Iterable[Participant] = ()) -> None:
        """As :class:`TextfileStore`'s, with Fraisier's schema and its markers' rules."""
        super().__init__(directory, lock_timeout, schema=SCHEMA, markers=MARKER_RULES, lifecycle=lifecycle,
                         participants=participants)
