"""fraisier_textfile.metrics: Fraisier's fraisier.metrics module, name for name, writing to the textfile: a Fraisier
host changes one import. Compared with the installed Fraisier 0.84.2's own module."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fraisier_textfile.metrics as metrics_module
from fraisier_textfile import DeploymentMetrics, MetricsRecorder, get_metrics_recorder
from fraisier_textfile import catalogue as c

from .values import sample_values

FRAISIER_API = {  # Fraisier 0.84.2's fraisier.metrics.MetricsRecorder, argument names and order
    "record_deployment_start": ["provider", "fraise_type"],
    "record_deployment_complete": ["provider", "fraise_type", "status", "duration"],
    "record_deployment_error": ["provider", "error_type"],
    "record_rollback": ["provider", "reason", "duration"],
    "record_health_check": ["provider", "check_type", "status", "duration"],
    "set_provider_availability": ["provider", "available"],
    "record_lock_wait": ["service", "provider", "wait_time"],
    "record_db_query": ["database_type", "operation", "status", "duration_seconds"],
    "record_db_error": ["database_type", "error_type"],
    "record_db_transaction": ["database_type", "duration_seconds"],
    "record_deployment_db_operation": ["database_type", "operation_type"],
    "update_db_pool_metrics": ["database_type", "active_connections", "idle_connections", "waiting_requests"],
    "get_metrics_summary": [],
}


FRAISIER_DEPLOYMENT_METRICS = {  # Fraisier 0.84.2's DeploymentMetrics attributes
    "deployments_total": "fraisier_deployments_total",
    "deployment_errors_total": "fraisier_deployment_errors_total",
    "rollbacks_total": "fraisier_rollbacks_total",
    "health_checks_total": "fraisier_health_checks_total",
    "db_queries_total": "fraisier_db_queries_total",
    "db_errors_total": "fraisier_db_errors_total",
    "deployment_db_operations_total": "fraisier_deployment_db_operations_total",
    "deployment_duration_seconds": "fraisier_deployment_duration_seconds",
    "health_check_duration_seconds": "fraisier_health_check_duration_seconds",
    "rollback_duration_seconds": "fraisier_rollback_duration_seconds",
    "restore_duration_seconds": "fraisier_restore_duration_seconds",
    "query_latency_seconds": "fraisier_query_latency_seconds",
    "db_transaction_duration_seconds": "fraisier_db_transaction_duration_seconds",
    "active_deployments": "fraisier_active_deployments",
    "deployment_lock_wait_seconds": "fraisier_deployment_lock_wait_seconds",
    "provider_availability": "fraisier_provider_availability",
    "active_db_connections": "fraisier_active_db_connections",
    "idle_db_connections": "fraisier_idle_db_connections",
    "db_pool_waiting_requests": "fraisier_db_pool_waiting_requests",
}


@pytest.mark.parametrize("method, arguments", FRAISIER_API.items(), ids=FRAISIER_API.keys())
def test_the_method_names_and_arguments_are_fraisiers(method: str, arguments: list[str]) -> None:
    assert list(inspect.signature(getattr(MetricsRecorder, method)).parameters)[1:] == arguments


def test_the_compat_module_has_every_name_of_fraisiers() -> None:
    for name in ("PROMETHEUS_AVAILABLE", "MetricsRecorder", "DeploymentMetrics", "get_metrics_recorder",
                 "Counter", "Gauge", "Histogram"):
        assert hasattr(metrics_module, name), name
    assert metrics_module.PROMETHEUS_AVAILABLE is True
    assert metrics_module.MetricsRecorder is MetricsRecorder
    assert metrics_module.DeploymentMetrics is DeploymentMetrics


def test_the_singleton_is_reset_as_in_fraisier_and_shared_with_the_package(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRAISIER_TEXTFILE_DIR", str(textfile_dir))
    metrics_module._metrics_recorder = None  # type: ignore[attr-defined]
    first = metrics_module.get_metrics_recorder()
    assert first is get_metrics_recorder() is metrics_module._metrics_recorder  # type: ignore[attr-defined]
    metrics_module._metrics_recorder = None  # type: ignore[attr-defined]
    second = metrics_module.get_metrics_recorder()
    assert second is not first
    assert second is get_metrics_recorder()
    metrics_module._metrics_recorder = None  # type: ignore[attr-defined]


@pytest.mark.parametrize("attribute, family", FRAISIER_DEPLOYMENT_METRICS.items(), ids=FRAISIER_DEPLOYMENT_METRICS)
def test_deployment_metrics_has_fraisiers_attributes_and_labels(attribute: str, family: str) -> None:
    handle = getattr(DeploymentMetrics, attribute)
    assert handle.family.name == family
    assert handle.family is c.FAMILIES_BY_NAME[family]


def test_the_restore_strategys_class_level_observe_lands_in_the_textfile(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fraisier's restore strategy writes ``DeploymentMetrics.restore_duration_seconds.labels(phase=...)
    .observe(seconds)`` on the class itself: that goes to the process-wide recorder."""
    monkeypatch.setenv("FRAISIER_TEXTFILE_DIR", str(textfile_dir))
    monkeypatch.setattr(metrics_module, "_metrics_recorder", None)
    metrics_module.DeploymentMetrics.restore_duration_seconds.labels(phase="total").observe(42.0)
    metrics_module.DeploymentMetrics.restore_duration_seconds.labels("migration").observe(3.0)
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values['fraisier_restore_duration_seconds_count{phase="total"}'] == 1
    assert values['fraisier_restore_duration_seconds_sum{phase="total"}'] == 42
    assert values['fraisier_restore_duration_seconds_bucket{phase="total",le="60.0"}'] == 1
    assert values['fraisier_restore_duration_seconds_bucket{phase="migration",le="5.0"}'] == 1


