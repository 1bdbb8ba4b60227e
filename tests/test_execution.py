"""``fraisier exec`` and the textfile's lock: the deployment never waits long for metrics, and its record is
handed over, never lost, when another process holds the lock."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fraisier_textfile import TextfileStore
from fraisier_textfile.changes import Changes
from fraisier_textfile.cli.execution import FORWARDED_SIGNALS
from fraisier_textfile.store.markers import MARKER_DIRECTORY

from .processes import fraisier, lock_held_elsewhere
from .values import sample_values


def test_exec_under_a_held_lock_runs_the_command_and_hands_its_record_over(textfile_dir: Path) -> None:
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    with lock_held_elsewhere(store.lock_path):
        result = fraisier(
            "--lock-timeout", "0.5", "exec", "--provider", "bare_metal", "--fraise-type", "api", "--",
            sys.executable, "-c", "print('deployed')", textfile_dir=textfile_dir,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == "deployed\n"
        assert result.stderr == ""  # a hand-over is not a failure: nothing to warn about
        assert "fraisier_deployments_total" not in store.path.read_text()
    store.merge(Changes())
    values = sample_values(store.path)
    assert values['fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'] == 1
    assert values['fraisier_deployments_total{provider="bare_metal",status="crashed",fraise_type="api"}'] == 0
    assert values['fraisier_active_deployments{provider="bare_metal"}'] == 0
    assert not list((textfile_dir / MARKER_DIRECTORY).iterdir())


# Signals: `fraisier exec` passes each on once, as tini and dumb-init do


COUNTING_COMMAND = r"""
import os, signal, sys, time
log, stop = sys.argv[1], sys.argv[2]
waited = {getattr(signal, name) for name in sys.argv[3].split(",")}
signal.pthread_sigmask(signal.SIG_BLOCK, waited)
with open(log, "a") as out:
    out.write(f"ready {os.getpid()} {os.getppid()}\n")
while not os.path.exists(stop):
    # Each signal is taken off the queue as soon as it comes: a second one sent later is seen as a second.
    info = signal.sigtimedwait(waited, 0.05)
    if info is not None:
        with open(log, "a") as out:
            out.write(signal.Signals(info.si_signo).name + "\n")
