"""The deployment's shield: nothing on the metrics path prevents, delays past its budget, or changes a deployment.

Every entry point (the API's record calls, the tracked blocks, ``fraisier record``, ``fraisier exec``, Fraisier's own
``fraisier.metrics`` through the bridge) is driven, as a real process, through each thing that can go wrong with
the metrics: markers and hand-overs of every corrupt shape, a probe that raises an exception of any type, a typo in
each setting, a full disk (a real tmpfs), a lock another process holds (a real flock). Each time the deployment
runs as it would have (its output, its exit status, its own exception), what is wrong is said in one line at
most, no traceback is shown, and no event is lost: once the trouble is gone, one refresh shows every event.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fraisier_textfile import TextfileStore, changes
from fraisier_textfile.changes import Changes
from fraisier_textfile.store import handovers
from fraisier_textfile.store import markers as marker_files
from fraisier_textfile.store.process_identity import process_start_time

from .processes import fraisier, lock_held_elsewhere, small_tmpfs
from .values import sample_values

DEPLOYMENTS = 'fraisier_deployments_total{{provider="bare_metal",status="{}",fraise_type="api"}}'
ERRORS = 'fraisier_deployment_errors_total{{provider="bare_metal",error_type="{}"}}'
ACTIVE = 'fraisier_active_deployments{provider="bare_metal"}'

API = """
from fraisier_textfile.metrics import get_metrics_recorder
recorder = get_metrics_recorder()  # what Fraisier's HealthCheckManager() does first
recorder.record_deployment_start("bare_metal", "api")
recorder.record_deployment_complete("bare_metal", "api", "success", 1.5)
recorder.record_health_check("bare_metal", "http", "pass", 0.1)
print("deployed", flush=True)
print("kept in memory:", recorder.pending, flush=True)
"""

TRACKED = """
from fraisier_textfile.metrics import get_metrics_recorder
class DeployFailed(Exception):
    pass
recorder = get_metrics_recorder()
try:
    with recorder.track_deployment("bare_metal", "api"):
        with recorder.track_health_check("bare_metal", "http"):
            pass
        raise DeployFailed("the deployment's own failure")
except DeployFailed:
    print("deployed", flush=True)  # the block's own exception, unchanged
with recorder.track_rollback("bare_metal", "manual"):
    pass
print("kept in memory:", recorder.pending, flush=True)
"""

BRIDGE = """
from fraisier_textfile.bridge import install
assert install()
from fraisier.metrics import DeploymentMetrics, get_metrics_recorder
recorder = get_metrics_recorder()
recorder.record_deployment_start("bare_metal", "api")
recorder.record_deployment_complete("bare_metal", "api", "success", 1.5)
DeploymentMetrics.restore_duration_seconds.labels(phase="restore").observe(2.0)
print("deployed", flush=True)
print("kept in memory:", recorder.pending, flush=True)
"""


@dataclass
class EntryPoint:
    arguments: list[str]
    """The process to run (after ``python``)."""
    returncode: int
    """The deployment's own exit status."""
    recorded: dict[str, float]
    """What the textfile shows once the trouble is gone and a refresh ran."""
    python_api: bool = False


ENTRY_POINTS = {
    "the API": EntryPoint(["-c", API], 0, {DEPLOYMENTS.format("success"): 1}, python_api=True),
    "track_* blocks": EntryPoint(["-c", TRACKED], 0, {DEPLOYMENTS.format("failed"): 1,
                                                       ERRORS.format("DeployFailed"): 1}, python_api=True),
    "fraisier record": EntryPoint(
        ["-m", "fraisier_textfile", "record", "deployment", "--provider", "bare_metal", "--fraise-type", "api",
         "--status", "success", "--duration", "1.5"], 0, {DEPLOYMENTS.format("success"): 1}),
    "fraisier exec": EntryPoint(
        ["-m", "fraisier_textfile", "exec", "--provider", "bare_metal", "--fraise-type", "api", "--",
         "sh", "-c", "echo deployed; exit 3"], 3, {DEPLOYMENTS.format("failed"): 1, ERRORS.format("exit_code_3"): 1}),
    "the bridge": EntryPoint(["-c", BRIDGE], 0, {DEPLOYMENTS.format("success"): 1}, python_api=True),
}


