"""Findings of an adversarial pass over the drop-in, the recorder's never-raise/never-stall contract and the CLI:
each test reproduces one bug with real processes and files, and stays to keep it fixed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fraisier_textfile import TextfileStore
from fraisier_textfile.changes import Changes

from .processes import (
    REPOSITORY,
    fraisier,
    fraisier_metrics,
    free_port,
    http_get,
    lock_held_elsewhere,
    running,
    small_tmpfs,
)
from .values import sample_values

DEPLOYMENTS = 'fraisier_deployments_total{{provider="bare_metal",status="{}",fraise_type="api"}}'


def test_exec_does_not_wait_the_lock_timeout_to_record_the_end_under_a_held_lock(textfile_dir: Path) -> None:
    """`fraisier exec` waited the whole lock timeout (10 s by default) after the command had finished, before
    handing the end over: a stuck lock holder stalled every deploy pipeline. With a lock timeout of 300 s, the
    wrapper has to return long before it (and before the holder gives up after 60 s); the end is handed over
    and written exactly once later."""
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    with lock_held_elsewhere(store.lock_path):
        result = fraisier(
            "--lock-timeout", "300", "exec", "--provider", "bare_metal", "--fraise-type", "api", "--",
            sys.executable, "-c", "print('deployed')", textfile_dir=textfile_dir, timeout=30,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == "deployed\n"
    assert fraisier("textfile", "refresh", textfile_dir=textfile_dir).returncode == 0
    values = sample_values(store.path)
    assert values[DEPLOYMENTS.format("success")] == 1
    assert values[DEPLOYMENTS.format("crashed")] == 0
    assert values['fraisier_active_deployments{provider="bare_metal"}'] == 0


def test_a_script_whose_interpreter_is_missing_is_not_reported_as_missing(textfile_dir: Path, tmp_path: Path) -> None:
    """The script is there and executable; its #! interpreter is not. "not found (check the path and PATH)"
    sent the operator looking for the wrong file; a shell says "bad interpreter" and exits 126."""
    script = tmp_path / "deploy.sh"
    script.write_text("#!/nonexistent/interpreter\necho deployed\n")
    script.chmod(0o755)
    result = fraisier("exec", "--provider", "bare_metal", "--fraise-type", "api", "--", str(script),
                      textfile_dir=textfile_dir)
    assert result.returncode == 126
    [line] = result.stderr.splitlines()
    assert str(script) in line
    assert "#!" in line and "interpreter" in line
    assert "check the path and PATH" not in line
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values[DEPLOYMENTS.format("failed")] == 1
    assert values['fraisier_deployment_errors_total{provider="bare_metal",error_type="command_not_executable"}'] == 1


def test_route_sends_our_command_to_us_after_fraisiers_group_options() -> None:
    """Fraisier's own units always start with `fraisier --config PATH ...`; an operator who wrote
    `fraisier --config /opt/fraisier/fraises.yaml metrics -p 9101` got Fraisier's in-memory exporter, without
    one fraisier_* series, and no error. Fraisier's group options configure Fraisier only: before one of our
    commands they are accepted and left out."""
    from fraisier_textfile.cli.dispatch import Route, route

    for arguments in (["--config", "/etc/f.yaml", "metrics", "-p", "9101"], ["-c", "f.yaml", "metrics"],
                      ["-v", "metrics"], ["-vv", "--no-color", "--no-tee", "--json", "textfile", "show"],
                      ["--config=f.yaml", "--textfile-dir", "/d", "record", "error"]):
        decided = route(arguments)
        assert decided.destination == Route.OURS, arguments
        assert not {"-c", "--config", "-v", "-vv", "--no-color", "--no-tee", "--json", "f.yaml",
                    "/etc/f.yaml", "--config=f.yaml"} & set(decided.our_arguments), decided.our_arguments
    assert route(["--config", "f.yaml", "metrics", "-p", "1"]).our_arguments == ["metrics", "-p", "1"]
    assert route(["--config=f.yaml", "--textfile-dir", "/d", "record"]).our_arguments == [
        "--textfile-dir", "/d", "record"]
    # An option neither CLI knows still goes to Fraisier, whose error names it.
    assert route(["--bogus", "metrics"]).destination == Route.FRAISIER


def test_fraisier_config_before_metrics_serves_the_textfile(textfile_dir: Path, tmp_path: Path) -> None:
    """The same through the real `fraisier` console script with Fraisier installed: `--config X metrics`."""
    pytest.importorskip("fraisier")
    assert fraisier("record", "error", "--provider", "bare_metal", "--error-type", "timeout",
                    textfile_dir=textfile_dir).returncode == 0
    config = tmp_path / "fraises.yaml"
    config.write_text("fraises: {}\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    script = "import sys; from fraisier_textfile.cli.dispatch import main; sys.argv[0] = 'fraisier'; main()"
    command = [sys.executable, "-c", script, "--config", str(config), "--textfile-dir", str(textfile_dir),
               "metrics", "-p", str(port), "-a", "127.0.0.1"]
    with running(command, url):
        body = http_get(url)
    assert 'fraisier_deployment_errors_total{provider="bare_metal",error_type="timeout"} 1' in body


def test_the_systemd_units_run_the_script_that_is_always_ours() -> None:
    """The units ran `/usr/local/bin/fraisier`, which belongs to whichever distribution was installed last:
    with Fraisier installed (or upgraded) after this package, fraisier-metrics.service silently served
    Fraisier's in-memory registry (no fraisier_* series) and the refresh timer failed with "No such command
    'textfile'". `fraisier-textfile` is this package's CLI whatever the install order."""
    # tomllib is 3.11+; mypy checks for 3.10, the oldest Python the package supports.
    import tomllib  # type: ignore[import-not-found]

    scripts = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]["scripts"]
    [always_ours] = [name for name, target in scripts.items() if target == "fraisier_textfile.cli:script"]
    for unit in sorted((REPOSITORY / "contrib" / "systemd").glob("*.service")):
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                program = line.removeprefix("ExecStart=").split()[0]
                assert Path(program).name == always_ours, f"{unit.name}: {line}"


