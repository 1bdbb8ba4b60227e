"""The participant of the store's merges that counts Fraisier's deployments: :class:`FraisierStateSource`.

Under the store's lock (see store/transaction.py) it reads the cursor from the textfile (cursor.py), what is new
in Fraisier's database since (database.py opens it, reader.py reads its rows), and puts the cursor back with the
events: the same atomic rename writes both. Between merges it answers a scrape's two questions: is there news
(has_news), and which deployments run now (active_deployments, owners.py).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fraisier_textfile.changes import Changes
from fraisier_textfile.store.transaction import Merge, Participant

from .cursor import CURSOR, META_KEY, REPLACED, Cursor
from .database import Absent, Busy, Database, Fingerprint, Unreadable, fraisier_db_path
from .labels import FraiseLabels, fraisier_config_path
from .owners import Owners
from .reader import RowReader, checked_since

log = logging.getLogger(__name__)

SWITCH_ENVIRONMENT = "FRAISIER_TEXTFILE_FRAISIER_STATE"
"""``off`` turns the source off; anything else (or unset) reads Fraisier's state where Fraisier is found."""


class FraisierStateSource(Participant):
    """A participant of the store's merges (store/transaction.py) that takes what is new in Fraisier's state.

    ``database``: Fraisier's SQLite file (default: as Fraisier finds it). ``status_dir``: its status files
    (default FRAISIER_STATUS_DIR, else a fraise environment's ``status_dir:``, else /var/lib/fraisier/status).
    ``config``: fraises.yaml (default: as Fraisier finds it). ``since``: a Unix time; on the first sight of a
    database (no cursor in the textfile), deployments started before it are taken as already counted."""

    def __init__(self, database: Path | str | None = None, *, status_dir: Path | str | None = None,
                 config: Path | str | None = None, since: float | None = None) -> None:
        path = fraisier_db_path() if database is None else Path(database)
        explicit = database is not None or bool(os.environ.get("FRAISIER_DB_PATH"))
        self.database = None if path is None else Database(path, explicit=explicit)
        self.labels = FraiseLabels(fraisier_config_path() if config is None else Path(config))
        self.owners = Owners(status_dir, self.labels)
        self.reader = RowReader(self.labels, self.owners, None if since is None else checked_since(since))
        self._problem: str | None = None
        self._fingerprint: Fingerprint | None = None
        self._committed: Fingerprint | None = None
        self._live: dict[int, tuple[str, str, str]] = {}
        """Rows in progress whose owner lived at the last read: pk -> (fraise, environment, provider)."""
        self._busy_logged = False

    # The participant

    def collect(self, merge: Merge) -> Changes | None:
        database = self.database
        if database is None:
            return None
        document = merge.document
        text = CURSOR.get(document) or None
        cursor = Cursor.parse(text, REPLACED.get(document)) if text is not None else None
        if text is not None and cursor is None:
            self._report(f"the {META_KEY} line of the textfile is not one this version writes ({text[:60]!r}): "
                         "Fraisier's database is not read; remove the line to count its history anew")
            return None
        self.labels.refresh()
        try:
            fingerprint, (new_cursor, live, changes) = database.read(
                lambda connection: self.reader.read(connection, cursor, database.path))
        except Absent:
            return None
        except Busy as error:
            # Fraisier's connections come and go (each checkpoints and deletes the WAL when it closes): a busy
            # moment is expected, and the next occasion reads what this one could not. Said once a process.
            log.log(logging.DEBUG if self._busy_logged else logging.INFO, "%s", error)
            self._busy_logged = True
            return None
        except Unreadable as error:
            self._report(str(error))
            return None
        if self._problem is not None:
            log.info("Fraisier's database %s is read again", database.path)
            self._problem = None
        self._fingerprint = fingerprint
        # A live view, not bookkeeping: taken at once, so that this merge's active count includes them.
        self._live = live
        line, replaced = new_cursor.render()
        CURSOR.put(document, line)
        REPLACED.put(document, replaced)
        return changes if changes else None

    def after_commit(self, merge: Merge) -> None:
        self._committed = self._fingerprint

    # For readers that poll (a scrape)

    def has_news(self) -> bool:
        """Cheaply (a few stat calls): whether a merge could take something new, because the database
        changed since this process's last merge, or a deployment it saw in progress lost its owner."""
        if self.database is None:
            return False
        if self.reader.settling:
            return True
        now = self.database.fingerprint()
        if now != self._committed and now != self.database.tried:
            return True
        return any(self.owners.gone(fraise, environment) for fraise, environment, _ in self._live.values())

    def active_deployments(self) -> dict[str, int]:
        """Fraisier's deployments in progress now, by provider: rows read in progress whose owner lives."""
        counts: dict[str, int] = {}
        for fraise, environment, provider in self._live.values():
            if not self.owners.gone(fraise, environment):
                counts[provider] = counts.get(provider, 0) + 1
        return counts

    def _report(self, problem: str) -> None:
        """One line per problem, not one per scrape: logged again only when it changes."""
        if problem != self._problem:
            log.warning("%s", problem)
            self._problem = problem


def participants(since: float | None = None) -> list[FraisierStateSource]:
    """The state source where Fraisier is (installed, or FRAISIER_DB_PATH set) unless turned off with
    FRAISIER_TEXTFILE_FRAISIER_STATE=off: the participants a refresh, a scrape or the dispatcher gives its
    store."""
    if os.environ.get(SWITCH_ENVIRONMENT, "").strip().lower() in ("off", "0", "false", "no"):
        return []
    if fraisier_db_path() is None:
        return []
    return [FraisierStateSource(since=since)]
