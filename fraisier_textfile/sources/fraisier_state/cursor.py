"""How far the textfile accounts for Fraisier's database: the bookkeeping line ``fraisier-state``.

The line: ``1 <uuid of the highest row read> <its pk> <rolled-back rows at the last full check> <latest
updated_at read> <that at the last full check> <pks in progress> <pks finished since the last full check>``
(the last two comma-separated, ``-`` when empty; a pk followed by ``r`` is accounted rolled back). It is written
by the same atomic rename as the counts, so a process killed anywhere leaves both or neither: nothing is lost,
nothing counted twice. Its size does not grow with the history: only rows in progress and rows finished since
the last full check are listed. A line of another version (the first word) is not read.

After a database was replaced (a backup restored over it), and until a newer row is read, a line of its own,
``fraisier-state-replaced``, says ``<pk>:<uuid>`` of the cursor's row, then ``<pk>:<uuid>`` of the highest row read of
the database it replaced. Should that row come back (the operator puts the database back), every row up to it was
counted already. It is a line of its own, not a word more of the cursor's, because 0.2.0 reads no cursor line but
version 1's (a downgrade would stop reading the database), and keeps a bookkeeping line it does not know: the
cursor's row it names makes it stale, and ignored, once such a version moved the cursor on. Version ``2`` of the
cursor line (those nine words in one line) was written by an unreleased version only; it is still read.
"""

from __future__ import annotations

from collections.abc import Iterable

from fraisier_textfile.format.bookkeeping import Bookkeeping, text_value

CURSOR = Bookkeeping("fraisier-state", text_value, text_value)
"""The textfile's line that says how far Fraisier's database was read (see :class:`Cursor`)."""
META_KEY = CURSOR.key
REPLACED = Bookkeeping("fraisier-state-replaced", text_value, text_value)
"""The line that names the last row read of a database replaced, for the cursor it was written with."""
CURSOR_VERSION = "1"
REPLACED_VERSION = "2"


class Cursor:
    """What the textfile accounts for of one database (see the module's docstring for its line)."""

    __slots__ = ("checked_updated", "high", "high_id", "in_progress", "recent", "replaced", "rolled_back", "updated")

    def __init__(self, high: int = 0, high_id: str = "-", rolled_back: int = 0, updated: str = "-",
                 checked_updated: str = "-", in_progress: Iterable[int] = (),
                 recent: dict[int, bool] | None = None, replaced: tuple[int, str] | None = None) -> None:
        self.high = high
        """The highest pk_deployment read: every row up to it is accounted, except ``in_progress``."""
        self.high_id = high_id
        """That row's uuid: another (or none) at that pk means another database."""
        self.rolled_back = rolled_back
        """How many rows were rolled_back at the last full check (see RowReader.read)."""
        self.updated = updated
        """The latest updated_at read (Fraisier's local time)."""
        self.checked_updated = checked_updated
        """``updated`` at the last full check: a rollback marked since has a later updated_at."""
        self.in_progress = set(in_progress)
        self.recent: dict[int, bool] = {} if recent is None else recent
        """Rows finished since the last full check, and whether they are accounted rolled back: read again by
        primary key at each read, so that a rollback marked on them is found without counting anything."""
        self.replaced = replaced
        """(pk, uuid) of the highest row read of the database this one replaced, until a newer row is read here."""

    @classmethod
    def parse(cls, text: str, replaced_text: str | None = None) -> Cursor | None:
        """The cursor of its line, with the replaced database of its own line (``replaced_text``) if that line
        was written with this cursor; None if the cursor line is not one this version reads."""
        cursor = cls._parse(text)
        if cursor is not None and cursor.replaced is None and replaced_text:
            cursor.replaced = _replaced(replaced_text, cursor)
        return cursor

    @classmethod
    def _parse(cls, text: str) -> Cursor | None:
        words = text.split()
        if (words[:1], len(words)) not in (([CURSOR_VERSION], 8), ([REPLACED_VERSION], 9)):
            return None
        try:
            replaced = None
            if len(words) == 9:
                pk, _, identity = words[8].partition(":")
                if not identity:
                    return None
                replaced = (_count(pk), identity)
            pks = [_count(pk) for pk in words[6].split(",")] if words[6] != "-" else []
            recent = {}
            if words[7] != "-":
                for word in words[7].split(","):
                    rolled_back = word.endswith("r")
                    recent[_count(word[:-1] if rolled_back else word)] = rolled_back
            return cls(_count(words[2]), words[1], _count(words[3]), words[4], words[5], pks, recent, replaced)
        except ValueError:
            return None

    def render(self) -> tuple[str, str]:
        """The cursor's line (version 1), and the replaced database's line ("" when there is none: no line)."""
        pending = ",".join(str(pk) for pk in sorted(self.in_progress)) or "-"
        recent = ",".join(f"{pk}r" if flag else str(pk) for pk, flag in sorted(self.recent.items())) or "-"
        line = (f"{CURSOR_VERSION} {self.high_id} {self.high} {self.rolled_back} {self.updated} {self.checked_updated} "
                f"{pending} {recent}")
        if self.replaced is None:
            return line, ""
        return line, f"{self.high}:{self.high_id} {self.replaced[0]}:{self.replaced[1]}"


def _replaced(text: str, cursor: Cursor) -> tuple[int, str] | None:
    """(pk, uuid) of the replaced database's line, if it was written with ``cursor``."""
    words = text.split()
    if len(words) != 2 or words[0] != f"{cursor.high}:{cursor.high_id}":
        return None
    pk, _, identity = words[1].partition(":")
    try:
        return (_count(pk), identity) if identity else None
    except ValueError:
        return None


def _count(word: str) -> int:
    """A pk or a count of the cursor: what SQLite can bind and a pk can be (0 to 2**63 - 1). A torn or hand-edited
    line's 2**64 would fail every merge (OverflowError at the bind), and a negative pk would count the history
    again."""
    value = int(word)
    if not 0 <= value < 2**63:
        raise ValueError(word)
    return value