"""
"""A deployment that writes down each signal it receives, one line each, until the file ``stop`` exists."""

ROUNDS = 5
SIGNAL_NAMES = [signal.Signals(number).name for number in FORWARDED_SIGNALS]


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_for_line(path: Path, line: str, process: subprocess.Popen[bytes] | None = None) -> list[str]:
    """The lines of ``path`` once one starts with ``line`` (a guard against a hang, not a timing check)."""
    deadline = time.monotonic() + 60
    while not any(found.startswith(line) for found in _lines(path)):
        assert process is None or process.poll() is None, f"exited {process.returncode}: {_lines(path)}"
        assert time.monotonic() < deadline, f"no {line!r} in {_lines(path)}"
        time.sleep(0.01)
    return _lines(path)


class Deployment:
    """``fraisier exec`` of COUNTING_COMMAND, started by ``launch`` (its arguments: the wrapper's argv)."""

    def __init__(self, tmp_path: Path, launch: Callable[[list[str]], subprocess.Popen[bytes]]) -> None:
        self.log = tmp_path / "signals.log"
        self.stop_file = tmp_path / "stop"
        command = [
            sys.executable, "-m", "fraisier_textfile", "--textfile-dir", str(tmp_path / "textfile"), "exec",
            "--provider", "bare_metal", "--fraise-type", "api", "--",
            sys.executable, "-c", COUNTING_COMMAND, str(self.log), str(self.stop_file), ",".join(SIGNAL_NAMES),
        ]
        self.process = launch(command)
        ready = wait_for_line(self.log, "ready", self.process)[0].split()
        self.command_pid, self.wrapper_pid = int(ready[1]), int(ready[2])

    def signals(self) -> list[str]:
        return [line for line in _lines(self.log) if not line.startswith("ready")]

    def forget_signals(self) -> None:
        """Start the list of signals afresh (the ``ready`` line stays)."""
        self.log.write_text(_lines(self.log)[0] + "\n")

    def barrier(self, unlike: str) -> None:
        """Send a last signal to the wrapper alone and wait for the command to get it: whatever the wrapper
        was going to pass on before it has arrived by then."""
        barrier = "SIGQUIT" if unlike == "SIGHUP" else "SIGHUP"
        os.kill(self.wrapper_pid, signal.Signals[barrier])
        wait_for_line(self.log, barrier, self.process)

    def finish(self) -> int:
        self.stop_file.touch()
        return self.process.wait(timeout=60)


@pytest.fixture
def launched() -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def as_session_leader(launched: list[subprocess.Popen[bytes]]) -> Callable[[list[str]], subprocess.Popen[bytes]]:
    """The wrapper as a systemd service or a shell's job starts: leader of its own process group."""

    def launch(command: list[str]) -> subprocess.Popen[bytes]:
        launched.append(subprocess.Popen(command, start_new_session=True))
        return launched[-1]

    return launch


INSIDE_A_SCRIPT = """
import signal, subprocess, sys
for name in ("SIGINT", "SIGTERM"):  # a script that outlives a Ctrl-C or a kill, waiting for its command
    signal.signal(getattr(signal, name), lambda *_: None)
sys.exit(subprocess.run(sys.argv[1:]).returncode)
"""


def inside_a_script(launched: list[subprocess.Popen[bytes]]) -> Callable[[list[str]], subprocess.Popen[bytes]]:
    """The wrapper as a deploy script runs it: inside the script's process group."""

    def launch(command: list[str]) -> subprocess.Popen[bytes]:
        launched.append(subprocess.Popen([sys.executable, "-c", INSIDE_A_SCRIPT, *command], start_new_session=True))
        return launched[-1]

    return launch


LAUNCHES = {"as a session leader": as_session_leader, "inside a script's group": inside_a_script}


@pytest.mark.parametrize("started", LAUNCHES.values(), ids=LAUNCHES.keys())
@pytest.mark.parametrize("name", SIGNAL_NAMES)
def test_a_signal_sent_to_the_wrapper_alone_reaches_the_command_once_and_the_wrapper_survives(
    tmp_path: Path, launched: list[subprocess.Popen[bytes]], name: str,
    started: Callable[[list[subprocess.Popen[bytes]]], Callable[[list[str]], subprocess.Popen[bytes]]],
) -> None:
    deployment = Deployment(tmp_path, started(launched))
    os.kill(deployment.wrapper_pid, signal.Signals[name])
    wait_for_line(deployment.log, name, deployment.process)
    deployment.barrier(unlike=name)
    assert deployment.finish() == 0
    assert deployment.signals() == [name, "SIGQUIT" if name == "SIGHUP" else "SIGHUP"]


@pytest.mark.parametrize("started", LAUNCHES.values(), ids=LAUNCHES.keys())
def test_a_kill_of_the_wrappers_whole_process_group_reaches_the_command_once(
    tmp_path: Path, launched: list[subprocess.Popen[bytes]],
    started: Callable[[list[subprocess.Popen[bytes]]], Callable[[list[str]], subprocess.Popen[bytes]]],
) -> None:
    """What systemd's stop, a shell's kill %1 and timeout(1) do: the signal goes to the wrapper's whole group
    (the one it leads, or its script's)."""
    deployment = Deployment(tmp_path, started(launched))
    for _ in range(ROUNDS):  # a second SIGTERM may merge into the first while pending: several rounds
        os.killpg(os.getpgid(deployment.wrapper_pid), signal.SIGTERM)
        wait_for_line(deployment.log, "SIGTERM", deployment.process)
        deployment.barrier(unlike="SIGTERM")
        assert deployment.signals() == ["SIGTERM", "SIGHUP"]
        deployment.forget_signals()
    assert deployment.finish() == 0


def on_a_terminal(launched: list[subprocess.Popen[bytes]], terminal: int, inside_script: bool
                  ) -> Callable[[list[str]], subprocess.Popen[bytes]]:
    """Started in the foreground of a real pseudo-terminal, as from an interactive shell: a new session whose
    controlling terminal is ``terminal`` (the pty's other side), the wrapper (or its script) its foreground."""

    def take_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    def launch(command: list[str]) -> subprocess.Popen[bytes]:
        if inside_script:
            command = [sys.executable, "-c", INSIDE_A_SCRIPT, *command]
        launched.append(subprocess.Popen(command, stdin=terminal, stdout=terminal, stderr=terminal,
                                         start_new_session=True, preexec_fn=take_terminal))
        return launched[-1]

    return launch


@pytest.mark.parametrize("inside_script", [False, True], ids=["the wrapper leads the job", "inside a script"])
def test_ctrl_c_at_a_terminal_reaches_the_command_once(
    tmp_path: Path, launched: list[subprocess.Popen[bytes]], inside_script: bool
) -> None:
    main, terminal = os.openpty()
    try:
        deployment = Deployment(tmp_path, on_a_terminal(launched, terminal, inside_script))
        for _ in range(ROUNDS):  # a second SIGINT may merge into the first while pending: several rounds
            os.write(main, b"\x03")  # Ctrl-C: the terminal sends SIGINT to its foreground process group
            wait_for_line(deployment.log, "SIGINT", deployment.process)
            deployment.barrier(unlike="SIGINT")
            assert deployment.signals() == ["SIGINT", "SIGHUP"]
            deployment.forget_signals()
        assert deployment.finish() == 0
    finally:
        os.close(main)
        os.close(terminal)


@pytest.mark.parametrize("name", ["SIGHUP", "SIGINT", "SIGTERM", "SIGUSR1", "SIGALRM", "SIGPIPE"])
def test_a_command_killed_by_a_forwarded_signal_makes_the_wrapper_exit_128_plus_n(
    textfile_dir: Path, name: str
) -> None:
    wrapper = subprocess.Popen(
        [sys.executable, "-m", "fraisier_textfile", "--textfile-dir", str(textfile_dir), "exec", "--provider",
         "bare_metal", "--fraise-type", "api", "--", "sh", "-c", "echo ready; exec sleep 600"],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        assert wrapper.stdout is not None and wrapper.stdout.readline() == "ready\n"
        wrapper.send_signal(signal.Signals[name])
        assert wrapper.wait(timeout=60) == 128 + signal.Signals[name]
    finally:
        if wrapper.poll() is None:
            os.killpg(wrapper.pid, signal.SIGKILL)
            wrapper.wait()
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values[f'fraisier_deployment_errors_total{{provider="bare_metal",error_type="signal_{name}"}}'] == 1


def _ignoring(*names: str) -> Callable[[], None]:
    """What the child runs before its program: the signals ``names`` ignored, as ``nohup`` (SIGHUP) or a
    non-interactive shell's background job (SIGINT, SIGQUIT) starts a program. An ignored signal stays ignored
    across exec(2)."""

    def ignore() -> None:
        for name in names:
            signal.signal(signal.Signals[name], signal.SIG_IGN)

    return ignore


def test_a_signal_the_wrapper_was_started_ignoring_is_forwarded_and_the_command_ignores_it_too(
    textfile_dir: Path,
) -> None:
    """``nohup fraisier exec -- ./deploy.sh``: the command inherits the ignored SIGHUP, as it would without the
    wrapper (tini and dumb-init pass ignored signals on alike). A SIGHUP is forwarded and ignored; a SIGUSR1 after
    it (forwarded after it: the wrapper takes the lower-numbered pending signal first) ends the command."""
    wrapper = subprocess.Popen(
        [sys.executable, "-m", "fraisier_textfile", "--textfile-dir", str(textfile_dir), "exec", "--provider",
         "bare_metal", "--fraise-type", "api", "--", "sh", "-c", "echo ready; exec sleep 600"],
        stdout=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_ignoring("SIGHUP"),
    )
    try:
        assert wrapper.stdout is not None and wrapper.stdout.readline() == "ready\n"
        wrapper.send_signal(signal.SIGHUP)
        wrapper.send_signal(signal.SIGUSR1)
        assert wrapper.wait(timeout=60) == 128 + signal.SIGUSR1
    finally:
        if wrapper.poll() is None:
            os.killpg(wrapper.pid, signal.SIGKILL)
            wrapper.wait()
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values['fraisier_deployment_errors_total{provider="bare_metal",error_type="signal_SIGUSR1"}'] == 1
    assert 'error_type="signal_SIGHUP"' not in (textfile_dir / "fraisier.prom").read_text()


def test_the_signal_tests_pass_in_a_run_started_ignoring_signals(tmp_path: Path) -> None:
    """Bug: the commands these tests start inherited the signals the test run was started ignoring, and did not
    die of the signal a test sent them (the [SIGHUP] case above timed out in every run started under nohup, the
    [SIGINT] case in a non-interactive shell's background job). The run now gives the processes it starts the
    default dispositions (conftest.py). Here, a run started ignoring all three."""
    selected = [
        f"{__file__}::test_a_command_killed_by_a_forwarded_signal_makes_the_wrapper_exit_128_plus_n[{name}]"
        for name in ("SIGHUP", "SIGINT")
    ]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--basetemp", str(tmp_path / "run"),
         *selected],
        cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=600,
        preexec_fn=_ignoring("SIGHUP", "SIGINT", "SIGQUIT"),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1].startswith("2 passed"), result.stdout[-3000:]


