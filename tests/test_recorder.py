from __future__ import annotations

import enum
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import prometheus_client
import pytest

from fraisier_textfile import (
    CorruptTextfileError,
    FraisierTextfileError,
    InvalidValueError,
    LockTimeoutError,
    MetricsRecorder,
    TextfileStore,
    TextfileWriteError,
    changes,
    get_metrics_recorder,
)
from fraisier_textfile import catalogue as c
from fraisier_textfile.changes import Changes, deployment_complete, provider_availability
from fraisier_textfile.format.schema import format_float
from fraisier_textfile.recorder.writer import JOIN_WITHIN, FailedWrite
from fraisier_textfile.store.markers import MARKER_DIRECTORY

from .processes import (
    REPOSITORY,
    binary,
    ctrl_c_once_noted,
    fraisier,
    lock_held_elsewhere,
    small_ext4,
    small_tmpfs,
)
from .stores import record, store_at
from .test_markers import markers_in
from .values import canonical_samples, sample_values


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


class _Status(str, enum.Enum):
    SUCCESS = "success"
    INTERRUPTED = "interrupted"


class _HealthStatus(str, enum.Enum):
    PASS = "pass"


def test_the_registry_holds_the_totals_that_the_file_gets(textfile_dir: Path, tmp_path: Path) -> None:
    """The registry keeps its own totals beside the changes pending for the file (and repeated completions,
    health checks, rollbacks and queries skip validation): whatever the mix of events, repeated or refused,
    both say the same, and the file says what the event functions of changes.py record for the same events
    (a shortcut that drifted from its event function counts the repeats differently)."""
    recorder = MetricsRecorder(textfile_dir, auto_flush=False)
    replayed = Changes()

    def record(event: str, *arguments: object) -> None:
        getattr(recorder, f"record_{event}")(*arguments)
        try:
            getattr(changes, event)(replayed, *arguments)
        except InvalidValueError:
            pass

    for round_ in range(3):
        for status in ("success", _Status.SUCCESS, "failed", "interrupted", _Status.INTERRUPTED, "crashed"):
            record("deployment_complete", "bare_metal", "api", status, 0.5 + round_ * 7.25)
            record("deployment_complete", "docker", "worker", status, 4000.0)
        record("deployment_complete", "bare_metal", "api", "success", float("nan"))  # refused
        record("deployment_complete", "bare_metal", "api", "pending", 1.0)  # refused
        record("deployment_complete", "bare_metal", "api", "success", 2)  # an int is a duration too
        record("deployment_complete", ["bare_metal"], "api", "success", 1.0)  # refused (and unhashable)
        for status in ("pass" if round_ else "fail", _HealthStatus.PASS, "pass"):
            record("health_check", "bare_metal", "http", status, 0.25 + round_)
        record("health_check", "bare_metal", "http", "pass", -1.0)  # refused
        record("health_check", "bare_metal", "http", "unknown", 1.0)  # refused
        record("health_check", "docker", "tcp", "fail", 3)
        record("health_check", "docker", {"tcp": 1}, "fail", 1.0)  # refused
        record("rollback", "docker", "health_check_failed", 12.0)
        record("rollback", "docker", "health_check_failed", 30.0 * round_)
        record("rollback", "docker", "", 1.0)  # refused
        record("rollback", "docker", "manual", float("inf"))  # refused
        record("rollback", "docker", ["manual"], 1.0)  # refused
        record("db_query", "postgresql", "select", "success", 0.002 * (round_ + 1))
        record("db_query", "postgresql", "select", "error", 0.5)
        record("db_query", "postgresql", "select", "success", True)  # refused
        record("db_query", "postgresql", ["select"], "success", 0.1)  # refused
        recorder.update_db_pool_metrics("postgresql", 5 - round_, round_, 0)
        changes.db_pool(replayed, "postgresql", 5 - round_, round_, 0)
        recorder.metrics.active_db_connections.labels("sqlite").inc(2)
        if round_ == 1:
            recorder.flush()  # the totals go on across writes
    recorder.flush()
    in_file = canonical_samples(recorder.textfile_path.read_text())
    served = canonical_samples(prometheus_client.generate_latest(recorder.registry).decode())
    assert recorder.dropped_events == 9 + 9 + 9 + 6
    assert not [kind for kind in recorder.problems if kind.startswith("unexpected")], recorder.problems
    api = frozenset({("provider", "bare_metal"), ("fraise_type", "api")})
    assert in_file[("fraisier_deployments_total", api | {("status", "success")})] == 9
    assert in_file[("fraisier_deployments_total", api | {("status", "crashed")})] == 9
    http = frozenset({("provider", "bare_metal"), ("check_type", "http")})
    assert in_file[("fraisier_health_checks_total", http | {("status", "pass")})] == 8
    compared = {key for key in served if not key[0].startswith(("fraisier_active", "fraisier_last_deployment"))}
    # Active deployments are counted from live processes; the file keeps the latest time, the registry its own.
    assert {key: served[key] for key in compared} == {key: in_file.get(key) for key in compared}
    assert {key for key in in_file if not key[0].startswith("fraisier_active")} <= set(served)
    replay_directory = tmp_path / "replayed"
    replay_directory.mkdir()
    store = TextfileStore(replay_directory)
    store.merge(replayed)
    from_events = canonical_samples(store.path.read_text())
    assert {key: value for key, value in in_file.items() if key in compared} == {
        key: value for key, value in from_events.items()
        if not key[0].startswith(("fraisier_active", "fraisier_last_deployment"))
    }


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


def test_a_recorders_settings_can_be_changed_on_it_and_apply_from_the_next_call(textfile_dir: Path) -> None:
    """auto_flush, strict and lock_wait_budget are the recorder's attributes, as its constructor's arguments:
    a caller turns auto_flush off around a hot loop, a test makes a recorder strict."""
    errors = 'fraisier_deployment_errors_total{provider="bare_metal",error_type="timeout"}'
    recorder = MetricsRecorder(textfile_dir)
    recorder.auto_flush = False
    recorder.record_deployment_error("bare_metal", "timeout")
    assert not recorder.textfile_path.exists() and recorder.pending and not recorder.auto_flush
    recorder.auto_flush = True
    recorder.record_deployment_error("bare_metal", "timeout")
    assert sample_values(recorder.textfile_path)[errors] == 2 and not recorder.pending
    recorder.strict = True
    with pytest.raises(InvalidValueError, match="duration=-3"):
        recorder.record_rollback("bare_metal", "manual", -3)
    recorder.lock_wait_budget = 0.25
    assert recorder.get_metrics_summary()["lock_wait_budget"] == 0.25
    with pytest.raises(InvalidValueError, match="lock_wait_budget"):
        recorder.lock_wait_budget = -1.0
    assert recorder.lock_wait_budget == 0.25


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
    from fraisier_textfile.recorder import recorder as module

    monkeypatch.setattr(module, "_metrics_recorder", None)
    monkeypatch.setenv("FRAISIER_TEXTFILE_DIR", str(textfile_dir))
    recorder = get_metrics_recorder()
    assert recorder is get_metrics_recorder()
    assert recorder.textfile_path == textfile_dir / "fraisier.prom"


