"""This process's series, as its registry shows them and as the store is sent them.

Plain objects updated by each event, one dictionary lookup per series: a prometheus_client metric per series,
next to the pending changes, cost a record call more than the rest of it. Each also holds what changed since
the recorder last gathered its changes into the ``Changes`` the store merges."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from fraisier_textfile import catalogue
from fraisier_textfile.catalogue import Family, Kind
from fraisier_textfile.changes import Changes, Labels
from fraisier_textfile.store import inflight


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
        self.buckets[bisect_left(self.key[0].buckets, value)] += 1
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
    recorder last gathered its changes (``MetricsRecorder._gather``) into the ``Changes`` that the store
    merges."""

    def __init__(self) -> None:
        self.counters: dict[tuple[Family, Labels], Counter] = {}
        self.histograms: dict[tuple[Family, Labels], Histogram] = {}
        self.gauges: dict[tuple[Family, Labels], Gauge] = {}
        self._bounds = {
            family: [floatToGoString(bound) for bound in family.buckets] + ["+Inf"]  # type: ignore[no-untyped-call]
            for family in catalogue.FAMILIES
            if family.kind is Kind.HISTOGRAM
        }

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
                bounds = self._bounds[family]
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


class InFlight:
    """A deployment started by this process and not yet ended."""

    __slots__ = ("fraise_type", "marker", "provider")

    def __init__(self, provider: str, fraise_type: str, marker: inflight.Marker | None) -> None:
        self.provider = provider
        self.fraise_type = fraise_type
        self.marker = marker
        """None when the marker could not be written: the deployment is then not visible to other processes."""