def test_ctrl_z_stops_the_job_and_fg_gives_the_command_the_terminal_again(
    tmp_path: Path, launched: list[subprocess.Popen[bytes]]
) -> None:
    """The shell sees only the wrapper's group: a command stopped at the terminal stops the wrapper too, and
    continuing the wrapper (what ``fg`` does, the terminal already back with it) continues the command in the
    terminal's foreground, where it can read."""
    main, terminal = os.openpty()
    try:
        command = [sys.executable, "-m", "fraisier_textfile", "--textfile-dir", str(tmp_path / "textfile"), "exec",
                   "--provider", "bare_metal", "--fraise-type", "api", "--",
                   "sh", "-c", "echo ready; read line; echo got $line"]
        wrapper = on_a_terminal(launched, terminal, inside_script=False)(command)
        assert _read_until(main, b"ready") is not None
        os.write(main, b"\x1a")  # Ctrl-Z: SIGTSTP to the terminal's foreground group (the command's)
        _, status = os.waitpid(wrapper.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), status
        os.killpg(os.getpgid(wrapper.pid), signal.SIGCONT)  # fg
        os.write(main, b"hello\n")
        assert _read_until(main, b"got hello") is not None
        _, status = os.waitpid(wrapper.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        wrapper.returncode = 0
    finally:
        os.close(main)
        os.close(terminal)


def _read_until(terminal: int, wanted: bytes) -> bytes | None:
    """What the terminal shows, once it shows ``wanted`` (a guard against a hang, not a timing check)."""
    import select

    seen = b""
    deadline = time.monotonic() + 60
    while wanted not in seen:
        ready, _, _ = select.select([terminal], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no {wanted!r} in {seen!r}"
        seen += os.read(terminal, 4096)
    return seen


def test_the_command_dies_with_a_wrapper_killed_outright(tmp_path: Path, launched: list[subprocess.Popen[bytes]]
                                                         ) -> None:
    """SIGKILL cannot be forwarded: the parent-death signal stops the command, so a deployment counted crashed
    has really stopped, even now that the command has a process group of its own."""
    deployment = Deployment(tmp_path, as_session_leader(launched))
    os.kill(deployment.wrapper_pid, signal.SIGKILL)
    deployment.process.wait(timeout=60)
    deadline = time.monotonic() + 60
    while os.path.exists(f"/proc/{deployment.command_pid}") and not _is_zombie(deployment.command_pid):
        assert time.monotonic() < deadline, "the command outlived its wrapper"
        time.sleep(0.01)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _blocks(pid: int, signum: int) -> bool:
    """Whether process ``pid`` holds ``signum`` back (its SigBlk mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def test_a_signal_while_the_start_is_being_recorded_reaches_the_command_once_it_runs(
    tmp_path: Path, launched: list[subprocess.Popen[bytes]]
) -> None:
    """The wrapper waits for a held lock before it starts the command: a SIGTERM then neither kills it (the
    deployment would be orphaned, its end never recorded) nor is lost: the command gets it as soon as it runs and
    dies of it, and the wrapper exits 128+15 with that recorded."""
    textfile = tmp_path / "textfile"
    store = TextfileStore(textfile)
    store.merge(Changes())
    witness = tmp_path / "started"
    command = [sys.executable, "-m", "fraisier_textfile", "--textfile-dir", str(textfile), "--lock-timeout", "600",
               "exec", "--provider", "bare_metal", "--fraise-type", "api", "--",
               "sh", "-c", f"touch {witness}; exec sleep 600"]
    environment = {**os.environ, "FRAISIER_LOCK_WAIT_BUDGET": "600"}
    with lock_held_elsewhere(store.lock_path):
        launched.append(subprocess.Popen(command, start_new_session=True, env=environment))
        wrapper = launched[-1]
        deadline = time.monotonic() + 60
        while not _blocks(wrapper.pid, signal.SIGTERM):  # from then on a signal is kept for the command
            assert wrapper.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        wrapper.send_signal(signal.SIGTERM)
        assert wrapper.poll() is None and not witness.exists()  # waiting for the lock, the command not started
    assert wrapper.wait(timeout=60) == 128 + signal.SIGTERM
    values = sample_values(textfile / "fraisier.prom")
    assert values['fraisier_deployment_errors_total{provider="bare_metal",error_type="signal_SIGTERM"}'] == 1
    assert values['fraisier_active_deployments{provider="bare_metal"}'] == 0


WRAPPER_WITH_A_THREAD_STARTED_BEFORE = """
import sys, threading, time
# What an agent started at interpreter start-up does (a sitecustomize's APM or profiler, ddtrace-run,
# opentelemetry-instrument): a thread of its own, started before the wrapper blocks any signal.
threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
sys.argv = ["fraisier", "--textfile-dir", sys.argv[1], "exec", "--provider", "bare_metal", "--fraise-type", "api",
            "--", "false"]
from fraisier_textfile.cli.dispatch import script
script()
"""


def test_a_thread_started_before_the_wrapper_does_not_make_it_wait_for_ever(textfile_dir: Path) -> None:
    """Bug: the kernel gives a process-wide signal to any thread that does not block it. A thread started before the
    wrapper blocked SIGCHLD (an agent's, from sitecustomize) took the command's SIGCHLD whenever the command ended
    while the wrapper was not inside its wait (a command that ends at once), and dropped it (its default is to ignore
    it): the wrapper waited for ever, a kill of it only forwarded to a command already gone (a third of the runs
    here). It now looks at the command between waits too. Several wrappers at once, each with a command that ends at
    once; every one ends, with the command's status."""
    wrappers = [subprocess.Popen([sys.executable, "-c", WRAPPER_WITH_A_THREAD_STARTED_BEFORE, str(textfile_dir)],
                                 stderr=subprocess.DEVNULL) for _ in range(12)]
    deadline = time.monotonic() + 60
    try:
        statuses: list[int | None] = []
        for wrapper in wrappers:
            try:
                statuses.append(wrapper.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                statuses.append(None)
    finally:
        for wrapper in wrappers:
            if wrapper.poll() is None:
                wrapper.kill()
                wrapper.wait()
    assert statuses == [1] * len(wrappers)
    errors = 'fraisier_deployment_errors_total{provider="bare_metal",error_type="exit_code_1"}'
    assert sample_values(textfile_dir / "fraisier.prom")[errors] == len(wrappers)
