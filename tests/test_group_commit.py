"""Group commit (store/group_commit.py): a merge or a hand-over, and what each owes the others' hand-overs: the
holder's look after it lets go, its late merges within their budget, the backlog, the directory opened once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fraisier_textfile import TextfileStore
from fraisier_textfile import catalogue as c
from fraisier_textfile import changes as events
from fraisier_textfile.changes import Changes
from fraisier_textfile.store import fs, handovers

from .processes import lock_held_elsewhere
from .stores import handovers_left, record
from .test_handovers import error_count
from .test_lock import lock_files_open, start_holder
from .values import sample_values


def directories_opened(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The paths the store opens and checks from now on (fs.open_directory), in order."""
    from fraisier_textfile.store import fs

    opened: list[Path] = []
    open_directory = fs.open_directory

    def counting(path: Path, **options: object) -> fs.Directory | None:
        opened.append(Path(path))
        return open_directory(path, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(fs, "open_directory", counting)
    return opened


def test_a_merge_and_its_look_for_late_hand_overs_open_and_check_the_directory_once(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path is resolved and checked (for root: every directory on the way) once per merge call: the look
    for hand-overs that arrived while the lock was held goes through the directory already open."""
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    opened = directories_opened(monkeypatch)
    changes = Changes()
    events.deployment_complete(changes, "bare_metal", "api", "success", 1.0)
    store.merge(changes)
    assert opened == [textfile_dir]


def test_a_record_call_that_merges_opens_and_checks_the_directory_once_its_look_included(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recorder's call leaves the merge of late hand-overs to its background thread, but not the look for them:
    the call makes it through the directory its merge opened, not by opening and checking the path again."""
    from fraisier_textfile import MetricsRecorder

    recorder = MetricsRecorder(textfile_dir)
    recorder.record_deployment_complete("bare_metal", "api", "success", 1.0)
    opened = directories_opened(monkeypatch)
    recorder.record_deployment_complete("bare_metal", "api", "success", 1.0)
    assert opened == [textfile_dir]
    assert sample_values(textfile_dir / "fraisier.prom")[
        'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'] == 2


BACKLOG_THEN_EXIT = """
import os, sys
from fraisier_textfile import TextfileStore
TextfileStore(sys.argv[1]).merge_backlog()
os._exit(0)  # no exit hook: what merge_backlog left to a background thread is not done
"""


def test_merging_the_backlog_applies_every_hand_over_and_leaves_none_of_their_files(textfile_dir: Path) -> None:
    """``fraisier textfile refresh``'s merge: every hand-over waiting is applied, however many merges that takes,
    and their files are gone when it returns (those past a few are deleted by a background thread, which it
    waits for), so that the directory a refresh leaves is tidy without its caller knowing of hand-overs."""
    from fraisier_textfile.store import handovers

    store = TextfileStore(textfile_dir)
    count = handovers.HANDOVERS_PER_MERGE + 100
    for number in range(count):
        changes = Changes()
        events.deployment_error(changes, "bare_metal", f"event_{number}")
        store.hand_over(changes, durable=False)
    merged = subprocess.run([sys.executable, "-c", BACKLOG_THEN_EXIT, str(textfile_dir)], capture_output=True,
                            text=True, timeout=120)
    assert merged.returncode == 0, merged.stderr
    left = handovers_left(textfile_dir)
    assert left == []
    values = sample_values(store.path)
    assert sum(values[f'{c.DEPLOYMENT_ERRORS.name}{{provider="bare_metal",error_type="event_{number}"}}']
               for number in range(count)) == count
def test_a_merge_call_with_hand_overs_arriving_all_along_merges_them_within_its_budget_and_at_least_once(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under contention hand-overs keep arriving: the call that holds the lock looks for them after releasing it
    and merges them at least once (the hand-over invariant), then only while the merge it would start, as long
    as the last one took, ends within LATE_MERGE_BUDGET of the call's start. Each merge here takes 10 ms of a
    clock of the test's and brings a new hand-over."""
    from fraisier_textfile.store import group_commit as store_module

    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    now = [0.0]

    class Clock:
        @staticmethod
        def monotonic() -> float:
            return now[0]

        time = staticmethod(time.time)  # handovers_waiting's: the hand-over directory's times are the wall clock's

    monkeypatch.setattr(store_module, "time", Clock)
    monkeypatch.setattr(handovers, "LATE_MERGE_BUDGET", 0.025)
    run = store.transaction.run
    merges = []

    def slow_run(changes: Changes, timeout: float, textfile: fs.Directory) -> None:
        run(changes, timeout, textfile)
        merges.append(now[0])
        now[0] += 0.010
        arriving = Changes()
        events.deployment_error(arriving, "bare_metal", f"late_{len(merges)}")
        TextfileStore(textfile_dir).hand_over(arriving, durable=False)

    monkeypatch.setattr(store.transaction, "run", slow_run)
    store.merge(Changes())
    # The call's own merge (0-10 ms) and the late ones at 10-20 ms: one more (20-30 ms) would end past 25 ms.
    assert merges == [0.0, 0.010]
    assert store.handovers_waiting()  # left for the next merge of any process


def test_a_call_that_never_held_the_lock_leaves_the_look_for_late_hand_overs_to_the_holder(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bug: a call that found the lock busy and handed over listed the hand-over directory twice (after its
    failed try, and after its try once more), looking for hand-overs that arrived "while it held the lock",
    which it never held: under a 16-writer race, the slowest calls' largest share, waiting on the directory that
    every writer changes. The look is the holder's (the invariant in GroupCommit.merge_late_handovers): the
    lock's holder, here another process, looks after releasing it, and the hand-over is merged once."""
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    looks = []
    waiting_in = store.handovers.waiting_in

    def counted(textfile: fs.Directory) -> bool:
        looks.append(textfile)
        return waiting_in(textfile)

    monkeypatch.setattr(store.handovers, "waiting_in", counted)
    changes = Changes()
    events.deployment_error(changes, "bare_metal", "handed")
    with lock_held_elsewhere(store.lock_path):
        assert store.merge_or_hand_over(changes, wait=0) is False
    assert looks == []
    assert not changes
    store.merge(Changes())  # a holder: it looks after releasing the lock, and finds nothing left
    assert len(looks) == 1
    assert error_count(sample_values(store.path), "handed") == 1


def test_a_call_that_hands_over_opens_and_checks_the_textfile_directory_once(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """merge_or_hand_over opened and checked the textfile directory three times (its try, its hand-over, its try
    once more): for root, each check walks every directory of the path. One descriptor, checked once, serves the
    whole call, as it already served a merge and the late merges after it."""
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    opened = []
    open_directory = fs.open_directory

    def counted(*arguments: object, **keywords: object) -> fs.Directory | None:
        opened.append(arguments)
        return open_directory(*arguments, **keywords)  # type: ignore[arg-type]

    monkeypatch.setattr(fs, "open_directory", counted)
    changes = Changes()
    events.deployment_error(changes, "bare_metal", "handed")
    with lock_held_elsewhere(store.lock_path):
        assert store.merge_or_hand_over(changes, wait=0) is False
    assert len(opened) == 1
    store.merge(Changes())
    assert error_count(sample_values(store.path), "handed") == 1


def test_threads_sharing_a_store_each_read_what_their_own_call_left(textfile_dir: Path) -> None:
    """Bug: what merge_or_hand_over leaves for its caller (``joined``, ``late_handovers``), and whether a merge held
    the lock (``Transaction.held_lock``, which decides the look for late hand-overs after a failed merge), were
    attributes of the store, shared by its threads: a thread reading them after its call could get the last call
    of another thread (a joined call taken for a busy lock; a merge owed for the hand-overs waiting, not made).
    Each thread reads its own."""
    import threading

    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    waiting = Changes()
    events.deployment_error(waiting, "bare_metal", "waiting")
    store.hand_over(waiting)  # the hand-overs' counter says some wait: a call with join=True joins them
    read: dict[str, tuple[bool, bool, bool]] = {}
    first_called, second_called = threading.Event(), threading.Event()
    waited: list[bool] = []

    def call(name: str, join: bool) -> None:
        changes = Changes()
        events.deployment_error(changes, "bare_metal", name)
        store.merge_or_hand_over(changes, wait=0, join=join, follow_up=False)

    def outcome() -> tuple[bool, bool, bool]:
        return store.joined, store.late_handovers, store.transaction.held_lock

    def first() -> None:
        call("first", join=True)  # joins: hands over without trying the lock, which it then finds free
        first_called.set()
        waited.append(second_called.wait(60))  # the first reads after the second's call, never before
        read["first"] = outcome()

    def second() -> None:
        call("second", join=False)  # merges everything waiting, the lock free
        read["second"] = outcome()
        second_called.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    assert first_called.wait(10)
    threads[1].start()
    for thread in threads:
        thread.join(60)
    assert waited == [True] and not any(thread.is_alive() for thread in threads)
    assert read["first"] == (True, True, False)  # joined; a merge owed (the lock was free); never held it
    assert read["second"] == (False, False, True)  # merged, nothing left waiting; held the lock
    store.merge_waiting()
    values = sample_values(store.path)
    assert [error_count(values, name) for name in ("waiting", "first", "second")] == [1, 1, 1]



class Interrupted(Exception):
    pass


def test_a_signal_while_a_call_waits_for_a_busy_lock_is_handled_in_the_wait_before_any_hand_over(
    textfile_dir: Path,
) -> None:
    """The call's hold of signal handlers (one for the whole merge_or_hand_over) still lets the lock wait run them:
    an alarm whose handler raises ends the wait at once, the changes still the caller's and nothing handed over, as
    when the merge's own hold was the outer one; not at the end of the call, after a hand-over the caller never
    knew of."""
    import signal

    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    changes = Changes()
    events.deployment_error(changes, "bare_metal", "interrupted")

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with lock_held_elsewhere(store.lock_path):
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            with pytest.raises(Interrupted):
                store.merge_or_hand_over(changes, wait=30, follow_up=False)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert changes
    assert not (textfile_dir / handovers.HANDOVER_DIRECTORY).exists() or handovers_left(textfile_dir) == []


INTERRUPTED_AT_EACH_STEP = """
import fcntl, json, os, signal, sys
from fraisier_textfile import TextfileStore
from fraisier_textfile import changes as events
from fraisier_textfile.changes import Changes
from fraisier_textfile.store import closing, process

class Interrupted(Exception):
    pass

def handler(signum, frame):
    raise Interrupted

def merge(store, reason, call):
    changes = Changes()
    events.deployment_error(changes, "bare_metal", reason)
    if call == "merge":
        store.merge(changes)
    else:
        store.merge_or_hand_over(changes, 5)
    return changes

def count_of(directory, reason):
    with open(os.path.join(directory, "fraisier.prom")) as file:
        for line in file:
            if f'error_type="{reason}"' in line and not line.startswith("#"):
                return float(line.split()[-1])
    return 0.0

call, base = sys.argv[1], sys.argv[2]
signal.signal(signal.SIGUSR1, handler)
problems, step = [], 0
while True:
    step += 1
    directory = os.path.join(base, str(step))
    os.mkdir(directory)
    store = TextfileStore(directory)
    merge(store, "warm", call)
    returns = 0

    def interrupt(frame, event, argument):
        global returns
        if event == "c_return":
            returns += 1
            if returns == step:  # right after the step-th return from a C function within the call
                sys.setprofile(None)
                signal.raise_signal(signal.SIGUSR1)

    changes = Changes()
    events.deployment_error(changes, "bare_metal", "interrupted")
    sys.setprofile(interrupt)
    try:
        if call == "merge":
            store.merge(changes)
        else:
            store.merge_or_hand_over(changes, 5)
    except Interrupted:
        pass
    finally:
        sys.setprofile(None)
    if returns < step:
        break  # the call ended before its step-th return: every step was interrupted
    if not process.wait_for_syncs(10):
        problems.append([step, "the rename's fsync owed, with no thread to make it"])
    if closing._handing.pending or closing._handing.depth or process.holding_signals is not None:
        problems.append([step, "a hold or pending work left"])
    other = os.open(os.path.join(directory, "fraisier.prom.lock"), os.O_RDWR)
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        problems.append([step, "the lock left held"])
    os.close(other)
    store.merge_backlog()
    if count_of(directory, "interrupted") != (0.0 if changes else 1.0):
        problems.append([step, "not counted once, nor left to the caller"])
print(json.dumps({"steps": step, "problems": problems}))
"""


@pytest.mark.parametrize("call", ["merge", "merge_or_hand_over"])
def test_a_handler_that_raises_at_any_step_of_a_call_leaves_nothing_held_or_owed(tmp_path: Path, call: str) -> None:
    """A real signal whose handler raises (Ctrl-C), landing right after each return from a C function within a record
    call in turn: whatever step it lands at, the call leaves the lock free, no hold of the handlers, no rename whose
    fsync nobody makes, and the event either in the file once or still in the caller's changes (to record again)."""
    done = subprocess.run([sys.executable, "-c", INTERRUPTED_AT_EACH_STEP, call, str(tmp_path)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["steps"] > 100  # the call was interrupted at each of its steps
    assert result["problems"] == []


def test_an_event_recorded_by_a_handler_while_a_call_waits_for_the_lock_is_merged_once_and_raises_no_false_alarm(
    textfile_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A signal lands while a record call waits for the lock another process holds; its handler, run at the wait's safe
    point, records an event itself (the lock is reentrant) once the other process let go. Both events are merged once,
    the call that waited takes the lock after the handler's call without a warning of a lock file "removed or
    replaced" (it was not) and without merging again, and one lock file stays open for the next merge."""
    store = TextfileStore(textfile_dir)
    record(store, events.deployment_error, "bare_metal", "warm")
    holder = start_holder(store.lock_path)

    def records(signum: int, frame: object) -> None:
        assert holder.stdin is not None
        holder.stdin.close()  # lets go: the handler's call gets the lock
        changes = Changes()
        events.deployment_error(changes, "bare_metal", "by-the-handler")
        assert store.merge_or_hand_over(changes, 30)

    def signal_in_the_wait(frame: object, event: str, argument: object) -> None:
        if event == "c_return" and argument is time.sleep:  # the lock wait's first pause
            sys.setprofile(None)
            signal.raise_signal(signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, records)
    changes = Changes()
    events.deployment_error(changes, "bare_metal", "waited")
    sys.setprofile(signal_in_the_wait)
    try:
        assert store.merge_or_hand_over(changes, 30)
    finally:
        sys.setprofile(None)
        signal.signal(signal.SIGUSR1, previous)
        if holder.stdin is not None:
            holder.stdin.close()
        holder.wait(timeout=30)
    values = sample_values(store.path)
    assert [error_count(values, reason) for reason in ("warm", "by-the-handler", "waited")] == [1, 1, 1]
    assert "removed or replaced" not in caplog.text
    assert lock_files_open(store.lock_path) == 0