READ_BYTES_WHILE_RECORDING = """
import json, sys
from fraisier_textfile.metrics import MetricsRecorder

def bytes_read():
    with open("/proc/self/io") as io:
        return int(dict(line.split(": ") for line in io.read().splitlines())["rchar"])

recorder = MetricsRecorder(sys.argv[1], lock_wait_budget=0.1)
before = bytes_read()
for number in range(int(sys.argv[2])):
    recorder.record_db_error("sqlite", "error_%d" % number)
print(json.dumps({"read": bytes_read() - before, "summary": recorder.get_metrics_summary()}))
"""


def test_a_big_corrupt_file_is_not_read_again_for_every_recorded_event(textfile_dir: Path) -> None:
    """With a corrupt 100,000-series textfile every record call read and parsed the whole file twice (the merge,
    then the merge of the hand-overs waiting), and logged a warning each time: about 4 s per event here, a
    deployment recording 20 events stalled for well over a minute. The file is read once, until it changes;
    the events are handed over, and written exactly once when the file is fixed."""
    textfile_dir.mkdir()
    lines = ["# TYPE fraisier_db_errors_total counter"]
    lines += [f'fraisier_db_errors_total{{database_type="db{n}",error_type="e"}} 1' for n in range(100_000)]
    corrupt = ("\n".join(lines) + "\ngarbage{\n").encode()
    (textfile_dir / "fraisier.prom").write_bytes(corrupt)
    worker = subprocess.run([sys.executable, "-c", READ_BYTES_WHILE_RECORDING, str(textfile_dir), "10"],
                            capture_output=True, text=True, timeout=600)
    assert worker.returncode == 0, worker.stderr
    outcome = json.loads(worker.stdout)
    assert outcome["read"] < 2 * len(corrupt), outcome["read"] / len(corrupt)
    assert outcome["summary"]["handed_over_events"] == 10
    assert worker.stderr.count("hand-overs waiting") == 0
    assert (textfile_dir / "fraisier.prom").read_bytes() == corrupt
    (textfile_dir / "fraisier.prom").unlink()  # the operator's fix
    assert fraisier("textfile", "refresh", textfile_dir=textfile_dir).returncode == 0
    values = sample_values(textfile_dir / "fraisier.prom")
    assert all(values[f'fraisier_db_errors_total{{database_type="sqlite",error_type="error_{n}"}}'] == 1
               for n in range(10))


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "small", "16m") as mount_point:
        yield mount_point


