"""How changes meet the file's values: the merge rules, one per kind of change (see changes.Changes).

Counters are summed with the file's value, histograms summed bucket by bucket, latest gauges replace it, and
the largest of a maximum gauge wins (the last-deployment time). Nothing here reads or writes a file, and
nothing here knows which families exist: the changes name them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fraisier_textfile.errors import CorruptTextfileError, InvalidValueError
from fraisier_textfile.format.model import Block, Document
from fraisier_textfile.format.schema import Family
from fraisier_textfile.format.syntax import label_text, series_key
from fraisier_textfile.logger import get_logger
from fraisier_textfile.store import process
from fraisier_textfile.store.changes import Changes, HistogramDelta, Labels

if TYPE_CHECKING:
    from fraisier_textfile.store import fs

log = get_logger(__name__)

CLOCK_TOLERANCE = 300.0
"""Seconds. A last-deployment timestamp in the file further ahead of the merging process's clock than this was
written while some clock was wrong (stepped back since, or a process with a fake time): a merge that touches
it replaces it with its own value instead of keeping the larger one, unless the file itself was last written
further ahead than this of its clock: then its clock is the wrong one, and the stored value stays."""


def series_key_of(family: Family, labels: Labels, suffix: str = "") -> str:
    return series_key(family.name + suffix, family.labels, labels)


def apply_changes(
    document: Document, changes: Changes, path: fs.PathName, now: float, clock_is_behind: bool = False
) -> None:
    """Apply ``changes`` to the document: counters and histograms summed, gauges replaced or maximised.
    ``clock_is_behind``: ``now`` is known to be behind, so stored times ahead of it are kept as the maximum.
    Raises before the file is written when a sum cannot be honest (see :func:`_summed`)."""
    # A zero change only makes sure its series exists (a sibling created at 0 beside the one recorded: see
    # Family.zero_series): one the file holds is left as it is, not looked up line by line, summed with 0 and
    # written back the same. A fresh process's first event carries 70 such lines for the one it records.
    for (family, labels), amount in changes.added.items():
        block = document.block(family)
        key = series_key_of(family, labels)
        if amount == 0 and block.value(key) is not None:
            continue
        block.set(key, _summed(block, key, amount, path))
    for (family, labels), delta in changes.observed.items():
        block = document.block(family)
        # Its _count stands for the whole series: a histogram this merge touches has every bucket of each of its
        # series by now (the lifecycle's migration checks, or rebuilds, those of a file not as the store writes it).
        if (
            not delta.count and delta.sum == 0 and not any(delta.buckets)
            and block.value(series_key_of(family, labels, "_count")) is not None
        ):
            continue
        pairs = label_text(family.labels, labels)
        bucket_prefix = f"{family.name}_bucket{{{pairs}," if pairs else f"{family.name}_bucket{{"
        cumulative = 0
        for bound, count in zip(family.bucket_bounds, delta.buckets):
            cumulative += count
            key = f'{bucket_prefix}le="{bound}"}}'
            block.set(key, _summed(block, key, cumulative, path))
        key = series_key_of(family, labels, "_sum")
        block.set(key, _summed(block, key, delta.sum, path))
        key = series_key_of(family, labels, "_count")
        block.set(key, _summed(block, key, delta.count, path))
    for (family, labels), value in changes.latest.items():
        document.block(family).set(series_key_of(family, labels), value)
    for (family, labels), value in changes.maximum.items():
        block = document.block(family)
        key = series_key_of(family, labels)
        current = block.value(key)
        # A stored time too far ahead of our clock was written by a wrong clock: replaced, not kept for ever,
        # unless our own clock is the wrong one. (NaN is replaced whatever the clocks.)
        if (
            current is None
            or value > current
            or current != current
            or (not clock_is_behind and not current <= now + CLOCK_TOLERANCE)
        ):
            block.set(key, value)


def check_summable(document: Document, changes: Changes, path: fs.PathName) -> None:
    """Raise InvalidValueError if a sum of ``changes`` into the document would overflow to +Inf (what
    :func:`apply_changes` would raise; a value already in the file that cannot be summed is the file's problem, left
    to the merge)."""
    # A family not in the file yet is checked too (as empty): its first values may overflow on their own.
    for (family, labels), amount in changes.added.items():
        block = document.blocks.get(family.name) or Block(family.name, owned=family)
        _check_sum(block, series_key_of(family, labels), amount, path)
    for (family, labels), delta in changes.observed.items():
        block = document.blocks.get(family.name) or Block(family.name, owned=family)
        _check_sum(block, series_key_of(family, labels, "_sum"), delta.sum, path)


def _check_sum(block: Block, key: str, amount: float, path: fs.PathName) -> None:
    try:
        _summed(block, key, amount, path)
    except CorruptTextfileError:
        pass


def _summed(block: Block, key: str, amount: float, path: fs.PathName) -> float:
    """The file's value of a counter or histogram sample plus ``amount``. A value already in the file that is
    not a finite, non-negative number, or a sum that would overflow to +Inf, would poison the total for ever:
    refused, before anything is written."""
    current = block.value(key)
    if current is None:
        # A new series is checked too: two hand-overs (or two observations in one process) of huge values make a
        # first value of +Inf, which every later sum of that series would refuse.
        if not float(amount) < _INFINITY:
            raise InvalidValueError(
                f"adding {amount:g} to {key} (a new series) in {path} would make it +Inf: a value that large "
                "cannot be summed; check the value recorded (durations are in seconds)"
            )
        return float(amount)
    if not 0.0 <= current < _INFINITY:
        raise CorruptTextfileError(
            path,
            f"{key} is {current} in the file; a counter or histogram sample must be a finite number >= 0 to be "
            "summed: remove that line to restart this series from 0",
        )
    total = current + amount
    if total == _INFINITY:
        raise InvalidValueError(
            f"adding {amount:g} to {key} (now {current:g}) in {path} would make it +Inf: a value that large "
            "cannot be summed; check the value recorded (durations are in seconds)"
        )
    return total


_INFINITY = float("inf")


def combine(parts: list[Changes]) -> Changes:
    """One Changes holding ``parts`` in order, each kind combined by its own rule (see changes.Changes):
    summed, later replaces, larger wins, sets joined."""
    combined = Changes()
    for part in parts:
        for key, amount in part.added.items():
            combined.added[key] = combined.added.get(key, 0.0) + amount
        for key, delta in part.observed.items():
            total = combined.observed.get(key)
            if total is None:
                total = combined.observed[key] = HistogramDelta([0] * len(delta.buckets))
            total.buckets = [mine + theirs for mine, theirs in zip(total.buckets, delta.buckets)]
            total.sum += delta.sum
            total.count += delta.count
        combined.latest.update(part.latest)
        for key, value in part.maximum.items():
            current = combined.maximum.get(key)
            if current is None or value > current:
                combined.maximum[key] = value
        combined.active_providers |= part.active_providers
        combined.retired_markers |= part.retired_markers
    return combined


def clock_is_behind(path: fs.PathName, written_ns: int | None) -> bool:
    """Whether the textfile was last written in this process's future (its mtime, which the kernel set
    then, is ahead of our clock by more than CLOCK_TOLERANCE): then this clock is behind (a host before its
    NTP sync, a clock stepped back, faketime), and a stored time ahead of it is right, not to be replaced.
    ``written_ns``: the file's mtime as the merge found it under the lock (the version it read or kept; None:
    there is no file); ``path``: what it is called, for the message."""
    if written_ns is None:
        return False
    ahead = written_ns / 1e9 - time.time()
    if ahead <= CLOCK_TOLERANCE:
        return False
    if process.first_time("clock behind"):
        log.warning(
            "this process's clock is behind: %s was last written %.0fs in its future; the last-deployment "
            "times it holds are kept (check the clock: timedatectl, chronyc tracking)", path, ahead,
        )
    return True
