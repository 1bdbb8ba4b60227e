"""The store's life in its process (fraisier_textfile/store/process.py): every fork and exit hook and all the
per-process state of the store in one place, a forked child that never keeps its parent's deployments alive, and a
child that deletes the hand-overs it applied with a background thread of its own."""

from __future__ import annotations

import ast
import fcntl
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import fraisier_textfile
from fraisier_textfile import TextfileStore
from fraisier_textfile import changes as events
from fraisier_textfile.changes import Changes
from fraisier_textfile.store import handovers, markers
from tests.processes import (
    SLOW_IMPORT_IN_ANOTHER_THREAD,
    WITNESSED_LOCK,
    Threadless,
    ctrl_c_once_noted,
    threadless_user,
)
from tests.stores import handovers_left
from tests.values import samples_in

HOOK = re.compile(r"\b(register_at_fork|atexit)\b")


def test_every_fork_and_exit_hook_is_in_a_process_module() -> None:
    """One place each for the store, the recorder and the CLI (whose package module holds its process's life: its
    end runs the exit hooks): a newcomer asking what a fork or an exit does reads one module, and a hook cannot be
    added elsewhere unnoticed."""
    package = Path(fraisier_textfile.__file__).parent
    hooked = sorted(
        str(path.relative_to(package)) for path in package.rglob("*.py") if HOOK.search(path.read_text())
    )
    assert hooked == ["cli/__init__.py", "recorder/process.py", "store/process.py"]


DEPLOYER_WITH_CHILDREN = """
import os, subprocess, sys, threading, time
from pathlib import Path
from fraisier_textfile.store import markers, process

directory, when = Path(sys.argv[1]), sys.argv[2]
ready_to_read, ready = os.pipe()
written, fork_met = threading.Event(), threading.Event()
children = []
# WITNESSED LOCK

def fork():
    pid = os.fork()
    if pid == 0:
        os.write(ready, b"x")  # the fork hooks have run
        sys.stdin.readline()  # the child lives until the test closes stdin
        os._exit(0)
    os.read(ready_to_read, 1)
    children.append(pid)

if when == "while-made":  # another thread forks between the marker's lock and its being noted as held
    write_marker = markers._write_marker

    def write_then_wait(*arguments):
        descriptor = write_marker(*arguments)
        written.set()
        # The fork is made now if it may; it must find the marker's making under way and wait for it instead. Either
        # way the other thread has met this moment: waited for, never timed out on.
        assert fork_met.wait(60), "the other thread's fork never came"
        return descriptor

    def fork_when_written():
        written.wait()
        fork()
        fork_met.set()

    # process.creating, which the fork hook takes: fork_met once a fork finds it held (a marker's making).
    process.creating = WitnessedLock(process.creating, fork_met)
    markers._write_marker = write_then_wait
    # A daemon: should the marker's making fail, the deployer ends (the test then fails) instead of waiting for
    # a fork that never comes.
    forker = threading.Thread(target=fork_when_written, daemon=True)
    forker.start()
    marker = markers.create_marker(directory, "bare_metal", "api")
    forker.join()
else:  # the deployment forks once under way, and spawns a program that may inherit descriptors
    marker = markers.create_marker(directory, "bare_metal", "api")
    fork()
    children.append(subprocess.Popen(["sh", "-c", "read line"], close_fds=False).pid)
print(marker.id, *children, flush=True)
time.sleep(600)
""".replace("# WITNESSED LOCK\n", WITNESSED_LOCK)


