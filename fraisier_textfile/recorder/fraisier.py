"""Fraisier's ``DeploymentMetrics``: the catalogue's families under Fraisier's attribute names, each a handle
whose ``labels(...)`` child writes through a recorder (so it reaches the textfile and never raises), and what
such a write checks and records (``write_family``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fraisier_textfile import catalogue, validate
from fraisier_textfile.catalogue import Family, Kind
from fraisier_textfile.errors import InvalidValueError
from fraisier_textfile.store.changes import Labels

if TYPE_CHECKING:
    from fraisier_textfile.recorder.recorder import MetricsRecorder
    from fraisier_textfile.recorder.series import ProcessSeries


def _process_recorder() -> MetricsRecorder:
    from fraisier_textfile.recorder.recorder import get_metrics_recorder  # the recorder module imports this one

    return get_metrics_recorder()


OPERATIONS = {Kind.COUNTER: ("inc",), Kind.GAUGE: ("set", "inc", "dec"), Kind.HISTOGRAM: ("observe",)}
"""What a child of each kind of family may do, as prometheus_client's children of that kind can."""


def write_family(
    series: ProcessSeries, family: Family, labels: Labels | InvalidValueError, operation: str, amount: object
) -> None:
    """A child's ``operation`` (``inc``, ``dec``, ``set``, ``observe``) on ``family``, checked as the catalogue
    checks an event (a label with choices takes only those) and recorded in ``series``; InvalidValueError
    when anything is wrong, before anything is recorded."""
    if isinstance(labels, InvalidValueError):
        raise labels
    labels = tuple(
        validate.check_choice(label, value, catalogue.LABEL_CHOICES[(family, label)])
        if (family, label) in catalogue.LABEL_CHOICES
        else validate.check_label_value(label, value)
        for label, value in zip(family.labels, labels)
    )
    allowed = OPERATIONS[family.kind]
    if operation not in allowed:
        raise InvalidValueError(
            f"{family.name} is a {family.kind.value}: use {' or '.join(name + '()' for name in allowed)}"
        )
    if family is catalogue.ACTIVE_DEPLOYMENTS:
        raise InvalidValueError(
            "fraisier_active_deployments is counted from the deployments in flight in live processes: "
            "use record_deployment_start and record_deployment_complete"
        )
    if family.kind is Kind.HISTOGRAM:
        series.observe(family, labels, validate.check_duration(f"{family.name} value", amount))
    elif family.kind is Kind.COUNTER:
        series.add(family, labels, validate.check_count(f"{family.name} increment", amount))
    else:
        value = validate.check_gauge_value(f"{family.name} value", amount)
        if operation != "set":  # inc/dec: from this process's value; the latest report wins in the file
            value = series.gauge(family, labels).value + (value if operation == "inc" else -value)
        if family is catalogue.LAST_DEPLOYMENT:
            series.set_maximum(family, labels, value)
        else:
            series.set_latest(family, labels, value)
    series.events += 1


class FamilyChild:
    """One series of a family, as prometheus_client's ``labels(...)`` gives it: ``inc``, ``dec``, ``set``,
    ``observe``. Writes go to a recorder, so they reach the textfile and never raise."""

    __slots__ = ("_family", "_labels", "_recorder")

    def __init__(
        self, recorder: Callable[[], MetricsRecorder], family: Family, labels: Labels | InvalidValueError
    ) -> None:
        self._recorder = recorder
        self._family = family
        self._labels = labels

    def inc(self, amount: float = 1) -> None:
        self._recorder()._write_family(self._family, self._labels, "inc", amount)

    def dec(self, amount: float = 1) -> None:
        self._recorder()._write_family(self._family, self._labels, "dec", amount)

    def set(self, value: float) -> None:
        self._recorder()._write_family(self._family, self._labels, "set", value)

    def observe(self, amount: float) -> None:
        self._recorder()._write_family(self._family, self._labels, "observe", amount)


