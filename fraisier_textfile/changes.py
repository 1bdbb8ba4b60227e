"""What each Fraisier event records (the pending changes themselves are store/changes.py's).

The recorder, the CLI and ``fraisier exec`` describe events through the same functions here, so a deployment
recorded from Python and one recorded from a cron job touch exactly the same series; starting and ending a
deployment in flight is said here once (``deployment_started``, ``deployment_ended``, ``deployment_crashed``).
Nothing here imports prometheus_client: a ``fraisier record`` process must not pay for it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fraisier_textfile import catalogue, validate
from fraisier_textfile.store.changes import Changes as Changes  # re-exported: it was defined here
from fraisier_textfile.store.inflight import MarkerRules

if TYPE_CHECKING:
    from fraisier_textfile.store.changes import Sink
    from fraisier_textfile.store.deployments import Deployment

# The events. Each validates everything before it records anything, so a bad value records nothing.


def deployment_series(sink: Sink, provider: str, fraise_type: str) -> None:
    """Create the deployment series of a (provider, fraise type) pair at 0 for every status, so that
    ``increase()`` sees the first failure of a pair never seen before."""
    if sink.first_sight(("deployment", provider, fraise_type)):
        for status in catalogue.DEPLOYMENT_STATUSES:
            sink.touch(catalogue.DEPLOYMENTS, (provider, status, fraise_type))
            sink.touch(catalogue.DEPLOYMENT_DURATION, (provider, status))


# In-flight deployments. These three functions are the one place that says what starting and ending a
# deployment records; the recorder, `fraisier exec` and the store's reaping of dead markers all use them.
# The marker itself (a file in the textfile directory) is the store's: TextfileStore.start_deployment writes it,
# and the store releases it once the changes of deployment_ended are written (store/deployments.py).


def deployment_started(sink: Sink, provider: str, fraise_type: str) -> None:
    """A deployment started: it counts as active (its marker, written by the store, says so across
    processes), and the pair's series exist from now on."""
    provider = validate.check_label_value("provider", provider)
    fraise_type = validate.check_label_value("fraise_type", fraise_type)
    sink.count_active(provider, 1)
    deployment_series(sink, provider, fraise_type)


def deployment_ended(sink: Sink, provider: str, deployment: Deployment | None) -> None:
    """A deployment is no longer in flight (it completed, or an error ended it). ``deployment``: the store's handle
    of one this process started (``TextfileStore.start_deployment``; None for one it did not), ended by these
    changes: its marker is retired by them, so it is never counted as crashed, and released once they are written."""
    sink.count_active(provider, -1)
    if deployment is not None:
        sink.end_deployment(deployment)


def deployment_crashed(
    sink: Sink, provider: str, fraise_type: str, marker_id: str | None, now: float | None = None
) -> None:
    """A deployment whose process died in flight: counted ``crashed``, and its marker retired (None: it had
    none, as a row of Fraisier's database). No duration: nobody knows when it stopped. Its last-deployment
    time is when the crash was found (``now``): the deployment had stopped by then, and like every finished
    deployment it needs a time, or an alert on that time cannot see a crashed counter that Prometheus first
    scrapes already at 1."""
    deployment_series(sink, provider, fraise_type)
    sink.add(catalogue.DEPLOYMENTS, (provider, "crashed", fraise_type), 1.0)
    sink.set_maximum(
        catalogue.LAST_DEPLOYMENT, (provider, fraise_type, "crashed"), time.time() if now is None else now
    )
    if marker_id is not None:
        sink.retire_marker(marker_id)


# Finished work.


def deployment_complete(
    sink: Sink, provider: str, fraise_type: str, status: str, duration: float, now: float | None = None
) -> None:
    provider = validate.check_label_value("provider", provider)
    fraise_type = validate.check_label_value("fraise_type", fraise_type)
    status = catalogue.check_deployment_status(status)
    duration = validate.check_duration("duration", duration)
    deployment_series(sink, provider, fraise_type)
    sink.add(catalogue.DEPLOYMENTS, (provider, status, fraise_type), 1.0)
    sink.observe(catalogue.DEPLOYMENT_DURATION, (provider, status), duration)
    sink.set_maximum(catalogue.LAST_DEPLOYMENT, (provider, fraise_type, status), time.time() if now is None else now)


def deployment_error(sink: Sink, provider: str, error_type: str) -> None:
    provider = validate.check_label_value("provider", provider)
    error_type = validate.check_label_value("error_type", error_type)
    sink.add(catalogue.DEPLOYMENT_ERRORS, (provider, error_type), 1.0)


