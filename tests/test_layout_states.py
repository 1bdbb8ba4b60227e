"""Merges of every kind, one after another, on real files with tiny layout segments: after each, the file the
store wrote reads from its layout line exactly as line by line, and its totals are those of a model."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fraisier_textfile import TextfileStore
from fraisier_textfile import catalogue as c
from fraisier_textfile.catalogue import SCHEMA
from fraisier_textfile.changes import Changes
from fraisier_textfile.format import layout
from fraisier_textfile.format.model import Document
from fraisier_textfile.format.reader import parse, read_vouched
from fraisier_textfile.store import handovers
from fraisier_textfile.store.lifecycle import Selection, SeriesLifecycle, forget

PROVIDERS = ("p", "q", "été", 'a"b', "c\\d", "x y")
REASONS = ("r", "s")
EXPIRE_AFTER = 600.0


def reading(document: Document) -> list[tuple[object, ...]]:
    return [
        (dict(document.meta), document.preamble),
        *((b.name, b.help, b.type, b.owned, b.raw, list(b.comments), list(b.lines)) for b in document.blocks.values()),
    ]


class Merges(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="layout-states-"))
        self.now = 1_800_000_000.0
        self.lifecycle = SeriesLifecycle(
            self.directory / "fraisier.prom", expire_after=EXPIRE_AFTER, clock=lambda: self.now
        )
        self.store = TextfileStore(self.directory, lifecycle=self.lifecycle)  # warm: keeps what it wrote
        self.totals: dict[tuple[str, str], float] = {}  # (provider, reason) -> rollbacks
        self.observed: dict[str, int] = {}  # provider -> rollback durations observed
        self.updated: dict[object, float] = {}  # series -> when last merged (for expiry)
        self.pending_handovers: list[Changes] = []
        self.edits = 0
        self.saved_segment = layout.SEGMENT
        layout.SEGMENT = 64

    def teardown(self) -> None:
        layout.SEGMENT = self.saved_segment
        handovers.wait_for_removals()

    def _changes(self, provider: str, reason: str, amount: int, duration: float) -> Changes:
        changes = Changes()
        changes.add(c.ROLLBACKS, (provider, reason), float(amount))
        changes.observe(c.ROLLBACK_DURATION, (provider,), duration)
        return changes

    def _count(self, provider: str, reason: str, amount: int) -> None:
        self.totals[(provider, reason)] = self.totals.get((provider, reason), 0) + amount
        self.observed[provider] = self.observed.get(provider, 0) + 1
        self.updated[(provider, reason)] = self.updated[provider] = self.now

    def _merged(self) -> None:
        """A merge ran at self.now: hand-overs applied, then series not updated for EXPIRE_AFTER expired."""
        for changes in self.pending_handovers:
            for (_, (provider, reason)), amount in changes.added.items():
                self._count(provider, reason, int(amount))
        self.pending_handovers = []
        cutoff = math.floor((self.now - EXPIRE_AFTER) / 60)
        for key, when in list(self.updated.items()):
            if int(when // 60) < cutoff:
                del self.updated[key]
                if isinstance(key, tuple):
                    del self.totals[key]
                else:
                    del self.observed[key]  # type: ignore[arg-type]

    @rule(provider=st.sampled_from(PROVIDERS), reason=st.sampled_from(REASONS), amount=st.integers(1, 3),
          duration=st.sampled_from([0.5, 7.0, 1000.0]), cold=st.booleans())
    def merge(self, provider: str, reason: str, amount: int, duration: float, cold: bool) -> None:
        store = TextfileStore(self.directory, lifecycle=self.lifecycle) if cold else self.store
        store.merge(self._changes(provider, reason, amount, duration))
        self._count(provider, reason, amount)
        self._merged()

    @rule(provider=st.sampled_from(PROVIDERS), reason=st.sampled_from(REASONS), amount=st.integers(1, 3))
    def hand_over(self, provider: str, reason: str, amount: int) -> None:
        changes = self._changes(provider, reason, amount, 2.0)
        self.pending_handovers.append(self._changes(provider, reason, amount, 2.0))
        TextfileStore(self.directory).hand_over(changes)

    @rule(provider=st.sampled_from(PROVIDERS))
    def forget(self, provider: str) -> None:
        forget(self.store, Selection(matchers=[("provider", provider)], schema=SCHEMA))
        self._merged()  # the hand-overs are applied before the series are forgotten
        for key in list(self.totals):
            if key[0] == provider:
                del self.totals[key]
                self.updated.pop(key, None)
        self.observed.pop(provider, None)
        self.updated.pop(provider, None)

    @rule(minutes=st.integers(1, 8))
    def wait(self, minutes: int) -> None:
        self.now += 60 * minutes

    @precondition(lambda self: (self.directory / "fraisier.prom").exists())
    # A family split in two places, comments and blank lines at the end (see format.model._ends_loose).
    @rule(text=st.sampled_from(['other_metric{n="{n}"} 1\n', "# a note\n", "\n", "# TYPE o_{n} gauge\no_{n} 2\n"]))
    def edited_by_someone_else(self, text: str) -> None:
        path = self.directory / "fraisier.prom"
        self.edits += 1
        path.write_bytes(path.read_bytes() + text.replace("{n}", str(self.edits)).encode())

    @invariant()
    def the_file_reads_alike_both_ways_and_holds_the_totals(self) -> None:
        path = self.directory / "fraisier.prom"
        if not path.exists():
            return
        data = path.read_bytes()
        slow = parse(data.decode(), SCHEMA)
        vouched = read_vouched(data, SCHEMA)
        if vouched is not None:
            assert b"".join(vouched.parts()) == data
            again = read_vouched(data, SCHEMA)  # read again: reading() splits the blocks into lines
            assert again is not None and reading(again) == reading(slow)
        block = slow.blocks.get(c.ROLLBACKS.name)
        found = {} if block is None else dict(block.samples())
        expected = {
            f'{c.ROLLBACKS.name}{{provider="{p.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}",'
            f'reason="{r}"}}': float(v)
            for (p, r), v in self.totals.items()
        }
        if not self.pending_handovers:  # else the file holds what was merged before them
            assert {key: value for key, value in found.items() if value} == expected
        durations = slow.blocks.get(c.ROLLBACK_DURATION.name)
        counts = {} if durations is None else {
            key: value for key, value in durations.samples() if key.startswith(c.ROLLBACK_DURATION.name + "_count")
        }
        if not self.pending_handovers:
            assert sorted(counts.values()) == sorted(float(n) for n in self.observed.values())


Merges.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=list(HealthCheck)
)
test_merges_of_every_kind_leave_a_file_that_reads_alike_both_ways = Merges.TestCase
