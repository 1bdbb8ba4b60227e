"""Long-lived processes write what they recorded within seconds, not only at exit: the background flush.

Each test runs a real recorder in a process of its own that stays alive (it waits for a line on stdin), and
polls the real textfile while that process runs: what is found there was written by the background flush, since
the process has not exited. The polls end at a generous deadline, as a failure, never as a timing claim.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.processes import REPOSITORY, THREADLESS_USER, Threadless, lock_held_elsewhere, threadless_user
from tests.values import samples_in as samples

DEPLOYMENTS = 'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'
DEADLINE = 60.0
"""Seconds a poll waits before it fails: far past the 0.2 s interval, for a loaded machine."""


@contextmanager
def alive(script: str, textfile_dir: Path, **environment: str) -> Iterator[subprocess.Popen[str]]:
    """Run ``script`` in a process that stays alive until the block ends (then it exits normally)."""
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY), "FRAISIER_TEXTFILE_DIR": str(textfile_dir),
           "FRAISIER_FLUSH_INTERVAL": "0.2", **environment}
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        ready = process.stdout.readline()
        assert ready.startswith("ready"), f"{ready!r} {process.stderr.read() if process.stderr else ''}"
        yield process
    finally:
        # Kept for the test: communicate() closes the pipes.
        process.stderr_text = process.communicate("exit\n" if process.poll() is None else None, timeout=60)[1]  # type: ignore[attr-defined]


def wait_for(path: Path, key: str, value: float, process: subprocess.Popen[str]) -> dict[str, float]:
    """Poll ``path`` until ``key`` has ``value``, asserting that ``process`` is still alive when it does."""
    deadline = time.monotonic() + DEADLINE
    while True:
        found = samples(path)
        if found.get(key) == value:
            assert process.poll() is None, "written at exit, not while the process ran"
            return found
        assert process.poll() is None, f"the process exited: {process.stderr.read() if process.stderr else ''}"
        assert time.monotonic() < deadline, f"{key} never reached {value} in {path}: {found.get(key)}"
        time.sleep(0.05)


RECORD_THEN_WAIT = """
    import sys
    from fraisier_textfile.recorder.recorder import MetricsRecorder

    recorder = MetricsRecorder(auto_flush=False)
    recorder.record_deployment_complete("bare_metal", "api", "success", 12.0)
    print("ready", flush=True)
    sys.stdin.readline()
    recorder.record_deployment_complete("bare_metal", "api", "success", 12.0)  # written at exit
