"""Series lifecycle: forgetting series, expiring the ones nobody updates, bounding the series of a family, and
migrating histograms whose buckets changed.

The store runs it in every merge, under its lock, as a participant (:class:`LifecycleParticipant`), so all of
this is written with the same atomic replace as the events. This module is the per-merge part: noting update
times, the series bound and its counter, running a forget or an expiry; what a forget selects and how it is swept
from the file is selection.py's, the update times' bookkeeping line series_times.py's, bucket migration
migration.py's.

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

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fraisier_textfile.errors import CorruptTextfileError
from fraisier_textfile.format.model import Block, Document
from fraisier_textfile.format.schema import Family, Kind, format_float
from fraisier_textfile.format.syntax import ParseError, series_key
from fraisier_textfile.logger import get_logger
from fraisier_textfile.store import process
from fraisier_textfile.store.changes import Changes, Labels
from fraisier_textfile.store.migration import migrate_histograms as migrate_histograms
from fraisier_textfile.store.migration import migration_notes as migration_notes
from fraisier_textfile.store.series_times import UPDATED as UPDATED
from fraisier_textfile.store.series_times import SeriesTimes as SeriesTimes
from fraisier_textfile.store.series_times import label_text_of_key, labels_of, times_key
from fraisier_textfile.store.transaction import Merge, Participant

if TYPE_CHECKING:
    from fraisier_textfile.format.bookkeeping import RawValue
    from fraisier_textfile.store import fs
    from fraisier_textfile.store.selection import Selection as Selection
    from fraisier_textfile.store.selection import forget as forget
    from fraisier_textfile.store.selection import parse_duration as parse_duration
    from fraisier_textfile.store.selection import parse_matcher as parse_matcher
    from fraisier_textfile.store.selection import sweep as sweep

_SELECTION_NAMES = frozenset({"Selection", "forget", "parse_duration", "parse_matcher", "sweep"})


def __getattr__(name: str) -> Any:
    # What a forget or an expiry selects (selection.py) is loaded by the first that runs: a merge of a store without
    # either has no use for it. Its names stay reachable from here.
    if name not in _SELECTION_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from fraisier_textfile.store import selection

    return getattr(selection, name)

log = get_logger(__name__)

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
_MERGE_KINDS = ("added", "observed", "latest", "maximum")


def _parse_duration(variable: str, text: str) -> float:
    from fraisier_textfile.store.selection import parse_duration

    return parse_duration(variable, text)


class SeriesLifecycle:
    """What a store does to series beyond the events: expiry, the series bound, bucket migration, forgetting.

    ``expire_after``: seconds (None: series never expire). ``max_series``: per family (0: no bound).
    ``clock``: the time source, for tests."""

    def __init__(
        self,
        path: fs.PathName,
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
        self._times_noted: dict[str, tuple[RawValue, int, frozenset[Labels]]] = {}
        """Family name -> its update-time line as this store's last merge of it left it (that very object), the
        minute, and the series whose times that line holds at that minute or later (their zero siblings' too). Only
        of the document merged last: a line is spans of the file read, which must not outlive the document."""
        self._times_noted_in: Document | None = None

    @classmethod
    def from_environment(cls, path: fs.PathName, strict: bool = False) -> SeriesLifecycle:
        """``$FRAISIER_EXPIRE_AFTER`` (a duration) and ``$FRAISIER_MAX_SERIES_PER_FAMILY`` (0: no bound). A typo
        in either is logged once and its default used (``strict``: raised): it must not stop a deployment."""
        from fraisier_textfile.settings import from_environment, whole_number_text

        def bound(variable: str, text: str) -> int:
            return whole_number_text(variable, text, f"{DEFAULT_MAX_SERIES} (0: no bound)")

        return cls(
            path,
            expire_after=from_environment(EXPIRE_AFTER_ENVIRONMENT, _parse_duration, None, strict=strict,
                                          default_shown="no expiry"),
            max_series=from_environment(MAX_SERIES_ENVIRONMENT, bound, DEFAULT_MAX_SERIES, strict=strict),
        )

    # The hooks in the store's merge

    def before_merge(self, document: Document, changes: Changes, as_written: bool) -> Changes:
        """Migrate histograms with other buckets (a document as this store writes it needs none), then drop
        changes to new series of families at their bound. Returns the changes to apply: ``changes`` itself,
        or a copy without the refused ones."""
        self.forgotten = []
        self._refused = {}
        if not as_written:
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
        if document is not self._times_noted_in:
            self._times_noted.clear()
            self._times_noted_in = document
        _record_times(document, changes, minute, self.active, self._times_noted)
        if self.request is not None or self.expire_after is not None:
            self._sweep(document, now)
        if self._refused:
            _count_refused(document, self._refused)

    def _sweep(self, document: Document, now: float) -> None:
        """Do the forget requested and expire the series not updated for ``expire_after``."""
        from fraisier_textfile.store.selection import Selection, sweep

        if self.request is not None:
            self.forgotten += sweep(document, self.request, now, remove=True)
        if self.expire_after is not None:
            everything = Selection(expire_after=self.expire_after, schema=document.schema)
            expired = sweep(document, everything, now, remove=True)
            if expired:
                log.info("%s: %d series not updated for %gs expired", self.path, len(expired), self.expire_after)
            self.forgotten += expired

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
            if process.first_time("series bound", name):
                log.warning(
                    "%s: %s has reached its bound of %d series: changes to new series of it are refused and "
                    "counted in %s; forget unused series (fraisier textfile forget) or raise %s",
                    self.path, name, self.max_series, REFUSED_FAMILY, MAX_SERIES_ENVIRONMENT,
                )
        return admitted



# Series created at 0 beside the one recorded (a family's ``zero_series``: changes.py's deployment_series and
# health_check write them) are updated whenever their sibling is, so that they expire with the deployment pair or
# health check rather than while it is still in use.


def _record_times(
    document: Document, changes: Changes, minute: int, active_family: Family | None,
    noted: dict[str, tuple[RawValue, int, frozenset[Labels]]],
) -> None:
    """Note ``minute`` as the update time of every series ``changes`` touch (and of their zero siblings), and of
    the active gauge's providers. ``noted``: what the previous merges noted (see SeriesLifecycle._times_noted),
    updated here. A family whose line is still the object noted, in the same minute, for series already noted is
    left alone: a series added since (a sibling, say) got its time in the merge that added it, the line is
    unchanged since, so its time is this minute already; a forget or an expiry puts a new line, and another
    process's merge means a new document. A long-lived recorder's warm merges then skip the lookups of every
    sibling and the search of the line, which change nothing within a minute."""
    changed: dict[Family, dict[Labels, None]] = {}
    for kind in _MERGE_KINDS:
        for family, labels in getattr(changes, kind):
            changed.setdefault(family, {})[labels] = None
    meta = document.meta
    touched: dict[Family, list[str]] = {}
    for family, series in changed.items():
        last = noted.get(family.name)
        if (
            last is not None and last[1] == minute and family is not active_family
            and meta.get(UPDATED.at(family.name).key) is last[0] and last[2].issuperset(series)
        ):
            continue
        keys = touched[family] = []
        sibling = family.zero_series
        block = document.blocks.get(family.name)
        if sibling is None or block is None:
            keys.extend(times_key(labels) for labels in series)
            continue
        position, choices = family.labels.index(sibling[0]), sibling[1]
        name = family.name + ("_count" if family.kind is Kind.HISTOGRAM else "")
        found: dict[Labels, None] = {}  # in the order first found, each once
        for labels in series:
            if labels in found:
                continue  # a sibling of series looked at before: its own siblings were looked at with them
            found[labels] = None
            for choice in choices:
                if choice != labels[position]:
                    other = (*labels[:position], choice, *labels[position + 1 :])
                    # A sibling the changes hold is in the file now (just applied): no need to look.
                    if other in series or block.value(series_key(name, family.labels, other)) is not None:
                        found[other] = None
        keys.extend(times_key(labels) for labels in found)
    active = None if active_family is None else document.blocks.get(active_family.name)
    if active_family is not None and active is not None and active.raw is None:
        providers = set(changes.active_providers)
        for key, value in active.samples():
            if value:
                providers.add(labels_of(label_text_of_key(key)).get("provider", ""))
        if providers:
            touched[active_family] = [times_key((provider,)) for provider in sorted(providers) if provider]
    for family, keys in touched.items():
        if family.name not in document.blocks:
            continue
        times_line = UPDATED.at(family.name)
        line = times_line.get_raw(document)
        times = SeriesTimes(line if line else str(minute))
        times.touch(keys, minute)
        rendered = times.render()
        times_line.put_raw(document, rendered)
        noted_series = changed.get(family)
        if noted_series is None or family is active_family or not rendered:
            continue
        last = noted.get(family.name)
        if last is not None and last[1] == minute and last[0] is line:
            noted[family.name] = (rendered, minute, last[2].union(noted_series))  # the line noted, edited since
        else:
            noted[family.name] = (rendered, minute, frozenset(noted_series))



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


class LifecycleParticipant(Participant):
    """The series lifecycle in every merge (lifecycle.py): first of all before applying (it migrates histograms
    and refuses series over the bound), last after applying (update times, forgetting, expiry)."""

    def __init__(self, lifecycle: SeriesLifecycle) -> None:
        self.lifecycle = lifecycle

    def before_apply(self, merge: Merge) -> None:
        merge.changes = self.lifecycle.before_merge(merge.document, merge.changes, merge.as_written)

    def after_apply(self, merge: Merge) -> None:
        self.lifecycle.after_merge(merge.document, merge.changes)