class FamilyHandle:
    """A family of the catalogue as Fraisier's ``DeploymentMetrics`` attributes are: call ``labels(...)``
    with the label values, by position or by name."""

    __slots__ = ("_family", "_recorder")

    def __init__(self, family: Family, recorder: Callable[[], MetricsRecorder]) -> None:
        self._family = family
        self._recorder = recorder

    @property
    def family(self) -> Family:
        return self._family

    def labels(self, *values: Any, **labels: Any) -> FamilyChild:
        """The series with these label values. Wrong label names do not raise here (prometheus_client would):
        the child's writes are dropped and logged, like any other bad value."""
        names = self._family.labels
        if labels and not values and set(labels) == set(names):
            return FamilyChild(self._recorder, self._family, tuple(labels[name] for name in names))
        if values and not labels and len(values) == len(names):
            return FamilyChild(self._recorder, self._family, values)
        given = ", ".join([validate.shown(value) for value in values] + list(labels))
        return FamilyChild(self._recorder, self._family, InvalidValueError(
            f"{self._family.name} takes the labels {', '.join(names)}, by position or by name, not {given}"
        ))


class _FamilyAttribute:
    """A ``DeploymentMetrics`` attribute: on an instance, the family written to that instance's recorder; on
    the class (Fraisier's restore strategy observes ``DeploymentMetrics.restore_duration_seconds``), the
    family written to the process-wide recorder of ``get_metrics_recorder()``."""

    def __init__(self, family: Family) -> None:
        self.family = family
        self.for_class = FamilyHandle(family, _process_recorder)

    def __get__(self, instance: DeploymentMetrics | None, owner: type) -> FamilyHandle:
        if instance is None:
            return self.for_class
        return instance.handle(self.family)


class DeploymentMetrics:
    """Fraisier's ``DeploymentMetrics``: the families under Fraisier's attribute names."""

    deployments_total = _FamilyAttribute(catalogue.DEPLOYMENTS)
    deployment_errors_total = _FamilyAttribute(catalogue.DEPLOYMENT_ERRORS)
    rollbacks_total = _FamilyAttribute(catalogue.ROLLBACKS)
    health_checks_total = _FamilyAttribute(catalogue.HEALTH_CHECKS)
    db_queries_total = _FamilyAttribute(catalogue.DB_QUERIES)
    db_errors_total = _FamilyAttribute(catalogue.DB_ERRORS)
    deployment_db_operations_total = _FamilyAttribute(catalogue.DEPLOYMENT_DB_OPERATIONS)
    deployment_duration_seconds = _FamilyAttribute(catalogue.DEPLOYMENT_DURATION)
    health_check_duration_seconds = _FamilyAttribute(catalogue.HEALTH_CHECK_DURATION)
    rollback_duration_seconds = _FamilyAttribute(catalogue.ROLLBACK_DURATION)
    restore_duration_seconds = _FamilyAttribute(catalogue.RESTORE_DURATION)
    query_latency_seconds = _FamilyAttribute(catalogue.QUERY_LATENCY)
    db_transaction_duration_seconds = _FamilyAttribute(catalogue.DB_TRANSACTION_DURATION)
    active_deployments = _FamilyAttribute(catalogue.ACTIVE_DEPLOYMENTS)
    deployment_lock_wait_seconds = _FamilyAttribute(catalogue.LOCK_WAIT)
    provider_availability = _FamilyAttribute(catalogue.PROVIDER_AVAILABILITY)
    active_db_connections = _FamilyAttribute(catalogue.ACTIVE_DB_CONNECTIONS)
    idle_db_connections = _FamilyAttribute(catalogue.IDLE_DB_CONNECTIONS)
    db_pool_waiting_requests = _FamilyAttribute(catalogue.DB_POOL_WAITING_REQUESTS)
    last_deployment_timestamp_seconds = _FamilyAttribute(catalogue.LAST_DEPLOYMENT)

    def __init__(self, recorder: MetricsRecorder | None = None) -> None:
        """``recorder``: where writes go; by default the process-wide recorder (``DeploymentMetrics()`` as
        Fraisier makes it)."""
        self._target: Callable[[], MetricsRecorder] = _process_recorder if recorder is None else (lambda: recorder)
        # Made at first use: a recorder is made in every process that records, few of them touch these.
        self._handles: dict[Family, FamilyHandle] = {}

    def handle(self, family: Family) -> FamilyHandle:
        """The attribute of ``family`` (one object per family and instance)."""
        handle = self._handles.get(family)
        if handle is None:
            handle = self._handles[family] = FamilyHandle(family, self._target)
        return handle