"""


def test_a_recorder_without_auto_flush_writes_within_seconds_while_its_process_runs(tmp_path: Path) -> None:
    with alive(RECORD_THEN_WAIT, tmp_path) as process:
        wait_for(tmp_path / "fraisier.prom", DEPLOYMENTS, 1, process)
    assert process.returncode == 0, process.stderr_text  # type: ignore[attr-defined]
    assert samples(tmp_path / "fraisier.prom")[DEPLOYMENTS] == 2  # the exit wrote the second, the first once


def test_an_interval_of_zero_turns_the_background_flush_off(tmp_path: Path) -> None:
    script = """
        import sys, threading
        from fraisier_textfile.recorder.recorder import MetricsRecorder

        recorder = MetricsRecorder(auto_flush=False)
        recorder.record_deployment_complete("bare_metal", "api", "success", 12.0)
        print("ready", [thread.name for thread in threading.enumerate()], flush=True)
        sys.stdin.readline()
    """
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY), "FRAISIER_TEXTFILE_DIR": str(tmp_path),
           "FRAISIER_FLUSH_INTERVAL": "0"}
    completed = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], input="exit\n", text=True,
                               capture_output=True, env=env, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("ready") and "fraisier-textfile-flush" not in completed.stdout
    assert samples(tmp_path / "fraisier.prom")[DEPLOYMENTS] == 1  # written at exit, as before


def test_a_process_whose_record_calls_all_wrote_starts_no_thread(tmp_path: Path) -> None:
    """Auto-flushed calls write at once: nothing is left for a thread, and a thread of ours would make every
    later fork of the program a fork of a multi-threaded process."""
    script = """
        import threading
        from fraisier_textfile.metrics import get_metrics_recorder

        get_metrics_recorder().record_deployment_complete("bare_metal", "api", "success", 12.0)
        print(sorted(thread.name for thread in threading.enumerate()))
    """
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY), "FRAISIER_TEXTFILE_DIR": str(tmp_path)}
    completed = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], text=True, capture_output=True,
                               env=env, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "['MainThread']"
    assert samples(tmp_path / "fraisier.prom")[DEPLOYMENTS] == 1


def test_a_bad_interval_is_one_clear_line_and_the_default(tmp_path: Path) -> None:
    with alive(RECORD_THEN_WAIT, tmp_path, FRAISIER_FLUSH_INTERVAL="soon") as process:
        pass
    errors = process.stderr_text  # type: ignore[attr-defined]
    assert "FRAISIER_FLUSH_INTERVAL='soon' is not a number" in errors and "using the default, 5.0" in errors
    assert len(errors.splitlines()) == 1, errors  # one line, as every setting's typo
    assert samples(tmp_path / "fraisier.prom")[DEPLOYMENTS] == 2


def test_hand_overs_of_a_busy_lock_reach_the_file_once_the_lock_is_free(tmp_path: Path) -> None:
    """Another flock client (not our store, which merges hand-overs when it lets go) holds the lock while the
    record call runs: the call hands its event over. Once the lock is free, the background flush merges it,
    while the process still runs."""
    script = """
        import sys
        from fraisier_textfile.metrics import get_metrics_recorder

        sys.stdin.readline()
        get_metrics_recorder().record_deployment_complete("bare_metal", "api", "success", 12.0)
        print("ready", flush=True)
        sys.stdin.readline()
    """
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY), "FRAISIER_TEXTFILE_DIR": str(tmp_path),
           "FRAISIER_FLUSH_INTERVAL": "0.2"}
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdin is not None and process.stdout is not None
        with lock_held_elsewhere(tmp_path / "fraisier.prom.lock"):
            process.stdin.write("record\n")
            process.stdin.flush()
            assert process.stdout.readline().startswith("ready")
            assert DEPLOYMENTS not in samples(tmp_path / "fraisier.prom")
        wait_for(tmp_path / "fraisier.prom", DEPLOYMENTS, 1, process)
    finally:
        process.communicate("exit\n", timeout=60)
    assert process.returncode == 0
    assert samples(tmp_path / "fraisier.prom")[DEPLOYMENTS] == 1


def test_a_forked_child_flushes_its_own_events_and_never_its_parents(tmp_path: Path) -> None:
    script = """
        import os, sys
        from fraisier_textfile.recorder.recorder import MetricsRecorder

        recorder = MetricsRecorder(auto_flush=False)
        recorder.record_deployment_complete("bare_metal", "api", "success", 12.0)  # the parent's, pending
        child = os.fork()
        if child == 0:
            recorder.record_deployment_complete("bare_metal", "etl", "success", 12.0)
            print("ready", flush=True)
            sys.stdin.readline()
            os._exit(0)  # no exit handlers: what reached the file, a background flush wrote
        sys.stdin.readline()
        os.waitpid(child, 0)
        os._exit(0)
    """
    etl = 'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="etl"}'
    with alive(script, tmp_path) as process:
        wait_for(tmp_path / "fraisier.prom", etl, 1, process)  # the child's thread, started at the fork
        wait_for(tmp_path / "fraisier.prom", DEPLOYMENTS, 1, process)  # the parent's
    # The child never wrote the parent's pending event as its own: once each.
    assert samples(tmp_path / "fraisier.prom")[DEPLOYMENTS] == 1
    assert samples(tmp_path / "fraisier.prom")[etl] == 1


def test_stopping_a_process_while_its_background_flush_writes_counts_every_event_once(tmp_path: Path) -> None:
    """SIGTERM at random moments of a process whose background flush writes every 20 ms: its exit writes
    what the flush had not, whether or not a background write was under way, and nothing twice."""
    import random
    import signal

    script = """
        import signal, sys
        from fraisier_textfile.recorder.recorder import MetricsRecorder

        stopping = []
        signal.signal(signal.SIGTERM, lambda *arguments: stopping.append(True))
        recorder = MetricsRecorder(auto_flush=False)
        recorded = 0
        print("ready", flush=True)
        while not stopping:
            recorder.record_deployment_complete("bare_metal", "api", "success", 12.0)
            recorded += 1
        print(recorded, flush=True)
        sys.exit(0)  # normal exit: the rest is written at exit
    """
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY), "FRAISIER_TEXTFILE_DIR": str(tmp_path),
           "FRAISIER_FLUSH_INTERVAL": "0.02"}
    expected = 0
    for _ in range(8):
        process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env)
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        time.sleep(random.uniform(0.01, 0.3))  # a random moment, not a timing claim
        process.send_signal(signal.SIGTERM)
        out, errors = process.communicate(timeout=120)
        assert process.returncode == 0 and errors == "", errors
        expected += int(out)
        assert samples(tmp_path / "fraisier.prom")[DEPLOYMENTS] == expected


RECORD_ONCE_COUNTING_MERGES = """
        recorder = get_metrics_recorder()
        print("ready", flush=True)
        sys.stdin.readline()
        recorder.record_deployment_complete("bare_metal", "api", "success", 12.0)
        print("returned", merges.count(True), flush=True)  # the merges the call made itself
        sys.stdin.readline()
