"""What is new in Fraisier's ``tb_deployment`` since the cursor, read in one snapshot, as the events it records.

What a row records (labels: ``provider`` and ``fraise_type`` from fraises.yaml, see labels.py):

- first seen finished (``success``, ``failed``, ``rolled_back``, ``rollback_failed``): one deployment with
  that status, its duration (``duration_seconds``), the last-deployment time (``completed_at``); a failed,
  rolled-back or rollback-failed one also an error (``error_type`` from its message, see vocabulary.py);
  a rolled-back one also a rollback (reason from its message; Fraisier stores no rollback duration, so the
  rollback histogram is not fed);
- a row counted finished that becomes ``rolled_back`` later: only the rollback;
- a row in progress: active while its owner lives (:meth:`FraisierStateSource.active_deployments`),
  ``crashed`` once its owner is provably gone (owners.py), and nothing more after that.

Its cost does not grow with the history: new rows are read by primary key (``pk > high``), rows in progress
and rows finished since the last full check by primary key (cursor.py). Only a full check (a process's first
read, then every FULL_CHECK_SECONDS) counts the ``rolled_back`` rows (from Fraisier's ``idx_deployment_status``
alone) and, when more are rolled back than accounted, finds the older rows marked since. A database replaced or
restored from a backup (the row the cursor names is gone or another) is logged once and counted from its first
row updated after the latest one read: a backup's history was counted already, from the original; a database
made anew (the old one deleted) holds nothing that was. The database replaced, put back before any newer row was
read (its last row read is there again, same uuid), is recognised and counted from that row on.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from fraisier_textfile import catalogue
from fraisier_textfile import changes as events
from fraisier_textfile.changes import Changes
from fraisier_textfile.errors import InvalidValueError

from .cursor import Cursor
from .database import Absent, Unreadable
from .labels import FraiseLabels
from .owners import Owners
from .vocabulary import FAILED, IN_PROGRESS, error_type, rollback_reason, timestamp

log = logging.getLogger(__name__)

MAX_DURATION = 366 * 24 * 3600.0
"""The longest duration taken as stored (a year); see _count_finished."""
FULL_CHECK_SECONDS = 60.0
"""How often a long-lived reader (``fraisier metrics``) counts the rolled-back rows to find rollbacks marked on
rows finished before its last full check (a new process, a refresh, does it at once)."""
SETTLING_SECONDS = 2.0
"""How long a failed row may still become rolled_back by its deployer's next commit (see
RowReader._may_be_rolled_back_yet)."""
REQUIRED_COLUMNS = frozenset({
    "pk_deployment", "id", "fraise_name", "environment_name", "started_at", "completed_at", "duration_seconds",
    "status", "error_message", "updated_at",
})
ROW_COLUMNS = (
    "pk_deployment, id, fraise_name, environment_name, started_at, completed_at, duration_seconds, status, "
    "error_message, updated_at"
)


def checked_since(since: float) -> float:
    """``since`` if it is a time this host's clock can show (its local date is within the years 1 to 9999);
    else InvalidValueError. NaN, infinities and 1e20 would otherwise fail the first merge that reads a new
    database, and be ignored silently by every other."""
    try:
        if not math.isfinite(since):
            raise ValueError(since)
        datetime.fromtimestamp(since)
    except (ValueError, OverflowError, OSError, TypeError):
        raise InvalidValueError(f"since={since!r} is not a time this host's clock can show: give Unix seconds "
                                "within the years 1 to 9999") from None
    return float(since)


class _Row:
    __slots__ = ("completed_at", "duration", "environment", "error_message", "fraise", "id", "pk", "started_at",
                 "status", "updated_at")

    def __init__(self, values: tuple[Any, ...]) -> None:
        (self.pk, self.id, self.fraise, self.environment, self.started_at, self.completed_at, self.duration,
         self.status, self.error_message, self.updated_at) = values


class RowReader:
    """Reads what changed in ``tb_deployment`` since a cursor into the events it records, and the cursor after.

    ``since``: a Unix time; on the first sight of a database (no cursor), deployments started before it are
    taken as already counted."""

    def __init__(self, labels: FraiseLabels, owners: Owners, since: float | None) -> None:
        self.labels = labels
        self.owners = owners
        self.since = since
        self.next_full_check = 0.0
        """When (time.monotonic()) the next read is a full check: the first read of a process is one."""
        self.settling = False
        """The last read left a failed row settling (see _may_be_rolled_back_yet): the next poll reads again."""

    def read(self, connection: sqlite3.Connection, cursor: Cursor | None,
             database: Path) -> tuple[Cursor, dict[int, tuple[str, str, str]], Changes]:
        """What changed since ``cursor``, in one snapshot: rows after its highest, rows it has in progress, rows
        finished since its last full check (a rollback marked on them). A full check, at a process's first read
        and then every FULL_CHECK_SECONDS, also counts the rolled-back rows (Fraisier's status index alone) and,
        when more are rolled back than accounted, finds the older rows marked since the last full check: the
        only part of a read that grows with the history, kept off most scrapes."""
        changes = Changes()
        connection.execute("BEGIN")  # one snapshot for every query below
        columns = {row[0] for row in connection.execute("SELECT name FROM pragma_table_info('tb_deployment')")}
        if not columns and connection.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0] == 0:
            # No table at all: Fraisier's connection made the file and has not created its tables yet (or the
            # file was truncated to nothing, which Fraisier fills again). Nothing deployed, nothing to fix.
            raise Absent
        missing = REQUIRED_COLUMNS - columns
        if missing:
            if not columns:
                # Tables, but not Fraisier's: FRAISIER_DB_PATH names another application's file, or a
                # Fraisier renamed its table.
                raise Unreadable(f"Fraisier's database {database} has no table tb_deployment: another "
                                  "application's database, or a Fraisier this reader does not know (it reads 0.84's "
                                  "schema); set FRAISIER_DB_PATH to Fraisier's database, or upgrade fraisier-textfile")
            raise Unreadable(f"Fraisier's database {database} has no column {', '.join(sorted(missing))}: "
                              "written by a version of Fraisier this reader does not know (it reads 0.84's schema); "
                              "upgrade fraisier-textfile")
        newest = connection.execute("SELECT max(pk_deployment) FROM tb_deployment").fetchone()[0] or 0
        if cursor is not None and cursor.replaced is not None and cursor.replaced[0] > cursor.high:
            pk, identity = cursor.replaced
            row = connection.execute("SELECT id FROM tb_deployment WHERE pk_deployment = ?", (pk,)).fetchone()
            if row is not None and str(row[0]) == identity:
                # The database it replaced is back (put back after a restore): its rows up to that one were counted
                # from it, before.
                log.warning("Fraisier's database %s is again the one read before it was replaced (its deployment "
                            "#%d is back): its deployments up to #%d were counted already", database, pk, pk)
                cursor = self._start_at(connection, pk, with_in_progress=False)
        if cursor is not None and cursor.high > 0:
            row = connection.execute("SELECT id FROM tb_deployment WHERE pk_deployment = ?", (cursor.high,)).fetchone()
            if row is None or str(row[0]) != cursor.high_id:
                # A restored backup's rows were counted from the original; a database made anew (the old one
                # deleted) holds none of those. What tells them apart is time: a row updated after the latest
                # one read was never counted, whichever database it is in.
                first_unread = connection.execute(
                    "SELECT min(pk_deployment) FROM tb_deployment WHERE updated_at > ?", (cursor.updated,)
                ).fetchone()[0] if cursor.updated != "-" else None
                boundary = newest if first_unread is None else first_unread - 1
                log.warning(
                    "Fraisier's database %s was replaced or restored from a backup (its deployment #%d is %s): "
                    "what it holds of the history already counted is not counted again; counting its deployments "
                    "after #%d", database, cursor.high, "gone" if row is None else "another one", boundary)
                left = (cursor.high, cursor.high_id)
                earlier = cursor.replaced
                cursor = self._start_at(connection, boundary, with_in_progress=False)
                cursor.replaced = earlier if earlier is not None and earlier[0] > left[0] else left
                if cursor.replaced[0] <= cursor.high:
                    cursor.replaced = None  # counting resumes past it: its coming back would change nothing
        if cursor is None:
            cursor = self._start_since(connection) if self.since is not None else Cursor()
        full = time.monotonic() >= self.next_full_check
        updated = cursor.updated
        in_progress: set[int] = set()
        recent = dict(cursor.recent)
        rolled_back_read = 0  # rows accounted rolled back in this read, not kept in ``recent``
        live: dict[int, tuple[str, str, str]] = {}
        later_rows: list[_Row] = []
        settling: list[int] = []
        latest_of_pair: dict[tuple[object, object], int] = {}

        def finished(pk: int, rolled_back: bool) -> None:
            nonlocal rolled_back_read
            if full:
                rolled_back_read += rolled_back  # the full check below accounts for it, and forgets ``recent``
            else:
                recent[pk] = rolled_back

        def take(row: _Row) -> None:
            nonlocal updated
            if isinstance(row.updated_at, str) and (updated == "-" or row.updated_at > updated):
                updated = row.updated_at
            key = (row.fraise, row.environment)
            if row.pk > latest_of_pair.get(key, 0):
                latest_of_pair[key] = row.pk
            provider, fraise_type = self.labels.of(str(row.fraise))
            changes.count_active(provider, 0)  # the provider's active series exists, at 0 with nothing running
            if row.status in IN_PROGRESS:
                in_progress.add(row.pk)
                later_rows.append(row)
                return
            if row.status == "failed" and self._may_be_rolled_back_yet(row):
                in_progress.add(row.pk)
                settling.append(row.pk)
                return
            self._count_finished(changes, row, provider, fraise_type)
            finished(row.pk, row.status == "rolled_back")

        for values in connection.execute(
            f"SELECT {ROW_COLUMNS} FROM tb_deployment WHERE pk_deployment > ? ORDER BY pk_deployment",
            (cursor.high,),
        ):
            take(_Row(values))
        high = max(cursor.high, newest)
        high_id = cursor.high_id
        if high != cursor.high:
            row = connection.execute("SELECT id FROM tb_deployment WHERE pk_deployment = ?", (high,)).fetchone()
            high_id = str(row[0]) if row is not None else "-"
        if cursor.in_progress:
            # A row in progress that was deleted since is not found: nothing more is counted for it.
            for values in _rows_by_pk(connection, cursor.in_progress):
                take(_Row(values))
        not_rolled_back = [pk for pk, flag in cursor.recent.items() if not flag]
        if not_rolled_back:
            for values in _rows_by_pk(connection, not_rolled_back):
                row = _Row(values)
                if row.status == "rolled_back":  # counted finished before: only the rollback is new
                    provider = self.labels.of(str(row.fraise))[0]
                    events.rollback_of_unknown_duration(changes, provider, rollback_reason(row.error_message))
                    recent[row.pk] = True
                    if isinstance(row.updated_at, str) and (updated == "-" or row.updated_at > updated):
                        updated = row.updated_at
        rolled_back = cursor.rolled_back
        checked_updated = cursor.checked_updated
        if full:
            rolled_back = connection.execute(
                "SELECT count(*) FROM tb_deployment WHERE status = 'rolled_back'").fetchone()[0]
            accounted = cursor.rolled_back + rolled_back_read + sum(recent.values())
            if rolled_back > accounted:
                updated = self._late_rollbacks(connection, cursor, set(recent), changes, updated)
            checked_updated = updated
            recent = {}
            self.next_full_check = time.monotonic() + FULL_CHECK_SECONDS
        # Fraisier runs one deployment of a fraise and environment at a time: a row in progress with a later
        # row of the same pair read in this pass has lost its owner. (Those read in earlier passes were
        # judged then.)
        for row in later_rows:
            provider, fraise_type = self.labels.of(str(row.fraise))
            if latest_of_pair[(row.fraise, row.environment)] > row.pk or self.owners.crashed(
                    connection, row.pk, row.fraise, row.environment, row.started_at):
                events.deployment_crashed(changes, provider, fraise_type, None)
                in_progress.discard(row.pk)
            else:
                live[row.pk] = (str(row.fraise), str(row.environment), provider)
                events.deployment_series(changes, provider, fraise_type)
        self.settling = bool(settling)
        # Once a newer row is read, the database read before the replacement is known not to be back: should it
        # come back, the row the cursor names is another one (see above).
        still_replaced = cursor.replaced if high == cursor.high else None
        return (Cursor(high, high_id, rolled_back, updated, checked_updated, in_progress, recent, still_replaced),
                live, changes)

    def _may_be_rolled_back_yet(self, row: _Row) -> bool:
        """Fraisier's deployer writes its status file ``rolled_back``, completes the row as failed, then marks
        it rolled_back in a second commit, milliseconds later. A failed row that may have been read in between
        (younger than SETTLING_SECONDS, its fraise's status file not ``failed``, its owner alive) is left for
        the next read, so that the deployment is counted with its final status, not failed by chance."""
        updated = timestamp(row.updated_at)
        if updated is None or not 0 <= time.time() - updated < SETTLING_SECONDS:
            return False
        status = self.owners.status_file(str(row.fraise), str(row.environment))
        if status is None or status.get("environment") not in (None, row.environment):
            return False  # no deployer's record: nothing says a rollback is coming
        # The status file is read after the database: it may already tell of the next deployment of this
        # fraise (whose start follows the mark). Only a record that says this one ended ``failed`` settles it.
        return status.get("state") != "failed" and not self.owners.gone(str(row.fraise), str(row.environment))

    def _count_finished(self, changes: Changes, row: _Row, provider: str, fraise_type: str) -> None:
        try:
            status = catalogue.check_deployment_status(row.status)
        except InvalidValueError:
            log.debug("Fraisier's deployment #%s has status %r, not a finished one this reader knows: not "
                      "counted", row.pk, row.status)
            return
        duration = row.duration
        # A value no deployment takes (negative, NaN, centuries) would poison the histogram's sum for ever (a
        # sum that reaches +Inf fails every later merge): the times stored say how long it took instead.
        if not isinstance(duration, (int, float)) or not 0 <= duration <= MAX_DURATION:
            started, completed = timestamp(row.started_at), timestamp(row.completed_at)
            duration = completed - started if started is not None and completed is not None else 0.0
            if not 0 <= duration <= MAX_DURATION:
                duration = 0.0
        finished = timestamp(row.completed_at) or timestamp(row.updated_at) or time.time()
        events.deployment_complete(changes, provider, fraise_type, status, float(duration), now=finished)
        if status in FAILED:
            events.deployment_error(changes, provider, error_type(row.error_message))
        if status == "rolled_back":
            events.rollback_of_unknown_duration(changes, provider, rollback_reason(row.error_message))

    def _late_rollbacks(self, connection: sqlite3.Connection, cursor: Cursor, recent: set[int],
                        changes: Changes, updated: str) -> str:
        """Rows accounted before the last full check and marked rolled_back since (Fraisier sets updated_at
        then); returns the latest updated_at, theirs included."""
        skip = cursor.in_progress | recent
        for values in connection.execute(
            f"SELECT {ROW_COLUMNS} FROM tb_deployment WHERE status = 'rolled_back' AND pk_deployment <= ? "
            "AND updated_at > ?",
            (cursor.high, cursor.checked_updated),
        ):
            row = _Row(values)
            if row.pk in skip:
                continue
            provider = self.labels.of(str(row.fraise))[0]
            events.rollback_of_unknown_duration(changes, provider, rollback_reason(row.error_message))
            if isinstance(row.updated_at, str) and row.updated_at > updated:
                updated = row.updated_at
        return updated

    def _start_at(self, connection: sqlite3.Connection, high: int, with_in_progress: bool) -> Cursor:
        """A cursor that takes every row up to ``high`` as accounted (a replaced database, ``since``)."""
        row = connection.execute("SELECT id FROM tb_deployment WHERE pk_deployment = ?", (high,)).fetchone()
        rolled_back, updated = connection.execute(
            "SELECT count(*), max(updated_at) FROM tb_deployment WHERE status = 'rolled_back' AND pk_deployment <= ?",
            (high,)).fetchone()
        latest = connection.execute("SELECT updated_at FROM tb_deployment WHERE pk_deployment = ?", (high,)).fetchone()
        candidates = [value for value in (updated, latest[0] if latest else None) if isinstance(value, str)]
        updated_text = max(candidates) if candidates else "-"
        in_progress: list[int] = []
        if with_in_progress:
            in_progress = [pk for (pk,) in connection.execute(
                "SELECT pk_deployment FROM tb_deployment WHERE status IN ('in_progress', 'pending') "
                "AND pk_deployment <= ?", (high,))]
        return Cursor(high, str(row[0]) if row else "-", rolled_back, updated_text, updated_text, in_progress)

    def _start_since(self, connection: sqlite3.Connection) -> Cursor:
        """The cursor of a first sight with ``since``: rows started before it count as counted (those still
        in progress stay followed, so that their end counts)."""
        assert self.since is not None
        since = datetime.fromtimestamp(self.since).isoformat()
        high = connection.execute(
            "SELECT max(pk_deployment) FROM tb_deployment WHERE started_at < ?", (since,)).fetchone()[0] or 0
        return self._start_at(connection, high, with_in_progress=True)


def _rows_by_pk(connection: sqlite3.Connection, pks: Iterable[int]) -> Iterable[tuple[Any, ...]]:
    wanted = sorted(pks)
    for start in range(0, len(wanted), 500):  # SQLite's limit on bound parameters is 999 in older versions
        chunk = wanted[start:start + 500]
        yield from connection.execute(
            f"SELECT {ROW_COLUMNS} FROM tb_deployment WHERE pk_deployment IN ({','.join('?' * len(chunk))})", chunk)
