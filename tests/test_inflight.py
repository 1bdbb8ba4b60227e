"""Liveness of in-flight deployments: the lock a live deployer holds on its marker, seen by real processes of
other users under a /proc mounted with hidepid=2, in another PID namespace, killed with SIGKILL."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import filelock
import pytest

import fraisier_textfile
from fraisier_textfile.store import inflight
from fraisier_textfile.store.inflight import MARKER_DIRECTORY

from .processes import binary
from .values import sample_values

WORKERS = Path(__file__).with_name("liveness_workers.py")
ACTIVE = 'fraisier_active_deployments{provider="bare_metal"}'
SUCCESS = 'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'
CRASHED = 'fraisier_deployments_total{provider="bare_metal",status="crashed",fraise_type="api"}'
GROUP, DEPLOYER, OBSERVER = "fraisier-lv", "fraisier-lv-deployer", "fraisier-lv-observer"
# A /proc of its own, in a mount namespace of its own: the host's /proc is never remounted.
HIDDEN_PROC = 'mount -t proc -o hidepid=2 proc /proc && exec "$@"'


def require(condition: bool, message: str) -> None:
    """Like ``binary()``: a skip on a developer's machine, a failure under CI=true."""
    if not condition:
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@dataclass
class Users:
    """Two unprivileged users of one group, and what they need to run our code."""

    root: Path
    """A world-readable directory holding a copy of the package and of the workers."""
    python: str
    """A Python both users may run (this one may live under a home they cannot enter)."""
    environment: dict[str, str]
    setpriv: str
    unshare: str

    def command(self, user: str, *arguments: str) -> list[str]:
        return [
            self.setpriv,
            f"--reuid={user}",
            f"--regid={GROUP}",
            "--init-groups",
            self.python,
            str(self.root / WORKERS.name),
            *arguments,
        ]

    def start(self, user: str, *arguments: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(user, *arguments),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=self.environment,
            cwd=self.root,
        )

    def observe(self, *arguments: str) -> str:
        """Run a worker as the observer, with a /proc that hides the other users' processes from it."""
        command = [self.unshare, "--mount", "--", "sh", "-c", HIDDEN_PROC, "sh", *self.command(OBSERVER, *arguments)]
        result = subprocess.run(
            command, capture_output=True, text=True, env=self.environment, cwd=self.root, timeout=120
        )
        assert result.returncode == 0, result.stderr
        return result.stdout


def _create_users() -> list[list[str]]:
    """The group and the two users, unless they exist; the commands that remove what was created."""
    undo = []
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        subprocess.run([binary("groupadd"), "--system", GROUP], check=True)
        undo.append([binary("groupdel"), GROUP])
    for user in (DEPLOYER, OBSERVER):
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(
                [binary("useradd"), "--system", "--no-create-home", "--gid", GROUP, "--shell", "/bin/false", user],
                check=True,
            )
            undo.insert(0, [binary("userdel"), user])
    return undo


def _copy_package(destination: Path) -> None:
    """The package and filelock, its only dependency on the merge path, where any user can read them."""
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(Path(fraisier_textfile.__file__).parent, destination / "fraisier_textfile", ignore=ignore)
    shutil.copytree(Path(filelock.__file__).parent, destination / "filelock", ignore=ignore)
    shutil.copy(WORKERS, destination / WORKERS.name)
    for directory, _, files in os.walk(destination):
        os.chmod(directory, 0o755)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o644)


@pytest.fixture(scope="module")
def users() -> Iterator[Users]:
    require(os.geteuid() == 0, "these tests create users and mount a /proc: run them as root (CI does)")
    setpriv, unshare = binary("setpriv"), binary("unshare")
    undo = _create_users()
    root = Path(tempfile.mkdtemp(prefix="fraisier-liveness-", dir="/tmp"))
    try:
        _copy_package(root)
        environment = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "PYTHONPATH": str(root),
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": str(root),
            "LANG": "C.UTF-8",
        }
        python = None
        for candidate in (sys.executable, "/usr/bin/python3"):
            check = "import sys, fraisier_textfile; assert sys.version_info >= (3, 11)"
            as_deployer = [setpriv, f"--reuid={DEPLOYER}", f"--regid={GROUP}", "--init-groups"]
            probe = subprocess.run(
                [*as_deployer, candidate, "-c", check], capture_output=True, env=environment, cwd=root
            )
            if probe.returncode == 0:
                python = candidate
                break
        require(python is not None, f"no Python 3.11 that user {DEPLOYER} can run: apt-get install python3")
        assert python is not None
        hidden = subprocess.run([unshare, "--mount", "--", "sh", "-c", HIDDEN_PROC, "sh", "true"], capture_output=True)
        require(hidden.returncode == 0, f"cannot mount a /proc with hidepid=2 here: {hidden.stderr.decode().strip()}")
        yield Users(root, python, environment, setpriv, unshare)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        for command in undo:
            subprocess.run(command, check=False)


