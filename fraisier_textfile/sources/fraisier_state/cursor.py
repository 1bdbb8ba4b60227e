"""How far the textfile accounts for Fraisier's database: the bookkeeping line ``fraisier-state``.

The line: ``1 <uuid of the highest row read> <its pk> <rolled-back rows at the last full check> <latest
updated_at read> <that at the last full check> <pks in progress> <pks finished since the last full check>``
(the last two comma-separated, ``-`` when empty; a pk followed by ``r`` is accounted rolled back). It is written
by the same atomic rename as the counts, so a process killed anywhere leaves both or neither: nothing is lost,
nothing counted twice. Its size does not grow with the history: only rows in progress and rows finished since
the last full check are listed. A line of another version (the first word) is not read.

After a database was replaced (a backup restored over it), and until a newer row is read, the line is of version
``2``, with a ninth word: ``<pk>:<uuid>`` of the highest row read of the database it replaced. Should that row come
back (the operator puts the database back), every row up to it was counted already.
"""

from __future__ import annotations

from collections.abc import Iterable

from fraisier_textfile.format.bookkeeping import Bookkeeping, text_value

CURSOR = Bookkeeping("fraisier-state", text_value, text_value)
"""The textfile's line that says how far Fraisier's database was read (see :class:`Cursor`)."""
META_KEY = CURSOR.key
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
    def parse(cls, text: str) -> Cursor | None:
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

    def render(self) -> str:
        pending = ",".join(str(pk) for pk in sorted(self.in_progress)) or "-"
        recent = ",".join(f"{pk}r" if flag else str(pk) for pk, flag in sorted(self.recent.items())) or "-"
        words = (f"{self.high_id} {self.high} {self.rolled_back} {self.updated} {self.checked_updated} {pending} "
                 f"{recent}")
        if self.replaced is None:
            return f"{CURSOR_VERSION} {words}"
        return f"{REPLACED_VERSION} {words} {self.replaced[0]}:{self.replaced[1]}"


def _count(word: str) -> int:
    """A pk or a count of the cursor: what SQLite can bind and a pk can be (0 to 2**63 - 1). A torn or hand-edited
    line's 2**64 would fail every merge (OverflowError at the bind), and a negative pk would count the history
    again."""
    value = int(word)
    if not 0 <= value < 2**63:
        raise ValueError(word)
    return value
