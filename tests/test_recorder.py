from __future__ import annotations

import inspect
from pathlib import Path

import prometheus_client
import pytest

from fraisier_textfile import InvalidValueError, MetricsRecorder, get_metrics_recorder
from fraisier_textfile import catalogue as c
from fraisier_textfile.liveness import MARKER_DIRECTORY

from .processes import lock_held_elsewhere
from .values import sample_values

FRAISIER_API = {
    "record_deployment_start": ["provider", "fraise_type"],
    "record_deployment_complete": ["provider", "fraise_type", "status", "duration"],
    "record_deployment_error": ["provider", "error_type"],
    "record_rollback": ["provider", "reason", "duration"],
    "record_health_check": ["provider", "check_type", "status", "duration"],
    "set_provider_availability": ["provider", "available"],
    "record_lock_wait": ["service", "provider", "wait_time"],
}


@pytest.mark.parametrize("method, arguments", FRAISIER_API.items(), ids=FRAISIER_API.keys())
def test_the_method_names_and_arguments_are_fraisiers(method: str, arguments: list[str]) -> None:
    assert list(inspect.signature(getattr(MetricsRecorder, method)).parameters)[1:] == arguments


def test_metrics_live_in_a_dedicated_registry(textfile_dir: Path) -> None:
    recorder = MetricsRecorder(textfile_dir)
    recorder.record_deployment_complete("bare_metal", "api", "success", 3.0)
    assert recorder.registry is not prometheus_client.REGISTRY
    assert prometheus_client.REGISTRY.get_sample_value("fraisier_deployments_total") is None
    value = recorder.registry.get_sample_value(
        "fraisier_deployments_total", {"provider": "bare_metal", "status": "success", "fraise_type": "api"}
    )
    assert value == 1
    names = {metric.name for metric in recorder.registry.collect()}
    expected = {family.name.removesuffix("_total") for family in c.FAMILIES}
    assert names == expected


def test_an_event_is_in_the_file_when_the_call_returns(textfile_dir: Path) -> None:
    recorder = MetricsRecorder(textfile_dir)
    recorder.record_rollback("bare_metal", "health_check", 12.0)
    recorder.set_provider_availability("docker_compose", False)
    recorder.record_lock_wait("web", "bare_metal", 1.25)
    values = sample_values(recorder.textfile_path)
    assert values['fraisier_rollbacks_total{provider="bare_metal",reason="health_check"}'] == 1
    assert values['fraisier_rollback_duration_seconds_sum{provider="bare_metal"}'] == 12
    assert values['fraisier_provider_availability{provider="docker_compose"}'] == 0
    assert values['fraisier_deployment_lock_wait_seconds{service="web",provider="bare_metal"}'] == 1.25


def test_without_auto_flush_events_wait_for_flush(textfile_dir: Path) -> None:
    recorder = MetricsRecorder(textfile_dir, auto_flush=False)
    recorder.record_deployment_error("bare_metal", "timeout")
    assert not recorder.textfile_path.exists()
    assert recorder.pending
    recorder.flush()
    assert not recorder.pending
    assert (
        sample_values(recorder.textfile_path)[
            'fraisier_deployment_errors_total{provider="bare_metal",error_type="timeout"}'
        ]
        == 1
    )
    recorder.flush()  # nothing pending: nothing counted twice
    assert (
        sample_values(recorder.textfile_path)[
            'fraisier_deployment_errors_total{provider="bare_metal",error_type="timeout"}'
        ]
        == 1
    )


ACTIVE = 'fraisier_active_deployments{provider="bare_metal"}'


def test_track_deployment_is_active_inside_and_timed(textfile_dir: Path) -> None:
    recorder = MetricsRecorder(textfile_dir)
    with recorder.track_deployment("bare_metal", "api") as outcome:
        assert sample_values(recorder.textfile_path)[ACTIVE] == 1
        outcome.status = "rolled_back"
    values = sample_values(recorder.textfile_path)
    assert values[ACTIVE] == 0
    assert values['fraisier_deployments_total{provider="bare_metal",status="rolled_back",fraise_type="api"}'] == 1
    assert values['fraisier_deployment_duration_seconds_count{provider="bare_metal",status="rolled_back"}'] == 1
    assert not list((textfile_dir / MARKER_DIRECTORY).iterdir())


def test_track_deployment_records_an_exception_as_failed_and_reraises(textfile_dir: Path) -> None:
    recorder = MetricsRecorder(textfile_dir)
    with pytest.raises(TimeoutError), recorder.track_deployment("bare_metal", "api"):
        raise TimeoutError("took too long")
    values = sample_values(recorder.textfile_path)
    assert values['fraisier_deployments_total{provider="bare_metal",status="failed",fraise_type="api"}'] == 1
    assert values['fraisier_deployment_errors_total{provider="bare_metal",error_type="TimeoutError"}'] == 1
    assert values[ACTIVE] == 0


