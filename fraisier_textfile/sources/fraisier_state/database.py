"""Fraisier's SQLite database, opened read-only: never holding Fraisier up, never creating a file beside it.

Fraisier (``fraisier/database.py``) keeps it in WAL mode and opens and closes a connection per operation, each
waiting up to 5 s for a busy database. While no writer is connected (no ``-wal`` file: most of the time) the file
is read ``immutable=1`` and the result kept only if the file did not change while it was read; while a writer is
connected, read-only (``mode=ro``, sharing its ``-shm``) with no busy timeout. A busy database is left for the
next occasion. (A ``mode=ro`` reader alone would have to create the ``-shm`` file, which a user who may not write
Fraisier's directory cannot: ``attempt to write a readonly database``.)
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from .files import read_head

DEFAULT_DB_PATH = Path("/opt/fraisier/fraisier.db")  # Fraisier's fraisier.database.DEFAULT_DB_PATH

Fingerprint = tuple[int, ...]
"""What changes when Fraisier commits (see _fingerprint)."""
Result = TypeVar("Result")


class Unreadable(Exception):
    """The database cannot be read this time (busy, missing, corrupt, of another schema): the message says
    which, in one line."""


class Busy(Unreadable):
    """Fraisier holds the database at this moment."""


class Absent(Exception):
    """No database where Fraisier would make one: it has not deployed on this host (yet)."""


def fraisier_db_path() -> Path | None:
    """Fraisier's database, as ``fraisier.database.get_db_path()`` finds it; None without Fraisier (not
    installed, no FRAISIER_DB_PATH). Its own rules, without importing it: a scrape must not pay for Fraisier's
    import."""
    configured = os.environ.get("FRAISIER_DB_PATH")
    if configured:
        return Path(configured)
    if DEFAULT_DB_PATH.parent.exists():
        return DEFAULT_DB_PATH
    spec = find_spec("fraisier")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent.parent / "fraisier.db"


class Database:
    """Fraisier's database file at ``path``, read in one snapshot by :meth:`read`.

    ``explicit``: the path was given (an argument, FRAISIER_DB_PATH); False: it is only where Fraisier would put
    it, and until it exists Fraisier has not deployed here, which is not worth a log line."""

    def __init__(self, path: Path, *, explicit: bool) -> None:
        self.path = path
        self.explicit = explicit
        self.tried: Fingerprint | None = None
        """The database as it was at the last read that failed: not tried again at a scrape until it changes."""

    def fingerprint(self) -> Fingerprint:
        """The database as it is now, in a few stat calls: another one after each of Fraisier's commits."""
        return _file_fingerprint(_resolved(self.path))

    def read(self, read: Callable[[sqlite3.Connection], Result]) -> tuple[Fingerprint, Result]:
        """``read`` run on a read-only connection (called again, on a new one, if the first must be given up),
        and the fingerprint of the database it read. Raises Absent, Busy or Unreadable (``read`` may raise them
        too, and sqlite3.Error)."""
        # SQLite follows a symlinked path and keeps the -wal and -shm beside the file it leads to: so must we, or
        # a database with a writer connected would look like the file alone (and its WAL be ignored).
        path = _resolved(self.path)
        database, wal = _stat(str(path)), _stat(f"{path}-wal")
        # A read that fails is not tried again (at a scrape) until the file changes; one that succeeds is
        # tried again until its merge is committed (a busy lock must not leave the news for the next change).
        self.tried = before = _fingerprint(database, wal)
        if isinstance(database, FileNotFoundError):
            if not self.explicit:
                raise Absent
            raise Unreadable(f"Fraisier's database {path} does not exist: no deployment is read from it (set "
                             "FRAISIER_DB_PATH to where Fraisier keeps it)")
        if isinstance(database, OSError):
            raise Unreadable(f"cannot read Fraisier's database {path}: {database.strerror}")
        if not stat.S_ISREG(database.st_mode):
            raise Unreadable(f"Fraisier's database {path} is not a regular file: nothing is read from it "
                             "(set FRAISIER_DB_PATH to Fraisier's database file)")
        # No -wal file: no writer is connected, and the file alone is the database. Read it as such
        # (immutable: no -shm or -wal is created in Fraisier's directory, and no lock is taken), and keep the
        # result only if the file did not change meanwhile. A -wal file: a writer is connected, its -shm
        # exists, and a read-only WAL reader shares it.
        immutable = isinstance(wal, OSError)
        # An empty file alone is an empty database, read as such without opening it: the files of /proc say they
        # are empty, and /proc/kmsg is consumed by being read (the syslog reading it would lose the kernel's
        # messages). Whoever owns the database may make it a symlink to it, read by root's merge at every scrape.
        empty = immutable and before[2] == 0  # its size when ``before`` was taken: a change since is seen after
        for attempt in (1, 2):
            try:
                connection = _connect(path, immutable, empty)
            except sqlite3.Error as error:
                if immutable and (changed := _changed(path, before)) is not None:
                    raise changed from None
                raise _unreadable(path, error) from None
            try:
                result = read(connection)
            except sqlite3.Error as error:
                connection.close()
                if attempt == 1 and not immutable and _needs_shm(error) and not os.path.exists(f"{path}-wal"):
                    # The writer closed its connection meanwhile, with its -shm: now the file alone is it.
                    immutable = True
                    continue
                # A file rewritten under an immutable read (a restore by cp, a checkpoint) reads as malformed, or
                # as no database: that is the file changing, not a database to repair.
                if immutable and (changed := _changed(path, before)) is not None:
                    raise changed from None
                if attempt == 1 and immutable and _says_corrupt(error):
                    # Rewritten in place twice within the clock tick of its timestamps, the file looks unchanged:
                    # a second read tells a file being rewritten from a corrupt one.
                    continue
                raise _unreadable(path, error) from None
            except Unreadable:
                if immutable and (changed := _changed(path, before)) is not None:
                    raise changed from None
                raise
            finally:
                connection.close()
            if immutable and (changed := _changed_since(path, before)) is not None:
                raise changed
            self.tried = None
            return before, result
        raise AssertionError("unreachable")