"""
"""The end of a script whose ``merges`` lists, for each merge, whether the main thread made it."""


HOLD_UNTIL_TOLD = """
    import fcntl, os, sys
    descriptor = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o664)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    print("held", flush=True)
    sys.stdin.readline()
    fcntl.flock(descriptor, fcntl.LOCK_UN)
    print("released", flush=True)
    sys.stdin.readline()
"""


@pytest.mark.parametrize(("interval", "merged_by_the_call"), [("3600", 0), ("0", 1)], ids=["thread", "no-thread"])
def test_a_record_call_that_hands_over_leaves_the_merge_to_its_background_thread(
    tmp_path: Path, interval: str, merged_by_the_call: int
) -> None:
    """Bug: a record call that found the lock busy handed its events over, then tried the lock once more and, when
    it was free by then, merged the whole file and every hand-over waiting itself: under a 16-writer race most of
    the slowest calls paid a hand-over and a merge. The try once more (which the hand-over invariant needs: the
    holder may have looked before the hand-over was there) is the process's background thread's now, woken at
    once, not after its flush interval: the call returns once its events are durably handed over.

    Here the holder, another process, lets the lock go right after the hand-over is published (the call is held
    there by the test), so that the call's own try once more would get it; the flush interval is an hour, so only
    the woken thread can be what merges while the process runs. With no background thread
    (FRAISIER_FLUSH_INTERVAL=0) the call makes the try itself, as before."""
    script = """
        import sys, threading
        from fraisier_textfile.metrics import get_metrics_recorder
        from fraisier_textfile.store import handovers, transaction

        publish, locked, merges = handovers.publish, transaction.Transaction._locked, []

        def published(*arguments, **keywords):
            publish(*arguments, **keywords)
            print("published", flush=True)
            sys.stdin.readline()  # the holder has let the lock go

        def counted(self, *arguments, **keywords):
            merges.append(threading.current_thread() is threading.main_thread())
            return locked(self, *arguments, **keywords)

        handovers.publish, transaction.Transaction._locked = published, counted
    """ + RECORD_ONCE_COUNTING_MERGES
    lock = tmp_path / "fraisier.prom.lock"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLD_UNTIL_TOLD), str(lock)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdin is not None and holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        with alive(script, tmp_path, FRAISIER_FLUSH_INTERVAL=interval) as process:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write("record\n")
            process.stdin.flush()
            assert process.stdout.readline() == "published\n"
            holder.stdin.write("release\n")
            holder.stdin.flush()
            assert holder.stdout.readline() == "released\n"
            process.stdin.write("go on\n")
            process.stdin.flush()
            assert process.stdout.readline() == f"returned {merged_by_the_call}\n"
            wait_for(tmp_path / "fraisier.prom", DEPLOYMENTS, 1, process)
    finally:
        holder.communicate("exit\n", timeout=60)
    assert samples(tmp_path / "fraisier.prom")[DEPLOYMENTS] == 1


HELD_AFTER_ITS_FIRST_MERGE = """
        import sys, threading
        from fraisier_textfile.metrics import get_metrics_recorder
        from fraisier_textfile.recorder import process
        from fraisier_textfile.store import transaction

        locked, merges = transaction.Transaction._locked, []

        def held(self, *arguments, **keywords):
            merges.append(threading.current_thread() is threading.main_thread())
            merge = locked(self, *arguments, **keywords)
            if len(merges) == 1:  # written, the lock not yet let go
                print("locked", flush=True)
                sys.stdin.readline()  # another process hands over meanwhile
            return merge

        transaction.Transaction._locked = held