@dataclass
class Trouble:
    """What is wrong while the entry point runs."""

    environment: dict[str, str] = field(default_factory=dict)
    planted: list[Path] = field(default_factory=list)
    """Files and directories put in the textfile directory, removed before the refresh."""
    said: str | None = None
    """A text the one line of stderr must hold (None: at most one line, of any text)."""
    lines_allowed: int = 1
    loses_events: bool = False
    probe_witness: Path | None = None
    hands_over: bool = False
    """Whether the events must be handed over while the trouble lasts (not waited for, not dropped)."""
    merges: bool = False
    """Whether the entry point merges all the same: a ``fraisier record`` that answers 1 is not tolerated."""


PLANTED_JSON = {"provider": "planted", "fraise_type": "api"}


def a_live_marker_name() -> str:
    """A marker name whose PID and start time are a live process's (this one): its probe must run."""
    return f"{os.getpid()}-{process_start_time(os.getpid())}-planted"


def plant(directory: Path, name: str, content: bytes | str | None) -> Path:
    """A file (None: a directory) at ``directory/name``, the directory made first."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


NESTED_50000_DEEP = "[" * 50_000 + "]" * 50_000


def marker_past_pid_t(textfile_dir: Path, tmp_path: Path) -> Iterator[Trouble]:
    path = plant(Path(marker_files.marker_directory(textfile_dir)), "99999999999-1-x", json.dumps(PLANTED_JSON))
    yield Trouble(planted=[path])


def marker_nested_50000_deep(textfile_dir: Path, tmp_path: Path) -> Iterator[Trouble]:
    directory = Path(marker_files.marker_directory(textfile_dir))
    yield Trouble(planted=[plant(directory, a_live_marker_name(), NESTED_50000_DEEP)])


def every_other_corrupt_marker(textfile_dir: Path, tmp_path: Path) -> Iterator[Trouble]:
    directory = Path(marker_files.marker_directory(textfile_dir))
    live = a_live_marker_name()
    planted = [
        plant(directory, f"{live}-empty", b""),
        plant(directory, f"{live}-binary", b"\xff\xfe\x00\x80garbage"),
        plant(directory, f"{live}-list", "[1, 2, 3]"),
        plant(directory, f"{live}-wrong-types", json.dumps({"provider": 5, "fraise_type": None})),
        plant(directory, f"{live}-huge-integer", '{"provider": "p", "fraise_type": "api", "boot": ' + "9" * 5000 + "}"),
        plant(directory, f"{live}-float-pid", json.dumps(PLANTED_JSON)),
        plant(directory, f"{live}-directory", None),
        plant(directory, "0-0-pid-zero", json.dumps(PLANTED_JSON)),
        plant(directory, "-5-1-negative-pid", json.dumps(PLANTED_JSON)),
        plant(directory, "x-y-no-pid", json.dumps(PLANTED_JSON)),
        plant(directory, "1-" + "9" * 100 + "-huge-start-time", json.dumps(PLANTED_JSON)),
        plant(directory, "1e5-1-exponent", json.dumps(PLANTED_JSON)),
    ]
    fifo = directory / f"{live}-fifo"
    os.mkfifo(fifo)  # opened without O_NONBLOCK, it would hang the merge
    link = directory / f"{live}-link"
    link.symlink_to("/dev/zero")
    # Each unusable one said once at most; none stops the merge (a FIFO, a directory or a symlink among them failed
    # every merge once).
    yield Trouble(planted=[*planted, fifo, link], lines_allowed=len(planted) + 2, merges=True)


def handover_named_as_fraisier_names_them(textfile_dir: Path, content: bytes | str | None) -> Path:
    """A hand-over written by the store itself (so named and placed as the reader expects, whatever its naming),
    then its content replaced by ``content`` (None: a directory of that name)."""
    events = Changes()
    changes.deployment_error(events, "planted", "planted")
    TextfileStore(textfile_dir).hand_over(events)
    directory = textfile_dir / handovers.HANDOVER_DIRECTORY
    path = max(directory.glob("*" + handovers.SUFFIX), key=lambda found: found.stat().st_mtime_ns)
    path.unlink()
    return plant(directory, path.name, content)


def handover_nested_50000_deep(textfile_dir: Path, tmp_path: Path) -> Iterator[Trouble]:
    yield Trouble(planted=[handover_named_as_fraisier_names_them(textfile_dir, NESTED_50000_DEEP)])


def every_other_corrupt_handover(textfile_dir: Path, tmp_path: Path) -> Iterator[Trouble]:
    planted = [
        handover_named_as_fraisier_names_them(textfile_dir, content) for content in (
            b"", b"\xff\xfe\x00\x80garbage", "[1, 2, 3]", '{"counters": 5, "version": "x"}', '{"counters": [[1e999]]}',
            "9" * 5000, None,
        )
    ]
    past_pid_t = handover_named_as_fraisier_names_them(textfile_dir, "{}")
    parts = past_pid_t.name.split("-")
    parts[1] = "99999999999"
    planted.append(past_pid_t.rename(past_pid_t.with_name("-".join(parts))))
    fifo = handover_named_as_fraisier_names_them(textfile_dir, b"")
    fifo.unlink()
    os.mkfifo(fifo)
    # Each is set aside (the directory and the FIFO too, unopened) or removed (the empty one), and said once.
    yield Trouble(planted=[*planted, fifo], lines_allowed=len(planted) + 1, merges=True)


PROBE_BREAKS = """
import atexit, pathlib
import fraisier_textfile.store.inflight as inflight

