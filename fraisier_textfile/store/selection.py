"""Which series to forget or expire: the ``label=value`` matchers and durations users give, a :class:`Selection`
of them, and sweeping the selected series out of a document (:func:`sweep`), which :func:`forget` does in one
merge of a store.

The rules users read (docs/monitoring.md, "Series lifecycle"): forget removes every series whose labels match all
the matchers in the families given (all owned families by default); a family without one of the matched labels
keeps its series; a histogram series goes whole (its ``_bucket``, ``_sum`` and ``_count`` lines). With
``expire_after``, only the series not updated for that long go (series_times.py keeps when each was updated).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from fraisier_textfile.errors import InvalidValueError
from fraisier_textfile.format.bookkeeping import RawValue
from fraisier_textfile.format.model import Block, Document
from fraisier_textfile.format.schema import Family, Schema
from fraisier_textfile.store.changes import Changes
from fraisier_textfile.store.series_times import UPDATED, SeriesTimes, label_text, labels_of, series_texts, times_key

if TYPE_CHECKING:
    from fraisier_textfile.store.lifecycle import SeriesLifecycle

_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw])\s*\Z", re.ASCII)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*\Z"


def parse_duration(what: str, text: str) -> float:
    """Seconds in a duration written ``30d``, ``12h``, ``90m``, ``3600s`` or ``2w``."""
    match = re.match(_DURATION, text)
    if match is None or float(match.group(1)) <= 0:
        raise InvalidValueError(
            f"{what}={text!r} is not a duration: give a positive number and a unit, e.g. 30d, 12h, 90m or 3600s"
        )
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_matcher(text: str) -> tuple[str, str]:
    """``(label, value)`` of a ``label=value`` matcher."""
    label, equals, value = text.partition("=")
    label = label.strip()
    if not equals or not re.match(_LABEL_NAME, label) or not value:
        raise InvalidValueError(
            f"--match {text!r} is not LABEL=VALUE: write e.g. --match fraise_type=old (a label name, '=', a value)"
        )
    return label, value


class Selection:
    """Which series to forget: all that match every matcher, in ``families`` (every owned family if empty),
    and, with ``expire_after``, were not updated for that many seconds."""

    def __init__(
        self,
        matchers: Sequence[tuple[str, str]] = (),
        families: Sequence[str] = (),
        expire_after: float | None = None,
        *,
        schema: Schema,
    ) -> None:
        """``schema``: whose families are meant (the store's)."""
        chosen = []
        for name in families:
            family = schema.by_name.get(name)
            if family is None:
                raise InvalidValueError(
                    f"--family {name!r} is not one of fraisier's families: use one of "
                    + ", ".join(f.name for f in schema.families)
                )
            chosen.append(family)
        self.families: tuple[Family, ...] = tuple(chosen) or schema.families
        labels = {label for family in self.families for label in family.labels}
        for label, _ in matchers:
            if label not in labels:
                raise InvalidValueError(
                    f"no family has a label {label!r}, so --match {label}=... matches nothing: "
                    f"use one of {', '.join(sorted(labels))}"
                )
        if not matchers and expire_after is None:
            raise InvalidValueError(
                "say which series to forget: give --provider, --fraise-type, --match LABEL=VALUE or --expire-after"
            )
        self.matchers = tuple(matchers)
        self.expire_after = expire_after



class SupportsLifecycle(Protocol):
    """A store: merges changes under its lock and runs its ``lifecycle`` inside each merge."""

    lifecycle: SeriesLifecycle

    def merge(self, changes: Changes) -> None: ...


def forget(store: SupportsLifecycle, selection: Selection) -> list[str]:
    """Remove the selected series from the store's file in one merge, under its lock, with its atomic replace.
    Returns the series removed, one line each (``family{labels}``)."""
    store.lifecycle.request = selection
    try:
        store.merge(Changes())
    finally:
        store.lifecycle.request = None
    return store.lifecycle.forgotten


def sweep(document: Document, selection: Selection, now: float, remove: bool) -> list[str]:
    """The series of ``document`` that ``selection`` picks, one line each; removed from it if ``remove``."""
    minute = int(now // 60)
    cutoff = None
    if selection.expire_after is not None:
        # Times are whole minutes, rounded down: a series is expired only once it surely is.
        cutoff = math.floor((now - selection.expire_after) / 60)
    found = []
    for family in selection.families:
        found += _sweep_family(document, family, selection.matchers, cutoff, minute, remove)
    return found


def _sweep_family(
    document: Document,
    family: Family,
    matchers: Sequence[tuple[str, str]],
    cutoff: int | None,
    minute: int,
    remove: bool,
) -> list[str]:
    block = document.blocks.get(family.name)
    if block is None or block.raw is not None:
        return []
    times_line = UPDATED.at(family.name)
    times = SeriesTimes(times_line.get_raw(document))
    if any(label not in family.labels for label, _ in matchers):
        return []
    if cutoff is not None and not matchers:
        oldest = times.oldest
        if oldest is not None and oldest >= cutoff:
            return []  # nothing in this family can be due: no scan
    entries = times.entries() if cutoff is not None else None
    chosen: set[str] = set()
    keys: dict[str, str] = {}
    for text in series_texts(block):
        labels = labels_of(text)
        if any(labels.get(label) != value for label, value in matchers):
            continue
        key = times_key([labels.get(label, "") for label in family.labels])
        keys[text] = key
        if entries is not None and cutoff is not None:
            updated = entries.get(key)
            if updated is None:
                entries[key] = minute  # unknown: counts as updated now
                continue
            if updated >= cutoff:
                continue
        chosen.add(text)
    if remove:
        if chosen:
            kept = [line for line in block.lines if label_text(line) not in chosen]
            if kept:
                rebuilt = Block(block.name, help=block.help, type=block.type, owned=block.owned)
                rebuilt.lines = kept
                document.blocks[block.name] = rebuilt
            else:
                del document.blocks[block.name]
            times.forget(keys[text] for text in chosen)
        if cutoff is not None and not matchers:
            # A full scan: keep only the times of series still there (the others were forgotten by hand).
            present = {keys[text] for text in keys if text not in chosen}
            times.forget([key for key in times.entries() if key not in present])
        times_line.put_raw(document, times.render() if family.name in document.blocks else RawValue())
    return [f"{family.name}{{{text}}}" for text in series_texts(block) if text in chosen]