"""
"""The start of a script whose first merge waits, holding the lock, for a line on stdin."""
MEANWHILE = 'fraisier_deployment_errors_total{provider="bare_metal",error_type="meanwhile"}'


def record_while_another_hands_over(process: subprocess.Popen[str], textfile_dir: Path) -> str:
    """Make ``process`` record once; while its merge holds the lock, another process hands over; return what
    ``process`` says once its call returned."""
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write("record\n")
    process.stdin.flush()
    assert process.stdout.readline() == "locked\n"
    hand_over_elsewhere(textfile_dir, "meanwhile")
    process.stdin.write("go on\n")
    process.stdin.flush()
    return process.stdout.readline()


def test_a_record_call_that_merges_leaves_the_hand_overs_that_arrived_meanwhile_to_its_background_thread(
    tmp_path: Path,
) -> None:
    """Bug: the call whose merge held the lock looked, once it let go, for the hand-overs that arrived meanwhile and
    merged them itself, a second whole merge paid by one record call. It still looks (the hand-over invariant: the
    writers of those found the lock held by it), and leaves the merge to its process's background thread, woken at
    once. Here another process hands over while the call holds the lock (the test holds the call there); the flush
    interval is an hour, so only the woken thread can be what merges it while the process runs."""
    script = HELD_AFTER_ITS_FIRST_MERGE + RECORD_ONCE_COUNTING_MERGES
    with alive(script, tmp_path, FRAISIER_FLUSH_INTERVAL="3600") as process:
        assert record_while_another_hands_over(process, tmp_path) == "returned 1\n"  # its own merge only
        values = wait_for(tmp_path / "fraisier.prom", MEANWHILE, 1, process)
    assert values[DEPLOYMENTS] == 1


NEVER_IN_PRACTICE = "1e10"
"""Seconds (about 317 years) that a setting may say, meaning "never" in practice, but past the longest wait a
thread can make (threading.TIMEOUT_MAX, about 292 years): a wait asked for that long raised OverflowError."""


def test_an_interval_longer_than_a_thread_can_wait_still_leaves_a_thread_that_merges_when_woken(
    tmp_path: Path,
) -> None:
    """Bug: with FRAISIER_FLUSH_INTERVAL past threading.TIMEOUT_MAX the background thread died at its first wait
    (a traceback on the program's stderr) and was still taken for running: every hand-over a record call left to
    it (the try once more, the hand-overs that arrived while the call held the lock) waited for the process's
    exit. Such an interval means no rounds in practice; the thread still merges when woken."""
    script = HELD_AFTER_ITS_FIRST_MERGE + RECORD_ONCE_COUNTING_MERGES
    with alive(script, tmp_path, FRAISIER_FLUSH_INTERVAL=NEVER_IN_PRACTICE) as process:
        assert record_while_another_hands_over(process, tmp_path) == "returned 1\n"
        wait_for(tmp_path / "fraisier.prom", MEANWHILE, 1, process)
    assert process.returncode == 0 and not process.stderr_text, process.stderr_text  # type: ignore[attr-defined]


def test_a_lock_wait_budget_longer_than_a_thread_can_wait_still_writes_at_exit(tmp_path: Path) -> None:
    """Bug: with FRAISIER_LOCK_WAIT_BUDGET past threading.TIMEOUT_MAX the exit hook's wait for the recorder raised
    OverflowError, and what the recorder held was never written: events lost, and two tracebacks."""
    with alive(RECORD_THEN_WAIT, tmp_path, FRAISIER_LOCK_WAIT_BUDGET=NEVER_IN_PRACTICE) as process:
        pass
    assert process.returncode == 0 and not process.stderr_text, process.stderr_text  # type: ignore[attr-defined]
    assert samples(tmp_path / "fraisier.prom")[DEPLOYMENTS] == 2


def test_hand_overs_left_to_the_background_thread_are_merged_at_exit_if_it_has_not_run(tmp_path: Path) -> None:
    """What a record call left to its background thread (here the merge of a hand-over that arrived while the call
    held the lock) is made at exit if the thread has not made it yet: the hand-overs' writers found the lock held
    by this process and left them to it. The thread is kept from waking, so only the exit can merge it."""
    script = HELD_AFTER_ITS_FIRST_MERGE + """
        process.background_flush.wake = lambda: None
""" + RECORD_ONCE_COUNTING_MERGES
    with alive(script, tmp_path, FRAISIER_FLUSH_INTERVAL="3600") as process:
        assert record_while_another_hands_over(process, tmp_path) == "returned 1\n"
    assert process.returncode == 0
    values = samples(tmp_path / "fraisier.prom")
    assert values[DEPLOYMENTS] == 1 and values[MEANWHILE] == 1


def hand_over_elsewhere(textfile_dir: Path, error_type: str) -> None:
    """One deployment error handed over by another process, through the store."""
    script = textwrap.dedent("""
        import sys
        from fraisier_textfile import TextfileStore
        from fraisier_textfile import changes as events
        from fraisier_textfile.changes import Changes
        changes = Changes()
        events.deployment_error(changes, "bare_metal", sys.argv[2])
        TextfileStore(sys.argv[1]).hand_over(changes)
    """)
    handed = subprocess.run([sys.executable, "-c", script, str(textfile_dir), error_type], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
    assert handed.returncode == 0, handed.stderr


@pytest.fixture
def without_threads() -> Iterator[Threadless]:
    with threadless_user() as threadless:
        yield threadless


def test_a_process_that_cannot_start_a_thread_hands_over_without_raising(
    without_threads: Threadless,
) -> None:
    """Bug: a record call that handed over (the lock busy) starts the process's background thread, and where no
    thread could be started (the user's task limit reached: a container's pids.max, systemd's TasksMax) the
    RuntimeError reached the deployment, after a line calling it a bug of ours. The call makes the try once
    more itself, as with FRAISIER_FLUSH_INTERVAL=0, and a later call tries to start the thread again."""
    command, environment, textfile_dir = without_threads
    script = textwrap.dedent("""
        import threading
        from fraisier_textfile.recorder.recorder import MetricsRecorder

        recorder = MetricsRecorder()
        recorder.record_deployment_complete("bare_metal", "api", "success", 12.0)
        recorder.record_deployment_complete("bare_metal", "api", "success", 12.0)
        print(threading.active_count(), flush=True)
    """)
    lock = textfile_dir / "fraisier.prom.lock"
    lock.touch()
    os.chown(lock, THREADLESS_USER, THREADLESS_USER)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLD_UNTIL_TOLD), str(lock)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdin is not None and holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        recorded = subprocess.run([*command, script], capture_output=True, text=True, env=environment, timeout=120)
    finally:
        holder.communicate("release\nexit\n", timeout=60)
    assert recorded.returncode == 0 and recorded.stdout == "1\n", recorded
    # The busy lock's notice, as anywhere, and nothing else.
    assert [line.split(" (")[0] for line in recorded.stderr.splitlines()] == [
        f"fraisier metrics: another process held {lock}"], recorded.stderr
    from fraisier_textfile import TextfileStore
    from fraisier_textfile.changes import Changes

    TextfileStore(textfile_dir).merge(Changes())  # the next merge of any process
    assert samples(textfile_dir / "fraisier.prom")[DEPLOYMENTS] == 2