def rollback(sink: Sink, provider: str, reason: str, duration: float) -> None:
    provider = validate.check_label_value("provider", provider)
    reason = validate.check_label_value("reason", reason)
    duration = validate.check_duration("duration", duration)
    sink.add(catalogue.ROLLBACKS, (provider, reason), 1.0)
    sink.observe(catalogue.ROLLBACK_DURATION, (provider,), duration)


def rollback_of_unknown_duration(sink: Sink, provider: str, reason: str) -> None:
    """A rollback whose duration nobody stored (a row of Fraisier's database): counted, and the duration
    histogram left alone rather than fed a made-up value."""
    provider = validate.check_label_value("provider", provider)
    reason = validate.check_label_value("reason", reason)
    sink.add(catalogue.ROLLBACKS, (provider, reason), 1.0)


def health_check(sink: Sink, provider: str, check_type: str, status: str, duration: float) -> None:
    provider = validate.check_label_value("provider", provider)
    check_type = validate.check_label_value("check_type", check_type)
    status = validate.check_choice("status", status, catalogue.HEALTH_CHECK_STATUSES)
    duration = validate.check_duration("duration", duration)
    if sink.first_sight(("health_check", provider, check_type)):  # both statuses exist from the first on
        for other in catalogue.HEALTH_CHECK_STATUSES:
            sink.touch(catalogue.HEALTH_CHECKS, (provider, check_type, other))
    sink.add(catalogue.HEALTH_CHECKS, (provider, check_type, status), 1.0)
    sink.observe(catalogue.HEALTH_CHECK_DURATION, (provider, check_type), duration)


def provider_availability(sink: Sink, provider: str, available: bool) -> None:
    """``available`` is read by ``validate.check_flag``: a value it does not understand records nothing."""
    provider = validate.check_label_value("provider", provider)
    up = validate.check_flag("available", available)
    sink.set_latest(catalogue.PROVIDER_AVAILABILITY, (provider,), 1.0 if up else 0.0)


def lock_wait(sink: Sink, service: str, provider: str, wait_time: float) -> None:
    service = validate.check_label_value("service", service)
    provider = validate.check_label_value("provider", provider)
    wait_time = validate.check_duration("wait_time", wait_time)
    sink.set_latest(catalogue.LOCK_WAIT, (service, provider), wait_time)


# Fraisier's database events.


def db_query(sink: Sink, database_type: str, operation: str, status: str, duration_seconds: float) -> None:
    database_type = validate.check_label_value("database_type", database_type)
    operation = validate.check_label_value("operation", operation)
    status = validate.check_label_value("status", status)
    duration_seconds = validate.check_duration("duration_seconds", duration_seconds)
    sink.add(catalogue.DB_QUERIES, (database_type, operation, status), 1.0)
    sink.observe(catalogue.QUERY_LATENCY, (database_type, operation), duration_seconds)


def db_error(sink: Sink, database_type: str, error_type: str) -> None:
    database_type = validate.check_label_value("database_type", database_type)
    error_type = validate.check_label_value("error_type", error_type)
    sink.add(catalogue.DB_ERRORS, (database_type, error_type), 1.0)


def db_transaction(sink: Sink, database_type: str, duration_seconds: float) -> None:
    database_type = validate.check_label_value("database_type", database_type)
    duration_seconds = validate.check_duration("duration_seconds", duration_seconds)
    sink.observe(catalogue.DB_TRANSACTION_DURATION, (database_type,), duration_seconds)


def deployment_db_operation(sink: Sink, database_type: str, operation_type: str) -> None:
    database_type = validate.check_label_value("database_type", database_type)
    operation_type = validate.check_label_value("operation_type", operation_type)
    sink.add(catalogue.DEPLOYMENT_DB_OPERATIONS, (database_type, operation_type), 1.0)


def db_pool(
    sink: Sink, database_type: str, active_connections: int, idle_connections: int, waiting_requests: int
) -> None:
    """A connection pool's state now (the latest report wins)."""
    database_type = validate.check_label_value("database_type", database_type)
    active = validate.check_count("active_connections", active_connections)
    idle = validate.check_count("idle_connections", idle_connections)
    waiting = validate.check_count("waiting_requests", waiting_requests)
    labels = (database_type,)
    sink.set_latest(catalogue.ACTIVE_DB_CONNECTIONS, labels, active)
    sink.set_latest(catalogue.IDLE_DB_CONNECTIONS, labels, idle)
    sink.set_latest(catalogue.DB_POOL_WAITING_REQUESTS, labels, waiting)


MARKER_RULES = MarkerRules(catalogue.ACTIVE_DEPLOYMENTS, deployment_crashed)
"""What Fraisier's markers of deployments in flight count in the store: the active gauge, and a crash."""