@pytest.fixture
def shared_dir(users: Users, tmp_path: Path) -> Iterator[Path]:
    """A textfile directory both users may write, as a deploy group would set it up (setgid, 2775)."""
    directory = Path(tempfile.mkdtemp(prefix="textfile-", dir=users.root))
    os.chown(directory, 0, grp.getgrnam(GROUP).gr_gid)
    os.chmod(directory, 0o2775)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Workers started by a test; their stdin is closed (their children end on EOF) and they are reaped."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def killed(process: subprocess.Popen[str]) -> None:
    """SIGKILL ``process`` and wait until it is dead, without reaping it: as a zombie its PID still exists,
    so neither /proc nor kill(2) can tell another user that it died. Only the lock can."""
    process.send_signal(signal.SIGKILL)
    os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)


def test_another_users_deployment_is_active_to_an_observer_who_cannot_see_it_then_counted_once(
    users: Users, shared_dir: Path, processes: list[subprocess.Popen[str]]
) -> None:
    deployer = users.start(DEPLOYER, "deploy", str(shared_dir))
    processes.append(deployer)
    assert deployer.stdout is not None and deployer.stdout.readline().startswith("deploying ")
    markers = (shared_dir / MARKER_DIRECTORY).stat()
    assert (stat.S_IMODE(markers.st_mode), markers.st_gid) == (0o2775, grp.getgrnam(GROUP).gr_gid)
    # The observer's /proc hides the deployer: the check by PID alone took it for dead.
    assert json.loads(users.observe("sees", str(deployer.pid))) == {"listed": False, "start_time": None}
    users.observe("merge", str(shared_dir))
    values = sample_values(shared_dir / "fraisier.prom")
    assert values[ACTIVE] == 1
    assert values.get(CRASHED, 0) == 0

    assert deployer.stdin is not None
    deployer.stdin.write("done\n")
    deployer.stdin.flush()
    assert deployer.wait(timeout=60) == 0
    users.observe("merge", str(shared_dir))
    values = sample_values(shared_dir / "fraisier.prom")
    assert values[SUCCESS] == 1
    assert values.get(CRASHED, 0) == 0
    assert values[ACTIVE] == 0
    assert not list((shared_dir / MARKER_DIRECTORY).iterdir())


def test_another_users_deployment_killed_is_dead_at_once_and_crashed_exactly_once(
    users: Users, shared_dir: Path, processes: list[subprocess.Popen[str]]
) -> None:
    deployer = users.start(DEPLOYER, "deploy", str(shared_dir))
    processes.append(deployer)
    assert deployer.stdout is not None and deployer.stdout.readline().startswith("deploying ")
    [marker] = (shared_dir / MARKER_DIRECTORY).iterdir()
    assert json.loads(users.observe("alive", str(shared_dir))) == {marker.name: True}

    killed(deployer)
    assert json.loads(users.observe("sees", str(deployer.pid))) == {"listed": False, "start_time": None}
    assert json.loads(users.observe("alive", str(shared_dir))) == {marker.name: False}
    for _ in range(2):
        users.observe("merge", str(shared_dir))
        values = sample_values(shared_dir / "fraisier.prom")
        assert values[CRASHED] == 1
        assert values[ACTIVE] == 0
        assert values.get(SUCCESS, 0) == 0
    assert not marker.exists()


