"""MetricsRecorder: Fraisier's deployment metrics in a dedicated registry, written into the textfile.

Every event updates two things: this process's own ``CollectorRegistry`` (for in-process serving and
inspection) and the changes pending since the last write, which are merged into the shared textfile.

Metrics never fail or stall a deployment. No ``record_*``, ``set_*``, ``update_*`` or ``track_*`` call raises
for a metrics problem (unless the recorder is ``strict``, for tests): a bad value is dropped, a file that cannot
be written keeps its events pending (or hands them over to the next writer), and each kind of problem is logged
once through ``logging`` with its fix and shown by ``get_metrics_summary()``. Waiting for a lock that another
process holds costs a process at most about ``lock_wait_budget`` seconds a minute (the budget refills: see
process.BUDGET_REFILL_SECONDS); past that, events are handed over at once.

``MetricsRecorder`` is Fraisier's API and nothing more: each method hands the work to the collaborator that
owns it, one module each. series.py holds what the events change (``ProcessSeries``, the sink of changes.py's
event functions), policy.py what happens to a problem (``Problems``, ``never_raising``), writer.py when and how
the changes reach the store (``Writer``), deployments.py the deployments in flight (the store's handles),
tracking.py the ``track_*`` blocks, fraisier.py Fraisier's ``DeploymentMetrics``; process.py is what the
process's recorders share, with its fork and exit hooks.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from fraisier_textfile import changes, validate
from fraisier_textfile.catalogue import Family
from fraisier_textfile.errors import InvalidValueError
from fraisier_textfile.recorder import process
from fraisier_textfile.recorder.deployments import Deployments
from fraisier_textfile.recorder.fraisier import DeploymentMetrics as DeploymentMetrics  # its public name here
from fraisier_textfile.recorder.fraisier import write_family
from fraisier_textfile.recorder.policy import Problems, never_raising
from fraisier_textfile.recorder.series import ProcessSeries
from fraisier_textfile.recorder.tracking import Outcome as Outcome  # its public name here
from fraisier_textfile.recorder.tracking import Tracking
from fraisier_textfile.recorder.writer import Writer, make_store
from fraisier_textfile.settings import default_lock_wait_budget
from fraisier_textfile.store.changes import Labels
from fraisier_textfile.store.files import default_textfile_directory
from fraisier_textfile.store.lock import default_lock_timeout
from fraisier_textfile.store.textfile import TextfileStore

if TYPE_CHECKING:
    from fraisier_textfile.serve.server import MetricsServer

PROMETHEUS_AVAILABLE = True
"""Fraisier's flag: whether metrics are recorded. Always true here (prometheus_client is a dependency)."""


