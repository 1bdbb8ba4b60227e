"""store/signals.py: signal handlers held back while the store holds what a raising handler would leak or break."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from fraisier_textfile.store.signals import DeferredSignals


@contextmanager
def noting_sigusr1(seen: list[str]) -> Iterator[None]:
    """SIGUSR1's handler notes "handled" in ``seen``; it is the handler again at the end."""

    def handler(signum: int, frame: FrameType | None) -> None:
        seen.append("handled")

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        yield
        assert signal.getsignal(signal.SIGUSR1) is handler
    finally:
        signal.signal(signal.SIGUSR1, previous)


def signalled() -> None:
    os.kill(os.getpid(), signal.SIGUSR1)
    for _ in range(1000):  # Python runs handlers between bytecodes: give it many chances
        pass


def test_a_signal_during_the_deferred_section_runs_its_handler_after_it_once() -> None:
    seen: list[str] = []
    with noting_sigusr1(seen):
        with DeferredSignals():
            signalled()
            seen.append("inside")
        assert seen == ["inside", "handled"]


def test_signals_held_back_within_another_hold_run_once_at_the_outer_end() -> None:
    """The walk's opens hold signals back within a merge that holds them already: the inner hold swaps nothing, and
    a signal during it runs its handler once, when the outer hold ends, not at the inner's."""
    seen: list[str] = []
    with noting_sigusr1(seen):
        with DeferredSignals():
            with DeferredSignals():
                signalled()
            seen.append("inner ended")
            signalled()
            seen.append("inside")
        assert seen == ["inner ended", "inside", "handled", "handled"]



def test_a_safe_point_within_another_hold_runs_the_handlers_the_outer_hold_noted() -> None:
    """A record call holds signals back for its whole call (GroupCommit.merge_or_hand_over), its merge's hold within
    it: the merge's safe point (the lock wait) runs the handlers of the signals noted meanwhile then, as it did when
    the merge's hold was the outer one, not only at the end of the call."""
    seen: list[str] = []
    with noting_sigusr1(seen):
        with DeferredSignals(), DeferredSignals() as inner:
            signalled()
            inner.deliver()
            seen.append("delivered")
        assert seen == ["handled", "delivered"]

FORK_FROM_A_THREAD_WHILE_MAIN_MERGES = """
import os, signal, subprocess, sys, threading, time
directory = sys.argv[1]
signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(3))
from fraisier_textfile import TextfileStore
from fraisier_textfile.changes import Changes
from fraisier_textfile.store import process

hold = (f"import fcntl, time; lock = open({os.path.join(directory, 'fraisier.prom.lock')!r}, 'a'); "
        "fcntl.flock(lock, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)")
holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
assert holder.stdout.readline() == "held\\n"

def fork_meanwhile():
    deadline = time.monotonic() + 60
    while process.holding_signals is None:  # until the main thread waits for the lock, its handlers held back
        assert time.monotonic() < deadline, "the main thread never held its signals back"
        time.sleep(0.01)
    pid = os.fork()
    if pid == 0:
        time.sleep(30)  # SIGTERM's handler ends it with 3
        os._exit(0)
    time.sleep(0.2)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    status = None
    while status is None and time.monotonic() < deadline:
        ended, code = os.waitpid(pid, os.WNOHANG)
        status = os.waitstatus_to_exitcode(code) if ended else None
        time.sleep(0.05)
    if status is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    print(f"child: {status}", flush=True)
    holder.kill()

thread = threading.Thread(target=fork_meanwhile)
thread.start()
TextfileStore(directory, lock_timeout=30).merge(Changes())
thread.join()
"""


def test_a_child_forked_by_another_thread_while_the_main_thread_holds_signals_back_has_its_handlers(
    tmp_path: Path,
) -> None:
    """Bug: the main thread's merge swaps every Python signal handler for one that notes the signal, until the merge
    ends; a child forked meanwhile by another thread (a worker's multiprocessing) kept the swapped ones for good, the
    merge being the parent's, never the child's: its SIGTERM handler never ran. The child has its own back."""
    directory = tmp_path / "textfile"
    directory.mkdir()
    result = subprocess.run([sys.executable, "-c", FORK_FROM_A_THREAD_WHILE_MAIN_MERGES, str(directory)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "child: 3\n", result.stderr
