"""The in-flight markers' part in every merge: live deployments counted active, dead ones counted crashed once.

The marker files themselves (writing, reading, removing them, and whether a marker's deployment is alive) are
markers.py's. Here is their accounting: each merge lists the markers it has accounted for in the file it writes
(``retired-markers``) and removes their files only after the rename, so that a merger killed at any point leaves
each deployment counted once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping

from fraisier_textfile.format.bookkeeping import WordSet
from fraisier_textfile.format.model import Block
from fraisier_textfile.format.schema import Family
from fraisier_textfile.format.syntax import parse_series_key
from fraisier_textfile.store import fs
from fraisier_textfile.store.changes import Changes
from fraisier_textfile.store.markers import Marker, is_alive, list_markers, open_directory, remove_marker
from fraisier_textfile.store.rules import apply_changes, series_key_of
from fraisier_textfile.store.transaction import Merge, Participant

RETIRED_MARKERS = WordSet("retired-markers")
"""The markers whose deployments the file already accounts for (ended, or counted crashed): listed until the
marker files are gone, so that no merger counts one twice."""


class MarkerRules:
    """What markers count in the file, given by the owner of the schema (changes.MARKER_RULES for Fraisier's):
    ``active``, the gauge of deployments running by provider; ``crashed(changes, provider, fraise_type,
    marker_id, now)``, what a deployment whose process died in flight records (it must retire the marker)."""

    __slots__ = ("active", "crashed")

    def __init__(self, active: Family, crashed: Callable[[Changes, str, str, str, float], None]) -> None:
        self.active = active
        self.crashed = crashed


class InFlightMarkers(Participant):
    """The markers of deployments in flight, in every merge: live ones are counted active, dead ones are counted
    crashed once, and each accounted marker is listed (``retired-markers``) until its file is removed after
    the commit, so that a merger killed at any point leaves each deployment counted once."""

    def __init__(self, rules: MarkerRules) -> None:
        self.rules = rules
        self._directory: fs.Directory | None = None
        self._probed: list[tuple[Marker, bool]] = []
        self._to_remove: set[str] = set()

    def collect(self, merge: Merge) -> None:
        # Probed before the hand-overs are listed (see the ordering rule in transaction.py).
        markers, self._directory = list_markers(merge.textfile)
        accounted = RETIRED_MARKERS.get(merge.document)
        self._probed = [(marker, marker.id not in accounted and is_alive(marker)) for marker in markers]
        return None

    def before_apply(self, merge: Merge) -> None:
        if self._directory is None and merge.changes.retired_markers:
            # Made since the probe, by a deployment whose start and end were both handed over meanwhile: its
            # marker must be seen, or its retired id would be dropped and the next merger count it crashed.
            # (Only a marker the changes retire is looked for below: without one, nothing is to be seen there.)
            self._directory = open_directory(merge.textfile)
        document, changes = merge.document, merge.changes
        accounted = RETIRED_MARKERS.get(document) | changes.retired_markers
        active: dict[str, int] = {provider: 0 for provider in changes.active_providers}
        existing = set()
        crashed = Changes()
        now = time.time()
        for marker, alive in self._probed:
            existing.add(marker.id)
            if marker.id in accounted:
                continue
            active.setdefault(marker.provider, 0)
            if alive:
                active[marker.provider] += 1
            else:
                self.rules.crashed(crashed, marker.provider, marker.fraise_type, marker.id, now)
        # A marker made after the probe whose deployment's start and end were handed over since: this merge
        # applies its end, so it stays listed (else the next merger would count it crashed) and is removed.
        directory = self._directory
        for marker_id in changes.retired_markers - existing:
            if (
                directory is not None and marker_id and "/" not in marker_id and not marker_id.startswith(".")
                and marker_id not in (".", "..") and directory.exists(marker_id)
            ):
                existing.add(marker_id)
        accounted |= crashed.retired_markers
        apply_changes(document, crashed, merge.path, now)
        for provider, count in merge.running.items():
            active[provider] = active.get(provider, 0) + count
        if self.rules.active.name in document.blocks or active:
            count_active_deployments(document.block(self.rules.active), active, self.rules.active)
        listed = frozenset(accounted & existing)
        if directory is not None and not RETIRED_MARKERS.get(document) <= listed:
            # Ids leave the list once their marker files are gone (removed by an earlier merge, after its commit).
            # The removal is made durable before the file that drops them: on an ext4 without a journal nothing
            # orders the marker directory's blocks after the textfile directory's, and a power loss would bring
            # back the marker of a deployment the file counts as ended, listed no more: counted crashed as well.
            # (A journaled ext4 commits them in order already. Ids drop only after deployments end: rare.)
            directory.fsync()
        RETIRED_MARKERS.put(document, listed)
        self._to_remove = set(listed)

    def removes_after_commit(self, merge: Merge) -> bool:
        return self._directory is not None and bool(self._to_remove)

    def after_commit(self, merge: Merge) -> None:
        # Through the descriptor of the directory they were listed in, never by name: a writer may have swapped
        # the directory for a symlink since the lock was released.
        if self._directory is not None:
            for marker_id in self._to_remove:
                remove_marker(self._directory, marker_id)

    def close(self) -> None:
        if self._directory is not None:
            self._directory.close()
        self._directory = None
        self._probed = []
        self._to_remove = set()

    def active_deployments(self, textfile: fs.Directory, retired_markers: Collection[str]) -> dict[str, int]:
        """Deployments running now in live processes, by provider, for a reader serving the file live."""
        markers, directory = list_markers(textfile)
        if directory is not None:
            directory.close()
        counts: dict[str, int] = {}
        for marker in markers:
            if marker.id not in retired_markers and is_alive(marker):
                counts[marker.provider] = counts.get(marker.provider, 0) + 1
        return counts


class ServedActive:
    """What a reader serving the file live (``fraisier metrics``) shows of the deployments in flight: the active
    gauge's block as the file has it (its providers keep their series, in their order), counted again from the
    markers at each :meth:`render`, so that a deployment started, ended or dead since the last merge shows at
    once. ``count(retired)``: the deployments running now by provider, the markers ``retired`` already
    accounted for by the file."""

    __slots__ = ("_count", "family", "lines", "retired")

    def __init__(self, family: Family, lines: tuple[str, ...], retired: frozenset[str],
                 count: Callable[[Collection[str]], Mapping[str, int]]) -> None:
        self.family = family
        self.lines = lines
        self.retired = retired
        self._count = count

    def render(self) -> str:
        """The block's text now. Raises what reading the marker directory raises (FraisierTextfileError)."""
        family = self.family
        block = Block(family.name, help=family.help, type=family.kind.value, owned=family)
        block.lines = list(self.lines)
        count_active_deployments(block, self._count(self.retired), family)
        return block.render()


def count_active_deployments(block: Block, counts: Mapping[str, int], family: Family) -> None:
    """Set the active-deployments block to ``counts``: every provider the block already has keeps its series
    (0 with nothing running), and providers new to it follow. The store does this at each merge, and
    ``fraisier metrics`` at each scrape, so both write the same block."""
    known = [parse_series_key(key)[1].get("provider", "") for key, _ in block.samples()]
    for provider in known:
        if provider:
            block.set(series_key_of(family, (provider,)), float(counts.get(provider, 0)))
    for provider in sorted(set(counts) - set(known)):
        block.set(series_key_of(family, (provider,)), float(counts[provider]))
