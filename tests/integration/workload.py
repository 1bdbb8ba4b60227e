"""A bit of every kind of event, recorded for real: what the integration tests put in front of a reader."""

from __future__ import annotations

from pathlib import Path

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