class ProbeBroke(Exception):
    '''Not one of this package's errors, nor an OSError: what a bug anywhere below may raise.'''

def is_alive(marker):
    pathlib.Path({witness!r}).touch()
    raise ProbeBroke("the liveness probe broke")

inflight.is_alive = is_alive
"""


def a_probe_raises(textfile_dir: Path, tmp_path: Path) -> Iterator[Trouble]:
    """A probe of a (live) marker raises an exception of a type nothing expects; a sitecustomize installs it."""
    marker = plant(Path(marker_files.marker_directory(textfile_dir)), a_live_marker_name(), json.dumps(PLANTED_JSON))
    site = tmp_path / "site"
    site.mkdir()
    witness = tmp_path / "probed"
    (site / "sitecustomize.py").write_text(PROBE_BREAKS.format(witness=str(witness)))
    python_path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    yield Trouble(environment={"PYTHONPATH": python_path}, planted=[marker], said="ProbeBroke",
                  probe_witness=witness)


def a_bad_setting(variable: str, value: str) -> Callable[[Path, Path], Iterator[Trouble]]:
    def trouble(textfile_dir: Path, tmp_path: Path) -> Iterator[Trouble]:
        yield Trouble(environment={variable: value}, said=f"{variable}={value!r}")

    return trouble


def a_full_disk(textfile_dir: Path, tmp_path: Path) -> Iterator[Trouble]:
    with small_tmpfs(tmp_path / "small", "256k") as mount_point:
        directory = mount_point / "textfile"
        store = TextfileStore(directory)
        changes = Changes()
        store.merge(changes)  # the file exists; then the disk fills up
        filler = os.open(mount_point / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(filler, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(filler)
        # A record call logs what is wrong; at exit the events it could not write anywhere are named: two lines.
        yield Trouble(environment={"FRAISIER_TEXTFILE_DIR": str(directory)}, lines_allowed=2, loses_events=True)


def a_held_lock(textfile_dir: Path, tmp_path: Path) -> Iterator[Trouble]:
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    # A lock timeout far past any budget: waiting for it would show as a hang, not a pass.
    with lock_held_elsewhere(store.lock_path):
        yield Trouble(environment={"FRAISIER_LOCK_TIMEOUT": "3600"}, hands_over=True)


TROUBLES: dict[str, Callable[[Path, Path], Iterator[Trouble]]] = {
    "a marker whose PID is past pid_t": marker_past_pid_t,
    "a marker nested 50,000 deep": marker_nested_50000_deep,
    "every other corrupt marker": every_other_corrupt_marker,
    "a hand-over nested 50,000 deep": handover_nested_50000_deep,
    "every other corrupt hand-over": every_other_corrupt_handover,
    "a probe raising a foreign exception": a_probe_raises,
    "FRAISIER_MAX_SERIES_PER_FAMILY=1_000": a_bad_setting("FRAISIER_MAX_SERIES_PER_FAMILY", "1_000"),
    "FRAISIER_MAX_SERIES_PER_FAMILY=10²": a_bad_setting("FRAISIER_MAX_SERIES_PER_FAMILY", "10²"),
    "FRAISIER_EXPIRE_AFTER=30days": a_bad_setting("FRAISIER_EXPIRE_AFTER", "30days"),
    "FRAISIER_LOCK_TIMEOUT=10sec": a_bad_setting("FRAISIER_LOCK_TIMEOUT", "10sec"),
    "FRAISIER_LOG_LEVEL=warning": a_bad_setting("FRAISIER_LOG_LEVEL", "warning"),
    "FRAISIER_LOG_FORMAT=text": a_bad_setting("FRAISIER_LOG_FORMAT", "text"),
    "FRAISIER_LOCK_WAIT_BUDGET=x": a_bad_setting("FRAISIER_LOCK_WAIT_BUDGET", "x"),
    "a full disk": a_full_disk,
    "a lock held elsewhere": a_held_lock,
}

CLI_ONLY_SETTINGS = {"FRAISIER_LOG_LEVEL=warning", "FRAISIER_LOG_FORMAT=text"}
"""Read by the command only: the library logs through ``logging`` as its host configures it."""


CASES = [
    pytest.param(entry_name, trouble_name, id=f"{entry_name}-{trouble_name}")
    for entry_name, entry in ENTRY_POINTS.items()
    for trouble_name in TROUBLES
    if not (entry.python_api and trouble_name in CLI_ONLY_SETTINGS)
]


@pytest.mark.parametrize("entry_name, trouble_name", CASES)
def test_nothing_on_the_metrics_path_stops_or_changes_a_deployment(
    textfile_dir: Path, tmp_path: Path, entry_name: str, trouble_name: str
) -> None:
    entry = ENTRY_POINTS[entry_name]
    with contextmanager(TROUBLES[trouble_name])(textfile_dir, tmp_path) as trouble:
        environment = {**os.environ, "FRAISIER_TEXTFILE_DIR": str(textfile_dir), **trouble.environment}
        # The timeout only catches a hang: budgets are one second, and a lock held for an hour is not waited for.
        result = subprocess.run([sys.executable, *entry.arguments], env=environment, capture_output=True,
                                text=True, timeout=120)
        if trouble.probe_witness is not None:
            assert trouble.probe_witness.exists(), "the broken probe was never called: the test tests nothing"
        disk_full_record = trouble.loses_events and entry_name == "fraisier record"
        if trouble.hands_over:  # while the holder still holds the lock: handed over, not waited for
            assert list((textfile_dir / handovers.HANDOVER_DIRECTORY).glob("*" + handovers.SUFFIX)), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    if disk_full_record:  # not a deployment: the event cannot be written anywhere, and it says so
        assert result.returncode == 1 and len(lines) == 1 and "No space left" in lines[0], result.stderr
        return
    if entry_name == "fraisier record" and result.returncode == 1 and not trouble.merges:
        # Its documented answer to a file it refuses (or a bug of ours): one line, the event handed over.
        [line] = lines
        assert line.endswith("(the event was handed over: the next merge, once that is fixed, writes it)"), line
        assert trouble.said is None or trouble.said in line
    else:
        assert result.returncode == entry.returncode, result.stderr
    if entry_name != "fraisier record":
        assert "deployed" in result.stdout
    if entry.python_api and not trouble.loses_events:
        assert "kept in memory: False" in result.stdout  # merged or handed over, not waiting for an exit
    assert len(lines) <= trouble.lines_allowed, result.stderr
    if trouble.said is not None:
        assert len(lines) == 1 and trouble.said in lines[0], result.stderr
    if trouble.loses_events:
        return
    for path in trouble.planted:  # the trouble is gone; what was recorded while it lasted is all there
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink(missing_ok=True)
    refreshed = fraisier("textfile", "refresh", textfile_dir=textfile_dir)
    assert refreshed.returncode == 0, refreshed.stderr
    values = sample_values(textfile_dir / "fraisier.prom")
    for series, value in entry.recorded.items():
        assert values[series] == value, series
    assert values.get(ACTIVE, 0) == 0
    assert values[DEPLOYMENTS.format("crashed")] == 0
