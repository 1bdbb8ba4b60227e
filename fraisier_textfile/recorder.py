"""MetricsRecorder: Fraisier's deployment metrics in a dedicated registry, flushed into the textfile.

Every event updates two things: this process's own ``CollectorRegistry`` (for in-process serving and
inspection) and the changes pending since the last flush, which ``flush()`` merges into the shared textfile.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fraisier_textfile import catalogue as c
from fraisier_textfile import changes as events
from fraisier_textfile import liveness
from fraisier_textfile.changes import Changes, Labels
from fraisier_textfile.errors import FraisierTextfileError, InvalidValueError, TextfileWriteError
from fraisier_textfile.textfile import TextfileStore, default_lock_timeout, default_textfile_directory

if TYPE_CHECKING:
    from fraisier_textfile.server import MetricsServer

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a tracked block reports: set ``status`` inside the block to record another status."""

    status: str


def error_type_of(error: BaseException) -> str:
    """The ``error_type`` label recorded for an exception: its class name."""
    return type(error).__name__


def _make_metric(family: c.Family, registry: CollectorRegistry) -> Any:
    if family.kind is c.Kind.COUNTER:
        # prometheus_client wants the name without _total; it adds the suffix back.
        return Counter(family.name.removesuffix("_total"), family.help, family.labels, registry=registry)
    if family.kind is c.Kind.HISTOGRAM:
        return Histogram(family.name, family.help, family.labels, registry=registry, buckets=family.buckets)
    return Gauge(family.name, family.help, family.labels, registry=registry)


