"""What a process changes in the textfile until it merges: the pending changes, by the rule each kind follows
when it meets the file (summed, observed by bucket, latest, largest), and the ids of the markers and sources
they account for. Families are the changes' own data: nothing here knows which exist."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fraisier_textfile.format.schema import Family, Kind

if TYPE_CHECKING:
    from fraisier_textfile.store.deployments import Deployment

Labels = tuple[str, ...]


class HistogramDelta:
    """Observations since the last flush: per-bucket counts (not cumulative; the last is +Inf), sum, count."""

    __slots__ = ("buckets", "count", "sum")

    def __init__(self, buckets: list[int]) -> None:
        self.buckets = buckets
        self.sum = 0.0
        self.count = 0

    def observe(self, family: Family, value: float) -> None:
        self.buckets[family.bucket_of(value)] += 1
        self.sum += value
        self.count += 1


if TYPE_CHECKING:
    from typing import Protocol

    # For the type checker alone (a Protocol class costs a record run's import): the event functions' parameter.
    class Sink(Protocol):
        """Where events go: a bare Changes (the CLI) or a recorder that also keeps an in-memory registry."""

        def add(self, family: Family, labels: Labels, amount: float) -> None: ...
        def observe(self, family: Family, labels: Labels, value: float) -> None: ...
        def set_latest(self, family: Family, labels: Labels, value: float) -> None: ...
        def set_maximum(self, family: Family, labels: Labels, value: float) -> None: ...
        def touch(self, family: Family, labels: Labels) -> None: ...
        def first_sight(self, what: tuple[str, ...]) -> bool: ...
        def count_active(self, provider: str, change: int) -> None: ...
        def retire_marker(self, marker_id: str) -> None: ...
        def end_deployment(self, deployment: Deployment) -> None: ...


class Changes:
    """Pending changes, keyed by family and label values, merged into the textfile at the next flush."""

    def __init__(self) -> None:
        # How each kind of change meets the file's value at the merge:
        self.added: dict[tuple[Family, Labels], float] = {}  # counters: summed with it
        self.observed: dict[tuple[Family, Labels], HistogramDelta] = {}  # histograms: summed by bucket
        self.latest: dict[tuple[Family, Labels], float] = {}  # availability, lock wait: replaces it
        self.maximum: dict[tuple[Family, Labels], float] = {}  # last-deployment time: the larger wins
        self.active_providers: set[str] = set()
        """Providers whose active-deployment series must exist (at 0 when nothing runs)."""
        self.retired_markers: set[str] = set()
        """In-flight markers whose deployment these changes account for; removed once merged."""
        self._ended: list[Deployment] = []
        self._seen: set[tuple[str, ...]] = set()

    def first_sight(self, what: tuple[str, ...]) -> bool:
        if what in self._seen:
            return False
        self._seen.add(what)
        return True

    def count_active(self, provider: str, change: int) -> None:
        # The file's count is recounted from the live markers at every merge; the change only says which
        # provider's series must be there.
        self.active_providers.add(provider)

    def retire_marker(self, marker_id: str) -> None:
        self.retired_markers.add(marker_id)

    def end_deployment(self, deployment: Deployment) -> None:
        """``deployment``, started by this process (store/deployments.py), ends with these changes: its marker is
        retired by them, and released once they are merged or handed over, never before."""
        marker_id = deployment.marker_id
        if marker_id is not None:
            self.retired_markers.add(marker_id)
            self._ended.append(deployment)

    @property
    def ended(self) -> tuple[Deployment, ...]:
        """The deployments of this process that these changes end: the store releases their markers once it wrote
        the changes. Never handed over: a marker's hold belongs to the process that holds it."""
        return tuple(self._ended)

    def touch(self, family: Family, labels: Labels) -> None:
        if family.kind is Kind.HISTOGRAM:
            self.histogram(family, labels)
        else:
            self.add(family, labels, 0.0)

    def add(self, family: Family, labels: Labels, amount: float) -> None:
        key = (family, labels)
        self.added[key] = self.added.get(key, 0.0) + amount

    def observe(self, family: Family, labels: Labels, value: float) -> None:
        delta = self.histogram(family, labels)
        delta.observe(family, value)

    def histogram(self, family: Family, labels: Labels) -> HistogramDelta:
        key = (family, labels)
        delta = self.observed.get(key)
        if delta is None:
            delta = self.observed[key] = HistogramDelta([0] * (len(family.buckets) + 1))
        return delta

    def set_latest(self, family: Family, labels: Labels, value: float) -> None:
        self.latest[(family, labels)] = value

    def set_maximum(self, family: Family, labels: Labels, value: float) -> None:
        key = (family, labels)
        current = self.maximum.get(key)
        if current is None or value > current:
            self.maximum[key] = value

    def clear(self) -> None:
        """Forget every pending change, once merged (or handed over). What ``first_sight`` saw stays seen:
        the series it created are in the file now."""
        self.added.clear()
        self.observed.clear()
        self.latest.clear()
        self.maximum.clear()
        self.active_providers.clear()
        self.retired_markers.clear()
        self._ended.clear()

    def __bool__(self) -> bool:
        return bool(
            self.added or self.observed or self.latest or self.maximum or self.active_providers
            or self.retired_markers
        )
