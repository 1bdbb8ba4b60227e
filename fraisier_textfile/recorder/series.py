"""This process's series, as its registry shows them and as the store is sent them.

Plain objects updated by each event, one dictionary lookup per series: a prometheus_client metric per series,
next to the pending changes, cost a record call more than the rest of it. Each also holds what changed since
the recorder last gathered its changes into the ``Changes`` the store merges. ``ProcessSeries`` is where the
event functions (changes.py) write a recorder's events: its series, its pending changes, and the shortcuts
that let a hot loop's repeated calls skip validating what was accepted before."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from fraisier_textfile import catalogue, changes, validate
from fraisier_textfile.catalogue import Family, Kind
from fraisier_textfile.store.changes import Changes, Labels

if TYPE_CHECKING:
    from fraisier_textfile.store.deployments import Deployment


class Counter:
    """One counter series: this process's total, and what was added since the changes were last gathered."""

    __slots__ = ("dirty", "key", "pending", "total")

    def __init__(self, key: tuple[Family, Labels]) -> None:
        self.key = key
        self.total = 0.0
        self.pending = 0.0
        self.dirty = False

    def add(self, amount: float, changed: list[Series]) -> None:
        self.total += amount
        self.pending += amount
        if not self.dirty:
            self.dirty = True
            changed.append(self)

    def gather(self, changes: Changes) -> None:
        changes.add(*self.key, self.pending)
        self.pending = 0.0


class Histogram:
    """One histogram series: this process's bucket counts (not cumulative, ``+Inf`` last) and sum, the counts
    when the changes were last gathered, and the sum observed since (the count is the buckets' sum)."""

    __slots__ = ("buckets", "dirty", "gathered", "key", "pending_sum", "sum")

    def __init__(self, key: tuple[Family, Labels]) -> None:
        self.key = key
        self.buckets = [0] * (len(key[0].buckets) + 1)
        self.gathered = [0] * len(self.buckets)
        self.sum = 0.0
        self.pending_sum = 0.0
        self.dirty = False

    def observe(self, value: float, changed: list[Series]) -> None:
        self.buckets[self.key[0].bucket_of(value)] += 1
        self.sum += value
        self.pending_sum += value
        if not self.dirty:
            self.dirty = True
            changed.append(self)

    def gather(self, changes: Changes) -> None:
        target = changes.histogram(*self.key)
        observed = 0
        for index, (now, then) in enumerate(zip(self.buckets, self.gathered)):
            if now != then:
                target.buckets[index] += now - then
                observed += now - then
        target.sum += self.pending_sum
        target.count += observed
        self.pending_sum = 0.0
        self.gathered = list(self.buckets)


class Gauge:
    """One gauge series: this process's value, and the value to report since the changes were last gathered
    (the latest one, or the largest one for the last-deployment time)."""

    __slots__ = ("dirty", "key", "latest", "maximum", "value")

    def __init__(self, key: tuple[Family, Labels]) -> None:
        self.key = key
        self.value = 0.0
        self.latest: float | None = None
        self.maximum: float | None = None
        self.dirty = False

    def set_maximum(self, value: float, changed: list[Series]) -> None:
        self.value = value
        if self.maximum is None or value > self.maximum:
            self.maximum = value
        if not self.dirty:
            self.dirty = True
            changed.append(self)

    def gather(self, changes: Changes) -> None:
        if self.latest is not None:
            changes.set_latest(*self.key, self.latest)
            self.latest = None
        if self.maximum is not None:
            changes.set_maximum(*self.key, self.maximum)
            self.maximum = None


Series = Counter | Histogram | Gauge