class MetricsRecorder:
    """Records Fraisier's deployment metrics and merges them into ``<textfile_dir>/fraisier.prom``.

    The method names and arguments are those of Fraisier 0.84.2's ``fraisier.metrics.MetricsRecorder``.

    With ``auto_flush`` (the default) every record call has written its event when it returns: merged into the
    textfile, or, when another process holds the lock, handed over at once (no wait: ``writer.RECORD_CALL_WAIT``) so
    that the holder, right after its own merge, or the next merge by any process writes it exactly once. With
    ``auto_flush=False`` (hot loops) events wait for ``flush()`` or for the process's exit.

    ``lock_timeout`` (default ``$FRAISIER_LOCK_TIMEOUT`` or 10 s) bounds one wait for the lock;
    ``lock_wait_budget`` (default ``$FRAISIER_LOCK_WAIT_BUDGET`` or 1 s) bounds the time the process spends
    writing textfiles, by all its recorders, and so what the exit's write of events still pending may wait for a
    busy lock; once it is spent, a busy lock is not waited for at all (a free one is still taken) and hand-overs
    skip their fsyncs. It refills at the budget per minute (a token bucket): a long-lived process spends at
    most about the budget in any minute, not once in its life. ``strict=True`` raises every problem instead of
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
        directory = default_textfile_directory() if textfile_dir is None else textfile_dir
        # A typo in a setting is logged once and its default used (a strict recorder raises it).
        if lock_timeout is None:
            lock_timeout = default_lock_timeout(strict=strict)
        if lock_wait_budget is None:
            lock_wait_budget = default_lock_wait_budget(strict=strict)
        lock_wait_budget = validate.check_seconds("lock_wait_budget", lock_wait_budget)
        store = make_store(directory, lock_timeout, strict=strict)
        self._problems = Problems(store.file.directory, store.file.path, strict=strict)
        self._series = ProcessSeries()
        self._writer = Writer(store, self._series, self._problems, auto_flush=auto_flush,
                              lock_wait_budget=lock_wait_budget)
        self.registry = CollectorRegistry()
        """This process's values, served by ``serve()``: the families of the catalogue as prometheus_client
        would keep them (without ``_created``)."""
        self.registry.register(self._series.totals)
        self._deployments = Deployments(self._series, self._problems, self._writer)
        self._tracking = Tracking(self._series, self._problems, self._writer, self._deployments)
        self.metrics = DeploymentMetrics(self)
        """Fraisier's ``DeploymentMetrics``: the families, for code that writes to them directly."""
        process.every_recorder.add(self)
        self.auto_flush = auto_flush

    @property
    def textfile_path(self) -> Path:
        return self._writer.store.path

    @property
    def store(self) -> TextfileStore:
        """The store of the textfile directory, through which this recorder writes."""
        return self._writer.store

    @property
    def auto_flush(self) -> bool:
        """Whether each record call writes its events when it returns (else ``flush()``, the background flush
        or the exit does). May be changed; it applies from the next call."""
        return self._writer.auto_flush

    @auto_flush.setter
    def auto_flush(self, auto_flush: bool) -> None:
        self._writer.auto_flush = auto_flush
        if not auto_flush:  # its events wait in memory by design: a long-lived process writes them every interval
            process.background_flush.start()

    @property
    def lock_wait_budget(self) -> float:
        """Seconds the process may spend writing textfiles, by all its recorders, in a burst; it refills at this
        many seconds per minute (process.BUDGET_REFILL_SECONDS). May be changed (InvalidValueError for a value
        that is not a number of seconds); it applies from the next write."""
        return self._writer.lock_wait_budget

    @lock_wait_budget.setter
    def lock_wait_budget(self, seconds: float) -> None:
        self._writer.lock_wait_budget = validate.check_seconds("lock_wait_budget", seconds)

    @property
    def handed_over_events(self) -> int:
        """Events handed over to the next writer because the lock was busy (or a merge failed)."""
        return self._writer.handed_over_events

    @property
    def strict(self) -> bool:
        """Whether every problem is raised (at the end of the call) instead of logged: for tests. May be
        changed; it applies from the next call."""
        return self._problems.strict

    @strict.setter
    def strict(self, strict: bool) -> None:
        self._problems.strict = strict

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
        """Seconds this process has spent writing textfiles, by every recorder, over its life (the budget is
        measured against what was spent lately: it refills over time)."""
        return process.process_budget.spent

    # Fraisier's recorder API

    @never_raising
    def record_deployment_start(self, provider: str, fraise_type: str) -> None:
        """A deployment starts in this process: it counts as active until it completes, an error ends it, or
        the process dies (then the next writer counts it ``crashed``)."""
        self._deployments.start(provider, fraise_type)

    @never_raising
    def record_deployment_complete(self, provider: str, fraise_type: str, status: str, duration: float) -> None:
        """A deployment finished: counted by status, its duration observed. It ends the latest deployment of
        this provider and fraise type that this process started. ``status`` is one of
        ``catalogue.DEPLOYMENT_STATUSES`` or an enum member with that value; Fraisier's ``interrupted`` is
        recorded as ``crashed``. ``pending`` and ``in_progress`` are not finished deployments: such a call is
        dropped (and logged), and the deployment stays in flight."""
        series = self._series
        series.deployment_complete(provider, fraise_type, status, duration)
        self._deployments.end_latest(provider, fraise_type)
        series.events += 1

    @never_raising
    def record_deployment_error(self, provider: str, error_type: str) -> None:
        """A deployment error. Like Fraisier's recorder, it ends the latest deployment of this provider that
        this process started (so it is never counted ``crashed`` later); that deployment is counted in
        ``fraisier_deployments_total`` only if ``record_deployment_complete`` is called too."""
        changes.deployment_error(self._series, provider, error_type)
        self._deployments.end_latest(provider, None)
        self._series.events += 1

    @never_raising
    def record_rollback(self, provider: str, reason: str, duration: float) -> None:
        self._series.rollback(provider, reason, duration)

    @never_raising
    def record_health_check(self, provider: str, check_type: str, status: str, duration: float) -> None:
        self._series.health_check(provider, check_type, status, duration)

    @never_raising
    def set_provider_availability(self, provider: str, available: bool) -> None:
        """``available`` should be a bool. A strict recorder refuses anything else; otherwise 1/0 and the words
        true/false, yes/no, on/off, up/down are understood (``validate.check_flag``) and any other value is
        dropped and logged: ``"false"`` is never recorded as available."""
        if self.strict and available is not True and available is not False:
            raise InvalidValueError(f"available={validate.shown(available)} is not a bool: pass True or False")
        self._series.record(changes.provider_availability, provider, available)

    @never_raising
    def record_lock_wait(self, service: str, provider: str, wait_time: float) -> None:
        self._series.record(changes.lock_wait, service, provider, wait_time)

    @never_raising
    def record_db_query(self, database_type: str, operation: str, status: str, duration_seconds: float) -> None:
        self._series.db_query(database_type, operation, status, duration_seconds)

    @never_raising
    def record_db_error(self, database_type: str, error_type: str) -> None:
        self._series.record(changes.db_error, database_type, error_type)

    @never_raising
    def record_db_transaction(self, database_type: str, duration_seconds: float) -> None:
        self._series.record(changes.db_transaction, database_type, duration_seconds)

    @never_raising
    def record_deployment_db_operation(self, database_type: str, operation_type: str) -> None:
        self._series.record(changes.deployment_db_operation, database_type, operation_type)

    @never_raising
    def update_db_pool_metrics(
        self, database_type: str, active_connections: int, idle_connections: int, waiting_requests: int
    ) -> None:
        self._series.record(changes.db_pool, database_type, active_connections, idle_connections, waiting_requests)

    def get_metrics_summary(self) -> dict[str, Any]:
        """Fraisier's summary (``prometheus_available``, ``message``), plus where the metrics go and how
        writing them goes: ``textfile``, ``pending_events`` (recorded, not yet written), ``deployments_in_flight``
        (started by this recorder, not yet ended), ``handed_over_events``,
        ``dropped_events`` (bad values), ``last_error``, ``problems`` (unresolved, by kind) and the lock-wait
        budget."""
        with self._writer.lock:
            if self.problems:
                message = "Metrics are recorded, but: " + " | ".join(self.problems.values())
            else:
                message = f"Metrics are being recorded into {self.textfile_path} (serve it with node_exporter's " \
                          "textfile collector or `fraisier metrics`)."
            return {
                "prometheus_available": PROMETHEUS_AVAILABLE,
                "message": message,
                "textfile": str(self.textfile_path),
                "pending_events": self._series.events if self.pending else 0,
                "deployments_in_flight": len(self._deployments.running),
                "handed_over_events": self.handed_over_events,
                "dropped_events": self.dropped_events,
                "last_error": self.last_error,
                "problems": dict(self.problems),
                "lock_wait_budget": self.lock_wait_budget,
                "lock_wait_spent": round(process.process_budget.spent, 6),
            }

    # Timing context managers

    def track_deployment(self, provider: str, fraise_type: str) -> AbstractContextManager[Outcome]:
        """Time a deployment, active while inside. On an exception: ``failed`` plus an error whose type is
        the exception's class name (``invalid_error_type`` if that name cannot be a label value), then the
        exception goes on. Set ``outcome.status`` to record another status; one that is not a status is
        recorded as ``failed`` and logged. The deployment always ends with the block, and no metrics problem
        ever replaces the block's own exception."""
        return self._tracking.deployment(provider, fraise_type)

    def track_rollback(self, provider: str, reason: str) -> AbstractContextManager[None]:
        """Time a rollback. It is recorded whether or not the block raises."""
        return self._tracking.rollback(provider, reason)

    def track_health_check(self, provider: str, check_type: str) -> AbstractContextManager[Outcome]:
        """Time a health check: ``pass`` unless the block raises or sets ``outcome.status = "fail"``; a status
        that is neither is recorded as ``fail`` and logged."""
        return self._tracking.health_check(provider, check_type)

    # Writing

    def flush(self) -> None:
        """Merge every pending event into the textfile now, waiting up to ``lock_timeout`` for the lock (the
        budget does not apply: the caller asked to wait). Unlike the record calls, this raises the store's
        errors (``LockTimeoutError``, ``TextfileWriteError``, ``CorruptTextfileError``); the events then stay
        pending."""
        self._writer.flush()

    @property
    def pending(self) -> bool:
        """Whether events wait to be written."""
        return self._series.pending

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

    # Direct writes to a family (DeploymentMetrics)

    @never_raising
    def _write_family(
        self, family: Family, labels: Labels | InvalidValueError, operation: str, amount: object
    ) -> None:
        write_family(self._series, family, labels, operation, amount)

    # The process's hooks (process.py)

    def _after_fork(self) -> None:
        """In a forked child: the parent's pending events, deployments and locks are the parent's."""
        self._writer.after_fork()
        self._problems.after_fork()
        self._series.after_fork()
        self._deployments.after_fork()


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
