"""The metric families: one table that the recorder, the store, the CLI, the docs and the tests read.

Nothing here imports anything else of ours: everything downstream reads this module.
"""

from __future__ import annotations

import enum
import math

from fraisier_textfile.errors import InvalidValueError

PREFIX = "fraisier_"

DEPLOYMENT_STATUSES: tuple[str, ...] = ("success", "failed", "rolled_back", "rollback_failed", "crashed")
"""Statuses a finished deployment may have. ``crashed`` is recorded for a process found dead mid-deployment."""

HEALTH_CHECK_STATUSES: tuple[str, ...] = ("pass", "fail")

MAX_LABEL_VALUE_LENGTH = 128


def format_float(value: float) -> str:
    """A value as the Prometheus text format writes it (Go's strconv style for the specials)."""
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if value != value:
        return "NaN"
    return repr(float(value))


class Kind(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Family:
    """One metric family of the catalogue.

    Compared and hashed by identity: each family is one constant, and a field-by-field hash made every
    record call several times slower. A plain class, not a dataclass: `fraisier record` imports this
    module, and dataclasses cost a CLI run milliseconds of start-up."""

    __slots__ = ("bucket_bounds", "buckets", "help", "kind", "labels", "name")

    def __init__(
        self, name: str, kind: Kind, labels: tuple[str, ...], help: str, buckets: tuple[float, ...] = ()
    ) -> None:
        self.name = name
        self.kind = kind
        self.labels = labels
        self.help = help
        self.buckets = buckets
        self.bucket_bounds: tuple[str, ...] = (
            tuple(format_float(b) for b in buckets) + ("+Inf",) if kind is Kind.HISTOGRAM else ()
        )
        """The ``le`` label values, as written in the textfile, ``+Inf`` last (histograms only)."""

    def __repr__(self) -> str:
        return f"Family({self.name!r})"


DEPLOYMENTS = Family(
    "fraisier_deployments_total",
    Kind.COUNTER,
    ("provider", "status", "fraise_type"),
    "Deployments finished, by provider, status and fraise type.",
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
)
DEPLOYMENT_DURATION = Family(
    "fraisier_deployment_duration_seconds",
    Kind.HISTOGRAM,
    ("provider", "status"),
    "Duration of finished deployments in seconds, by provider and status.",
    (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600),
)
HEALTH_CHECK_DURATION = Family(
    "fraisier_health_check_duration_seconds",
    Kind.HISTOGRAM,
    ("provider", "check_type"),
    "Duration of health checks in seconds, by provider and check type.",
    (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
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
)
FAMILIES_BY_NAME: dict[str, Family] = {family.name: family for family in FAMILIES}


_checked_label_values: set[str] = set()


def check_label_value(label: str, value: object) -> str:
    """Return ``value`` if it may be a label value: a non-empty printable string of at most 128 characters."""
    if value.__class__ is str and value in _checked_label_values:
        return value
    if not isinstance(value, str):
        raise InvalidValueError(f"{label}={value!r} is not a string: pass the {label} as text")
    if not value:
        raise InvalidValueError(f"{label} is empty: give a non-empty {label}")
    if len(value) > MAX_LABEL_VALUE_LENGTH:
        raise InvalidValueError(
            f"{label}={value[:20]!r}... is {len(value)} characters long: "
            f"shorten it to at most {MAX_LABEL_VALUE_LENGTH}"
        )
    if not value.isprintable():
        raise InvalidValueError(
            f"{label}={value!r} holds a non-printable character: remove control characters and newlines"
        )
    if len(_checked_label_values) < 10_000:  # a bounded memo; label values repeat in practice
        _checked_label_values.add(value)
    return value


def check_choice(label: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InvalidValueError(f"{label}={value!r} is not known: use one of {', '.join(allowed)}")
    return value


def check_seconds(what: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite, non-negative number of seconds."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidValueError(f"{what}={value!r} is not a number: give seconds, e.g. 12.5") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidValueError(f"{what}={value!r} is not a finite number of seconds >= 0: give e.g. 12.5")
    return seconds