class Totals:
    """This process's series, as its registry shows them: plain objects updated by each event, one dictionary
    lookup per series (a prometheus_client metric per series, next to the pending changes, cost a record call
    more than the rest of it), served through one collector. Each series also holds what changed since the
    recorder last gathered its changes (``ProcessSeries.gather``) into the ``Changes`` that the store
    merges."""

    def __init__(self) -> None:
        self.counters: dict[tuple[Family, Labels], Counter] = {}
        self.histograms: dict[tuple[Family, Labels], Histogram] = {}
        self.gauges: dict[tuple[Family, Labels], Gauge] = {}
        self._bounds: dict[Family, list[str]] = {}
        """Each histogram's ``le`` values as prometheus_client writes them, made when it is first collected: most
        processes record and merge, and are never collected."""

    def collect(self) -> Iterator[Metric]:
        """The families of the catalogue, in its order, each series in the order it was first recorded. Read
        without the recorder's lock (a scrape must not wait for a flush): the dictionaries are copied at once,
        which the GIL makes atomic."""
        values: dict[Family, list[tuple[Labels, float]]] = {family: [] for family in catalogue.FAMILIES}
        histograms: dict[Family, list[tuple[Labels, list[int], float]]] = {}
        for (family, labels), counter in list(self.counters.items()):
            values[family].append((labels, counter.total))
        for (family, labels), histogram in list(self.histograms.items()):
            histograms.setdefault(family, []).append((labels, list(histogram.buckets), histogram.sum))
        for (family, labels), gauge in list(self.gauges.items()):
            values[family].append((labels, gauge.value))
        for family in catalogue.FAMILIES:
            metric: Metric
            if family.kind is Kind.HISTOGRAM:
                metric = HistogramMetricFamily(family.name, family.help, labels=family.labels)
                bounds = self._bounds.get(family) or self._bounds.setdefault(
                    family, [floatToGoString(bound) for bound in family.buckets] + ["+Inf"]  # type: ignore[no-untyped-call]
                )
                for labels, counts, total_sum in histograms.get(family, ()):
                    cumulative = 0.0
                    buckets = []
                    for bound, count in zip(bounds, counts):
                        cumulative += count
                        buckets.append((bound, cumulative))
                    metric.add_metric(labels, buckets, total_sum)
            else:
                kind = CounterMetricFamily if family.kind is Kind.COUNTER else GaugeMetricFamily
                metric = kind(family.name, family.help, labels=family.labels)
                for labels, value in values[family]:
                    metric.add_metric(labels, value)
            yield metric


_LARGEST_DURATION = 1.7976931348623157e308
"""The largest finite float: a duration up to it is valid (validate.check_duration)."""


