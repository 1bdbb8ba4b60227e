"""Deployments in flight counted by every merge, across users: the lock a live deployer holds on its marker,
seen by real processes of other users under a /proc mounted with hidepid=2, killed with SIGKILL, and a marker
of any shape never failing a merge or a deployment."""

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
from fraisier_textfile.store.markers import MARKER_DIRECTORY

from .processes import binary, require
from .stores import ListingOrder
from .values import sample_values

WORKERS = Path(__file__).with_name("marker_workers.py")
ACTIVE = 'fraisier_active_deployments{provider="bare_metal"}'
SUCCESS = 'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'
CRASHED = 'fraisier_deployments_total{provider="bare_metal",status="crashed",fraise_type="api"}'
GROUP, DEPLOYER, OBSERVER = "fraisier-lv", "fraisier-lv-deployer", "fraisier-lv-observer"
# A /proc of its own, in a mount namespace of its own: the host's /proc is never remounted.
HIDDEN_PROC = 'mount -t proc -o hidepid=2 proc /proc && exec "$@"'



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
    with the process that started it (see store/markers.py's note on fork and exec)."""
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


def test_a_merge_with_no_marker_directory_looks_for_it_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Most merges have no deployment in flight: the markers' directory, missing, is looked for by the probe, and
    looked for again only when the changes retire a marker that may have been made since."""
    from fraisier_textfile.store import fs

    recorder = fraisier_textfile.MetricsRecorder(tmp_path)
    recorder.record_deployment_complete("bare_metal", "api", "success", 1.0)
    looked: list[str] = []
    subdirectory = fs.Directory.subdirectory

    def noting(directory: fs.Directory, name: str, *arguments: object, **options: object) -> fs.Directory | None:
        looked.append(name)
        return subdirectory(directory, name, *arguments, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(fs.Directory, "subdirectory", noting)
    recorder.record_deployment_complete("bare_metal", "api", "success", 1.0)
    assert looked.count(MARKER_DIRECTORY) == 1
    with recorder.track_deployment("bare_metal", "api"):  # started and ended: its end retires its marker
        pass
    assert sample_values(tmp_path / "fraisier.prom")[
        'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'] == 3


def test_a_deployment_started_and_ended_while_a_merge_runs_its_marker_made_after_the_probe_counts_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merge finds no marker (no directory for them yet); then, before it lists the hand-overs, a deployment in
    another process makes its marker, hands over its start and its end (the lock is the merge's) and is killed
    before it releases its marker. The merge applies both and must list the marker as retired, which it looks for
    only because its changes retire one: else the next merger finds a dead marker and counts a crash as well."""
    from fraisier_textfile import TextfileStore
    from fraisier_textfile.changes import Changes

    script = f"""
import os, signal
from fraisier_textfile import TextfileStore
from fraisier_textfile import changes as events
from fraisier_textfile.changes import Changes
from fraisier_textfile.store import deployments

store = TextfileStore({str(tmp_path)!r})
deployment = store.start_deployment("bare_metal", "api", lambda error, where: print(error))
changes = Changes()
events.deployment_started(changes, "bare_metal", "api")
events.deployment_complete(changes, "bare_metal", "api", "success", 1.0)
events.deployment_ended(changes, "bare_metal", deployment)
deployments.Deployment.written = lambda self: os.kill(os.getpid(), signal.SIGKILL)
store.hand_over(changes)
"""
    store = TextfileStore(tmp_path)
    store.merge(Changes())
    assert store.markers is not None
    probe = store.markers.collect
    deployed: list[int] = []

    def probe_then_deploy(merge: object) -> object:
        collected = probe(merge)  # type: ignore[arg-type]
        if not deployed:
            deployed.append(subprocess.run([sys.executable, "-c", script], timeout=60).returncode)
        return collected

    monkeypatch.setattr(store.markers, "collect", probe_then_deploy)
    store.merge(Changes())
    assert deployed == [-signal.SIGKILL]
    for _ in range(2):
        TextfileStore(tmp_path).merge(Changes())
        values = sample_values(tmp_path / "fraisier.prom")
        assert (values[ACTIVE], values[SUCCESS], values.get(CRASHED, 0.0)) == (0, 1, 0)
    assert os.listdir(tmp_path / MARKER_DIRECTORY) == []


def test_a_retired_marker_leaves_the_list_only_once_its_removal_is_durable(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for hand-overs (test_handover_reuse): a merge drops from ``retired-markers`` the ids whose marker files
    are gone. On an ext4 without a journal nothing orders the marker directory's blocks after the textfile's: were
    the new file durable and the marker's removal not, a power loss would bring back a marker of a deployment the
    file counts as ended, listed no more: counted crashed as well. So the marker directory is fsynced after the
    removal and before the rename of the file that drops its id. Recorded by wrapping os's functions."""
    from fraisier_textfile import TextfileStore
    from fraisier_textfile import changes as events
    from fraisier_textfile.changes import Changes
    from fraisier_textfile.store.inflight import RETIRED_MARKERS

    store = TextfileStore(textfile_dir)
    deployment = store.start_deployment("bare_metal", "api", lambda error, where: pytest.fail(str(error)))
    order = ListingOrder(monkeypatch, textfile_dir / MARKER_DIRECTORY, store.path.name, RETIRED_MARKERS.key)
    steps = order.steps
    end = Changes()
    events.deployment_complete(end, "bare_metal", "api", "success", 1.0)
    events.deployment_ended(end, "bare_metal", deployment)
    store.merge(end)  # lists the marker as retired, removes it after its commit
    store.merge(Changes())  # finds it gone: drops it from the list
    monkeypatch.undo()
    listings = [set(value.split()) for step, value in steps if step == "listed"]
    assert len(listings) == 2 and len(listings[0]) == 1 and not listings[1], steps
    [removed] = [value for step, value in steps if step == "removed"]
    assert {removed} == listings[0], steps
    removal = steps.index(("removed", removed))
    dropping = [index for index, (step, _) in enumerate(steps) if step == "listed"][1]
    assert ("sync", "") in steps[removal:dropping], steps
    values = sample_values(store.path)
    assert values.get('fraisier_deployments_total{provider="bare_metal",status="crashed",fraise_type="api"}', 0) == 0
