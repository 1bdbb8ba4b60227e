"""Fraisier's metric families: one table that the recorder, the CLI, the docs and the tests read, and the label
values its events may take (the checks of values themselves are validate.py's).

To the format and the store it is one schema among any (``format/schema.py``): they are handed it, as
``SCHEMA``, and import nothing of it (fraisier_store.py opens the store with it).
"""

from __future__ import annotations

from fraisier_textfile.errors import InvalidValueError
from fraisier_textfile.format.schema import Family as Family
from fraisier_textfile.format.schema import Kind as Kind
from fraisier_textfile.format.schema import Schema
from fraisier_textfile.validate import check_choice, plain_value, shown
from fraisier_textfile.validate import check_label_value as check_label_value  # public here (test_public_api)

DEPLOYMENT_STATUSES: tuple[str, ...] = ("success", "failed", "rolled_back", "rollback_failed", "crashed")
"""Statuses a finished deployment may have. ``crashed`` is recorded for a process found dead mid-deployment."""

UNFINISHED_STATUSES: tuple[str, ...] = ("pending", "in_progress")
"""Statuses of Fraisier's ``DeploymentStatus`` that describe a deployment not yet finished: a completion with
one of them is refused (it would count an unfinished deployment)."""

STATUS_ALIASES: dict[str, str] = {"interrupted": "crashed"}
"""Fraisier's names for our statuses: its status file says ``interrupted`` for a deployment whose process died."""

HEALTH_CHECK_STATUSES: tuple[str, ...] = ("pass", "fail")

FALLBACK_DEPLOYMENT_STATUS = "failed"
"""What a tracked deployment records when the block set an ``outcome.status`` that is not a status."""
FALLBACK_HEALTH_CHECK_STATUS = "fail"
"""What a tracked health check records when the block set an ``outcome.status`` that is not a status."""
FALLBACK_ERROR_TYPE = "invalid_error_type"
"""The ``error_type`` recorded for an exception whose class name cannot be a label value."""



DEPLOYMENTS = Family(
    "fraisier_deployments_total",
    Kind.COUNTER,
    ("provider", "status", "fraise_type"),
    "Deployments finished, by provider, status and fraise type.",
    zero_series=("status", DEPLOYMENT_STATUSES),
)
DEPLOYMENT_ERRORS = Family(
    "fraisier_deployment_errors_total",
    Kind.COUNTER,
    ("provider", "error_type"),
    "Deployment errors, by provider and error type.",
)
ROLLBACKS = Family(
    "fraisier_rollbacks_total",
    Kind.COUNTER,
    ("provider", "reason"),
    "Rollbacks performed, by provider and reason.",
)
HEALTH_CHECKS = Family(
    "fraisier_health_checks_total",
    Kind.COUNTER,
    ("provider", "check_type", "status"),
    "Health checks run, by provider, check type and status (pass or fail).",
    zero_series=("status", HEALTH_CHECK_STATUSES),
)
DEPLOYMENT_DURATION = Family(
    "fraisier_deployment_duration_seconds",
    Kind.HISTOGRAM,
    ("provider", "status"),
    "Duration of finished deployments in seconds, by provider and status.",
    (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600),
    zero_series=("status", DEPLOYMENT_STATUSES),
)
HEALTH_CHECK_DURATION = Family(
    "fraisier_health_check_duration_seconds",
    Kind.HISTOGRAM,
    ("provider", "check_type"),
    "Duration of health checks in seconds, by provider and check type.",
    (0.05, 0.1, 0.25, 0.5, 1, 2, 2.5, 5, 10, 30),
)
ROLLBACK_DURATION = Family(
    "fraisier_rollback_duration_seconds",
    Kind.HISTOGRAM,
    ("provider",),
    "Duration of rollbacks in seconds, by provider.",
    (1, 5, 10, 30, 60, 120, 300, 600),
)
ACTIVE_DEPLOYMENTS = Family(
    "fraisier_active_deployments",
    Kind.GAUGE,
    ("provider",),
    "Deployments in progress in processes that are still alive, by provider.",
)
LOCK_WAIT = Family(
    "fraisier_deployment_lock_wait_seconds",
    Kind.GAUGE,
    ("service", "provider"),
    "Seconds the last deployment of a service waited for its deployment lock.",
)
PROVIDER_AVAILABILITY = Family(
    "fraisier_provider_availability",
    Kind.GAUGE,
    ("provider",),
    "Whether a provider was available at its last check (1 up, 0 down).",
)
LAST_DEPLOYMENT = Family(
    "fraisier_last_deployment_timestamp_seconds",
    Kind.GAUGE,
    ("provider", "fraise_type", "status"),
    "Unix time of the last finished deployment, by provider, fraise type and status.",
)