class ProcessSeries:
    """A recorder's series and its events not yet written: the sink the event functions write to (see
    changes.Sink). Each sink method updates this process's totals (its registry) and the pending changes,
    inlined: the record call's hot path. The caller holds the recorder's lock."""

    def __init__(self) -> None:
        self.totals = Totals()
        self._counters = self.totals.counters
        self._histograms = self.totals.histograms
        self._gauges = self.totals.gauges
        self._start_afresh()

    def _start_afresh(self) -> None:
        self._changed: list[Series] = []
        """The series changed since the last ``gather``, in the order they first changed."""
        self._pending = Changes()
        self.events = 0
        """Events recorded and not yet written (merged or handed over)."""
        self._completions: dict[tuple[object, object, object], tuple[Counter, Histogram, Gauge]] = {}
        """The series a ``record_deployment_complete`` with these provider, fraise type and status updates, once
        the event function accepted them: the hot loop's later calls skip validating them again."""
        self._health_checks: dict[tuple[object, object, object], tuple[Counter, Histogram]] = {}
        self._rollbacks: dict[tuple[object, object], tuple[Counter, Histogram]] = {}
        self._db_queries: dict[tuple[object, object, object], tuple[Counter, Histogram]] = {}
        """The same for ``record_health_check``, ``record_rollback`` and ``record_db_query``."""

    @property
    def pending(self) -> bool:
        """Whether events wait to be written."""
        return bool(self._changed or self._pending)

    def gather(self) -> Changes:
        """What the series recorded since the last call, moved into the pending changes; those changes (the
        store empties them once merged or handed over)."""
        pending = self._pending
        for series in self._changed:
            series.dirty = False
            series.gather(pending)
        self._changed.clear()
        return pending

    def after_fork(self) -> None:
        """In a forked child: this process keeps the totals, not the parent's pending changes."""
        for series in self._changed:
            series.dirty = False
            series.gather(Changes())
        self._start_afresh()

    # Events

    def record(self, event: Callable[..., None], *arguments: object) -> None:
        """Record one event through its function in changes.py."""
        event(self, *arguments)
        self.events += 1

    def deployment_complete(self, provider: str, fraise_type: str, status: str, duration: float) -> None:
        """``changes.deployment_complete``, straight to its series for arguments it accepted before (their series
        exist since then). Not counted as an event: the caller counts it once the deployment ended."""
        try:
            series = self._completions.get((provider, fraise_type, status))
        except TypeError:  # an unhashable argument: the event function refuses it
            series = None
        if series is not None and duration.__class__ is float and 0.0 <= duration <= _LARGEST_DURATION:
            deployments, durations, last = series
            deployments.add(1.0, self._changed)
            durations.observe(duration, self._changed)
            last.set_maximum(time.time(), self._changed)
        else:
            changes.deployment_complete(self, provider, fraise_type, status, duration)
            self._remember_completion(provider, fraise_type, status)

    def rollback(self, provider: str, reason: str, duration: float) -> None:
        self._count_and_observe(self._rollbacks, (provider, reason), duration, changes.rollback,
                                self._remember_rollback)

    def health_check(self, provider: str, check_type: str, status: str, duration: float) -> None:
        self._count_and_observe(self._health_checks, (provider, check_type, status), duration,
                                changes.health_check, self._remember_health_check)

    def db_query(self, database_type: str, operation: str, status: str, duration: float) -> None:
        self._count_and_observe(self._db_queries, (database_type, operation, status), duration,
                                changes.db_query, self._remember_db_query)

    def _count_and_observe(
        self,
        shortcuts: dict[Any, tuple[Counter, Histogram]],
        arguments: tuple[object, ...],
        duration: object,
        event: Callable[..., None],
        remember: Callable[..., None],
    ) -> None:
        """An event that counts once and observes its duration. A repeat of label arguments that ``event``
        (the function in changes.py) accepted before goes straight to the two series it updated then; anything
        else goes through ``event``, which checks everything, and is remembered."""
        try:
            series = shortcuts.get(arguments)
        except TypeError:  # an unhashable argument: the event function refuses it
            series = None
        if series is not None and duration.__class__ is float and 0.0 <= duration <= _LARGEST_DURATION:
            series[0].add(1.0, self._changed)
            series[1].observe(duration, self._changed)
        else:
            event(self, *arguments, duration)
            remember(*arguments)
        self.events += 1

    # The sink that the event functions write to (see changes.Sink)

    def add(self, family: Family, labels: Labels, amount: float) -> None:
        counter = self._counters.get((family, labels))
        if counter is None:
            counter = self._counters[(family, labels)] = Counter((family, labels))
        counter.add(amount, self._changed)

    def observe(self, family: Family, labels: Labels, value: float) -> None:
        histogram = self._histograms.get((family, labels))
        if histogram is None:
            histogram = self._histograms[(family, labels)] = Histogram((family, labels))
        histogram.observe(value, self._changed)

    def set_latest(self, family: Family, labels: Labels, value: float) -> None:
        gauge = self.gauge(family, labels)
        gauge.value = gauge.latest = value
        if not gauge.dirty:
            gauge.dirty = True
            self._changed.append(gauge)

    def set_maximum(self, family: Family, labels: Labels, value: float) -> None:
        self.gauge(family, labels).set_maximum(value, self._changed)

    def gauge(self, family: Family, labels: Labels) -> Gauge:
        gauge = self._gauges.get((family, labels))
        if gauge is None:
            gauge = self._gauges[(family, labels)] = Gauge((family, labels))
        return gauge

    def touch(self, family: Family, labels: Labels) -> None:
        """The series exists from now on, in this process and in the file."""
        if family.kind is Kind.COUNTER:
            self.add(family, labels, 0.0)
        elif family.kind is Kind.HISTOGRAM:
            histogram = self._histograms.get((family, labels))
            if histogram is None:
                histogram = self._histograms[(family, labels)] = Histogram((family, labels))
            if not histogram.dirty:
                histogram.dirty = True
                self._changed.append(histogram)
        else:
            self.gauge(family, labels)
            self.gather()  # in order with the changes before it
            self._pending.touch(family, labels)

    def first_sight(self, what: tuple[str, ...]) -> bool:
        # The pending changes remember what they saw across their merges, for as long as this object lives.
        return self._pending.first_sight(what)

    def count_active(self, provider: str, change: int) -> None:
        self.gauge(catalogue.ACTIVE_DEPLOYMENTS, (provider,)).value += change
        self._pending.count_active(provider, change)

    def retire_marker(self, marker_id: str) -> None:
        self._pending.retire_marker(marker_id)

    def end_deployment(self, deployment: Deployment) -> None:
        self._pending.end_deployment(deployment)

    # The shortcuts

    def _remember_completion(self, provider: object, fraise_type: object, status: object) -> None:
        """The series that changes.deployment_complete just updated for these arguments (which it accepted)."""
        plain_provider = validate.check_label_value("provider", provider)
        plain_fraise_type = validate.check_label_value("fraise_type", fraise_type)
        plain_status = catalogue.check_deployment_status(status)
        self._completions[(provider, fraise_type, status)] = (
            self._counters[(catalogue.DEPLOYMENTS, (plain_provider, plain_status, plain_fraise_type))],
            self._histograms[(catalogue.DEPLOYMENT_DURATION, (plain_provider, plain_status))],
            self._gauges[(catalogue.LAST_DEPLOYMENT, (plain_provider, plain_fraise_type, plain_status))],
        )

    def _remember_rollback(self, provider: object, reason: object) -> None:
        """The series that changes.rollback just updated for these arguments (which it accepted)."""
        plain_provider = validate.check_label_value("provider", provider)
        plain_reason = validate.check_label_value("reason", reason)
        self._rollbacks[(provider, reason)] = (
            self._counters[(catalogue.ROLLBACKS, (plain_provider, plain_reason))],
            self._histograms[(catalogue.ROLLBACK_DURATION, (plain_provider,))],
        )

    def _remember_health_check(self, provider: object, check_type: object, status: object) -> None:
        """The series that changes.health_check just updated for these arguments (which it accepted)."""
        plain_provider = validate.check_label_value("provider", provider)
        plain_check_type = validate.check_label_value("check_type", check_type)
        plain_status = validate.check_choice("status", status, catalogue.HEALTH_CHECK_STATUSES)
        self._health_checks[(provider, check_type, status)] = (
            self._counters[(catalogue.HEALTH_CHECKS, (plain_provider, plain_check_type, plain_status))],
            self._histograms[(catalogue.HEALTH_CHECK_DURATION, (plain_provider, plain_check_type))],
        )

    def _remember_db_query(self, database_type: object, operation: object, status: object) -> None:
        """The series that changes.db_query just updated for these arguments (which it accepted)."""
        plain_database_type = validate.check_label_value("database_type", database_type)
        plain_operation = validate.check_label_value("operation", operation)
        plain_status = validate.check_label_value("status", status)
        self._db_queries[(database_type, operation, status)] = (
            self._counters[(catalogue.DB_QUERIES, (plain_database_type, plain_operation, plain_status))],
            self._histograms[(catalogue.QUERY_LATENCY, (plain_database_type, plain_operation))],
        )