def test_a_tracked_deployment_runs_and_hands_over_while_another_process_holds_the_lock(
    textfile_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = MetricsRecorder(textfile_dir, lock_timeout=0.2)
    recorder.record_deployment_error("bare_metal", "seed")
    ran = False
    with lock_held_elsewhere(recorder.store.lock_path), recorder.track_deployment("bare_metal", "api"):
        ran = True
    assert ran
    assert caplog.text.count("another process held") == 1  # one problem, logged once
    assert not recorder.pending
    assert recorder.get_metrics_summary()["handed_over_events"] == 2  # the start, then the end
    TextfileStore(textfile_dir).merge(Changes())  # any later merge writes them
    values = sample_values(recorder.textfile_path)
    assert values['fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'] == 1
    assert values[ACTIVE] == 0
    assert not list((textfile_dir / MARKER_DIRECTORY).iterdir())


def test_a_lock_busy_now_and_then_is_one_warning_per_process_not_one_error_per_turn(
    textfile_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Under contention writers take turns: busy, merged, busy again. The events are safe each time (handed
    over), so the line is a warning, and it is not logged again after each merge of the recorder's own. (A
    "free" call may hand over too: the process's background thread, trying the lock for the hand-over before it,
    may hold it for a merge at that moment.)"""
    recorder = MetricsRecorder(textfile_dir, lock_timeout=0.2)
    for turn in range(3):
        with lock_held_elsewhere(recorder.store.lock_path):
            recorder.record_deployment_error("bare_metal", f"busy_{turn}")
        recorder.record_deployment_error("bare_metal", f"free_{turn}")
    busy = [record for record in caplog.records if "another process held" in record.getMessage()]
    assert [record.levelname for record in busy] == ["WARNING"]
    assert 3 <= recorder.get_metrics_summary()["handed_over_events"] <= 6
    assert not recorder.pending
    TextfileStore(textfile_dir).merge_backlog()
    values = sample_values(recorder.textfile_path)
    assert [values[f'fraisier_deployment_errors_total{{provider="bare_metal",error_type="{kind}_{turn}"}}']
            for turn in range(3) for kind in ("busy", "free")] == [1] * 6


def test_a_strict_recorder_raises_a_held_lock_after_handing_the_events_over(textfile_dir: Path) -> None:
    recorder = MetricsRecorder(textfile_dir, strict=True, lock_timeout=0.2)
    with lock_held_elsewhere(recorder.store.lock_path), pytest.raises(LockTimeoutError):
        recorder.record_deployment_error("bare_metal", "timeout")
    assert not recorder.pending
    TextfileStore(textfile_dir).merge(Changes())
    values = sample_values(recorder.textfile_path)
    assert values['fraisier_deployment_errors_total{provider="bare_metal",error_type="timeout"}'] == 1


# Fraisier's API, name for name


def test_writes_through_a_recorders_metrics_attribute_reach_its_file(
    textfile_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = MetricsRecorder(textfile_dir)
    recorder.metrics.db_queries_total.labels(database_type="sqlite", operation="select", status="success").inc()
    recorder.metrics.active_db_connections.labels("postgresql").set(4)
    recorder.metrics.active_db_connections.labels("postgresql").dec()
    recorder.metrics.deployments_total.labels("bare_metal", "weird", "api").inc()  # not a status: dropped
    recorder.metrics.db_errors_total.labels(database="sqlite").inc()  # a wrong label name: dropped
    recorder.metrics.active_deployments.labels("bare_metal").inc()  # counted from markers: refused
    recorder.metrics.query_latency_seconds.labels("sqlite", "select").inc()  # a histogram: refused
    values = sample_values(recorder.textfile_path)
    assert values['fraisier_db_queries_total{database_type="sqlite",operation="select",status="success"}'] == 1
    assert values['fraisier_active_db_connections{database_type="postgresql"}'] == 3
    assert not any(key.startswith(("fraisier_deployments_total", "fraisier_db_errors")) for key in values)
    assert "status='weird' is not known" in caplog.text
    assert "takes the labels database_type, error_type" in caplog.text
    assert "use record_deployment_start" in caplog.text
    assert "fraisier_query_latency_seconds is a histogram: use observe()" in caplog.text
    assert "fraisier_query_latency_seconds" not in recorder.textfile_path.read_text()
    assert recorder.get_metrics_summary()["dropped_events"] == 4


def test_the_database_events_record_fraisiers_families(textfile_dir: Path) -> None:
    recorder = MetricsRecorder(textfile_dir, strict=True)
    recorder.record_db_query("postgresql", "select", "success", 0.003)
    recorder.record_db_error("postgresql", "connection")
    recorder.record_db_transaction("postgresql", 0.7)
    recorder.record_deployment_db_operation("postgresql", "record_start")
    recorder.update_db_pool_metrics("postgresql", 5, 3, 1)
    recorder.update_db_pool_metrics("postgresql", 6, 2, 0)  # the latest report wins
    values = sample_values(recorder.textfile_path)
    assert values['fraisier_db_queries_total{database_type="postgresql",operation="select",status="success"}'] == 1
    latency = 'fraisier_query_latency_seconds_bucket{{database_type="postgresql",operation="select",le="{}"}}'
    assert values[latency.format("0.005")] == 1
    assert values[latency.format("0.001")] == 0
    assert values['fraisier_db_errors_total{database_type="postgresql",error_type="connection"}'] == 1
    assert values['fraisier_db_transaction_duration_seconds_sum{database_type="postgresql"}'] == 0.7
    operations = 'fraisier_deployment_db_operations_total{database_type="postgresql",operation_type="record_start"}'
    assert values[operations] == 1
    assert values['fraisier_active_db_connections{database_type="postgresql"}'] == 6
    assert values['fraisier_idle_db_connections{database_type="postgresql"}'] == 2
    assert values['fraisier_db_pool_waiting_requests{database_type="postgresql"}'] == 0


# What Fraisier passes


class DeploymentStatus(enum.Enum):  # as Fraisier's fraisier.deployers.base.DeploymentStatus
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    SUCCESS = "success"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"


DEPLOYMENTS = 'fraisier_deployments_total{{provider="bare_metal",status="{}",fraise_type="api"}}'


@pytest.mark.parametrize("status", [DeploymentStatus.SUCCESS, DeploymentStatus.FAILED, DeploymentStatus.ROLLED_BACK,
                                    DeploymentStatus.ROLLBACK_FAILED], ids=lambda status: status.value)
def test_fraisiers_status_enum_records_its_value(textfile_dir: Path, status: DeploymentStatus) -> None:
    recorder = MetricsRecorder(textfile_dir, strict=True)
    recorder.record_deployment_start("bare_metal", "api")
    recorder.record_deployment_complete("bare_metal", "api", status, 3.0)  # type: ignore[arg-type]
    values = sample_values(recorder.textfile_path)
    assert values[DEPLOYMENTS.format(status.value)] == 1
    assert values[ACTIVE] == 0


def test_interrupted_is_recorded_as_crashed(textfile_dir: Path) -> None:
    recorder = MetricsRecorder(textfile_dir, strict=True)
    recorder.record_deployment_start("bare_metal", "api")
    recorder.record_deployment_complete("bare_metal", "api", "interrupted", 30.0)
    values = sample_values(recorder.textfile_path)
    assert values[DEPLOYMENTS.format("crashed")] == 1
    assert values[ACTIVE] == 0


@pytest.mark.parametrize("status", [DeploymentStatus.PENDING, DeploymentStatus.IN_PROGRESS, "in_progress"],
                         ids=["PENDING", "IN_PROGRESS", "in_progress"])
def test_an_unfinished_status_is_not_a_completion(
    textfile_dir: Path, status: object, caplog: pytest.LogCaptureFixture
) -> None:
    """Counting it would count the deployment twice once it really finishes: it is dropped, and the
    deployment stays in flight."""
    recorder = MetricsRecorder(textfile_dir)
    recorder.record_deployment_start("bare_metal", "api")
    recorder.record_deployment_complete("bare_metal", "api", status, 3.0)  # type: ignore[arg-type]
    assert "is not a finished deployment" in caplog.text
    values = sample_values(recorder.textfile_path)
    assert all(values[DEPLOYMENTS.format(final)] == 0 for final in c.DEPLOYMENT_STATUSES)
    assert values[ACTIVE] == 1
    recorder.record_deployment_complete("bare_metal", "api", DeploymentStatus.SUCCESS, 5.0)  # type: ignore[arg-type]
    values = sample_values(recorder.textfile_path)
    assert values[DEPLOYMENTS.format("success")] == 1
    assert values[ACTIVE] == 0
    with pytest.raises(InvalidValueError, match="not a finished deployment"):
        MetricsRecorder(textfile_dir, strict=True).record_deployment_complete("bare_metal", "api", status, 3.0)  # type: ignore[arg-type]


def run_python(script: str, *arguments: str, wrapper: Sequence[str] = (), **popen: object) -> subprocess.Popen[str]:
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPOSITORY),
                                                                             os.environ.get("PYTHONPATH")])))
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [*wrapper, sys.executable, "-c", script, *arguments], text=True, env=environment, **popen
    )


def test_an_error_ends_the_deployment_so_it_is_never_counted_crashed(textfile_dir: Path) -> None:
    """Fraisier's failure path: start, then error (its recorder decrements the active gauge), then the process
    exits. No deployment is left in flight, so no later merge counts it crashed."""
    script = (
        "import sys\nfrom fraisier_textfile.metrics import MetricsRecorder\n"
        "recorder = MetricsRecorder(sys.argv[1], strict=True)\n"
        "recorder.record_deployment_start('bare_metal', 'api')\n"
        "recorder.record_deployment_start('bare_metal', 'etl')\n"
        "recorder.record_deployment_error('bare_metal', 'timeout')\n"  # ends the latest: etl
    )
    worker = run_python(script, str(textfile_dir))
    assert worker.wait(timeout=60) == 0
    TextfileStore(textfile_dir).merge(Changes())
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values['fraisier_deployment_errors_total{provider="bare_metal",error_type="timeout"}'] == 1
    assert values['fraisier_deployments_total{provider="bare_metal",status="crashed",fraise_type="etl"}'] == 0
    assert values['fraisier_deployments_total{provider="bare_metal",status="crashed",fraise_type="api"}'] == 1
    assert values[ACTIVE] == 0


def test_a_deployment_whose_end_was_handed_over_is_no_longer_alive_while_its_recorder_goes_on(
    textfile_dir: Path,
) -> None:
    """Its end waits for no busy lock: handed over, it is written, so its marker is released at once (a merger
    then sees an ended deployment, not a running one), and counted once when merged."""
    from fraisier_textfile.store import markers

    script = (
        "import sys\nfrom fraisier_textfile.metrics import MetricsRecorder\n"
        "recorder = MetricsRecorder(sys.argv[1])\n"
        "recorder.record_deployment_start('bare_metal', 'api')\n"
        "print('started', flush=True)\nsys.stdin.readline()\n"
        "recorder.record_deployment_complete('bare_metal', 'api', 'success', 1.0)\n"
        "print('ended', flush=True)\nsys.stdin.readline()\n"
    )
    worker = run_python(script, str(textfile_dir), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert worker.stdin is not None and worker.stdout is not None
    try:
        assert worker.stdout.readline() == "started\n"
        assert [markers.is_alive(marker) for marker in markers_in(textfile_dir)] == [True]
        with lock_held_elsewhere(textfile_dir / "fraisier.prom.lock"):
            worker.stdin.write("\n")
            worker.stdin.flush()
            assert worker.stdout.readline() == "ended\n"
            assert [markers.is_alive(marker) for marker in markers_in(textfile_dir)] == [False]
            assert worker.poll() is None
    finally:
        worker.stdin.close()
        assert worker.wait(timeout=60) == 0
    TextfileStore(textfile_dir).merge(Changes())
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values[DEPLOYMENTS.format("success")] == 1
    assert values[DEPLOYMENTS.format("crashed")] == 0
    assert values[ACTIVE] == 0


AVAILABILITY = 'fraisier_provider_availability{provider="bare_metal"}'


@pytest.mark.parametrize("given, recorded", [
    (True, 1), (False, 0), (1, 1), (0, 0), ("true", 1), ("false", 0), (" False ", 0), ("up", 1), ("down", 0),
    ("no", 0), ("0", 0),
], ids=repr)
def test_availability_that_is_not_a_bool_is_read_by_a_documented_rule(
    textfile_dir: Path, given: object, recorded: float
) -> None:
    recorder = MetricsRecorder(textfile_dir)
    recorder.set_provider_availability("bare_metal", not recorded)
    recorder.set_provider_availability("bare_metal", given)  # type: ignore[arg-type]
    assert sample_values(recorder.textfile_path)[AVAILABILITY] == recorded


@pytest.mark.parametrize("given", ["maybe", None, 2, "", [], 0.5], ids=repr)
def test_availability_that_cannot_be_read_is_dropped_never_guessed(
    textfile_dir: Path, given: object, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = MetricsRecorder(textfile_dir)
    recorder.set_provider_availability("bare_metal", False)
    recorder.set_provider_availability("bare_metal", given)  # type: ignore[arg-type]
    assert sample_values(recorder.textfile_path)[AVAILABILITY] == 0
    assert "is not a yes or no: pass True or False" in caplog.text


@pytest.mark.parametrize("given", ["false", 0, 1, None], ids=repr)
def test_a_strict_recorder_takes_only_bools_for_availability(textfile_dir: Path, given: object) -> None:
    recorder = MetricsRecorder(textfile_dir, strict=True)
    with pytest.raises(InvalidValueError, match="is not a bool"):
        recorder.set_provider_availability("bare_metal", given)  # type: ignore[arg-type]
    assert not recorder.textfile_path.exists()


@pytest.mark.parametrize("duration", ["12.5", True, float("nan"), float("inf"), -1, None, b"1"], ids=repr)
def test_a_duration_that_is_not_a_finite_number_is_dropped_or_raised_in_strict_mode(
    textfile_dir: Path, duration: object, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = MetricsRecorder(textfile_dir)
    recorder.record_rollback("bare_metal", "manual", duration)  # type: ignore[arg-type]
    recorder.record_db_query("sqlite", "select", "success", duration)  # type: ignore[arg-type]
    assert not recorder.textfile_path.exists()
    assert recorder.get_metrics_summary()["dropped_events"] == 2
    assert "duration=" in caplog.text and "duration_seconds=" in caplog.text
    with pytest.raises(InvalidValueError, match="duration="):
        MetricsRecorder(textfile_dir, strict=True).record_rollback("bare_metal", "manual", duration)  # type: ignore[arg-type]
    assert not recorder.textfile_path.exists()


@pytest.mark.parametrize("duration", [12, 12.5, Decimal("12.5"), Fraction(25, 2)], ids=repr)
def test_any_number_is_a_duration(textfile_dir: Path, duration: object) -> None:
    recorder = MetricsRecorder(textfile_dir, strict=True)
    recorder.record_rollback("bare_metal", "manual", duration)  # type: ignore[arg-type]
    recorded = sample_values(recorder.textfile_path)['fraisier_rollback_duration_seconds_sum{provider="bare_metal"}']
    assert recorded == float(duration)  # type: ignore[arg-type]


def test_the_library_installs_no_log_handler() -> None:
    assert logging.getLogger("fraisier_textfile.recorder.recorder").handlers == []
    assert logging.getLogger("fraisier_textfile").handlers == []


# Tracked blocks: the deployment's own exception always wins, and the deployment always ends


class StrangeError(Exception):
    pass


StrangeError.__name__ = "strange\nname"


def test_an_exception_whose_name_is_no_label_value_is_recorded_under_a_fallback(
    textfile_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = MetricsRecorder(textfile_dir)
    raised = StrangeError("boom")
    with pytest.raises(StrangeError) as caught, recorder.track_deployment("bare_metal", "api"):
        raise raised
    assert caught.value is raised
    values = sample_values(recorder.textfile_path)
    assert values['fraisier_deployment_errors_total{provider="bare_metal",error_type="invalid_error_type"}'] == 1
    assert values[DEPLOYMENTS.format("failed")] == 1
    assert values[ACTIVE] == 0
    assert "recorded as error_type=invalid_error_type" in caplog.text


@pytest.mark.parametrize("status", ["weird", "", None, "pending", 3], ids=repr)
def test_an_invalid_outcome_is_recorded_as_failed_and_the_deployment_ends(
    textfile_dir: Path, status: object, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = MetricsRecorder(textfile_dir)
    with recorder.track_deployment("bare_metal", "api") as outcome:
        outcome.status = status  # type: ignore[assignment]
    values = sample_values(recorder.textfile_path)
    assert values[DEPLOYMENTS.format("failed")] == 1
    assert values[ACTIVE] == 0
    assert "recorded as failed" in caplog.text
    assert not list((textfile_dir / MARKER_DIRECTORY).iterdir())


@pytest.mark.parametrize("strict", [False, True], ids=["lenient", "strict"])
def test_an_invalid_health_check_outcome_is_recorded_as_fail(textfile_dir: Path, strict: bool) -> None:
    recorder = MetricsRecorder(textfile_dir, strict=strict)
    block = recorder.track_health_check("bare_metal", "http")
    if strict:
        with pytest.raises(InvalidValueError, match="status='flaky'"), block as check:
            check.status = "flaky"
    else:
        with block as check:
            check.status = "flaky"
    values = sample_values(recorder.textfile_path)
    assert values['fraisier_health_checks_total{provider="bare_metal",check_type="http",status="fail"}'] == 1


def test_a_strict_recorder_never_replaces_the_blocks_own_exception(textfile_dir: Path) -> None:
    recorder = MetricsRecorder(textfile_dir, strict=True)
    with pytest.raises(StrangeError), recorder.track_deployment("bare_metal", "api"):
        raise StrangeError
    with pytest.raises(KeyError), recorder.track_deployment("", "api"):  # a bad provider too
        raise KeyError("the deployment's own")
    # No exception of its own: a strict recorder raises.
    block = recorder.track_deployment("bare_metal", "api")
    with pytest.raises(InvalidValueError, match="status='weird'"), block as outcome:
        outcome.status = "weird"
    values = sample_values(recorder.textfile_path)
    assert values[DEPLOYMENTS.format("failed")] == 2
    assert values[ACTIVE] == 0
    assert not list((textfile_dir / MARKER_DIRECTORY).iterdir())


def test_a_bug_below_the_recorder_is_logged_not_raised(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = MetricsRecorder(textfile_dir)

    def broken(*arguments: object) -> bool:
        raise RuntimeError("a bug")

    monkeypatch.setattr(recorder.store, "merge_or_hand_over", broken)
    recorder.record_deployment_error("bare_metal", "timeout")
    with pytest.raises(StrangeError), recorder.track_deployment("bare_metal", "api"):
        raise StrangeError
    assert "please report this as a bug" in caplog.text
    assert "Traceback" not in caplog.text  # one line; the traceback only at debug level
    assert not recorder.pending  # handed over to the next merge, not kept for an exit that may lose them
    monkeypatch.undo()
    recorder.store.merge(Changes())
    values = sample_values(recorder.textfile_path)
    assert values['fraisier_deployment_errors_total{provider="bare_metal",error_type="timeout"}'] == 1
    assert values[DEPLOYMENTS.format("failed")] == 1


# Never raise, never stall: the file's problems, each for real


def records_a_bit_of_everything(recorder: MetricsRecorder) -> None:
    recorder.record_deployment_start("bare_metal", "api")
    recorder.record_deployment_complete("bare_metal", "api", "success", 12.0)
    recorder.record_health_check("bare_metal", "http", "pass", 0.2)
    recorder.set_provider_availability("bare_metal", True)
    recorder.record_db_query("sqlite", "select", "success", 0.01)
    with recorder.track_rollback("bare_metal", "manual"):
        pass


def expect_a_bit_of_everything_once(directory: Path) -> None:
    values = sample_values(directory / "fraisier.prom")
    assert values[DEPLOYMENTS.format("success")] == 1
    assert values['fraisier_health_checks_total{provider="bare_metal",check_type="http",status="pass"}'] == 1
    assert values[AVAILABILITY] == 1
    assert values['fraisier_db_queries_total{database_type="sqlite",operation="select",status="success"}'] == 1
    assert values['fraisier_rollbacks_total{provider="bare_metal",reason="manual"}'] == 1
    assert values[ACTIVE] == 0


@pytest.fixture(autouse=True)
def _no_exit_writes_from_this_process() -> Iterator[None]:
    """Recorders these tests leave with events they could not write would be written (or logged) when pytest
    exits; the exit path is tested in subprocesses instead."""
    yield
    from fraisier_textfile.recorder import process

    process.unflushed.clear()


@pytest.fixture
def unwritable_directory(tmp_path: Path) -> Iterator[Path]:
    """A textfile directory that cannot be written: a read-only filesystem for root (root ignores file
    modes), a directory without write permission for anyone else."""
    directory = tmp_path / "readonly"
    directory.mkdir()
    as_root = os.geteuid() == 0
    if as_root:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(directory)], check=True)
    else:
        directory.chmod(0o555)
    try:
        yield directory
    finally:
        if as_root:
            subprocess.run(["umount", "--lazy", str(directory)], check=True)
        else:
            directory.chmod(0o755)


def test_an_unwritable_directory_raises_nothing_and_is_logged_once(
    unwritable_directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = MetricsRecorder(unwritable_directory)
    records_a_bit_of_everything(recorder)
    summary = recorder.get_metrics_summary()
    assert summary["pending_events"] == 6
    assert str(unwritable_directory) in summary["last_error"]
    assert summary["problems"] and "Metrics are recorded, but" in summary["message"]
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len({record.getMessage() for record in errors}) == len(errors)  # nothing logged twice
    assert any("make the" in record.getMessage() or "read-only" in record.getMessage() for record in errors)
    with pytest.raises(TextfileWriteError):
        MetricsRecorder(unwritable_directory, strict=True).record_deployment_error("bare_metal", "timeout")


def test_a_file_where_the_directory_should_be_raises_nothing(tmp_path: Path) -> None:
    where = tmp_path / "textfile"
    where.write_text("not a directory")
    recorder = MetricsRecorder(where)
    records_a_bit_of_everything(recorder)
    assert recorder.pending
    assert recorder.get_metrics_summary()["last_error"]
    assert where.read_text() == "not a directory"


def test_a_corrupt_file_raises_nothing_stays_as_it_was_and_the_events_wait_for_its_fix(
    textfile_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    textfile_dir.mkdir()
    corrupt = b"fraisier_deployments_total{provider=\"bare_metal\" 1\n"
    (textfile_dir / "fraisier.prom").write_bytes(corrupt)
    recorder = MetricsRecorder(textfile_dir)
    records_a_bit_of_everything(recorder)
    assert (textfile_dir / "fraisier.prom").read_bytes() == corrupt
    assert not recorder.pending  # handed over: they outlive this process
    ours = [record.getMessage() for record in caplog.records if record.name == "fraisier_textfile.recorder.recorder"]
    assert sum("fix or remove the file" in message for message in ours) == 1
    with pytest.raises(CorruptTextfileError):
        MetricsRecorder(textfile_dir, strict=True).record_deployment_error("bare_metal", "timeout")
    (textfile_dir / "fraisier.prom").unlink()  # the operator's fix
    TextfileStore(textfile_dir).merge(Changes())
    expect_a_bit_of_everything_once(textfile_dir)


OLD_HEALTH_CHECK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)  # before le="2" was added


@pytest.mark.parametrize("writer", ["recorder", "cli"])
def test_a_file_with_the_old_health_check_buckets_is_migrated_with_its_totals(
    textfile_dir: Path, writer: str, caplog: pytest.LogCaptureFixture
) -> None:
    series = 'provider="p",check_type="http"'

    def bucket(le: str) -> str:
        return f'fraisier_health_check_duration_seconds_bucket{{{series},le="{le}"}}'

    lines = [f"{bucket(format_float(bound))} {1 if bound >= 1 else 0}" for bound in OLD_HEALTH_CHECK_BUCKETS]
    lines += [f"{bucket('+Inf')} 1", f"fraisier_health_check_duration_seconds_sum{{{series}}} 0.7",
              f"fraisier_health_check_duration_seconds_count{{{series}}} 1"]
    textfile_dir.mkdir()
    (textfile_dir / "fraisier.prom").write_text(
        "# TYPE fraisier_health_check_duration_seconds histogram\n" + "\n".join(lines) + "\n"
    )
    if writer == "recorder":
        MetricsRecorder(textfile_dir, strict=True).record_health_check("p", "http", "pass", 0.3)
    else:
        result = fraisier("record", "health-check", "--provider", "p", "--check-type", "http", "--status", "pass",
                          "--duration", "0.3", textfile_dir=textfile_dir)
        assert result.returncode == 0, result.stderr
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values[bucket("0.25")] == 0
    assert values[bucket("0.5")] == 1  # the new 0.3
    assert values[bucket("1.0")] == 2
    assert values[bucket("2.0")] == 2  # the new bound starts from le="1"'s count
    assert values[bucket("2.5")] == 2
    assert values[f"fraisier_health_check_duration_seconds_count{{{series}}}"] == 2
    assert values[f"fraisier_health_check_duration_seconds_sum{{{series}}}"] == 1.0


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "tiny", "64k") as mount_point:
        yield mount_point


def test_a_full_disk_raises_nothing_and_the_events_are_written_once_there_is_room(
    tiny_filesystem: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = MetricsRecorder(tiny_filesystem)
    recorder.record_deployment_error("bare_metal", "seed")
    filler = tiny_filesystem / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(descriptor, b"\0" * 4096):  # fill it to the last block
            pass
    except OSError:
        pass
    finally:
        os.close(descriptor)
    before = (tiny_filesystem / "fraisier.prom").read_bytes()
    records_a_bit_of_everything(recorder)
    assert (tiny_filesystem / "fraisier.prom").read_bytes() == before
    assert recorder.pending
    assert "No space left on device" in recorder.get_metrics_summary()["last_error"]
    ours = [record.getMessage() for record in caplog.records if record.name == "fraisier_textfile.recorder.recorder"]
    assert len(ours) == 1  # the marker, then the file, failed for one cause: said once
    assert all("No space left on device; free space on that filesystem" in message for message in ours)
    filler.unlink()
    recorder.record_deployment_error("bare_metal", "after")  # the next call writes everything pending
    assert not recorder.pending
    assert recorder.get_metrics_summary()["problems"] == {}
    expect_a_bit_of_everything_once(tiny_filesystem)


# A lock held by another process: the budget, the hand-over, exit and SIGKILL

RECORD_UNDER_A_HELD_LOCK = """
import json, sys
from fraisier_textfile.metrics import MetricsRecorder
recorder = MetricsRecorder(sys.argv[1], lock_timeout=60, lock_wait_budget=float(sys.argv[2]),
                           auto_flush=sys.argv[3] == "auto")
for number in range(10):
    recorder.record_deployment_complete("bare_metal", "api", "success", 1.0)
    recorder.record_db_error("sqlite", "error_%d" % number)
print(json.dumps(recorder.get_metrics_summary()), flush=True)
if sys.argv[4] == "wait":
    sys.stdin.readline()
"""


def test_a_held_lock_costs_a_process_its_budget_in_all_not_a_lock_timeout_per_call(textfile_dir: Path) -> None:
    """20 calls with a 60 s lock timeout each, the lock held throughout by another process: the calls return
    while it is still held (had any waited for the lock timeout, the worker would not answer in time), and
    the summary shows less than one lock timeout spent in all."""
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    with lock_held_elsewhere(store.lock_path):
        worker = run_python(RECORD_UNDER_A_HELD_LOCK, str(textfile_dir), "0.5", "auto", "exit",
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        output, errors = worker.communicate(timeout=120)
        assert worker.returncode == 0, errors
        summary = json.loads(output)
        assert summary["lock_wait_spent"] < 60
        assert summary["handed_over_events"] == 20
        assert summary["pending_events"] == 0
        assert errors.count("another process held") <= 1  # no handler in the library; at most Python's last resort
        assert "fraisier_db_errors_total" not in store.path.read_text()
    store.merge(Changes())
    values = sample_values(store.path)
    assert values[DEPLOYMENTS.format("success")] == 10
    assert all(values[f'fraisier_db_errors_total{{database_type="sqlite",error_type="error_{n}"}}'] == 1
               for n in range(10))


@pytest.mark.parametrize(("budget", "durable"), [("60", True), ("0", False)])
def test_once_the_budget_is_spent_hand_overs_skip_the_fsyncs(textfile_dir: Path, budget: str, durable: bool) -> None:
    """Each hand-over costs two fsyncs (milliseconds on a real disk): under a lock held for long, a busy process
    would pay them per call, far past its budget. Within the budget they are durable (a power loss keeps them);
    once it is spent they are written without fsync: they still survive the process (a SIGKILL, see below),
    and the calls cost microseconds. Counted with strace, not timed."""
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    trace = textfile_dir.parent / "fsyncs"
    with lock_held_elsewhere(store.lock_path):
        worker = run_python(RECORD_UNDER_A_HELD_LOCK, str(textfile_dir), budget, "auto", "exit",
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            wrapper=[binary("strace"), "-f", "-qq", "-e", "trace=fsync,fdatasync", "-o", str(trace)])
        output, errors = worker.communicate(timeout=120)
        assert worker.returncode == 0, errors
        assert json.loads(output)["handed_over_events"] == 20
    fsyncs = [line for line in trace.read_text().splitlines() if "fsync(" in line]
    if durable:
        assert len(fsyncs) >= 2 * 20  # the file and its directory, for each call's hand-over
    else:
        assert fsyncs == []
    store.merge(Changes())
    assert sample_values(store.path)[DEPLOYMENTS.format("success")] == 10


RECORD_WITH_A_REFILLING_BUDGET = """
import os, sys, time
from fraisier_textfile.recorder import process
process.BUDGET_REFILL_SECONDS = float(sys.argv[2])  # the default, a minute, would make this test wait one
from fraisier_textfile.metrics import MetricsRecorder
recorder = MetricsRecorder(sys.argv[1], lock_timeout=60, lock_wait_budget=float(sys.argv[3]))
def record():
    started = time.monotonic()
    recorder.record_deployment_complete("bare_metal", "api", "success", 1.0)
    return time.monotonic() - started
if sys.argv[4] == "spend":
    # Spend twice the budget in a burst (it refills meanwhile, by a tenth of what the burst spends), make one call
    # with none left, then wait for the refill.
    while recorder.lock_wait_spent < 2 * recorder.lock_wait_budget:
        record()
    os.getppid()  # a mark in the trace: the call after it has no budget
    record()
    time.sleep(float(sys.argv[2]))
else:
    # A long-lived process: 1000 calls, each followed by a pause four times its length, so that metrics take a
    # fifth of its time, under the refill rate; over its life they take far more than the budget.
    for _ in range(999):
        time.sleep(4 * record())
    assert recorder.lock_wait_spent > recorder.lock_wait_budget, recorder.lock_wait_spent
os.getppid()  # a mark in the trace: the call after it has its budget back
record()
print(recorder.handed_over_events, flush=True)
"""


def fsyncs_after_each_mark(trace: Path) -> list[int]:
    """The fsyncs traced between one getppid() mark and the next (or the end), for each mark."""
    counts: list[int] = []
    for line in trace.read_text().splitlines():
        if "getppid(" in line:
            counts.append(0)
        elif "fsync(" in line and counts:
            counts[-1] += 1
    return counts


@pytest.mark.parametrize("how", ["spend", "long-lived"])
def test_a_spent_budget_refills_over_time_and_hand_overs_are_fsynced_again(textfile_dir: Path, how: str) -> None:
    """The budget bounds how much of its time a process spends on metrics, not how much over its whole life:
    it refills at the budget per BUDGET_REFILL_SECONDS. A process that spent it all in a burst gets it back once
    that time has passed, and a long-lived process whose metrics take less than that rate keeps it: its 1000th
    hand-over is fsynced, so it survives a power loss. Counted with strace, not timed."""
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    trace = textfile_dir.parent / "fsyncs"
    refill, budget = ("0.5", "0.05") if how == "spend" else ("0.25", "0.1")
    with lock_held_elsewhere(store.lock_path):
        worker = run_python(RECORD_WITH_A_REFILLING_BUDGET, str(textfile_dir), refill, budget, how,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            wrapper=[binary("strace"), "-f", "-qq", "--seccomp-bpf", "-e",
                                     "trace=fsync,fdatasync,getppid", "-o", str(trace)])
        output, errors = worker.communicate(timeout=300)
        assert worker.returncode == 0, errors
        handed_over = int(output)
    marks = fsyncs_after_each_mark(trace)
    if how == "spend":
        assert marks[0] == 0  # spent: that hand-over was not fsynced
    assert marks[-1] >= 2  # the last hand-over, and its directory
    store.merge_backlog()
    assert sample_values(store.path)[DEPLOYMENTS.format("success")] == handed_over


RECORD_ON_A_LINE = """
import json, sys
from fraisier_textfile.metrics import MetricsRecorder
recorder = MetricsRecorder(sys.argv[1])
for line in sys.stdin:
    recorder.record_deployment_complete("bare_metal", "api", "success", 1.0)
    print(json.dumps(recorder.get_metrics_summary()), flush=True)
"""


def test_a_racing_call_that_finds_hand_overs_waiting_hands_over_behind_them_and_survives_a_sigkill(
    textfile_dir: Path,
) -> None:
    """Writers race: each finds the lock busy and hands over, and hand-overs wait. The call that then finds the
    lock free would pay for a whole merge of the file and of all of them (a race's slowest calls): a process that
    found the lock busy within the last second hands its events over behind them instead, and its background thread
    merges them all (group commit, off the call). Killed right after the call returned, whether that merge was
    made or not, nothing is lost or counted twice."""
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    worker = run_python(RECORD_ON_A_LINE, str(textfile_dir), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert worker.stdin is not None and worker.stdout is not None
    with lock_held_elsewhere(store.lock_path):
        worker.stdin.write("record\n")
        worker.stdin.flush()
        assert json.loads(worker.stdout.readline())["handed_over_events"] == 1
    waiting = Changes()
    deployment_complete(waiting, "bare_metal", "api", "success", 1.0)
    store.hand_over(waiting)  # another racing process's
    worker.stdin.write("record\n")  # the lock is free now
    worker.stdin.flush()
    summary = json.loads(worker.stdout.readline())
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert summary["handed_over_events"] == 2
    store.merge_backlog()
    assert sample_values(store.path)[DEPLOYMENTS.format("success")] == 3


def test_joining_the_hand_overs_waiting_lasts_a_second_after_the_lock_was_last_found_busy(textfile_dir: Path) -> None:
    """Joining does not renew itself: hand-overs that keep waiting without anyone finding the lock busy (a counter
    that merges cannot update, say) must not keep a process from merging for ever. Each call here finds a new one
    waiting, and the lock free: within a few seconds one of them merges."""
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    worker = run_python(RECORD_ON_A_LINE, str(textfile_dir), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    stdin, stdout = worker.stdin, worker.stdout
    assert stdin is not None and stdout is not None

    def record() -> int:
        stdin.write("record\n")
        stdin.flush()
        return int(json.loads(stdout.readline())["handed_over_events"])

    with lock_held_elsewhere(store.lock_path):
        handed_over = record()
    assert handed_over == 1
    merged = False
    deadline = time.monotonic() + 3 * JOIN_WITHIN
    while not merged and time.monotonic() < deadline:
        waiting = Changes()
        deployment_complete(waiting, "bare_metal", "api", "success", 1.0)
        store.hand_over(waiting)
        now = record()
        merged, handed_over = now == handed_over, now
        time.sleep(0.05)
    stdin.close()
    worker.wait()
    assert merged


def test_a_first_call_merges_even_with_hand_overs_waiting(textfile_dir: Path) -> None:
    """Hand-overs may wait because merges fail (a corrupt file) or from long ago: a process that has not handed
    over lately tries the lock, so that it merges them, or says what stops every merge."""
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    waiting = Changes()
    deployment_complete(waiting, "bare_metal", "api", "success", 1.0)
    store.hand_over(waiting)
    recorder = MetricsRecorder(textfile_dir, strict=True)
    recorder.record_deployment_complete("bare_metal", "api", "success", 1.0)
    assert recorder.handed_over_events == 0
    assert sample_values(store.path)[DEPLOYMENTS.format("success")] == 2


@pytest.mark.parametrize("auto_flush", ["auto", "manual"])
def test_events_survive_a_sigkill_right_after_the_call_returned(textfile_dir: Path, auto_flush: str) -> None:
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    with lock_held_elsewhere(store.lock_path):
        worker = run_python(RECORD_UNDER_A_HELD_LOCK, str(textfile_dir), "0.2", auto_flush, "wait",
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert worker.stdout is not None
        summary = json.loads(worker.stdout.readline())
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    store.merge(Changes())
    values = sample_values(store.path)
    if auto_flush == "auto":  # every call had handed its events over when it returned
        assert summary["handed_over_events"] == 20
        assert values[DEPLOYMENTS.format("success")] == 10
        assert all(values[f'fraisier_db_errors_total{{database_type="sqlite",error_type="error_{n}"}}'] == 1
                   for n in range(10))
    else:  # without auto-flush they were only in memory: a SIGKILL loses them, and nothing is half-written
        assert summary["pending_events"] == 20
        assert DEPLOYMENTS.format("success") not in values


def test_a_process_exiting_while_the_lock_is_held_hands_its_events_over(textfile_dir: Path) -> None:
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    with lock_held_elsewhere(store.lock_path):
        worker = run_python(RECORD_UNDER_A_HELD_LOCK, str(textfile_dir), "0.5", "manual", "exit",
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        output, errors = worker.communicate(timeout=120)
        assert worker.returncode == 0, errors
        assert json.loads(output)["pending_events"] == 20  # until exit
        assert "fraisier_db_errors_total" not in store.path.read_text()
    store.merge(Changes())
    values = sample_values(store.path)
    assert values[DEPLOYMENTS.format("success")] == 10
    assert values['fraisier_db_errors_total{database_type="sqlite",error_type="error_9"}'] == 1


def test_the_summary_says_where_the_metrics_go_and_how_writing_them_goes(textfile_dir: Path) -> None:
    recorder = MetricsRecorder(textfile_dir, lock_wait_budget=2.5)
    summary = recorder.get_metrics_summary()
    assert summary["prometheus_available"] is True
    assert str(textfile_dir / "fraisier.prom") in summary["message"]
    assert summary["textfile"] == str(textfile_dir / "fraisier.prom")
    assert summary["lock_wait_budget"] == 2.5
    assert (summary["pending_events"], summary["handed_over_events"], summary["dropped_events"]) == (0, 0, 0)
    recorder.record_deployment_start("bare_metal", "api")
    assert recorder.get_metrics_summary()["deployments_in_flight"] == 1
    recorder.record_deployment_complete("bare_metal", "api", "success", 1.0)
    assert recorder.get_metrics_summary()["deployments_in_flight"] == 0
    assert summary["last_error"] is None and summary["problems"] == {}


def test_a_bad_lock_wait_budget_in_the_environment_is_logged_and_the_default_used(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FRAISIER_LOCK_WAIT_BUDGET", "soon")
    monkeypatch.setenv("FRAISIER_LOCK_TIMEOUT", "-1")
    recorder = MetricsRecorder(textfile_dir)
    assert recorder.lock_wait_budget == 1.0
    assert recorder.store.lock_timeout == 10.0
    assert "FRAISIER_LOCK_WAIT_BUDGET='soon' is not a number" in caplog.text
    with pytest.raises(FraisierTextfileError):
        MetricsRecorder(textfile_dir, strict=True)


FIRST_MERGE = """
import json, sys
import fraisier_textfile
from fraisier_textfile import MetricsRecorder
before = set(sys.modules)
recorder = MetricsRecorder(sys.argv[1])
recorder.record_deployment_complete("bare_metal", "api", "success", 42.0)
recorder.record_deployment_complete("bare_metal", "api", "failed", 42.0)
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_a_new_process_imports_nothing_while_it_merges(textfile_dir: Path) -> None:
    """What a record process needs is imported with the package: a module loaded by the first merge is paid for
    inside the merge, where a deployment waits for it (a checked walk of the directory once was), and where
    bench_floor's fresh case times it. Asserted on a file written before, so the merge reads and checks it."""
    MetricsRecorder(textfile_dir).record_deployment_complete("bare_metal", "api", "success", 1.0)
    result = subprocess.run([sys.executable, "-c", FIRST_MERGE, str(textfile_dir)], capture_output=True, text=True,
                            timeout=60, check=True, env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
    assert json.loads(result.stdout) == []


RECORD_THEN_EXIT_WITH_THE_LOCK_BUSY = """
import sys
from fraisier_textfile.metrics import MetricsRecorder

directory, noted = sys.argv[1], sys.argv[2]
# Events written at exit only, waiting for the lock up to 60 s (a busy host's merge, or a lock held too long).
recorder = MetricsRecorder(directory, auto_flush=False, lock_timeout=60, lock_wait_budget=60)
recorder.record_deployment_complete("bare_metal", "api", "success", 1.0)
with open(noted, "w") as file:
    file.write("recorded")
"""


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_while_the_exit_waits_for_the_lock_hands_the_events_over_without_a_traceback(
    textfile_dir: Path, presses: int
) -> None:
    """Bug: Ctrl-C while a process waited at exit for a busy lock to write its events (up to its lock timeout)
    lost them, with a KeyboardInterrupt traceback ("Exception ignored in atexit callback"). Now the first Ctrl-C
    hands them over at once, which waits for nothing, and says so in one line; a second one changes nothing of that
    (the hand-over is made while handlers are held back). The next merge applies them."""
    textfile_dir.mkdir()
    noted = textfile_dir.parent / "noted"
    with lock_held_elsewhere(textfile_dir / "fraisier.prom.lock"):  # noted: recorded; the exit's wait follows
        status, stderr = ctrl_c_once_noted([sys.executable, "-c", RECORD_THEN_EXIT_WITH_THE_LOCK_BUSY,
                                            str(textfile_dir), str(noted)], noted, presses)
    assert status == 0, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert "instead of waiting for its lock; Ctrl-C again" in stderr, stderr
    TextfileStore(textfile_dir).merge(Changes())
    assert sample_values(textfile_dir / "fraisier.prom")[
        'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'] == 1


# A failed merge tried again: FailedWrite

@pytest.fixture
def ext4_filesystem(tmp_path: Path) -> Iterator[Path]:
    with small_ext4(tmp_path / "ext4") as mount_point:
        yield mount_point


def written_again_in_the_same_inode(directory: Path) -> tuple[FailedWrite, int] | None:
    """A merge that failed just after a version of the textfile was written (the failure, and the room left then),
    once later merges in the same second have written it again into a file with that
    version's inode number (ext4 reuses it): other bytes (another update time), the same size and the same layout
    line, so the same mtime (the seal). None when the second ran out first."""
    path = directory / "fraisier.prom"
    time.sleep(1 - time.time() % 1)  # at the start of a second
    now = time.time() - 86400  # update times a day ago, a minute apart: as many digits, other bytes
    record(store_at(directory, now), provider_availability, "bare_metal", True)
    first, before = os.stat(path), path.read_bytes()
    failed, room = FailedWrite(TextfileStore(directory)), os.statvfs(directory).f_bavail
    for minute in range(1, 20):
        record(store_at(directory, now + 60 * minute), provider_availability, "bare_metal", True)
        last = os.stat(path)
        if last.st_ino == first.st_ino:
            if last.st_mtime_ns != first.st_mtime_ns:
                return None
            assert last.st_size == first.st_size and path.read_bytes() != before
            return failed, room
    raise AssertionError("ext4 never gave the first version's inode number to a later one")


def test_a_failed_merge_is_tried_again_once_the_file_changed_into_one_of_the_same_inode_size_and_mtime(
    ext4_filesystem: Path,
) -> None:
    """Before the seal the kernel's clock told two such versions apart by their mtime; now the seal gives both the
    same nanoseconds within the same second. Their ctime, which nobody sets, still does."""
    directory = ext4_filesystem / "textfile"
    for _ in range(5):
        found = written_again_in_the_same_inode(directory)
        if found is not None:
            break
    assert found is not None, "no two versions in one second"
    failed, room = found
    assert os.statvfs(directory).f_bavail <= room  # what tells it is the file, not more room
    assert failed.may_succeed_now()


def test_a_failed_merge_is_tried_again_once_another_filesystem_is_mounted_over_the_textfile_directory(
    tmp_path: Path,
) -> None:
    """A copy of the filesystem whose file was changed offline (an image of a restored disk, say), mounted over it:
    the same inode number, size, mtime and ctime as the file the merge failed on, on another device."""
    copy = tmp_path / "copy.img"
    with small_ext4(tmp_path / "ext4") as mount_point:
        directory = mount_point / "textfile"
        record(TextfileStore(directory), provider_availability, "bare_metal", True)
        failed, room = FailedWrite(TextfileStore(directory)), os.statvfs(directory).f_bavail
        before = (directory / "fraisier.prom").read_bytes()
        # Frozen, its image is whole on disk; mounted all along, the copy gets another loop device.
        subprocess.run([binary("fsfreeze"), "--freeze", str(mount_point)], check=True)
        try:
            shutil.copyfile(tmp_path / "ext4.img", copy)
        finally:
            subprocess.run([binary("fsfreeze"), "--unfreeze", str(mount_point)], check=True)
        offset = before.index(b'"} 1.0\n') + len(b'"} ')  # in the file's first block: 1.0 becomes 0.0
        subprocess.run([binary("debugfs"), "-w", "-R", f"zap_block -f /textfile/fraisier.prom -o {offset} -l 1 "
                        f"-p {ord('0')} 0", str(copy)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", str(copy), str(mount_point)], check=True)
        try:
            assert (directory / "fraisier.prom").read_bytes() == before.replace(b'"} 1.0\n', b'"} 0.0\n')
            assert os.statvfs(directory).f_bavail <= room
            assert failed.may_succeed_now()
        finally:
            subprocess.run(["umount", "--lazy", str(mount_point)], check=True)
            copy.unlink()
