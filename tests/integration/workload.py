"""A bit of every kind of event, recorded for real: what the integration tests put in front of a reader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fraisier_textfile import MetricsRecorder

from ..processes import fraisier


def record_a_bit_of_everything(directory: Path) -> None:
    recorder = MetricsRecorder(directory)
    recorder.record_deployment_complete("bare_metal", "api", "success", 42.0)
    recorder.record_deployment_complete("docker_compose", "etl", "failed", 3.0)
    recorder.record_deployment_complete("docker_compose", "etl", "rolled_back", 3.0)
    recorder.record_deployment_error("docker_compose", "exit_code_1")
    recorder.record_rollback("docker_compose", "health_check", 8.0)
    recorder.record_health_check("bare_metal", "http", "pass", 0.07)
    recorder.record_health_check("bare_metal", "tcp", "fail", 0.3)
    recorder.set_provider_availability("bare_metal", True)
    recorder.set_provider_availability("docker_compose", False)
    recorder.record_lock_wait("web", "bare_metal", 0.4)
    recorder.record_deployment_error('odd "provider" \\ ü', "x")
    fraisier(
        "record",
        "deployment",
        "--provider",
        "bare_metal",
        "--fraise-type",
        "scheduled",
        "--status",
        "failed",
        "--duration",
        "1800",
        textfile_dir=directory,
        check=True,
    )
    record_database_work(directory)


DATABASE_METHODS = (
    "record_db_query",
    "record_db_error",
    "record_db_transaction",
    "record_deployment_db_operation",
    "update_db_pool_metrics",
)


def record_database_work(directory: Path, errors: int = 1, waiting: int = 0) -> None:
    """What a Fraisier deployment with a database records, through Fraisier's recorder API (queries,
    transactions, errors, the pool) and, for a restore, through ``metrics.restore_duration_seconds`` as
    Fraisier's restore strategy does. Each event is in ``directory``'s fraisier.prom on return."""
    missing = [name for name in DATABASE_METHODS if not callable(getattr(MetricsRecorder, name, None))]
    if missing:
        raise AssertionError(
            f"MetricsRecorder has no {', '.join(missing)}: the fleet records Fraisier's database metrics through "
            "Fraisier's recorder API (issue 7, item 1)"
        )
    recorder: Any = MetricsRecorder(directory)
    recorder.record_db_query("postgresql", "select", "success", 0.03)
    recorder.record_db_query("postgresql", "select", "success", 0.3)
    recorder.record_db_query("postgresql", "insert", "error", 1.5)
    recorder.record_db_transaction("postgresql", 0.8)
    recorder.record_deployment_db_operation("postgresql", "migration")
    for _ in range(errors):
        recorder.record_db_error("postgresql", "timeout")
    recorder.update_db_pool_metrics("postgresql", 3, 2, waiting)
    restore = recorder.metrics.restore_duration_seconds
    restore.labels(phase="download").observe(20.0)
    restore.labels(phase="apply").observe(90.0)
    recorder.flush()
    written = (directory / "fraisier.prom").read_text(encoding="utf-8")
    if 'fraisier_restore_duration_seconds_count{phase="apply"}' not in written:
        raise AssertionError(
            "recorder.metrics.restore_duration_seconds.labels(phase=...).observe(...), as Fraisier's restore "
            f"strategy calls it, did not reach {directory / 'fraisier.prom'} (issue 7, items 1 and 4)"
        )