def test_children_that_outlive_the_deployer_do_not_keep_its_deployment_alive(
    users: Users, shared_dir: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """A forked child and a program spawned without closing descriptors both run on: the deployment ended
    with the process that started it (see liveness's note on fork and exec)."""
    deployer = users.start(DEPLOYER, "deploy_with_children", str(shared_dir))
    processes.append(deployer)
    assert deployer.stdout is not None
    _, marker_id, forked, spawned = deployer.stdout.readline().split()
    assert json.loads(users.observe("alive", str(shared_dir))) == {marker_id: True}
    killed(deployer)
    assert json.loads(users.observe("alive", str(shared_dir))) == {marker_id: False}
    for child in (forked, spawned):
        os.kill(int(child), 0)  # still running: they wait for the end of the stdin they share with it


def test_a_marker_of_an_older_version_is_never_declared_dead_by_guesswork(
    users: Users, shared_dir: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """Without a lock, an observer who cannot see the writer in /proc keeps its deployment active; once
    kill(2) says that PID is gone, it is crashed, once."""
    deployer = users.start(DEPLOYER, "deploy_like_an_older_version", str(shared_dir))
    processes.append(deployer)
    assert deployer.stdout is not None and deployer.stdout.readline().startswith("deploying ")
    users.observe("merge", str(shared_dir))
    values = sample_values(shared_dir / "fraisier.prom")
    assert values[ACTIVE] == 1
    assert values.get(CRASHED, 0) == 0

    killed(deployer)  # a zombie: nothing can tell the observer it died, so it still counts as active
    users.observe("merge", str(shared_dir))
    assert sample_values(shared_dir / "fraisier.prom")[ACTIVE] == 1
    deployer.wait()  # reaped: its PID is gone
    for _ in range(2):
        users.observe("merge", str(shared_dir))
        values = sample_values(shared_dir / "fraisier.prom")
        assert values[CRASHED] == 1
        assert values[ACTIVE] == 0


# One user: the lock against what /proc says.


def start_worker(*arguments: str, prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*prefix, sys.executable, str(WORKERS), *arguments], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def alive(textfile_dir: Path) -> dict[str, bool]:
    return {marker.id: inflight.is_alive(marker) for marker in inflight.read_markers(textfile_dir)}


def test_a_released_marker_is_dead_while_its_process_runs(
    textfile_dir: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """/proc shows the writer running with the marker's start time; its free lock says the deployment ended."""
    worker = start_worker("deploy_then_release", str(textfile_dir))
    processes.append(worker)
    assert worker.stdout is not None and worker.stdin is not None
    _, marker_id = worker.stdout.readline().split()
    assert alive(textfile_dir) == {marker_id: True}
    worker.stdin.write("release\n")
    worker.stdin.flush()
    assert worker.stdout.readline() == "released\n"
    assert inflight.process_start_time(worker.pid) == marker_id.split("-")[1]
    assert alive(textfile_dir) == {marker_id: False}


def test_a_locked_marker_from_another_pid_namespace_is_alive_until_released(
    textfile_dir: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """Its PID means nothing here, but its lock does: alive while held, dead once free (an older version's
    marker from another namespace stays active, as tests/test_races.py shows)."""
    require(os.geteuid() == 0, "a PID namespace needs root: run the tests as root (CI does)")
    unshare = binary("unshare")
    worker = start_worker("deploy_then_release", str(textfile_dir), prefix=(unshare, "--pid", "--fork", "--mount-proc"))
    processes.append(worker)
    assert worker.stdout is not None and worker.stdin is not None
    assert worker.stdout.readline().startswith("deploying ")
    [marker] = inflight.read_markers(textfile_dir)
    assert marker.pid_namespace != os.readlink("/proc/self/ns/pid")
    assert marker.pid == 1  # the first process of its namespace
    assert inflight.is_alive(marker)
    worker.stdin.write("release\n")
    worker.stdin.flush()
    assert worker.stdout.readline() == "released\n"
    assert not inflight.is_alive(marker)


def test_a_locked_marker_from_another_boot_is_dead(textfile_dir: Path, processes: list[subprocess.Popen[str]]) -> None:
    """A directory shared with another host or kept across a reboot: another boot id is a dead writer,
    whatever holds a lock."""
    worker = start_worker("deploy_then_release", str(textfile_dir))
    processes.append(worker)
    assert worker.stdout is not None
    _, marker_id = worker.stdout.readline().split()
    path = textfile_dir / MARKER_DIRECTORY / marker_id
    content = json.loads(path.read_text())
    assert alive(textfile_dir) == {marker_id: True}
    with open(path, "r+", encoding="utf-8") as file:  # rewritten in place: the same inode, still locked
        file.truncate()
        json.dump({**content, "boot": "another-boot"}, file)
    assert alive(textfile_dir) == {marker_id: False}


def test_a_marker_this_process_holds_is_alive_until_removed(textfile_dir: Path) -> None:
    marker = inflight.create_marker(textfile_dir, "bare_metal", "api")
    assert marker.held
    [read] = inflight.read_markers(textfile_dir)
    assert read.locked and inflight.is_alive(read)
    inflight.remove_marker(textfile_dir, marker.id)
    assert not marker.held  # removing our own marker released it
    marker.release()  # again: nothing happens
    assert inflight.read_markers(textfile_dir) == []
    assert not inflight.is_alive(read)


def test_a_marker_is_locked_from_the_moment_it_has_its_name(textfile_dir: Path) -> None:
    """The lock is taken on the temporary and follows the inode through the rename."""
    import fcntl

    marker = inflight.create_marker(textfile_dir, "bare_metal", "api")
    assert marker.path == textfile_dir / MARKER_DIRECTORY / marker.id
    assert [p.name for p in (textfile_dir / MARKER_DIRECTORY).iterdir()] == [marker.id]
    descriptor = os.open(marker.path, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        marker.release()
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    finally:
        os.close(descriptor)


def test_a_half_written_marker_is_removed_only_once_its_writer_is_provably_gone(textfile_dir: Path) -> None:
    import fcntl

    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its PID names no process
    own_start = inflight.process_start_time(os.getpid())
    directory = textfile_dir / MARKER_DIRECTORY
    directory.mkdir(parents=True)
    litter = directory / f".{gone.pid}-1-0000dead"
    being_written = directory / f".{os.getpid()}-{own_start}-0000live"  # created, not locked yet
    locked = directory / f".{gone.pid}-1-000locked"  # a PID that says nothing, a lock that says alive
    for path in (litter, being_written, locked):
        path.write_text("{")
    descriptor = os.open(locked, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        inflight.remove_stale_temporaries(textfile_dir)
        assert sorted(p.name for p in directory.iterdir()) == sorted([being_written.name, locked.name])
    finally:
        os.close(descriptor)


def test_what_is_not_a_regular_file_among_the_markers_is_skipped_never_followed_or_waited_on(
    textfile_dir: Path,
) -> None:
    marker = inflight.create_marker(textfile_dir, "bare_metal", "api")
    directory = textfile_dir / MARKER_DIRECTORY
    os.mkfifo(directory / f"{os.getpid()}-1-00000f1f")  # opening it for reading would wait for a writer
    (directory / f"{os.getpid()}-1-0000d1e0").mkdir()
    outside = textfile_dir.parent / "not-a-marker"
    outside.write_text('{"provider": "bare_metal", "fraise_type": "api"}')
    (directory / f"{os.getpid()}-1-00001111").symlink_to(outside)
    script = (
        "import sys; from pathlib import Path; from fraisier_textfile.store import inflight; "
        "print([m.id for m in inflight.read_markers(Path(sys.argv[1]))])"
    )
    listed = subprocess.run(
        [sys.executable, "-c", script, str(textfile_dir)], capture_output=True, text=True, timeout=60, check=True
    )
    assert listed.stdout == f"{[marker.id]}\n"


@pytest.mark.parametrize("name", ["copy\nof", "copy of", "tab\there"], ids=["newline", "space", "tab"])
def test_a_marker_named_so_that_the_retired_list_cannot_hold_it_is_ignored(textfile_dir: Path, name: str) -> None:
    """The file lists retired markers by id, space-separated on one line: a copy named with a newline failed
    every merge (bare ValueError), one with a blank would read back as two ids and count its crash again."""
    from fraisier_textfile.changes import Changes
    from fraisier_textfile.store.textfile import TextfileStore

    marker = inflight.create_marker(textfile_dir, "bare_metal", "api")
    directory = textfile_dir / MARKER_DIRECTORY
    shutil.copy(directory / marker.id, directory / name)  # nobody holds the copy's lock: it looks dead
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    store.merge(Changes())
    assert [m.id for m in inflight.read_markers(textfile_dir)] == [marker.id]
    crashed = 'fraisier_deployments_total{provider="bare_metal",status="crashed",fraise_type="api"}'
    assert sample_values(store.path).get(crashed, 0) == 0
    inflight.remove_marker(textfile_dir, marker.id)


@pytest.mark.parametrize("name, content", [
    ("99999999999-1-past", '{"provider": "bare_metal", "fraise_type": "api"}'),
    ("123-1-nested", "[" * 50_000 + "]" * 50_000),
    ("124-1-nested-object", '{"provider": ' + "[" * 50_000 + "]" * 50_000 + "}"),
], ids=["pid-past-pid_t", "nested-array", "nested-in-an-object"])
def test_a_hand_made_marker_of_any_shape_never_fails_a_merge_or_a_deployment(
    textfile_dir: Path, name: str, content: str
) -> None:
    """Bug: a marker whose PID is past pid_t made the probe raise OverflowError (kill(2)), one of JSON nested
    50,000 deep RecursionError: both escaped the merge, and `fraisier exec` died before running its command."""
    markers = textfile_dir / MARKER_DIRECTORY
    markers.mkdir(parents=True)
    (markers / name).write_text(content)
    result = subprocess.run(
        [sys.executable, "-m", "fraisier_textfile", "exec", "--provider", "bare_metal", "--fraise-type", "api",
         "--", "sh", "-c", "echo ran"],
        env=dict(os.environ, FRAISIER_TEXTFILE_DIR=str(textfile_dir)), capture_output=True, text=True, timeout=60,
    )
    assert (result.returncode, result.stdout) == (0, "ran\n"), result.stderr
    assert "Traceback" not in result.stderr
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values['fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'] == 1
