"""What a process recorded since its last flush, and what each Fraisier event records.

The recorder and the CLI describe events through the same functions here, so a deployment recorded from
Python and one recorded from a cron job touch exactly the same series. Nothing here imports prometheus_client:
a ``fraisier record`` process must not pay for it.
"""

from __future__ import annotations

import bisect
import time
from typing import Protocol

from fraisier_textfile import catalogue as c

Labels = tuple[str, ...]


class HistogramDelta:
    """Observations since the last flush: per-bucket counts (not cumulative; the last is +Inf), sum, count."""

    __slots__ = ("buckets", "count", "sum")

    def __init__(self, buckets: list[int]) -> None:
        self.buckets = buckets
        self.sum = 0.0
        self.count = 0

    def observe(self, family: c.Family, value: float) -> None:
        self.buckets[bisect.bisect_left(family.buckets, value)] += 1
        self.sum += value
        self.count += 1


class Sink(Protocol):
    """Where events go: a bare Changes (the CLI) or a recorder that also keeps an in-memory registry."""

    def add(self, family: c.Family, labels: Labels, amount: float) -> None: ...
    def observe(self, family: c.Family, labels: Labels, value: float) -> None: ...
    def set_latest(self, family: c.Family, labels: Labels, value: float) -> None: ...
    def set_maximum(self, family: c.Family, labels: Labels, value: float) -> None: ...
    def touch(self, family: c.Family, labels: Labels) -> None: ...
    def first_sight(self, what: tuple[str, ...]) -> bool: ...


class Changes:
    """Pending changes, keyed by family and label values, merged into the textfile at the next flush."""

    def __init__(self) -> None:
        # How each kind of change meets the file's value at the merge:
        self.added: dict[tuple[c.Family, Labels], float] = {}  # counters: summed with it
        self.observed: dict[tuple[c.Family, Labels], HistogramDelta] = {}  # histograms: summed, bucket by bucket
        self.latest: dict[tuple[c.Family, Labels], float] = {}  # availability, lock wait: replaces it
        self.maximum: dict[tuple[c.Family, Labels], float] = {}  # last-deployment time: the larger wins
        self.active_providers: set[str] = set()
        """Providers whose active-deployment series must exist (at 0 when nothing runs)."""
        self.retired_markers: set[str] = set()
        """In-flight markers whose deployment these changes account for; removed once merged."""
        self._seen: set[tuple[str, ...]] = set()

    def first_sight(self, what: tuple[str, ...]) -> bool:
        if what in self._seen:
            return False
        self._seen.add(what)
        return True

    def touch(self, family: c.Family, labels: Labels) -> None:
        if family.kind is c.Kind.HISTOGRAM:
            self.histogram(family, labels)
        else:
            self.add(family, labels, 0.0)

    def add(self, family: c.Family, labels: Labels, amount: float) -> None:
        key = (family, labels)
        self.added[key] = self.added.get(key, 0.0) + amount

    def observe(self, family: c.Family, labels: Labels, value: float) -> None:
        delta = self.histogram(family, labels)
        delta.observe(family, value)

    def histogram(self, family: c.Family, labels: Labels) -> HistogramDelta:
        key = (family, labels)
        delta = self.observed.get(key)
        if delta is None:
            delta = self.observed[key] = HistogramDelta([0] * (len(family.buckets) + 1))
        return delta

    def set_latest(self, family: c.Family, labels: Labels, value: float) -> None:
        self.latest[(family, labels)] = value

    def set_maximum(self, family: c.Family, labels: Labels, value: float) -> None:
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

    def __bool__(self) -> bool:
        return bool(
            self.added or self.observed or self.latest or self.maximum or self.active_providers
            or self.retired_markers
        )


# The events. Each validates everything before it records anything, so a bad value records nothing.


def deployment_series(sink: Sink, provider: str, fraise_type: str) -> None:
    """Create the deployment series of a (provider, fraise type) pair at 0 for every status, so that
    ``increase()`` sees the first failure of a pair never seen before."""
    if sink.first_sight(("deployment", provider, fraise_type)):
        for status in c.DEPLOYMENT_STATUSES:
            sink.touch(c.DEPLOYMENTS, (provider, status, fraise_type))
            sink.touch(c.DEPLOYMENT_DURATION, (provider, status))


def deployment_complete(
    sink: Sink, provider: str, fraise_type: str, status: str, duration: float, now: float | None = None
) -> None:
    provider = c.check_label_value("provider", provider)
    fraise_type = c.check_label_value("fraise_type", fraise_type)
    status = c.check_choice("status", status, c.DEPLOYMENT_STATUSES)
    duration = c.check_seconds("duration", duration)
    deployment_series(sink, provider, fraise_type)
    sink.add(c.DEPLOYMENTS, (provider, status, fraise_type), 1.0)
    sink.observe(c.DEPLOYMENT_DURATION, (provider, status), duration)
    sink.set_maximum(c.LAST_DEPLOYMENT, (provider, fraise_type, status), time.time() if now is None else now)


def deployment_error(sink: Sink, provider: str, error_type: str) -> None:
    provider = c.check_label_value("provider", provider)
    error_type = c.check_label_value("error_type", error_type)
    sink.add(c.DEPLOYMENT_ERRORS, (provider, error_type), 1.0)


def rollback(sink: Sink, provider: str, reason: str, duration: float) -> None:
    provider = c.check_label_value("provider", provider)
    reason = c.check_label_value("reason", reason)
    duration = c.check_seconds("duration", duration)
    sink.add(c.ROLLBACKS, (provider, reason), 1.0)
    sink.observe(c.ROLLBACK_DURATION, (provider,), duration)


def health_check(sink: Sink, provider: str, check_type: str, status: str, duration: float) -> None:
    provider = c.check_label_value("provider", provider)
    check_type = c.check_label_value("check_type", check_type)
    status = c.check_choice("status", status, c.HEALTH_CHECK_STATUSES)
    duration = c.check_seconds("duration", duration)
    if sink.first_sight(("health_check", provider, check_type)):  # both statuses exist from the first on
        for other in c.HEALTH_CHECK_STATUSES:
            sink.touch(c.HEALTH_CHECKS, (provider, check_type, other))
    sink.add(c.HEALTH_CHECKS, (provider, check_type, status), 1.0)
    sink.observe(c.HEALTH_CHECK_DURATION, (provider, check_type), duration)


def provider_availability(sink: Sink, provider: str, available: bool) -> None:
    provider = c.check_label_value("provider", provider)
    sink.set_latest(c.PROVIDER_AVAILABILITY, (provider,), 1.0 if available else 0.0)


def lock_wait(sink: Sink, service: str, provider: str, wait_time: float) -> None:
    service = c.check_label_value("service", service)
    provider = c.check_label_value("provider", provider)
    wait_time = c.check_seconds("wait_time", wait_time)
    sink.set_latest(c.LOCK_WAIT, (service, provider), wait_time)