class MetricsRecorder:
    """Records Fraisier's deployment metrics and merges them into ``<textfile_dir>/fraisier.prom``.

    With ``auto_flush`` (the default) every record call has merged its event into the textfile when it
    returns. With ``auto_flush=False`` (hot loops) events wait for ``flush()`` or for normal process exit.
    The method names and arguments are those of Fraisier's own recorder.
    """

    def __init__(
        self,
        textfile_dir: Path | str | None = None,
        *,
        auto_flush: bool = True,
        lock_timeout: float | None = None,
    ) -> None:
        self.store = TextfileStore(
            default_textfile_directory() if textfile_dir is None else textfile_dir,
            default_lock_timeout() if lock_timeout is None else lock_timeout,
        )
        self.auto_flush = auto_flush
        self.registry = CollectorRegistry()
        self._metrics = {family: _make_metric(family, self.registry) for family in c.FAMILIES}
        self._children: dict[tuple[c.Family, Labels], Any] = {}
        self._pending = Changes()
        self._seen: set[tuple[str, ...]] = set()
        self._in_flight: list[liveness.Marker] = []
        self._lock = threading.RLock()
        self._batch_depth = 0
        _every_recorder.add(self)

    @property
    def textfile_path(self) -> Path:
        return self.store.path

    # Fraisier's recorder API

    def record_deployment_start(self, provider: str, fraise_type: str) -> None:
        """A deployment starts in this process: it counts as active until it completes or the process dies."""
        provider = c.check_label_value("provider", provider)
        fraise_type = c.check_label_value("fraise_type", fraise_type)
        with self._lock:
            try:
                marker = liveness.create_marker(self.store.directory, provider, fraise_type)
            except OSError as error:
                raise TextfileWriteError(
                    self.store.directory,
                    f"cannot write an in-flight marker in {self.store.directory}: {error.strerror}; "
                    "make the textfile directory writable",
                ) from None
            self._in_flight.append(marker)
            self._child(c.ACTIVE_DEPLOYMENTS, (provider,)).inc()
            self._pending.active_providers.add(provider)
            events.deployment_series(self, provider, fraise_type)
            self._flush_if_automatic()

    def record_deployment_complete(self, provider: str, fraise_type: str, status: str, duration: float) -> None:
        with self._lock:
            events.deployment_complete(self, provider, fraise_type, status, duration)
            self._end_in_flight(provider, fraise_type)
            self._flush_if_automatic()

    def record_deployment_error(self, provider: str, error_type: str) -> None:
        with self._lock:
            events.deployment_error(self, provider, error_type)
            self._flush_if_automatic()

    def record_rollback(self, provider: str, reason: str, duration: float) -> None:
        with self._lock:
            events.rollback(self, provider, reason, duration)
            self._flush_if_automatic()

    def record_health_check(self, provider: str, check_type: str, status: str, duration: float) -> None:
        with self._lock:
            events.health_check(self, provider, check_type, status, duration)
            self._flush_if_automatic()

    def set_provider_availability(self, provider: str, available: bool) -> None:
        with self._lock:
            events.provider_availability(self, provider, available)
            self._flush_if_automatic()

    def record_lock_wait(self, service: str, provider: str, wait_time: float) -> None:
        with self._lock:
            events.lock_wait(self, service, provider, wait_time)
            self._flush_if_automatic()

    # Timing context managers

    @contextmanager
    def track_deployment(self, provider: str, fraise_type: str) -> Iterator[Outcome]:
        """Time a deployment, active while inside. On an exception: ``failed`` plus an error whose type is
        the exception's class name, then the exception goes on. Set ``outcome.status`` to record another.

        Metrics never stop a deployment: if the textfile cannot be written (lock timeout, full disk, ...),
        that is logged, the block runs all the same, and the events stay pending for the next flush."""
        with self._without_aborting("the start of a deployment"):
            self.record_deployment_start(provider, fraise_type)
        outcome = Outcome("success")
        started = time.monotonic()
        try:
            yield outcome
        except BaseException as error:
            with self._without_aborting(f"the outcome of {error!r}"):
                self.record_deployment_error(provider, error_type_of(error))
                self.record_deployment_complete(provider, fraise_type, "failed", time.monotonic() - started)
            raise
        with self._without_aborting("the end of a deployment"):
            self.record_deployment_complete(provider, fraise_type, outcome.status, time.monotonic() - started)

    @contextmanager
    def track_rollback(self, provider: str, reason: str) -> Iterator[None]:
        """Time a rollback. It is recorded whether or not the block raises (metrics errors are logged)."""
        started = time.monotonic()
        try:
            yield
        except BaseException as error:
            with self._without_aborting(f"the outcome of {error!r}"):
                self.record_rollback(provider, reason, time.monotonic() - started)
            raise
        with self._without_aborting("a rollback"):
            self.record_rollback(provider, reason, time.monotonic() - started)

    @contextmanager
    def track_health_check(self, provider: str, check_type: str) -> Iterator[Outcome]:
        """Time a health check: ``pass`` unless the block raises or sets ``outcome.status = "fail"``
        (metrics errors are logged)."""
        outcome = Outcome("pass")
        started = time.monotonic()
        try:
            yield outcome
        except BaseException as error:
            with self._without_aborting(f"the outcome of {error!r}"):
                self.record_health_check(provider, check_type, "fail", time.monotonic() - started)
            raise
        with self._without_aborting("a health check"):
            self.record_health_check(provider, check_type, outcome.status, time.monotonic() - started)

    # Flushing

    def flush(self) -> None:
        """Merge every event recorded since the last flush into the textfile. On error the events stay
        pending and the next flush tries again."""
        with self._lock:
            if not self._pending:
                return
            try:
                self.store.merge(self._pending)
            except BaseException:
                _unflushed.add(self)  # exit tries once more
                raise
            self._pending = Changes()
            _unflushed.discard(self)

    @property
    def pending(self) -> bool:
        """Whether events wait for a flush."""
        return bool(self._pending)

    # Serving

    def serve(self, port: int = 8001, address: str = "localhost",
              web_config_file: Path | str | None = None, max_requests: int = 0) -> MetricsServer:
        """Serve this process's registry at ``/metrics`` from a background thread, with the landing page,
        TLS and basic auth of ``fraisier metrics`` (``web_config_file`` in the same format). Port 0 picks a
        free port. More than ``max_requests`` scrapes at once get 503 (0: no limit). Returns the running
        server: ``.url``, ``.port``, ``.shutdown()``. Raises ServerStartError or WebConfigError when it
        cannot start."""
        from fraisier_textfile.server import serve_registry

        return serve_registry(self.registry, port=port, address=address, web_config_file=web_config_file,
                              max_requests=max_requests)

    # The sink that the event functions write to (see changes.Sink)

    def add(self, family: c.Family, labels: Labels, amount: float) -> None:
        self._child(family, labels).inc(amount)
        self._pending.add(family, labels, amount)

    def observe(self, family: c.Family, labels: Labels, value: float) -> None:
        self._child(family, labels).observe(value)
        self._pending.observe(family, labels, value)

    def set_latest(self, family: c.Family, labels: Labels, value: float) -> None:
        self._child(family, labels).set(value)
        self._pending.set_latest(family, labels, value)

    def set_maximum(self, family: c.Family, labels: Labels, value: float) -> None:
        self._child(family, labels).set(value)
        self._pending.set_maximum(family, labels, value)

    def touch(self, family: c.Family, labels: Labels) -> None:
        self._child(family, labels)
        self._pending.touch(family, labels)

    def first_sight(self, what: tuple[str, ...]) -> bool:
        if what in self._seen:
            return False
        self._seen.add(what)
        return True

    # Internals

    def _child(self, family: c.Family, labels: Labels) -> Any:
        key = (family, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._metrics[family].labels(*labels)
        return child

    def _end_in_flight(self, provider: str, fraise_type: str) -> None:
        for position in range(len(self._in_flight) - 1, -1, -1):
            marker = self._in_flight[position]
            if marker.provider == provider and marker.fraise_type == fraise_type:
                del self._in_flight[position]
                self._pending.retired_markers.add(marker.id)
                self._child(c.ACTIVE_DEPLOYMENTS, (provider,)).dec()
                self._pending.active_providers.add(provider)
                return

    def _after_fork(self) -> None:
        self._lock = threading.RLock()
        self._batch_depth = 0
        self._pending = Changes()
        self._seen = set()
        self._in_flight = []
        self.store = TextfileStore(self.store.directory, self.store.lock_timeout)

    def _flush_if_automatic(self) -> None:
        if self._batch_depth:
            return
        if self.auto_flush:
            self.flush()
        else:
            _unflushed.add(self)  # kept alive until flushed, at the latest at exit

    @contextmanager
    def _batch(self) -> Iterator[None]:
        """Record several events with one flush at the end."""
        with self._lock:
            self._batch_depth += 1
            try:
                yield
            finally:
                self._batch_depth -= 1
            self._flush_if_automatic()

    @contextmanager
    def _without_aborting(self, what: str) -> Iterator[None]:
        """Record events in one flush for a tracked block. A failure to write them must neither stop the
        block's work nor hide its own exception: it is logged, and the events stay pending (and are
        flushed at exit at the latest). A bad value is the caller's mistake and still raises."""
        try:
            with self._batch():
                yield
        except InvalidValueError:
            raise
        except FraisierTextfileError as metrics_error:
            log.error("could not record %s: %s", what, metrics_error)


# Recorders holding events not yet flushed. Normal process exit flushes them; a strong reference, so
# that a recorder dropped with pending events (a hot loop in a function that returned) is not lost.
_unflushed: set[MetricsRecorder] = set()


_every_recorder: weakref.WeakSet[MetricsRecorder] = weakref.WeakSet()


def _forget_parents_state() -> None:
    """In a forked child: the parent's pending events and in-flight deployments are the parent's to write
    (writing them here too would count them twice), and its locks may have been held at the fork."""
    _unflushed.clear()
    for recorder in list(_every_recorder):
        recorder._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parents_state)


@atexit.register
def _flush_at_exit() -> None:
    for recorder in list(_unflushed):
        try:
            recorder.flush()
        except FraisierTextfileError as error:
            log.error("fraisier metrics recorded in this process were not written: %s", error)


_process_recorder: MetricsRecorder | None = None
_process_recorder_lock = threading.Lock()


def get_metrics_recorder() -> MetricsRecorder:
    """The process-wide recorder, made on first use from ``FRAISIER_TEXTFILE_DIR`` (or the default)."""
    global _process_recorder
    with _process_recorder_lock:
        if _process_recorder is None:
            _process_recorder = MetricsRecorder()
        return _process_recorder
