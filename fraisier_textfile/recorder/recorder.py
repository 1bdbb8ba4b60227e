"""MetricsRecorder: Fraisier's deployment metrics in a dedicated registry, written into the textfile.

Every event updates two things: this process's own ``CollectorRegistry`` (for in-process serving and
inspection) and the changes pending since the last write, which are merged into the shared textfile.

Metrics never fail or stall a deployment. No ``record_*``, ``set_*``, ``update_*`` or ``track_*`` call raises
for a metrics problem (unless the recorder is ``strict``, for tests): a bad value is dropped, a file that cannot
be written keeps its events pending (or hands them over to the next writer), and each kind of problem is logged
once through ``logging`` with its fix and shown by ``get_metrics_summary()``. Waiting for a lock that another
process holds costs a process at most ``lock_wait_budget`` seconds in all; past that, events are handed over
at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from fraisier_textfile import catalogue, changes
from fraisier_textfile.catalogue import Family, Kind
from fraisier_textfile.changes import Changes, Labels
from fraisier_textfile.errors import FraisierTextfileError, InvalidValueError, LockTimeoutError, write_error
from fraisier_textfile.recorder import process
from fraisier_textfile.recorder.fraisier import OPERATIONS
from fraisier_textfile.recorder.fraisier import DeploymentMetrics as DeploymentMetrics  # its public name here
from fraisier_textfile.recorder.policy import LOCK_BUSY, Problems, never_raising
from fraisier_textfile.recorder.series import Counter, Gauge, Histogram, InFlight, Series, Totals
from fraisier_textfile.settings import (
    LOCK_WAIT_BUDGET_ENVIRONMENT,
    default_lock_wait_budget,
)
from fraisier_textfile.store import inflight
from fraisier_textfile.store.files import TEXTFILE_NAME, default_textfile_directory
from fraisier_textfile.store.lifecycle import SeriesLifecycle
from fraisier_textfile.store.lock import default_lock_timeout
from fraisier_textfile.store.textfile import TextfileStore

if TYPE_CHECKING:
    from fraisier_textfile.serve.server import MetricsServer

log = logging.getLogger(__name__)

PROMETHEUS_AVAILABLE = True
"""Fraisier's flag: whether metrics are recorded. Always true here (prometheus_client is a dependency)."""

_LARGEST_DURATION = 1.7976931348623157e308
"""The largest finite float: a duration up to it is valid (catalogue.check_duration)."""
RECORD_CALL_WAIT = 0.0
"""Seconds one record call waits for a busy lock (within the budget): none. Under contention a waiter that
hands its events over writes one small file, one that waits and then merges a file another process wrote
reads, parses and writes the whole file, and the holder merges the hand-overs in one go after its own merge
(group commit): waiting made the slowest calls of a race several times slower (bench/bench_race.py)."""
@dataclass
class Outcome:
    """What a tracked block reports: set ``status`` inside the block to record another status."""

    status: str


def error_type_of(error: BaseException) -> str:
    """The ``error_type`` label recorded for an exception: its class name."""
    return type(error).__name__


