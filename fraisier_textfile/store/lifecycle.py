"""Series lifecycle: forgetting series, expiring the ones nobody updates, bounding the series of a family, and
migrating histograms whose buckets changed.

The store calls :meth:`SeriesLifecycle.before_merge` and :meth:`SeriesLifecycle.after_merge` inside every merge,
under its lock, so all of this is written with the same atomic replace as the events.

The rules (docs/monitoring.md, "Series lifecycle", says the same to users):

- **Forget** removes every series whose labels match all the matchers (``provider=bare_metal``...) in the
  families given (all owned families by default). A family without one of the matched labels keeps its
  series: forgetting ``fraise_type=old`` leaves the duration histograms, which have no fraise_type label.
  A histogram series goes whole: its ``_bucket``, ``_sum`` and ``_count`` lines.
- **Live parts of a forgotten series.** In-flight markers are not touched: a deployment still running when its
  series were forgotten is counted when it ends (or as ``crashed`` if its process died), which creates its
  series again from 0. The active-deployments gauge is recounted from the markers at every merge, so a
  forgotten provider with a deployment in flight is back there at the next merge.
- **Retention** (``expire_after``) drops series not updated for that long. A series counts as updated when a
  merge changes it, or merely touches it (a recorder creating its series at 0), and with it the series created
  at 0 beside it (the other statuses of its deployment pair or health check), so those expire with the pair
  and not while it is in use; the active-deployments series of a provider, while it has a deployment in
  flight. A series for which the store has no time (a file written before this version, or edited by hand)
  counts as updated when an expiring merge first sees it. A series' time only moves forward: a merge by a
  process whose clock is behind never makes a series look older than it is (it would expire with its totals);
  one whose clock was ahead delays that series' expiry by as much.
- **Cardinality bound**: past ``max_series`` series in a family, changes to *new* series of that family are
  dropped, logged once per family per process, and counted in ``fraisier_textfile_series_refused_total
  {family}``; existing series keep counting. Crashed deployments counted from markers and the
  active-deployments gauge are not bounded (markers bound them).
- **Bucket migration**: a histogram written with other bounds than the catalogue's is rewritten on the next
  merge: a bound both have keeps its count; a new bound starts from the cumulative count of the largest old
  bound below it (0 if none), so it never claims observations it cannot know were below it; a removed bound
  goes; ``+Inf``, ``_sum`` and ``_count`` stay. Totals, rates and averages are kept exactly; only quantiles
  around the new bound are coarser until new observations fill it.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from fraisier_textfile.errors import CorruptTextfileError, InvalidValueError
from fraisier_textfile.format.bookkeeping import KeyedBookkeeping, text_value
from fraisier_textfile.format.model import Block, Document
from fraisier_textfile.format.schema import Family, Kind, Schema, default, format_float
from fraisier_textfile.format.syntax import ParseError, parse_series_key, series_key
from fraisier_textfile.store.changes import Changes, Labels
from fraisier_textfile.store.migration import migrate_histogram as migrate_histogram
from fraisier_textfile.store.migration import migrate_histograms as migrate_histograms
from fraisier_textfile.store.migration import migration_notes as migration_notes

log = logging.getLogger(__name__)

EXPIRE_AFTER_ENVIRONMENT = "FRAISIER_EXPIRE_AFTER"
MAX_SERIES_ENVIRONMENT = "FRAISIER_MAX_SERIES_PER_FAMILY"
DEFAULT_MAX_SERIES = 10_000
"""Series per family past which new series are refused. Fraisier's real label values (a few providers, fraise
types, check types) make tens of series per family; 10,000 is far past honest use, and a counter family at the
bound is already a file of megabytes that node_exporter parses at every scrape."""
REFUSED_FAMILY = "fraisier_textfile_series_refused_total"
REFUSED_HELP = (
    "Changes to new series refused because their family had reached its series bound "
    f"({MAX_SERIES_ENVIRONMENT}), by family."
)
UPDATED = KeyedBookkeeping("updated-", text_value, text_value)
"""``updated-<family>``: the last-update times of that family's series (SeriesTimes' text)."""

_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw])\s*\Z", re.ASCII)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*\Z"
_MERGE_KINDS = ("added", "observed", "latest", "maximum")
# A merge touching more series than this rewrites a family's times through a dict instead of in place.
_IN_PLACE_LIMIT = 32


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
        schema: Schema | None = None,
    ) -> None:
        """``schema``: whose families are meant (the default schema's, Fraisier's, if None)."""
        schema = schema or default()
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


class SeriesTimes:
    """The last-update times of one family's series, as the meta line ``updated-<family>`` keeps them.

    Why in the textfile itself, one line per family, rather than in a sidecar file: it is written by the same
    rename as the series, so after a crash the times always describe the file beside them; a copied or restored
    file carries its own times; and a merge rewrites only the lines of the families it touched. Why this form:
    ``<oldest> <key>=<minute> <key>=<minute> ...``, the key being the label values (percent-encoded, comma
    separated), the time in whole minutes since the epoch. About 30 bytes a series (a counter line is 80-100),
    and a merge that touches a few series edits the line in place (no split of 100k entries) and, within the
    same minute, does not change it at all. ``oldest`` is never later than the oldest entry (it may be earlier
    after an update), so an expiring merge skips every family whose ``oldest`` is recent, and rescans (and
    corrects it) only when something may really be due."""

    __slots__ = ("_entries", "_text")

    def __init__(self, text: str | None) -> None:
        self._text = text or ""
        self._entries: dict[str, int] | None = None

    @property
    def oldest(self) -> int | None:
        if self._entries is not None:
            return min(self._entries.values(), default=None)
        head = self._text.partition(" ")[0]
        return int(head) if head.isdigit() else None

    def entries(self) -> dict[str, int]:
        if self._entries is None:
            entries: dict[str, int] = {}
            for token in self._text.split(" ")[1:]:
                key, _, minute = token.rpartition("=")
                if minute.isdigit():  # anything else was not written by us: that series' time is unknown
                    entries[key] = int(minute)
            self._entries = entries
        return self._entries

    def touch(self, keys: Sequence[str], minute: int) -> None:
        if self._entries is None and len(keys) <= _IN_PLACE_LIMIT and self.oldest is not None:
            # The line is rebuilt once, from the spans between the minutes that change (a copy of the whole
            # line per key cost a merge milliseconds at 100,000 series).
            text = self._text
            new = str(minute)
            spans: dict[int, int] = {}
            appended: list[str] = []
            for key in keys:
                start = text.find(f" {key}=")
                if start < 0:
                    if f" {key}={new}" not in appended:
                        appended.append(f" {key}={new}")
                    continue
                start += len(key) + 2
                end = text.find(" ", start)
                end = len(text) if end < 0 else end
                # Update times only move forward: a process whose clock is behind must not make a series look old.
                if not text[start:end].isdigit() or int(text[start:end]) < minute:
                    spans[start] = end
            if spans or appended:
                parts: list[str] = []
                last = 0
                for start in sorted(spans):
                    parts += (text[last:start], new)
                    last = spans[start]
                parts.append(text[last:])
                self._text = "".join(parts + appended)
            return
        entries = self.entries()
        for key in keys:
            # Only forward: a process whose clock is behind must not make a series just updated look old (the
            # next expiry would remove it, totals and all), nor break ``oldest``.
            if entries.get(key, -1) < minute:
                entries[key] = minute

    def forget(self, keys: Iterable[str]) -> None:
        entries = self.entries()
        for key in keys:
            entries.pop(key, None)

    def render(self) -> str:
        if self._entries is not None:
            oldest = self.oldest
            if oldest is None:
                return ""
            return f"{oldest} " + " ".join(f"{key}={minute}" for key, minute in self._entries.items())
        return self._text


class SupportsLifecycle(Protocol):
    """A store: merges changes under its lock and runs its ``lifecycle`` inside each merge."""

    lifecycle: SeriesLifecycle

    def merge(self, changes: Changes) -> None: ...


class SeriesLifecycle:
    """What a store does to series beyond the events: expiry, the series bound, bucket migration, forgetting.

    ``expire_after``: seconds (None: series never expire). ``max_series``: per family (0: no bound).
    ``clock``: the time source, for tests."""

    def __init__(
        self,
        path: Path,
        *,
        expire_after: float | None = None,
        max_series: int = DEFAULT_MAX_SERIES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.expire_after = expire_after
        self.max_series = max_series
        self.clock = clock
        self.active: Family | None = None
        """The gauge of deployments running (the store's marker rules give it): its series count as updated
        while a deployment of their provider runs, so that they do not expire under it."""
        self.request: Selection | None = None
        """A forget to do in the next merge (see :func:`forget`)."""
        self.forgotten: list[str] = []
        """The series the last merge removed (forgotten or expired), one line each."""
        self._refused: dict[str, int] = {}

    @classmethod
    def from_environment(cls, path: Path, strict: bool = False) -> SeriesLifecycle:
        """``$FRAISIER_EXPIRE_AFTER`` (a duration) and ``$FRAISIER_MAX_SERIES_PER_FAMILY`` (0: no bound). A typo
        in either is logged once and its default used (``strict``: raised): it must not stop a deployment."""
        from fraisier_textfile.settings import from_environment, whole_number_text

        def bound(variable: str, text: str) -> int:
            return whole_number_text(variable, text, f"{DEFAULT_MAX_SERIES} (0: no bound)")

        return cls(
            path,
            expire_after=from_environment(EXPIRE_AFTER_ENVIRONMENT, parse_duration, None, strict=strict,
                                          default_shown="no expiry"),
            max_series=from_environment(MAX_SERIES_ENVIRONMENT, bound, DEFAULT_MAX_SERIES, strict=strict),
        )

    # The hooks in the store's merge

    def before_merge(self, document: Document, changes: Changes, read_from_disk: bool) -> Changes:
        """Migrate histograms with other buckets (a document this store wrote itself needs none), then drop
        changes to new series of families at their bound. Returns the changes to apply: ``changes`` itself,
        or a copy without the refused ones."""
        self.forgotten = []
        self._refused = {}
        if read_from_disk:
            touched = {family for family, _ in changes.observed}
            try:
                migrate_histograms(document, touched)
            except ParseError as error:
                raise CorruptTextfileError(self.path, error.problem) from None
        if self.max_series:
            return self._admit(document, changes)
        return changes

    def after_merge(self, document: Document, changes: Changes) -> None:
        """Once ``changes`` are applied: note the time of every series they touched, do a requested forget,
        expire series, and count refused changes."""
        now = self.clock()
        minute = int(now // 60)
        _record_times(document, changes, minute, self.active)
        if self.request is not None:
            self.forgotten += sweep(document, self.request, now, remove=True)
        if self.expire_after is not None:
            everything = Selection(expire_after=self.expire_after, schema=document.schema)
            expired = sweep(document, everything, now, remove=True)
            if expired:
                log.info("%s: %d series not updated for %gs expired", self.path, len(expired), self.expire_after)
            self.forgotten += expired
        if self._refused:
            _count_refused(document, self._refused)

    def _admit(self, document: Document, changes: Changes) -> Changes:
        touched: dict[Family, list[tuple[str, Labels]]] = {}
        for kind in _MERGE_KINDS:
            for family, labels in getattr(changes, kind):
                touched.setdefault(family, []).append((kind, labels))
        refused: list[tuple[str, Family, Labels]] = []
        for family, items in touched.items():
            block = document.blocks.get(family.name)
            if _most_series(block, family) + len(items) <= self.max_series:
                continue  # the common case: neither a count of the lines nor lookups
            count = _series_count(block, family)
            if count + len(items) <= self.max_series:
                continue
            suffix = "_count" if family.kind is Kind.HISTOGRAM else ""
            for kind, labels in items:
                key = series_key(family.name + suffix, family.labels, labels)
                if block is not None and block.value(key) is not None:
                    continue
                if count < self.max_series:
                    count += 1
                    continue
                refused.append((kind, family, labels))
        if not refused:
            return changes
        import copy

        admitted = copy.copy(changes)
        for kind in _MERGE_KINDS:
            setattr(admitted, kind, dict(getattr(changes, kind)))
        for kind, family, labels in refused:
            del getattr(admitted, kind)[(family, labels)]
            self._refused[family.name] = self._refused.get(family.name, 0) + 1
        for name in self._refused:
            if name not in _warned:
                _warned.add(name)
                log.warning(
                    "%s: %s has reached its bound of %d series: changes to new series of it are refused and "
                    "counted in %s; forget unused series (fraisier textfile forget) or raise %s",
                    self.path, name, self.max_series, REFUSED_FAMILY, MAX_SERIES_ENVIRONMENT,
                )
        return admitted


_warned: set[str] = set()


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
    times = SeriesTimes(times_line.get(document) or None)
    if any(label not in family.labels for label, _ in matchers):
        return []
    if cutoff is not None and not matchers:
        oldest = times.oldest
        if oldest is not None and oldest >= cutoff:
            return []  # nothing in this family can be due: no scan
    entries = times.entries() if cutoff is not None else None
    chosen: set[str] = set()
    keys: dict[str, str] = {}
    for text in _series_texts(block):
        labels = _labels(text)
        if any(labels.get(label) != value for label, value in matchers):
            continue
        key = _times_key([labels.get(label, "") for label in family.labels])
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
            kept = [line for line in block.lines if _label_text(line) not in chosen]
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
        rendered = times.render()
        times_line.put(document, rendered if family.name in document.blocks else "")
    return [f"{family.name}{{{text}}}" for text in _series_texts(block) if text in chosen]


# Series times


def _times_key(values: Iterable[str]) -> str:
    return ",".join(_encode(value) for value in values)


def _encode(value: str) -> str:
    """A label value with no space, comma or '=' (the separators of the times line), reversibly."""
    # A newline too: the text format escapes it in a label value, but the times are one meta line.
    if "%" in value or " " in value or "," in value or "=" in value or "\n" in value:
        return (
            value.replace("%", "%25").replace(" ", "%20").replace(",", "%2C").replace("=", "%3D").replace("\n", "%0A")
        )
    return value


# Series created at 0 beside the one recorded (a family's ``zero_series``: changes.py's deployment_series and
# health_check write them) are updated whenever their sibling is, so that they expire with the deployment pair or
# health check rather than while it is still in use.


def _record_times(document: Document, changes: Changes, minute: int, active_family: Family | None) -> None:
    touched: dict[Family, list[str]] = {}
    for kind in _MERGE_KINDS:
        for family, labels in getattr(changes, kind):
            keys = touched.setdefault(family, [])
            keys.append(_times_key(labels))
            sibling = family.zero_series
            block = document.blocks.get(family.name)
            if sibling is None or block is None:
                continue
            position, choices = family.labels.index(sibling[0]), sibling[1]
            suffix = "_count" if family.kind is Kind.HISTOGRAM else ""
            for choice in choices:
                if choice != labels[position]:
                    other = (*labels[:position], choice, *labels[position + 1 :])
                    if block.value(series_key(family.name + suffix, family.labels, other)) is not None:
                        keys.append(_times_key(other))
    active = None if active_family is None else document.blocks.get(active_family.name)
    if active_family is not None and active is not None and active.raw is None:
        providers = set(changes.active_providers)
        for key, value in active.samples():
            if value:
                providers.add(_labels(_label_text_of_key(key)).get("provider", ""))
        if providers:
            touched[active_family] = [_times_key((provider,)) for provider in sorted(providers) if provider]
    for family, keys in touched.items():
        if family.name not in document.blocks:
            continue
        times_line = UPDATED.at(family.name)
        times = SeriesTimes(times_line.get(document) or str(minute))
        times.touch(keys, minute)
        times_line.put(document, times.render())


# Reading series out of an owned block. Keys inside an owned block are canonical (catalogue label order,
# `le` last), so a series' labels are the text between the braces, minus `le` for a bucket.


def _label_text_of_key(key: str) -> str:
    brace = key.find("{")
    if brace < 0:
        return ""
    inner = key[brace + 1 : -1]
    le = inner.rfind('le="')
    if le >= 0 and key[:brace].endswith("_bucket") and (le == 0 or inner[le - 1] == ","):
        inner = inner[: max(le - 1, 0)]
    return inner


def _label_text(line: str) -> str:
    return _label_text_of_key(line[: line.rindex(" ")])


def _series_texts(block: Block) -> Iterator[str]:
    """The label text of each series of an owned block, once each, in file order."""
    seen: set[str] = set()
    for line in block.lines:
        text = _label_text(line)
        if text not in seen:
            seen.add(text)
            yield text


def _labels(text: str) -> dict[str, str]:
    if "\\" not in text:  # no escapes: no value holds a quote, so '",' ends a value
        labels = {}
        for pair in text.rstrip('"').split('",') if text else ():
            name, _, value = pair.partition('="')
            labels[name] = value
        return labels
    return parse_series_key("x{" + text + "}")[1]


def _most_series(block: Block | None, family: Family) -> int:
    """A bound on the series of a block that costs nothing: its bytes over the shortest line it could hold."""
    if block is None or block.raw is not None:
        return 0
    size = block.body_size()
    if size is None:
        return _series_count(block, family)
    if family.kind is Kind.HISTOGRAM:  # a series is a line per bucket, _sum and _count; the shortest is _sum
        return size // ((len(family.bucket_bounds) + 2) * (len(family.name) + len("_sum 0\n")))
    return size // len(f"{family.name} 0\n")


def _series_count(block: Block | None, family: Family) -> int:
    if block is None or block.raw is not None:
        return 0
    # line_count, not len(lines): a block read lazily is counted without being split into lines.
    if family.kind is Kind.HISTOGRAM:  # touched histograms have the catalogue's buckets by now
        return block.line_count() // (len(family.bucket_bounds) + 2)
    return block.line_count()


def _count_refused(document: Document, refused: dict[str, int]) -> None:
    """Add to the store's own counter, a family the catalogue does not hold (so it is kept as text)."""
    values: dict[str, float] = {}
    block = document.blocks.get(REFUSED_FAMILY)
    if block is not None:
        # Read as the text format reads it: the comments and blank lines at the end of a file belong to the
        # family read last, often this one (split on spaces, an indented comment raised a bare ValueError).
        for key, value in block.samples():
            values[key] = value
    for family, count in refused.items():
        key = series_key(REFUSED_FAMILY, ("family",), (family,))
        values[key] = values.get(key, 0.0) + count
    rebuilt = Block(REFUSED_FAMILY, help=REFUSED_HELP, type="counter")
    rebuilt.raw = (
        f"# HELP {REFUSED_FAMILY} {REFUSED_HELP}\n# TYPE {REFUSED_FAMILY} counter\n"
        + "".join(f"{key} {format_float(value)}\n" for key, value in values.items())
    )
    document.blocks[REFUSED_FAMILY] = rebuilt