# Fraisier's module as installed: run in a process of its own, from its file, with the start-up hook off, so that
# nothing of ours rewires it and its families do not collide with this process's default registry.
FRAISIERS_OWN = """
import importlib.util, inspect, json, sys
spec = importlib.util.find_spec("fraisier")
path = spec.submodule_search_locations[0] + "/metrics.py"
loaded = importlib.util.spec_from_file_location("fraisiers_own_metrics", path)
module = importlib.util.module_from_spec(loaded)
loaded.loader.exec_module(module)
import fraisier
families = {}
for name, value in vars(module.DeploymentMetrics).items():
    if hasattr(value, "_labelnames"):
        families[name] = [value._name, list(value._labelnames)]
print(json.dumps({
    "version": fraisier.__version__,
    "names": sorted(name for name in vars(module) if not name.startswith("__")),
    "methods": {name: list(inspect.signature(method).parameters)
                for name, method in vars(module.MetricsRecorder).items()
                if callable(method) and not name.startswith("_")},
    "families": families,
}))
"""


@pytest.fixture(scope="module")
def fraisiers_own() -> dict[str, object]:
    if importlib.util.find_spec("fraisier") is None and os.environ.get("CI") != "true":
        pytest.skip("Fraisier is not installed")
    shown = subprocess.run([sys.executable, "-c", FRAISIERS_OWN], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "FRAISIER_TEXTFILE_HOOK": "0"})
    assert shown.returncode == 0, shown.stderr
    own: dict[str, object] = json.loads(shown.stdout)
    assert own["version"] == "0.84.2"
    return own


def test_every_name_of_fraisiers_module_is_here(fraisiers_own: dict[str, object]) -> None:
    names = fraisiers_own["names"]
    assert isinstance(names, list)
    missing = [name for name in names if name != "Any" and not hasattr(metrics_module, name)]  # Any: its typing
    assert not missing, missing
    assert set(names) - {"Any"} >= set(metrics_module.__all__)


def test_every_method_of_fraisiers_recorder_is_here_with_its_arguments(fraisiers_own: dict[str, object]) -> None:
    methods = fraisiers_own["methods"]
    assert isinstance(methods, dict) and len(methods) == 13
    ours = {name: list(inspect.signature(getattr(MetricsRecorder, name)).parameters)
            for name in methods if hasattr(MetricsRecorder, name)}
    assert ours == methods


def test_every_family_of_fraisiers_deployment_metrics_is_here_with_its_labels(
    fraisiers_own: dict[str, object],
) -> None:
    families = fraisiers_own["families"]
    assert isinstance(families, dict) and len(families) == 19
    for attribute, (name, labels) in families.items():
        family = getattr(DeploymentMetrics, attribute).family
        # prometheus_client drops a counter's _total from its name: ours are named as they are exported.
        assert family.name.removesuffix("_total") == name.removesuffix("_total"), attribute
        assert list(family.labels) == labels, attribute