def test_track_health_check_and_rollback(textfile_dir: Path) -> None:
    recorder = MetricsRecorder(textfile_dir)
    with recorder.track_health_check("bare_metal", "http"):
        pass
    with pytest.raises(ConnectionError), recorder.track_health_check("bare_metal", "http"):
        raise ConnectionError
    with recorder.track_health_check("bare_metal", "tcp") as check:
        check.status = "fail"
    with recorder.track_rollback("bare_metal", "manual"):
        pass
    values = sample_values(recorder.textfile_path)
    assert values['fraisier_health_checks_total{provider="bare_metal",check_type="http",status="pass"}'] == 1
    assert values['fraisier_health_checks_total{provider="bare_metal",check_type="http",status="fail"}'] == 1
    assert values['fraisier_health_checks_total{provider="bare_metal",check_type="tcp",status="fail"}'] == 1
    assert values['fraisier_health_checks_total{provider="bare_metal",check_type="tcp",status="pass"}'] == 0
    assert values['fraisier_rollbacks_total{provider="bare_metal",reason="manual"}'] == 1


ODD = ['quote " and \\ backslash', "ünïcödé — 日本", "} {", "x" * 128]


@pytest.mark.parametrize("value", ODD, ids=range(len(ODD)))
def test_odd_label_values_round_trip_exactly(textfile_dir: Path, value: str) -> None:
    recorder = MetricsRecorder(textfile_dir)
    recorder.record_deployment_error(value, value)
    for family in prometheus_client.parser.text_string_to_metric_families(recorder.textfile_path.read_text()):
        if family.name == "fraisier_deployment_errors":
            [sample] = family.samples
            assert sample.labels == {"provider": value, "error_type": value}
            return
    raise AssertionError("the error family is missing")


def test_bad_values_are_dropped_logged_and_leave_the_file_byte_identical(
    textfile_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = MetricsRecorder(textfile_dir)
    recorder.record_deployment_complete("bare_metal", "api", "success", 1.0)
    before = recorder.textfile_path.read_bytes()
    recorder.record_deployment_complete("bare_metal", "api", "done", 1.0)
    recorder.record_rollback("bare_metal", "manual", -3)
    recorder.record_deployment_start("", "api")
    assert recorder.textfile_path.read_bytes() == before
    assert not recorder.pending
    assert "status='done' is not known" in caplog.text
    assert "duration=-3 is not a finite number of seconds" in caplog.text
    assert "provider is empty" in caplog.text
    summary = recorder.get_metrics_summary()
    assert summary["dropped_events"] == 3
    assert "provider is empty" in summary["last_error"]


def test_a_strict_recorder_raises_bad_values(textfile_dir: Path) -> None:
    recorder = MetricsRecorder(textfile_dir, strict=True)
    recorder.record_deployment_complete("bare_metal", "api", "success", 1.0)
    before = recorder.textfile_path.read_bytes()
    with pytest.raises(InvalidValueError, match="status='done' is not known"):
        recorder.record_deployment_complete("bare_metal", "api", "done", 1.0)
    with pytest.raises(InvalidValueError, match="duration=-3 is not a finite number of seconds"):
        recorder.record_rollback("bare_metal", "manual", -3)
    with pytest.raises(InvalidValueError, match="provider is empty"):
        recorder.record_deployment_start("", "api")
    assert recorder.textfile_path.read_bytes() == before
    assert not recorder.pending


def test_get_metrics_recorder_is_process_wide_and_uses_the_environment(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fraisier_textfile import recorder as module

    monkeypatch.setattr(module, "_metrics_recorder", None)
    monkeypatch.setenv("FRAISIER_TEXTFILE_DIR", str(textfile_dir))
    recorder = get_metrics_recorder()
    assert recorder is get_metrics_recorder()
    assert recorder.textfile_path == textfile_dir / "fraisier.prom"


def test_a_tracked_deployment_runs_even_when_the_file_cannot_be_written(
    textfile_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = MetricsRecorder(textfile_dir, lock_timeout=0.2)
    recorder.record_deployment_error("bare_metal", "seed")
    ran = False
    with lock_held_elsewhere(recorder.store.lock_path), recorder.track_deployment("bare_metal", "api"):
        ran = True
    assert ran
    assert caplog.text.count("another process held") == 1  # one problem, logged once
    assert recorder.pending
    recorder.flush()
    values = sample_values(recorder.textfile_path)
    assert values['fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'] == 1
    assert values[ACTIVE] == 0
    assert not list((textfile_dir / MARKER_DIRECTORY).iterdir())