class MetricsRecorder:
    """Records Fraisier's deployment metrics and merges them into ``<textfile_dir>/fraisier.prom``.

    The method names and arguments are those of Fraisier 0.84.2's ``fraisier.metrics.MetricsRecorder``.

    With ``auto_flush`` (the default) every record call has written its event when it returns: merged into the
    textfile, or, when another process holds the lock, handed over at once (no wait: ``RECORD_CALL_WAIT``) so
    that the holder, right after its own merge, or the next merge by any process writes it exactly once. With
    ``auto_flush=False`` (hot loops) events wait for ``flush()`` or for the process's exit.

    ``lock_timeout`` (default ``$FRAISIER_LOCK_TIMEOUT`` or 10 s) bounds one wait for the lock;
    ``lock_wait_budget`` (default ``$FRAISIER_LOCK_WAIT_BUDGET`` or 1 s) bounds the time the process spends
    writing textfiles, by all its recorders, over its whole life, and so what the exit's write of events still
    pending may wait for a busy lock; once it is spent, a busy lock is not waited for at all (a free one is
    still taken). ``strict=True`` raises every problem instead of
    logging it (for tests).
    """

    def __init__(
        self,
        textfile_dir: Path | str | None = None,
        *,
        auto_flush: bool = True,
        lock_timeout: float | None = None,
        strict: bool = False,
        lock_wait_budget: float | None = None,
    ) -> None:
        self.auto_flush = auto_flush
        self._lock = threading.RLock()
        self.handed_over_events = 0
        directory = default_textfile_directory() if textfile_dir is None else textfile_dir
        # A typo in a setting is logged once and its default used (a strict recorder raises it).
        if lock_timeout is None:
            lock_timeout = default_lock_timeout(strict=strict)
        if lock_wait_budget is None:
            lock_wait_budget = default_lock_wait_budget(strict=strict)
        self.lock_wait_budget = catalogue.check_seconds("lock_wait_budget", lock_wait_budget)
        self.store = self._make_store(directory, lock_timeout, strict)
        self._problems = Problems(self.store.directory, self.store.path, strict=strict)
        self._totals = Totals()
        self.registry = CollectorRegistry()
        """This process's values, served by ``serve()``: the families of the catalogue as prometheus_client
        would keep them (without ``_created``)."""
        self.registry.register(self._totals)
        self._counters = self._totals.counters
        self._histograms = self._totals.histograms
        self._gauges = self._totals.gauges
        self._changed: list[Series] = []
        """The series changed since the last ``_gather``, in the order they first changed."""
        self._pending = Changes()
        self._pending_events = 0
        self._handed_over_since_merge = False
        self._failed_write: process.FailedWrite | None = None
        self._seen: set[tuple[str, ...]] = set()
        self._completions: dict[tuple[object, object, object], tuple[Counter, Histogram, Gauge]] = {}
        """The series a ``record_deployment_complete`` with these provider, fraise type and status updates, once
        the event function accepted them: the hot loop's later calls skip validating them again."""
        self._health_checks: dict[tuple[object, object, object], tuple[Counter, Histogram]] = {}
        self._rollbacks: dict[tuple[object, object], tuple[Counter, Histogram]] = {}
        self._db_queries: dict[tuple[object, object, object], tuple[Counter, Histogram]] = {}
        """The same for ``record_health_check``, ``record_rollback`` and ``record_db_query``."""
        self._in_flight: list[InFlight] = []
        self._ending: list[inflight.Marker] = []
        """Markers of ended deployments, released once their end is written."""
        self._batch_depth = 0
        self.metrics = DeploymentMetrics(self)
        """Fraisier's ``DeploymentMetrics``: the families, for code that writes to them directly."""
        process.every_recorder.add(self)
        if not auto_flush:  # its events wait in memory by design: a long-lived process writes them every interval
            process.background_flush.start()

    @property
    def textfile_path(self) -> Path:
        return self.store.path

    @property
    def strict(self) -> bool:
        """Whether every problem is raised (at the end of the call) instead of logged: for tests."""
        return self._problems.strict

    @property
    def problems(self) -> dict[str, str]:
        """Problems not yet resolved, by kind: what went wrong and how to fix it."""
        return self._problems.unresolved

    @property
    def last_error(self) -> str | None:
        return self._problems.last_error

    @property
    def dropped_events(self) -> int:
        """Events dropped for a bad value."""
        return self._problems.dropped_events

    @property
    def lock_wait_spent(self) -> float:
        """Seconds this process has spent writing textfiles, by every recorder: what the budget is measured
        against."""
        return process.process_budget.spent

    # Fraisier's recorder API

    @never_raising
    def record_deployment_start(self, provider: str, fraise_type: str) -> None:
        """A deployment starts in this process: it counts as active until it completes, an error ends it, or
        the process dies (then the next writer counts it ``crashed``)."""
        self._start(provider, fraise_type)

    @never_raising
    def record_deployment_complete(self, provider: str, fraise_type: str, status: str, duration: float) -> None:
        """A deployment finished: counted by status, its duration observed. It ends the latest deployment of
        this provider and fraise type that this process started. ``status`` is one of
        ``catalogue.DEPLOYMENT_STATUSES`` or an enum member with that value; Fraisier's ``interrupted`` is
        recorded as ``crashed``. ``pending`` and ``in_progress`` are not finished deployments: such a call is
        dropped (and logged), and the deployment stays in flight."""
        try:
            series = self._completions.get((provider, fraise_type, status))
        except TypeError:  # an unhashable argument: the event function refuses it
            series = None
        if series is not None and duration.__class__ is float and 0.0 <= duration <= _LARGEST_DURATION:
            # What changes.deployment_complete records, for arguments it accepted before (and the pair's
            # series exist since then).
            deployments, durations, last = series
            deployments.add(1.0, self._changed)
            durations.observe(duration, self._changed)
            last.set_maximum(time.time(), self._changed)
        else:
            changes.deployment_complete(self, provider, fraise_type, status, duration)
            self._remember_completion(provider, fraise_type, status)
        if self._in_flight:
            self._end(self._find_in_flight(provider, fraise_type))
        self._pending_events += 1

    @never_raising
    def record_deployment_error(self, provider: str, error_type: str) -> None:
        """A deployment error. Like Fraisier's recorder, it ends the latest deployment of this provider that
        this process started (so it is never counted ``crashed`` later); that deployment is counted in
        ``fraisier_deployments_total`` only if ``record_deployment_complete`` is called too."""
        changes.deployment_error(self, provider, error_type)
        if self._in_flight:
            self._end(self._find_in_flight(provider, None))
        self._pending_events += 1

    @never_raising
    def record_rollback(self, provider: str, reason: str, duration: float) -> None:
        self._count_and_observe(self._rollbacks, (provider, reason), duration, changes.rollback,
                                self._remember_rollback)

    @never_raising
    def record_health_check(self, provider: str, check_type: str, status: str, duration: float) -> None:
        self._count_and_observe(self._health_checks, (provider, check_type, status), duration,
                                changes.health_check, self._remember_health_check)

    @never_raising
    def set_provider_availability(self, provider: str, available: bool) -> None:
        """``available`` should be a bool. A strict recorder refuses anything else; otherwise 1/0 and the words
        true/false, yes/no, on/off, up/down are understood (``catalogue.check_flag``) and any other value is
        dropped and logged: ``"false"`` is never recorded as available."""
        if self.strict and available is not True and available is not False:
            raise InvalidValueError(f"available={catalogue.shown(available)} is not a bool: pass True or False")
        self._event(changes.provider_availability, provider, available)

    @never_raising
    def record_lock_wait(self, service: str, provider: str, wait_time: float) -> None:
        self._event(changes.lock_wait, service, provider, wait_time)

    @never_raising
    def record_db_query(self, database_type: str, operation: str, status: str, duration_seconds: float) -> None:
        self._count_and_observe(self._db_queries, (database_type, operation, status), duration_seconds,
                                changes.db_query, self._remember_db_query)

    def _count_and_observe(
        self,
        shortcuts: dict[Any, tuple[Counter, Histogram]],
        arguments: tuple[object, ...],
        duration: object,
        event: Callable[..., None],
        remember: Callable[..., None],
    ) -> None:
        """A record call that counts one event and observes its duration. A repeat of label arguments that
        ``event`` (the function in changes.py) accepted before goes straight to the two series it updated
        then; anything else goes through ``event``, which checks everything, and is remembered."""
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
        self._pending_events += 1

    @never_raising
    def record_db_error(self, database_type: str, error_type: str) -> None:
        self._event(changes.db_error, database_type, error_type)

    @never_raising
    def record_db_transaction(self, database_type: str, duration_seconds: float) -> None:
        self._event(changes.db_transaction, database_type, duration_seconds)

    @never_raising
    def record_deployment_db_operation(self, database_type: str, operation_type: str) -> None:
        self._event(changes.deployment_db_operation, database_type, operation_type)

    @never_raising
    def update_db_pool_metrics(
        self, database_type: str, active_connections: int, idle_connections: int, waiting_requests: int
    ) -> None:
        self._event(changes.db_pool, database_type, active_connections, idle_connections, waiting_requests)

    def get_metrics_summary(self) -> dict[str, Any]:
        """Fraisier's summary (``prometheus_available``, ``message``), plus where the metrics go and how
        writing them goes: ``textfile``, ``pending_events`` (recorded, not yet written), ``deployments_in_flight``
        (started by this recorder, not yet ended), ``handed_over_events``,
        ``dropped_events`` (bad values), ``last_error``, ``problems`` (unresolved, by kind) and the lock-wait
        budget."""
        with self._lock:
            if self.problems:
                message = "Metrics are recorded, but: " + " | ".join(self.problems.values())
            else:
                message = f"Metrics are being recorded into {self.textfile_path} (serve it with node_exporter's " \
                          "textfile collector or `fraisier metrics`)."
            return {
                "prometheus_available": PROMETHEUS_AVAILABLE,
                "message": message,
                "textfile": str(self.textfile_path),
                "pending_events": self._pending_events if self.pending else 0,
                "deployments_in_flight": len(self._in_flight),
                "handed_over_events": self.handed_over_events,
                "dropped_events": self.dropped_events,
                "last_error": self.last_error,
                "problems": dict(self.problems),
                "lock_wait_budget": self.lock_wait_budget,
                "lock_wait_spent": round(process.process_budget.spent, 6),
            }

    # Timing context managers

    @contextmanager
    def track_deployment(self, provider: str, fraise_type: str) -> Iterator[Outcome]:
        """Time a deployment, active while inside. On an exception: ``failed`` plus an error whose type is
        the exception's class name (``invalid_error_type`` if that name cannot be a label value), then the
        exception goes on. Set ``outcome.status`` to record another status; one that is not a status is
        recorded as ``failed`` and logged. The deployment always ends with the block, and no metrics problem
        ever replaces the block's own exception."""
        with self._lock:
            self._problems.noted.clear()
            deployment = self._problems.guarded("track_deployment", self._start, provider, fraise_type)
            earlier = list(self._problems.noted)  # a strict recorder raises them once the block is over, not before
        outcome = Outcome("success")
        started = time.monotonic()
        try:
            yield outcome
        except BaseException as error:
            self._finish_deployment(
                deployment, provider, fraise_type, "failed", time.monotonic() - started, error, earlier
            )
            raise
        self._finish_deployment(
            deployment, provider, fraise_type, outcome.status, time.monotonic() - started, None, earlier
        )

    @contextmanager
    def track_rollback(self, provider: str, reason: str) -> Iterator[None]:
        """Time a rollback. It is recorded whether or not the block raises."""
        started = time.monotonic()
        try:
            yield
        except BaseException:
            self._finish(True, "track_rollback", self._event, changes.rollback, provider, reason,
                         time.monotonic() - started)
            raise
        self._finish(False, "track_rollback", self._event, changes.rollback, provider, reason,
                     time.monotonic() - started)

    @contextmanager
    def track_health_check(self, provider: str, check_type: str) -> Iterator[Outcome]:
        """Time a health check: ``pass`` unless the block raises or sets ``outcome.status = "fail"``; a status
        that is neither is recorded as ``fail`` and logged."""
        outcome = Outcome("pass")
        started = time.monotonic()
        try:
            yield outcome
        except BaseException:
            self._finish(True, "track_health_check", self._event, changes.health_check, provider, check_type,
                         "fail", time.monotonic() - started)
            raise
        duration = time.monotonic() - started

        def finish() -> None:
            status = self._checked_outcome(
                outcome.status, catalogue.HEALTH_CHECK_STATUSES, catalogue.FALLBACK_HEALTH_CHECK_STATUS
            )
            self._event(changes.health_check, provider, check_type, status, duration)

        self._finish(False, "track_health_check", finish)

    # Writing

    def flush(self) -> None:
        """Merge every pending event into the textfile now, waiting up to ``lock_timeout`` for the lock (the
        budget does not apply: the caller asked to wait). Unlike the record calls, this raises the store's
        errors (``LockTimeoutError``, ``TextfileWriteError``, ``CorruptTextfileError``); the events then stay
        pending."""
        with self._lock:
            self._gather()
            if not self._pending:
                return
            try:
                self.store.merge(self._pending)
            except BaseException:
                process.keep_for_later(self)  # the background flush and the exit try again
                raise
            self._written(merged=True)

    @property
    def pending(self) -> bool:
        """Whether events wait to be written."""
        return bool(self._changed or self._pending)

    # Serving

    def serve(self, port: int = 8001, address: str = "localhost",
              web_config_file: Path | str | None = None, max_requests: int = 0) -> MetricsServer:
        """Serve this process's registry at ``/metrics`` from a background thread, with the landing page,
        TLS and basic auth of ``fraisier metrics`` (``web_config_file`` in the same format). Port 0 picks a
        free port. More than ``max_requests`` scrapes at once get 503 (0: no limit). Returns the running
        server: ``.url``, ``.port``, ``.shutdown()``. Raises ServerStartError or WebConfigError when it
        cannot start."""
        from fraisier_textfile.serve.server import serve_registry

        return serve_registry(self.registry, port=port, address=address, web_config_file=web_config_file,
                              max_requests=max_requests)

    # The sink that the event functions write to (see changes.Sink)

    # Each updates this process's totals (its registry) and the pending changes, inlined: the record call's
    # hot path.

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
        gauge = self._gauge(family, labels)
        gauge.value = gauge.latest = value
        if not gauge.dirty:
            gauge.dirty = True
            self._changed.append(gauge)

    def set_maximum(self, family: Family, labels: Labels, value: float) -> None:
        self._gauge(family, labels).set_maximum(value, self._changed)

    def _gauge(self, family: Family, labels: Labels) -> Gauge:
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
            self._gauge(family, labels)
            self._gather()  # in order with the changes before it
            self._pending.touch(family, labels)

    def first_sight(self, what: tuple[str, ...]) -> bool:
        if what in self._seen:
            return False
        self._seen.add(what)
        return True

    def count_active(self, provider: str, change: int) -> None:
        self._gauge(catalogue.ACTIVE_DEPLOYMENTS, (provider,)).value += change
        self._pending.count_active(provider, change)

    def retire_marker(self, marker_id: str) -> None:
        self._pending.retire_marker(marker_id)

    # In-flight deployments

    def _remember_completion(self, provider: object, fraise_type: object, status: object) -> None:
        """The series that changes.deployment_complete just updated for these arguments (which it accepted)."""
        plain_provider = catalogue.check_label_value("provider", provider)
        plain_fraise_type = catalogue.check_label_value("fraise_type", fraise_type)
        plain_status = catalogue.check_deployment_status(status)
        self._completions[(provider, fraise_type, status)] = (
            self._counters[(catalogue.DEPLOYMENTS, (plain_provider, plain_status, plain_fraise_type))],
            self._histograms[(catalogue.DEPLOYMENT_DURATION, (plain_provider, plain_status))],
            self._gauges[(catalogue.LAST_DEPLOYMENT, (plain_provider, plain_fraise_type, plain_status))],
        )

    def _remember_rollback(self, provider: object, reason: object) -> None:
        """The series that changes.rollback just updated for these arguments (which it accepted)."""
        plain_provider = catalogue.check_label_value("provider", provider)
        plain_reason = catalogue.check_label_value("reason", reason)
        self._rollbacks[(provider, reason)] = (
            self._counters[(catalogue.ROLLBACKS, (plain_provider, plain_reason))],
            self._histograms[(catalogue.ROLLBACK_DURATION, (plain_provider,))],
        )

    def _remember_health_check(self, provider: object, check_type: object, status: object) -> None:
        """The series that changes.health_check just updated for these arguments (which it accepted)."""
        plain_provider = catalogue.check_label_value("provider", provider)
        plain_check_type = catalogue.check_label_value("check_type", check_type)
        plain_status = catalogue.check_choice("status", status, catalogue.HEALTH_CHECK_STATUSES)
        self._health_checks[(provider, check_type, status)] = (
            self._counters[(catalogue.HEALTH_CHECKS, (plain_provider, plain_check_type, plain_status))],
            self._histograms[(catalogue.HEALTH_CHECK_DURATION, (plain_provider, plain_check_type))],
        )

    def _remember_db_query(self, database_type: object, operation: object, status: object) -> None:
        """The series that changes.db_query just updated for these arguments (which it accepted)."""
        plain_database_type = catalogue.check_label_value("database_type", database_type)
        plain_operation = catalogue.check_label_value("operation", operation)
        plain_status = catalogue.check_label_value("status", status)
        self._db_queries[(database_type, operation, status)] = (
            self._counters[(catalogue.DB_QUERIES, (plain_database_type, plain_operation, plain_status))],
            self._histograms[(catalogue.QUERY_LATENCY, (plain_database_type, plain_operation))],
        )

    def _start(self, provider: str, fraise_type: str) -> InFlight:
        provider = catalogue.check_label_value("provider", provider)
        fraise_type = catalogue.check_label_value("fraise_type", fraise_type)
        marker: inflight.Marker | None = None
        try:
            marker = inflight.create_marker(self.store.directory, provider, fraise_type)
        except (OSError, FraisierTextfileError) as error:
            problem = (
                error if isinstance(error, FraisierTextfileError)
                else write_error(inflight.marker_directory(self.store.directory), "write a marker in", error)
            )
            self._problems.note("marker", f"{problem} (the deployment is recorded when it ends, but until then "
                                "other processes do not see it as active)", problem)
        except Exception as error:  # whatever a probe of the directory raises, the deployment is recorded
            self._problems.note("marker", "writing a marker in "
                                f"{inflight.marker_directory(self.store.directory)} failed unexpectedly: {error!r}; "
                                "please report this as a bug of fraisier_textfile (the deployment is recorded when "
                                "it ends, but until then other processes do not see it as active)", error,
                                exc_info=True)
        deployment = InFlight(provider, fraise_type, marker)
        with self._batch():
            changes.deployment_started(self, provider, fraise_type)
            self._in_flight.append(deployment)
            self._pending_events += 1
        return deployment

    def _find_in_flight(self, provider: object, fraise_type: object | None) -> InFlight | None:
        """The latest deployment started here for that provider (and fraise type, unless None)."""
        if not self._in_flight:
            return None
        provider = catalogue.plain_value(provider)
        fraise_type = catalogue.plain_value(fraise_type)
        for deployment in reversed(self._in_flight):
            if deployment.provider == provider and fraise_type in (None, deployment.fraise_type):
                return deployment
        return None

    def _end(self, deployment: InFlight | None) -> None:
        if deployment is None or deployment not in self._in_flight:
            return
        self._in_flight.remove(deployment)
        marker = deployment.marker
        changes.deployment_ended(self, deployment.provider, None if marker is None else marker.id)
        if marker is not None:
            self._ending.append(marker)

    def _finish_deployment(
        self, deployment: InFlight | None, provider: str, fraise_type: str, status: object, duration: float,
        error: BaseException | None, earlier: list[BaseException],
    ) -> None:
        """The end of a tracked deployment: its outcome recorded (with fallbacks for what cannot be a label
        value) and, whatever happens, the deployment ended."""

        def finish() -> None:
            with self._batch():
                try:
                    if error is not None:
                        changes.deployment_error(self, provider, self._error_type(error))
                    final = self._checked_deployment_status(status)
                    changes.deployment_complete(self, provider, fraise_type, final, duration)
                    self._pending_events += 1
                finally:
                    self._end(deployment)

        self._finish(error is not None, "track_deployment", finish, earlier=earlier)

    def _error_type(self, error: BaseException) -> str:
        name = error_type_of(error)
        try:
            return catalogue.check_label_value("error_type", name)
        except InvalidValueError as problem:
            self._problems.note("error_type", f"{problem}; recorded as error_type={catalogue.FALLBACK_ERROR_TYPE}",
                                problem)
            return catalogue.FALLBACK_ERROR_TYPE

    def _checked_deployment_status(self, status: object) -> str:
        try:
            return catalogue.check_deployment_status(status)
        except InvalidValueError as problem:
            fallback = catalogue.FALLBACK_DEPLOYMENT_STATUS
            self._problems.note("outcome", f"a tracked deployment's outcome: {problem}; recorded as {fallback}",
                                problem)
            return fallback

    def _checked_outcome(self, status: object, allowed: tuple[str, ...], fallback: str) -> str:
        try:
            return catalogue.check_choice("status", status, allowed)
        except InvalidValueError as problem:
            self._problems.note("outcome", f"a tracked block's outcome: {problem}; recorded as {fallback}", problem)
            return fallback

    def _finish(
        self, block_raised: bool, what: str, function: Callable[..., object], *arguments: object,
        earlier: list[BaseException] | None = None,
    ) -> None:
        """Record the end of a tracked block. While the block's own exception propagates nothing may replace
        it, so even a strict recorder only raises a problem when the block ended normally."""
        with self._lock:
            self._problems.noted[:] = earlier or []
            with self._batch():
                self._problems.guarded(what, function, *arguments)
            if self.strict and self._problems.noted and not block_raised:
                self._problems.raise_first()

    # Recording and writing

    def _event(self, event: Callable[..., None], *arguments: object) -> None:
        """Record one event; the caller (a public method, or a tracked block's batch) writes it."""
        event(self, *arguments)
        self._pending_events += 1

    @contextmanager
    def _batch(self) -> Iterator[None]:
        """Record several events with one write at the end."""
        with self._lock:
            self._batch_depth += 1
            try:
                yield
            finally:
                # Also when an event of the batch was refused: the events before it are recorded.
                self._batch_depth -= 1
                if not self._batch_depth:
                    self._settle()

    def _settle(self) -> None:
        """The end of a call or a batch: write what is pending (auto-flush), or keep it for later. Never raises."""
        if not self.auto_flush:
            process.unflushed.add(self)  # kept alive until written, at the latest at exit
            return
        try:
            self._write()
        except Exception as error:  # a bug below us: the events stay pending
            self._problems.note("unexpected write", f"writing {self.textfile_path} failed unexpectedly: {error!r}; "
                                "please report this as a bug of fraisier_textfile (the events are kept)", error,
                                exc_info=True)
            process.keep_for_later(self)

    def _write(self, longest_wait: float = RECORD_CALL_WAIT, *, spend_budget: bool = True) -> None:
        """Write what is pending, waiting for a busy lock at most ``longest_wait`` and what is left of the
        lock-wait budget: merged, or handed over to the next writer when the lock stays busy. Never raises: a
        problem is noted, and the events are handed over if the merge failed for another reason (a corrupt file),
        else kept for the next call, the background flush and exit. ``spend_budget=False``: the background
        flush, whose time delays no caller, leaves the budget to the process's own calls and its exit."""
        self._gather()
        if not self._pending:
            return
        left = process.process_budget.left(self.lock_wait_budget)
        wait = min(self.store.lock_timeout, left, longest_wait)
        # Once the budget is spent, hand-overs skip their fsyncs: under a lock held for long, two fsyncs per
        # call would go on delaying the process past its budget. They still survive its death (a SIGKILL).
        durable = left > 0
        started = time.monotonic()
        try:
            if self._failed_write is not None and not self.strict and not self._failed_write.may_succeed_now():
                # The last merge failed (a full disk, say) and nothing suggests this one would not: trying
                # again would render the whole file per event (seconds for a big one). Hand over only.
                merged = False
                self.store.hand_over(self._pending, durable=durable)
            else:
                merged = self._merge_or_hand_over(wait, durable)
        except Exception:
            merged = False  # the hand-over failed too: the events stay pending, the problem is noted already
        finally:
            # Every second spent here counts, not only the lock wait: the budget bounds how long metrics delay
            # the process in all. A merge that may not wait any more still merges when the lock is free.
            if spend_budget:
                process.process_budget.spend(time.monotonic() - started)
        if self._pending:
            process.keep_for_later(self)
        else:
            self._written(merged)

    def _merge_or_hand_over(self, wait: float, durable: bool) -> bool:
        try:
            merged = self.store.merge_or_hand_over(self._pending, wait, durable=durable)
            self._failed_write = None
            if not merged:
                self._problems.note(
                    LOCK_BUSY,
                    f"another process held {self.store.lock_path} (a record call does not wait for it; at exit, "
                    f"within a lock-wait budget of {self.lock_wait_budget:g}s in all, {LOCK_WAIT_BUDGET_ENVIRONMENT}): "
                    "the events were handed over, and that process, right after its merge, or the next merge by "
                    "any fraisier process writes them. "
                    f"If it lasts, find the process that holds the lock (fuser {self.store.lock_path})",
                    LockTimeoutError(self.store.lock_path, wait),
                )
        except Exception as error:  # of any type (a probe's OverflowError, a bug of ours): none may reach a deployment
            self._failed_write = process.FailedWrite(self.store)
            self._problems.write_problem(error)
            try:
                # The events go to the next merge rather than wait in memory for an exit that may never write them.
                self.store.hand_over(self._pending, durable=durable)
            except Exception:
                pass  # the same problem (an unwritable directory), noted already
            return False
        return merged

    def _written(self, merged: bool) -> None:
        """The pending events are in the file (merged) or handed over."""
        if merged:
            self._problems.resolved()
            process.unflushed.discard(self)
        else:
            self.handed_over_events += self._pending_events
            # The background flush and the exit merge the hand-overs, if the lock is free by then.
            process.keep_for_later(self)
        self._handed_over_since_merge = not merged
        self._pending_events = 0
        ending, self._ending = self._ending, []
        for marker in ending:
            marker.release()  # only now: released before its end is written, it would look crashed

    @staticmethod
    def _make_store(directory: Path | str, lock_timeout: float, strict: bool) -> TextfileStore:
        # Strict: a typo in FRAISIER_EXPIRE_AFTER or FRAISIER_MAX_SERIES_PER_FAMILY raises (else logged once).
        lifecycle = SeriesLifecycle.from_environment(Path(directory) / TEXTFILE_NAME, strict=strict)
        return TextfileStore(directory, lock_timeout, lifecycle=lifecycle)

    # Internals

    def _gather(self) -> None:
        """Move what the series recorded since the last call into the pending changes."""
        pending = self._pending
        for series in self._changed:
            series.dirty = False
            series.gather(pending)
        self._changed.clear()

    def _after_fork(self) -> None:
        self._lock = threading.RLock()
        self._problems.after_fork()
        self._batch_depth = 0
        for series in self._changed:  # this process keeps the totals, not the parent's pending changes
            series.dirty = False
            series.gather(Changes())
        self._changed.clear()
        self._pending = Changes()
        self._pending_events = 0
        self._handed_over_since_merge = False
        self._failed_write = None
        self._seen = set()
        self._completions = {}
        self._health_checks = {}
        self._rollbacks = {}
        self._db_queries = {}
        self._in_flight = []
        self._ending = []
        self.store = TextfileStore(self.store.directory, self.store.lock_timeout, lifecycle=self.store.lifecycle)

    # Direct writes to a family (DeploymentMetrics)

    @never_raising
    def _write_family(
        self, family: Family, labels: Labels | InvalidValueError, operation: str, amount: object
    ) -> None:
        if isinstance(labels, InvalidValueError):
            raise labels
        labels = tuple(
            catalogue.check_choice(label, value, catalogue.LABEL_CHOICES[(family, label)])
            if (family, label) in catalogue.LABEL_CHOICES
            else catalogue.check_label_value(label, value)
            for label, value in zip(family.labels, labels)
        )
        allowed = OPERATIONS[family.kind]
        if operation not in allowed:
            raise InvalidValueError(
                f"{family.name} is a {family.kind.value}: use {' or '.join(name + '()' for name in allowed)}"
            )
        with self._batch():
            if family is catalogue.ACTIVE_DEPLOYMENTS:
                raise InvalidValueError(
                    "fraisier_active_deployments is counted from the deployments in flight in live processes: "
                    "use record_deployment_start and record_deployment_complete"
                )
            if family.kind is Kind.HISTOGRAM:
                self.observe(family, labels, catalogue.check_duration(f"{family.name} value", amount))
            elif family.kind is Kind.COUNTER:
                self.add(family, labels, catalogue.check_count(f"{family.name} increment", amount))
            else:
                value = catalogue.check_gauge_value(f"{family.name} value", amount)
                if operation != "set":  # inc/dec: from this process's value; the latest report wins in the file
                    value = self._gauge(family, labels).value + (value if operation == "inc" else -value)
                if family is catalogue.LAST_DEPLOYMENT:
                    self.set_maximum(family, labels, value)
                else:
                    self.set_latest(family, labels, value)
            self._pending_events += 1




_metrics_recorder: MetricsRecorder | None = None
_metrics_recorder_lock = threading.Lock()


def get_metrics_recorder() -> MetricsRecorder:
    """The process-wide recorder, made on first use from ``FRAISIER_TEXTFILE_DIR`` (or the default).
    ``fraisier_textfile.metrics._metrics_recorder = None`` (as Fraisier's tests do) makes the next call build
    a new one."""
    global _metrics_recorder
    recorder = _metrics_recorder
    if recorder is None:
        with _metrics_recorder_lock:
            if _metrics_recorder is None:
                _metrics_recorder = MetricsRecorder()
            recorder = _metrics_recorder
    return recorder