def _changed_since(path: Path, before: Fingerprint) -> Busy | None:
    """Why a read of the database as immutable is not to be kept, if it is not: the file changed since ``before``
    (a commit, a checkpoint, a replacement), or a writer connected meanwhile."""
    if _file_fingerprint(path) != before or os.path.exists(f"{path}-wal"):
        return Busy(f"Fraisier's database {path} changed while it was read: read again next time")
    return None


def _changed(path: Path, before: Fingerprint) -> Busy | None:
    """Why a read of the database as immutable that failed is to be tried again, if it is: it changed since
    ``before`` (see _changed_since), or it is being written, shorter than its header says (a copy, a restore by
    ``cp``, stopped half-way for now). Asked only of a read that failed: it opens the file."""
    changed = _changed_since(path, before)
    if changed is not None:
        return changed
    try:
        header = read_head(path, 100)
        size = os.stat(path).st_size
    except OSError:  # gone, or replaced by what is not a file: not the database that was read
        return Busy(f"Fraisier's database {path} changed while it was read: read again next time")
    magic = b"SQLite format 3\0"
    if len(header) < 100:  # its header not written whole yet (truncated by cp, not yet written back)
        short = magic.startswith(header[:len(magic)])
    elif not header.startswith(magic):
        return None  # another file altogether: unreadable, as it says
    else:
        page_size = int.from_bytes(header[16:18], "big")
        short = size < (65536 if page_size == 1 else page_size) * int.from_bytes(header[28:32], "big")
    if not short:
        return None
    return Busy(f"Fraisier's database {path} is shorter than its header says (being written, by a copy or a "
                "restore, or cut short): read again when it changes")


def _says_corrupt(error: sqlite3.Error) -> bool:
    text = str(error).lower()
    return "not a database" in text or "malformed" in text or "corrupt" in text


def _resolved(path: Path) -> Path:
    """The database file as SQLite opens it: symlinks followed (where its -wal and -shm files are)."""
    try:
        return Path(os.path.realpath(path))
    except (OSError, ValueError):
        return path


def _file_fingerprint(path: Path) -> Fingerprint:
    return _fingerprint(_stat(str(path)), _stat(f"{path}-wal"))


def _stat(name: str) -> os.stat_result | OSError:
    try:
        return os.stat(name)
    except OSError as error:
        return error


def _fingerprint(database: os.stat_result | OSError, wal: os.stat_result | OSError) -> Fingerprint:
    """What changes when Fraisier commits: the database file (a checkpoint, a replacement) and its WAL (every
    commit appends to it); zeros for a file that cannot be stat'ed (absent)."""
    values: list[int] = []
    for status in (database, wal):
        if isinstance(status, OSError):
            values.extend((0, 0, 0, 0))
        else:
            values.extend((status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns))
    return tuple(values)


def _connect(path: Path, immutable: bool, empty: bool = False) -> sqlite3.Connection:
    # Read-only and never waiting: Fraisier's own connections wait up to 5 s for a busy database, and a
    # reader that held a lock or waited would be the one making them wait. ``empty``: an empty database in
    # memory, as the empty file alone reads.
    uri = ":memory:" if empty else f"file:{quote(str(path))}?mode=ro" + ("&immutable=1" if immutable else "")
    connection = sqlite3.connect(uri, uri=not empty, timeout=0, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA busy_timeout = 0")
    connection.execute("PRAGMA query_only = 1")
    return connection


def _needs_shm(error: sqlite3.Error) -> bool:
    text = str(error).lower()
    return "readonly" in text or "read-only" in text or "unable to open" in text


def _unreadable(path: Path, error: sqlite3.Error) -> Unreadable:
    if isinstance(error, sqlite3.OperationalError) and any(
        word in str(error).lower() for word in ("locked", "busy")
    ):
        return Busy(_describe(path, error))
    return Unreadable(_describe(path, error))


def _describe(path: Path, error: sqlite3.Error) -> str:
    text = str(error)
    lowered = text.lower()
    if "locked" in lowered or "busy" in lowered:
        return f"Fraisier's database {path} is busy ({text}): what is new is read at the next occasion"
    if _says_corrupt(error):
        return (f"Fraisier's database {path} is not a readable SQLite database ({text}): no deployment is read "
                "from it until Fraisier's database is repaired (sqlite3 .recover) or FRAISIER_DB_PATH fixed")
    if _needs_shm(error):
        return (f"cannot read Fraisier's database {path} as this user while Fraisier writes it ({text}): a WAL "
                "database's reader must be able to create its -shm file; run this as Fraisier's user")
    return f"cannot read Fraisier's database {path}: {text}"