RECORD_ON_A_FULL_DISK = READ_BYTES_WHILE_RECORDING + """
sys.stdin.readline()  # the test makes room
recorder.record_db_error("sqlite", "after")
print(json.dumps(recorder.get_metrics_summary()), flush=True)
"""


def test_a_full_disk_does_not_cost_a_read_and_render_of_the_whole_file_per_event(small_filesystem: Path) -> None:
    """On a full disk every record call read, merged and rendered the whole textfile again, only to fail writing
    it: 2.5 s per event with a 100,000-line file here. After a failed write the merge is tried again only once
    the file changed, the filesystem has more room, or a minute has passed; meanwhile the events wait (handed
    over if there is room for that) and are written exactly once when there is room."""
    lines = [f'other_exporter_series{{n="{n}"}} 1' for n in range(100_000)]
    big = ("# TYPE other_exporter_series gauge\n" + "\n".join(lines) + "\n").encode()
    (small_filesystem / "fraisier.prom").write_bytes(big)
    filler = small_filesystem / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(descriptor, b"\0" * 4096):  # to the last block
            pass
    except OSError:
        pass
    finally:
        os.close(descriptor)
    worker = subprocess.Popen([sys.executable, "-c", RECORD_ON_A_FULL_DISK, str(small_filesystem), "10"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert worker.stdin is not None and worker.stdout is not None
    outcome = json.loads(worker.stdout.readline())
    assert outcome["read"] < 2 * len(big), outcome["read"] / len(big)
    assert "No space left on device" in outcome["summary"]["last_error"]
    assert (small_filesystem / "fraisier.prom").read_bytes() == big
    filler.unlink()
    worker.stdin.write("\n")
    worker.stdin.flush()
    summary = json.loads(worker.stdout.readline())
    assert worker.wait(timeout=120) == 0
    assert summary["pending_events"] == 0 and summary["problems"] == {}
    assert fraisier("textfile", "refresh", textfile_dir=small_filesystem).returncode == 0
    values = sample_values(small_filesystem / "fraisier.prom")
    assert all(values[f'fraisier_db_errors_total{{database_type="sqlite",error_type="error_{n}"}}'] == 1
               for n in range(10))
    assert values['fraisier_db_errors_total{database_type="sqlite",error_type="after"}'] == 1


class _Unprintable:
    """An argument whose repr (and str, and float) raise, as a broken model object's might."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    __str__ = __repr__

    def __float__(self) -> float:
        raise RuntimeError("no float")


@pytest.mark.parametrize("method, arguments", [
    ("record_deployment_complete", ("bare_metal", "api", "success", 10**400)),
    ("update_db_pool_metrics", ("sqlite", 10**400, 1, 0)),
    ("record_deployment_error", (_Unprintable(), "timeout")),
    ("record_rollback", ("bare_metal", "manual", _Unprintable())),
    ("set_provider_availability", ("bare_metal", _Unprintable())),
], ids=["huge int duration", "huge int gauge", "unprintable label", "unprintable duration", "unprintable flag"])
def test_a_value_that_cannot_be_converted_is_a_bad_value_not_a_bug(
    textfile_dir: Path, method: str, arguments: tuple[object, ...], caplog: pytest.LogCaptureFixture
) -> None:
    """An int too big for a float (OverflowError), a list, or an object whose repr raises escaped the value
    checks: logged with a traceback as "please report this as a bug", and a strict recorder raised
    OverflowError/TypeError/RuntimeError instead of InvalidValueError."""
    from fraisier_textfile import InvalidValueError, MetricsRecorder

    with pytest.raises(InvalidValueError):
        getattr(MetricsRecorder(textfile_dir, strict=True), method)(*arguments)
    recorder = MetricsRecorder(textfile_dir)
    getattr(recorder, method)(*arguments)
    assert recorder.dropped_events == 1
    assert not any("report this" in record.getMessage() for record in caplog.records)


ODD_VALUES = """\
# TYPE fraisier_deployments_total counter
fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"} NaN
fraisier_deployments_total{provider="bare_metal",status="failed",fraise_type="api"} +Inf
fraisier_deployments_total{provider="docker",status="success",fraise_type="api"} 3
fraisier_deployments_total{provider="huge",status="success",fraise_type="api"} 1e300
# TYPE fraisier_last_deployment_timestamp_seconds gauge
fraisier_last_deployment_timestamp_seconds{provider="docker",fraise_type="api",status="success"} +Inf
"""


def _strict_json(text: str) -> object:
    def refuse(constant: str) -> object:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_the_summary_of_a_file_with_nan_and_infinite_values(textfile_dir: Path) -> None:
    """A counter edited to NaN or +Inf (Go's parser and node_exporter accept both) made `textfile summary` die
    with a ValueError traceback, `--json` print NaN and Infinity (not JSON: jq and most parsers refuse them),
    and the landing page say "No summary: cannot convert float NaN to integer"; 1e300 was printed as 301 digits.
    The values are shown as they are in the table and as null in JSON; the file is left as it was."""
    textfile_dir.mkdir()
    (textfile_dir / "fraisier.prom").write_text(ODD_VALUES)
    table = fraisier("textfile", "summary", textfile_dir=textfile_dir)
    assert table.returncode == 0, table.stderr
    assert "Traceback" not in table.stderr
    [bare_metal] = [line for line in table.stdout.splitlines() if line.startswith("bare_metal ")]  # the provider row
    assert "nan" in bare_metal and "inf" in bare_metal
    [huge] = [line for line in table.stdout.splitlines() if line.startswith("huge ")]
    assert "1e+300" in huge and "0000000000" not in huge  # not 301 digits that push every column off screen
    as_json = fraisier("textfile", "summary", "--json", textfile_dir=textfile_dir)
    assert as_json.returncode == 0, as_json.stderr
    rows = _strict_json(as_json.stdout)["rows"]  # type: ignore[index]
    [row] = [row for row in rows if row["provider"] == "bare_metal" and row["fraise_type"] == "api"]
    assert row["deployments"]["success"] is None and row["deployments"]["failed"] is None
    [docker] = [row for row in rows if row["provider"] == "docker" and row["fraise_type"] == "api"]
    assert docker["deployments"]["success"] == 3
    assert (textfile_dir / "fraisier.prom").read_text() == ODD_VALUES
    with fraisier_metrics(textfile_dir) as url:
        page = http_get(url.removesuffix("metrics"))
    assert '<table id="summary">' in page, page


def test_a_bad_lock_timeout_from_the_environment_is_named_as_such(tmp_path: Path) -> None:
    """FRAISIER_LOCK_TIMEOUT=abc was reported as "--lock-timeout='abc' is not a number" to an operator who
    never gave --lock-timeout (a unit's Environment= line, say). It is a warning now: the default is used."""
    result = fraisier("textfile", "path", textfile_dir=tmp_path,
                      env={**os.environ, "FRAISIER_LOCK_TIMEOUT": "abc"})
    assert result.returncode == 0
    [line] = result.stderr.splitlines()
    assert "FRAISIER_LOCK_TIMEOUT='abc'" in line and "using the default, 10" in line


BUILD_A_RECORDER_AND_DEPLOY = """
import sys
from fraisier_textfile.metrics import get_metrics_recorder
recorder = get_metrics_recorder()  # what Fraisier's HealthCheckManager() does first
with recorder.track_deployment("bare_metal", "api"):
    pass
print(recorder.get_metrics_summary()["problems"] == {}, flush=True)
"""


@pytest.mark.parametrize("variable, value", [("FRAISIER_MAX_SERIES_PER_FAMILY", "abc"),
                                             ("FRAISIER_EXPIRE_AFTER", "soon")])
def test_a_bad_lifecycle_setting_in_the_environment_does_not_fail_the_deployment(
    textfile_dir: Path, variable: str, value: str
) -> None:
    """get_metrics_recorder() raised InvalidValueError when FRAISIER_MAX_SERIES_PER_FAMILY or
    FRAISIER_EXPIRE_AFTER held a typo: Fraisier calls it in HealthCheckManager() and DatabaseObservability(),
    so the deployment failed because of a metrics setting. It is logged once and the defaults are used."""
    environment = {**os.environ, "FRAISIER_TEXTFILE_DIR": str(textfile_dir), variable: value}
    worker = subprocess.run([sys.executable, "-c", BUILD_A_RECORDER_AND_DEPLOY], env=environment,
                            capture_output=True, text=True, timeout=120)
    assert worker.returncode == 0, worker.stderr
    assert variable in worker.stderr and "using the default" in worker.stderr
    assert worker.stderr.count(variable) == 1
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values[DEPLOYMENTS.format("success")] == 1


def test_the_server_tells_systemd_it_is_ready_so_a_reload_cannot_kill_it_while_starting(
    textfile_dir: Path, tmp_path: Path
) -> None:
    """fraisier-metrics.service was Type=simple: systemd counts it started at fork, so a `systemctl reload`
    right after `start` (a configuration run that restarts, then reloads) sent SIGHUP before Python had
    installed its handler, and the server died of it (exit 129; a clean signal, so Restart=on-failure did not
    restart it). It now says READY=1 on $NOTIFY_SOCKET once its handlers are in and it serves (Type=notify),
    and systemd holds a reload until then. Here the test plays systemd."""
    import signal
    import socket

    notify_path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(60)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "fraisier_textfile", "--textfile-dir", str(textfile_dir), "metrics",
             "--address", "127.0.0.1", "--port", str(port)],
            env={**os.environ, "NOTIFY_SOCKET": str(notify_path)}, stderr=subprocess.PIPE,
        )
        try:
            assert b"READY=1" in notify.recv(4096).split(b"\n")
            server.send_signal(signal.SIGHUP)  # what systemd's ExecReload does, as soon as it may
            assert "# TYPE fraisier_deployments_total counter" in http_get(f"http://127.0.0.1:{port}/metrics")
            assert server.poll() is None
        finally:
            server.terminate()
            server.wait(timeout=60)
    unit = (REPOSITORY / "contrib" / "systemd" / "fraisier-metrics.service").read_text()
    assert "\nType=notify\n" in unit


def test_exec_names_the_marker_directory_when_it_cannot_write_there(tmp_path: Path) -> None:
    """`fraisier exec` logged the raw "[Errno 20] Not a directory: '.../.fraisier-inflight'" (and on a full
    disk a bare "[Errno 28] No space left on device", without any path) where the recorder says what it could
    not do, where, and the fix."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = fraisier("exec", "--provider", "bare_metal", "--fraise-type", "api", "--", sys.executable, "-c",
                      "print('deployed')", textfile_dir=blocker / "textfile")
    assert result.returncode == 0 and result.stdout == "deployed\n"
    lines = result.stderr.splitlines()
    assert lines and not any("[Errno" in line for line in lines)
    assert f"{blocker} is not a directory, so {blocker / 'textfile' / '.fraisier-inflight'} cannot be made" in lines[0]
    assert "choose another --textfile-dir" in lines[0]
