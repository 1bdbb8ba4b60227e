"""Fraisier's metric families: one table that the recorder, the CLI, the docs and the tests read, and the label
values and number checks of its events.

To the format and the store it is one schema among any (``format/schema.py``): they are handed it, as
``SCHEMA``, and import nothing of it. It is the default schema, set when this module is imported.
"""

from __future__ import annotations

import enum
import math

from fraisier_textfile.errors import InvalidValueError
from fraisier_textfile.format.schema import Family as Family
from fraisier_textfile.format.schema import Kind as Kind
from fraisier_textfile.format.schema import Schema, set_default
from fraisier_textfile.format.schema import format_float as format_float

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

MAX_LABEL_VALUE_LENGTH = 128


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
set_default(SCHEMA)

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


_checked_label_values: set[str] = set()


def shown(value: object) -> str:
    """``repr(value)`` for an error message, also when that repr raises (a caller's broken object must give
    a bad-value error, not a crash of the check)."""
    try:
        return repr(value)
    except Exception:
        return f"<a {type(value).__name__} whose repr fails>"


def _as_float(what: str, value: object, give: str) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except Exception:  # OverflowError (10**400), or whatever a caller's __float__ raises
        raise InvalidValueError(f"{what}={shown(value)} cannot be read as a number: give {give}") from None


def plain_value(value: object) -> object:
    """An enum member's value (Fraisier passes its ``DeploymentStatus`` members), anything else as it is."""
    if isinstance(value, enum.Enum):
        return value.value
    return value


def check_label_value(label: str, value: object) -> str:
    """Return ``value`` if it may be a label value: a non-empty printable string of at most 128 characters.
    An enum member whose value is such a string gives that string."""
    if value.__class__ is str and value in _checked_label_values:
        return value
    value = plain_value(value)
    if not isinstance(value, str):
        raise InvalidValueError(f"{label}={shown(value)} is not a string: pass the {label} as text")
    if not value:
        raise InvalidValueError(f"{label} is empty: give a non-empty {label}")
    if len(value) > MAX_LABEL_VALUE_LENGTH:
        raise InvalidValueError(
            f"{label}={value[:20]!r}... is {len(value)} characters long: "
            f"shorten it to at most {MAX_LABEL_VALUE_LENGTH}"
        )
    if not value.isprintable():
        raise InvalidValueError(
            f"{label}={shown(value)} holds a non-printable character: remove control characters and newlines"
        )
    value = str(value)  # a str subclass (a str-valued enum) is stored as the plain string
    if len(_checked_label_values) < 10_000:  # a bounded memo; label values repeat in practice
        _checked_label_values.add(value)
    return value


def check_choice(label: str, value: object, allowed: tuple[str, ...]) -> str:
    value = plain_value(value)
    if value not in allowed:
        raise InvalidValueError(f"{label}={shown(value)} is not known: use one of {', '.join(allowed)}")
    return str(value)


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


def check_seconds(what: str, value: object) -> float:
    """Return ``value`` (a number or its text, as from the command line or the environment) as a float if it is
    a finite, non-negative number of seconds."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except Exception:  # TypeError, ValueError, OverflowError (10**400), or whatever a caller's __float__ raises
        raise InvalidValueError(f"{what}={shown(value)} is not a number: give seconds, e.g. 12.5") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidValueError(f"{what}={shown(value)} is not a finite number of seconds >= 0: give e.g. 12.5")
    return seconds


_LARGEST_FLOAT = 1.7976931348623157e308


def _is_number(value: object) -> bool:
    """int and float, and other numbers (Decimal, Fraction, numpy's scalars: whatever has ``__float__``), but
    not bool (True seconds is a caller's mistake, not 1 s) and not text (the Python API takes numbers)."""
    kind = value.__class__
    if kind is float or kind is int:
        return True
    if isinstance(value, (bool, str, bytes, bytearray)):
        return False
    return hasattr(kind, "__float__")


def check_duration(what: str, value: object) -> float:
    """Return ``value`` as a float if it is a number (not text, not a bool), finite and >= 0: the durations
    that the event functions accept."""
    if value.__class__ is float and 0.0 <= value <= _LARGEST_FLOAT:  # the common case, NaN and inf excluded
        return value
    if not _is_number(value):
        raise InvalidValueError(f"{what}={shown(value)} is not a number: give seconds as a number, e.g. 12.5")
    return check_seconds(what, value)


def check_count(what: str, value: object) -> float:
    """Return ``value`` as a float if it is a number (not text, not a bool), finite and >= 0."""
    if not _is_number(value):
        raise InvalidValueError(f"{what}={shown(value)} is not a number: give a count, e.g. 3")
    number = _as_float(what, value, "a count, e.g. 3")
    if not math.isfinite(number) or number < 0:
        raise InvalidValueError(f"{what}={shown(value)} is not a finite number >= 0: give a count, e.g. 3")
    return number


def check_gauge_value(what: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite number (not text, not a bool)."""
    if not _is_number(value):
        raise InvalidValueError(f"{what}={shown(value)} is not a number: give a number, e.g. 3")
    number = _as_float(what, value, "a number, e.g. 3")
    if not math.isfinite(number):
        raise InvalidValueError(f"{what}={shown(value)} is not a finite number: give a number, e.g. 3")
    return number


TRUE_WORDS = frozenset({"true", "yes", "on", "up", "1"})
FALSE_WORDS = frozenset({"false", "no", "off", "down", "0"})


def check_flag(what: str, value: object) -> bool:
    """A yes/no value. ``True``/``False``, the numbers 1 and 0, and the words in TRUE_WORDS and FALSE_WORDS
    (any case, surrounding spaces ignored) are understood; anything else is refused rather than guessed:
    ``bool("false")`` is True, and recording a provider as up because it said "false" is the worst answer."""
    value = plain_value(value)
    if value is True or value is False:
        return value
    if _is_number(value):
        try:
            if value in (0, 1):
                return bool(value)
        except Exception:  # a number-like whose comparison raises (numpy's arrays): not a yes or no
            pass
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise InvalidValueError(
        f"{what}={shown(value)} is not a yes or no: pass True or False "
        f"(also understood: 1, 0, {', '.join(sorted(TRUE_WORDS - {'1'}))}, {', '.join(sorted(FALSE_WORDS - {'0'}))})"
    )