DB_QUERIES = Family(
    "fraisier_db_queries_total",
    Kind.COUNTER,
    ("database_type", "operation", "status"),
    "Database queries run by Fraisier, by database type, operation and status.",
)
DB_ERRORS = Family(
    "fraisier_db_errors_total",
    Kind.COUNTER,
    ("database_type", "error_type"),
    "Database errors, by database type and error type.",
)
DEPLOYMENT_DB_OPERATIONS = Family(
    "fraisier_deployment_db_operations_total",
    Kind.COUNTER,
    ("database_type", "operation_type"),
    "Database operations made while deploying, by database type and operation type.",
)
RESTORE_DURATION = Family(
    "fraisier_restore_duration_seconds",
    Kind.HISTOGRAM,
    ("phase",),
    "Duration of the phases of a database restore in seconds, by phase.",
    (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600),
)
QUERY_LATENCY = Family(
    "fraisier_query_latency_seconds",
    Kind.HISTOGRAM,
    ("database_type", "operation"),
    "Duration of database queries in seconds, by database type and operation.",
    (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10),
)
DB_TRANSACTION_DURATION = Family(
    "fraisier_db_transaction_duration_seconds",
    Kind.HISTOGRAM,
    ("database_type",),
    "Duration of database transactions in seconds, by database type.",
    (0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
ACTIVE_DB_CONNECTIONS = Family(
    "fraisier_active_db_connections",
    Kind.GAUGE,
    ("database_type",),
    "Database connections in use at the last report, by database type.",
)
IDLE_DB_CONNECTIONS = Family(
    "fraisier_idle_db_connections",
    Kind.GAUGE,
    ("database_type",),
    "Idle database connections at the last report, by database type.",
)
DB_POOL_WAITING_REQUESTS = Family(
    "fraisier_db_pool_waiting_requests",
    Kind.GAUGE,
    ("database_type",),
    "Requests waiting for a database connection at the last report, by database type.",
)

FAMILIES: tuple[Family, ...] = (
    DEPLOYMENTS,
    DEPLOYMENT_ERRORS,
    ROLLBACKS,
    HEALTH_CHECKS,
    DEPLOYMENT_DURATION,
    HEALTH_CHECK_DURATION,
    ROLLBACK_DURATION,
    ACTIVE_DEPLOYMENTS,
    LOCK_WAIT,
    PROVIDER_AVAILABILITY,
    LAST_DEPLOYMENT,
    DB_QUERIES,
    DB_ERRORS,
    DEPLOYMENT_DB_OPERATIONS,
    RESTORE_DURATION,
    QUERY_LATENCY,
    DB_TRANSACTION_DURATION,
    ACTIVE_DB_CONNECTIONS,
    IDLE_DB_CONNECTIONS,
    DB_POOL_WAITING_REQUESTS,
)
FAMILIES_BY_NAME: dict[str, Family] = {family.name: family for family in FAMILIES}
SCHEMA = Schema(FAMILIES)

FRAISIER_BUCKETS: dict[Family, tuple[float, ...]] = {
    DEPLOYMENT_DURATION: (5, 10, 30, 60, 120, 300, 600),
    HEALTH_CHECK_DURATION: (0.1, 0.5, 1, 2, 5, 10),
    ROLLBACK_DURATION: (5, 10, 30, 60, 120),
    RESTORE_DURATION: (5, 10, 30, 60, 120, 300, 600),
    QUERY_LATENCY: (0.01, 0.05, 0.1, 0.5, 1, 2, 5),
    DB_TRANSACTION_DURATION: (0.1, 0.5, 1, 2, 5, 10),
}
"""The buckets Fraisier 0.84.2's own histograms have: ours hold every one of these bounds, so that a query
written for Fraisier's histograms (``le="2"``) finds its bucket here."""

LABEL_CHOICES: dict[tuple[Family, str], tuple[str, ...]] = {
    (DEPLOYMENTS, "status"): DEPLOYMENT_STATUSES,
    (DEPLOYMENT_DURATION, "status"): DEPLOYMENT_STATUSES,
    (LAST_DEPLOYMENT, "status"): DEPLOYMENT_STATUSES,
    (HEALTH_CHECKS, "status"): HEALTH_CHECK_STATUSES,
}
"""Labels whose values are a closed set (the dashboard and the alerts name them)."""


def check_deployment_status(value: object) -> str:
    """A finished deployment's status: one of DEPLOYMENT_STATUSES, or Fraisier's name for one
    (``interrupted`` is ``crashed``). Fraisier's ``pending`` and ``in_progress`` are refused: a deployment
    with that status has not finished, and counting it would count it twice once it does."""
    if value.__class__ is str and value in DEPLOYMENT_STATUSES:
        return value
    value = plain_value(value)
    if isinstance(value, str):
        value = STATUS_ALIASES.get(value, value)
        if value in UNFINISHED_STATUSES:
            raise InvalidValueError(
                f"status={shown(value)} is not a finished deployment: record the deployment once it has finished, "
                f"with one of {', '.join(DEPLOYMENT_STATUSES)}"
            )
    return check_choice("status", value, DEPLOYMENT_STATUSES)