def nobody_holds_the_lock_of(marker: Path) -> bool:
    """Probed as a reader of another user or PID namespace must (where /proc cannot say the writer is gone)."""
    descriptor = os.open(marker, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(descriptor)


@pytest.mark.parametrize("when", ["under-way", "while-made"])
def test_a_forked_child_never_keeps_its_parents_deployment_alive(textfile_dir: Path, when: str) -> None:
    """Once the deployer is killed nobody holds its marker's lock, while its children still run: a child forked
    while the deployment runs, a program it spawned, and a child forked by another thread between the marker's
    lock being taken and the marker being noted as held (that fork waits for the marker instead)."""
    deployer = subprocess.Popen([sys.executable, "-c", DEPLOYER_WITH_CHILDREN, str(textfile_dir), when],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert deployer.stdout is not None
        marker_id, *children = deployer.stdout.readline().split()
        marker = Path(markers.marker_directory(textfile_dir)) / marker_id
        assert not nobody_holds_the_lock_of(marker)
        deployer.send_signal(signal.SIGKILL)
        deployer.wait(timeout=60)
        for child in children:
            os.kill(int(child), 0)  # still running: they wait for the end of the stdin they share with it
        assert nobody_holds_the_lock_of(marker)
    finally:
        deployer.kill()
        deployer.wait()
        if deployer.stdin is not None:
            deployer.stdin.close()  # the children end on EOF
        if deployer.stdout is not None:
            deployer.stdout.close()


def test_a_forked_child_deletes_its_applied_hand_overs_with_a_remover_of_its_own(textfile_dir: Path) -> None:
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    for number in range(handovers.INLINE_REMOVALS * 2):
        changes = Changes()
        events.deployment_error(changes, "bare_metal", f"child_{number}")
        store.hand_over(changes)
    pid = os.fork()
    if pid == 0:
        try:
            TextfileStore(textfile_dir).merge(Changes())
            os._exit(0 if handovers.wait_for_removals() else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert handovers_left(textfile_dir) == []


# Caches of facts that hold in a child as well (see process.py's note), kept beside what computes them.
CACHES = {
    "handover_codec.py": {"_checked_series"},
    "walk.py": {"_vetted"},
    "signals.py": {"_signal_numbers"},
    "process_identity.py": {"_own_identity", "_own_context"},
    "handover_reuse.py": {"_paying"},  # what a filesystem is: as true in a forked child
}
MUTABLE = (ast.Set, ast.Dict, ast.List, ast.SetComp, ast.DictComp, ast.ListComp)


def per_process_state(path: Path) -> set[str]:
    """The module-level names a store module rebinds (``global``) or binds to a mutable container (but constant
    tables, named in capitals)."""
    tree = ast.parse(path.read_text())
    names = {name for node in ast.walk(tree) if isinstance(node, ast.Global) for name in node.names}
    for statement in tree.body:
        value = statement.value if isinstance(statement, (ast.Assign, ast.AnnAssign)) else None
        mutable = isinstance(value, MUTABLE) or (
            isinstance(value, ast.Call) and ast.unparse(value.func) in {"set", "dict", "list", "threading.Lock"}
        )
        if mutable and isinstance(statement, ast.Assign):
            names |= {target.id for target in statement.targets if isinstance(target, ast.Name)}
        elif mutable and isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            names.add(statement.target.id)
    return {name for name in names if not name.lstrip("_").isupper()}


def test_the_stores_per_process_state_is_in_process_py() -> None:
    """What a process keeps beyond its objects (held markers, what it has met, its background thread) is in one
    module, whose fork hook sees all of it: state kept anywhere else is a fork or an exit nobody thought about."""
    store = Path(fraisier_textfile.__file__).parent / "store"
    elsewhere = {
        path.name: sorted(per_process_state(path) - CACHES.get(path.name, set()))
        for path in sorted(store.glob("*.py")) if path.name != "process.py"
    }
    assert {name: state for name, state in elsewhere.items() if state} == {}


MERGING_THREAD_THEN_FORK = """
import os, sys, threading, time
from fraisier_textfile import TextfileStore
from fraisier_textfile import changes as events
from fraisier_textfile.changes import Changes
from fraisier_textfile.store import transaction

locked = transaction.Transaction._locked
holding = threading.Event()

def held(self, *arguments, **keywords):
    holding.set()
    time.sleep(3600)  # the merge holds the lock until the test kills this process
    return locked(self, *arguments, **keywords)

transaction.Transaction._locked = held
changes = Changes()
events.deployment_error(changes, "bare_metal", "merging")
threading.Thread(target=TextfileStore(sys.argv[1]).merge, args=(changes,), daemon=True).start()
holding.wait()
started, running = os.pipe()
if os.fork() == 0:
    os.write(running, b"!")  # past the fork hooks
    time.sleep(3600)  # a child that outlives its parent (a worker, a daemon)
    os._exit(0)
os.read(started, 1)
print("forked", flush=True)
time.sleep(3600)
"""


def test_a_child_forked_while_another_thread_merges_does_not_keep_the_lock_once_its_parent_dies(
    tmp_path: Path,
) -> None:
    """Bug: a process forked while another of its threads held the textfile's lock (the recorder's background thread
    merges hand-overs, a server's threads record) and its child shared the lock's open file description: if the
    parent died before letting go (a SIGKILL, the OOM killer), the lock stayed held for as long as the child
    lived, and every writer of every process timed out or handed over, with nobody to merge. The child closes
    its copy at once (without unlocking: the parent may still be merging), as it does a deployment's marker."""
    parent = subprocess.Popen([sys.executable, "-c", MERGING_THREAD_THEN_FORK, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline() == "forked\n"
        descriptor = os.open(tmp_path / "fraisier.prom.lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # the parent's merge holds it
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            parent.kill()
            parent.wait(timeout=60)
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the child, still alive, holds nothing
        finally:
            os.close(descriptor)
    finally:
        os.killpg(parent.pid, signal.SIGKILL)  # the child too
        parent.wait(timeout=60)


HANDED_OVER = 'fraisier_deployment_errors_total{provider="bare_metal",error_type="handed_over"}'


@pytest.fixture
def without_threads() -> Iterator[Threadless]:
    with threadless_user() as threadless:
        yield threadless


def test_a_process_that_cannot_start_a_thread_deletes_the_hand_overs_it_applied_itself(
    without_threads: Threadless,
) -> None:
    """Bug: a merge that applied more than a few hand-overs leaves their deletion to the process's background
    thread, and where none could be started (the user's task limit reached: a container's pids.max, systemd's
    TasksMax) the RuntimeError failed the merge after its rename, and the thread was taken for started: every
    later deletion was queued for nobody, and a wait for them (``fraisier textfile refresh``) waited its
    whole timeout. They are deleted in the merge's own thread then."""
    command, environment, textfile_dir = without_threads
    script = textwrap.dedent("""
        import os
        from fraisier_textfile import TextfileStore
        from fraisier_textfile import changes as events
        from fraisier_textfile.changes import Changes
        from fraisier_textfile.store import handovers

        store = TextfileStore(os.environ["FRAISIER_TEXTFILE_DIR"])
        for round in range(2):
            for _ in range(handovers.INLINE_REMOVALS + 1):
                changes = Changes()
                events.deployment_error(changes, "bare_metal", "handed_over")
                store.hand_over(changes)
            store.merge(Changes())
        print(handovers.wait_for_removals(timeout=60), flush=True)
    """)
    merged = subprocess.run([*command, script], capture_output=True, text=True, env=environment, timeout=120)
    assert merged.returncode == 0 and merged.stdout == "True\n" and not merged.stderr, merged
    assert handovers_left(textfile_dir) == []
    assert samples_in(textfile_dir / "fraisier.prom")[HANDED_OVER] == 2 * (handovers.INLINE_REMOVALS + 1)


def test_a_process_that_cannot_start_a_thread_makes_each_rename_durable_before_its_merge_returns(
    without_threads: Threadless,
) -> None:
    """Where no thread can be had (the task limit), the directory's fsync that a merge would leave to another
    thread is made in the merge's own thread, before it returns: never skipped, never left owed."""
    command, environment, textfile_dir = without_threads
    script = textwrap.dedent("""
        import os, stat
        from fraisier_textfile import TextfileStore
        from fraisier_textfile import changes as events
        from fraisier_textfile.changes import Changes
        from fraisier_textfile.store import process

        synced = []
        fsync = os.fsync

        def noting_fsync(descriptor):
            fsync(descriptor)
            if stat.S_ISDIR(os.fstat(descriptor).st_mode):
                synced.append(descriptor)

        os.fsync = noting_fsync
        store = TextfileStore(os.environ["FRAISIER_TEXTFILE_DIR"])
        for _ in range(3):  # the first merge reads no file; the others replace the version written before
            synced.clear()
            changes = Changes()
            events.deployment_error(changes, "bare_metal", "timeout")
            store.merge(changes)
            print(len(synced), len(process.syncing), flush=True)
    """)
    merged = subprocess.run([*command, script], capture_output=True, text=True, env=environment, timeout=120)
    assert merged.returncode == 0 and not merged.stderr, merged
    assert merged.stdout.split("\n")[:3] == ["1 0"] * 3  # each merge synced the directory once, nothing owed
    assert samples_in(textfile_dir / "fraisier.prom")[
        'fraisier_deployment_errors_total{provider="bare_metal",error_type="timeout"}'] == 3


STUCK_DIRECTORY_FSYNC_IN_THE_CLI = """
import os, stat, sys, time

directory, noted, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
fsync = os.fsync

def stuck_fsync(descriptor):
    # The directory's fsync of the command's merge, left to another thread, takes ``seconds`` (a disk that stalls:
    # what no test can make for real on demand); noted when it starts and when it is done.
    directory_synced = stat.S_ISDIR(os.fstat(descriptor).st_mode)
    if directory_synced:
        with open(noted, "w") as file:
            file.write("started")
        time.sleep(seconds)
    fsync(descriptor)
    if directory_synced:
        with open(noted, "w") as file:
            file.write("synced")

os.fsync = stuck_fsync
sys.argv = ["fraisier", "--textfile-dir", directory, "record", "deployment", "--provider", "bare_metal",
            "--fraise-type", "api", "--status", "success", "--duration", "1"]
from fraisier_textfile.cli.dispatch import script

script()
"""


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_during_the_exits_wait_for_a_stalled_fsync(textfile_dir: Path, presses: int) -> None:
    """Bug: Ctrl-C while a command waited at exit for the fsync that makes its last rename durable (up to
    SYNC_EXIT_WAIT) printed a KeyboardInterrupt traceback ("Exception ignored in atexit callback") and skipped the
    rest of the exit's waits. Now the first Ctrl-C says, in one line, what the wait is for and that a second one
    exits now, and the wait goes on; a second ends the waits at once, in one line too. Either way the event
    recorded is in the file, and no traceback is printed."""
    textfile_dir.mkdir()
    noted = textfile_dir.parent / "noted"  # the fsync under way: the command has merged, and waits at its exit
    stall = 3.0 if presses == 1 else 600.0
    status, stderr = ctrl_c_once_noted([sys.executable, "-c", STUCK_DIRECTORY_FSYNC_IN_THE_CLI, str(textfile_dir),
                                        str(noted), str(stall)], noted, presses)
    assert status == 0, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert "Ctrl-C again" in stderr, stderr
    assert noted.read_text() == ("synced" if presses == 1 else "started")  # waited for, or not
    assert samples_in(textfile_dir / "fraisier.prom")[
        'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'] == 1


FORKS_WHILE_A_THREAD_IMPORTS = textwrap.dedent("""
    import importlib.util, os, signal, subprocess, sys, threading, time
    witness, directory, thread = sys.argv[1:4]
    # SLOW IMPORT
    os.environ["FRAISIER_FLUSH_INTERVAL"] = "0.05"
    from fraisier_textfile import TextfileStore
    from fraisier_textfile import changes as events
    from fraisier_textfile.changes import Changes

    if thread == "flush":  # its first round hands the events over: a hand-over's codec, imported in that thread
        from fraisier_textfile import MetricsRecorder

        recorder = MetricsRecorder(directory, auto_flush=False)
        recorder.record_deployment_complete("bare_metal", "api", "success", 1.0)
    else:  # the removal thread, deleting the hand-overs a merge applied: its first log line imports logging there
        store = TextfileStore(directory)
        for _ in range(8):
            changes = Changes()
            events.deployment_error(changes, "bare_metal", "handed")
            store.hand_over(changes, durable=False)
        # Immutable (as root, no mode refuses): the deletions fail, and the thread says so.
        subprocess.run(["chattr", "+i", os.path.join(directory, ".fraisier-handover")], check=True)
        store.merge(Changes())
    assert importing.wait(30), "the thread did not import the witness"
    pid = os.fork()
    if pid == 0:
        # What the child needs of the witness: a log line's logging, a hand-over's codec (a write in the directory
        # made immutable fails: the codec was imported by then).
        import logging
        changes = Changes()
        events.deployment_error(changes, "bare_metal", "child")
        try:
            TextfileStore(directory).hand_over(changes, durable=False)
        except Exception:
            pass
        os._exit(0)
    done = ended_within(pid, 20)
    print("child done" if done else "child hung", flush=True)
""").replace("# SLOW IMPORT\n", SLOW_IMPORT_IN_ANOTHER_THREAD)


@pytest.mark.parametrize(("thread", "witness"), [("flush", "fraisier_textfile.store.handover_codec"),
                                                ("removal", "logging")])
def test_a_child_forked_while_a_thread_of_ours_imports_does_not_hang(
    textfile_dir: Path, thread: str, witness: str
) -> None:
    """Bug (note18): a fork while one of the package's threads (the background flush, the removal of applied
    hand-overs) was inside its first import of a module gave the child that module's import lock, held by a thread
    the child does not have: the child's first use of the module (a hand-over's codec, in a record call) waited for
    ever, and so did its deployment. attack9 fixed the case of loading ahead's thread only."""
    textfile_dir.mkdir()
    try:
        result = subprocess.run([sys.executable, "-c", FORKS_WHILE_A_THREAD_IMPORTS, witness, str(textfile_dir),
                                 thread], capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(["chattr", "-R", "-i", str(textfile_dir)], check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "child done\n", result.stderr


FORKS_WHILE_A_REMOVAL_STALLS = textwrap.dedent("""
    import os, sys, threading
    from fraisier_textfile import TextfileStore, imports
    from fraisier_textfile import changes as events
    from fraisier_textfile.changes import Changes

    directory = sys.argv[1]
    stalled, go_on = threading.Event(), threading.Event()

    def stalling(call):
        # The background thread's removals of applied hand-overs (deleted, or renamed for reuse) meet a disk that
        # stalls (what no test can make for real on demand): each waits until the forks are done.
        def stalled_call(*arguments, **keywords):
            if threading.current_thread() is not threading.main_thread():
                stalled.set()
                go_on.wait(120)
            return call(*arguments, **keywords)
        return stalled_call

    os.unlink, os.rename = stalling(os.unlink), stalling(os.rename)
    store = TextfileStore(directory)
    for _ in range(8):  # more than a merge deletes itself: the store's background thread deletes them
        changes = Changes()
        events.deployment_error(changes, "bare_metal", "handed")
        store.hand_over(changes, durable=False)
    store.merge(Changes())
    assert stalled.wait(30), "the background thread did not start deleting"

    def fork():
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)

    imports.FORK_WAIT = 0.1
    fork()  # waits for the job under way, then gives up
    imports.FORK_WAIT = 3600.0  # a fork that waited for that same job again would wait for it in full
    for _ in range(3):
        fork()
    print("forked", flush=True)
    go_on.set()
""")


def test_forks_during_a_stalled_background_job_wait_for_it_once(textfile_dir: Path) -> None:
    """Bug: a fork waits (at most imports.FORK_WAIT) for a job of the package's threads under way, which may import;
    one stalled on the disk (the deletion of applied hand-overs, a flush round's merge) made every fork of the program
    wait again, a second each: a pre-forking server or a multiprocessing pool started then paid a second per child.
    A fork that gave up on a job does not wait for that same job again; the job a fork may meet next is waited for."""
    textfile_dir.mkdir()
    result = subprocess.run([sys.executable, "-c", FORKS_WHILE_A_REMOVAL_STALLS, str(textfile_dir)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "forked\n", result.stderr
