"""store/lock.py: fraisier.prom.lock, held with flock by one process at a time, and signals held back meanwhile."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import pytest

from fraisier_textfile.errors import LockTimeoutError, UnexpectedFileError
from fraisier_textfile.store.lock import DeferredSignals, Lock, try_lock

HOLD = """
import fcntl, os, sys
descriptor = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o664)
fcntl.flock(descriptor, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""


def test_a_lock_another_process_holds_times_out_and_is_taken_once_it_lets_go(tmp_path: Path) -> None:
    path = tmp_path / "fraisier.prom.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        lock = Lock(path)
        with pytest.raises(LockTimeoutError):
            lock.acquire(time.monotonic() + 0.2, 0.2, lambda: None)
        descriptor = os.open(path, os.O_RDWR)
        assert not try_lock(descriptor, path)
        os.close(descriptor)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    lock.acquire(time.monotonic() + 30, 30, lambda: None)
    assert lock.is_held()
    lock.release()
    assert not lock.is_held()


def test_a_lock_file_removed_or_replaced_while_held_is_no_longer_held(tmp_path: Path) -> None:
    path = tmp_path / "fraisier.prom.lock"
    lock = Lock(path)
    lock.acquire(time.monotonic() + 5, 5, lambda: None)
    path.unlink()
    assert not lock.is_held()  # a merger now would lock a new file: ours must not rename over it
    path.write_text("")
    assert not lock.is_held()
    lock.release()


def test_a_symlink_at_the_lock_is_refused_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("root's\n")
    (tmp_path / "fraisier.prom.lock").symlink_to(target)
    with pytest.raises(UnexpectedFileError, match="is a symlink"):
        Lock(tmp_path / "fraisier.prom.lock").acquire(time.monotonic() + 1, 1, lambda: None)
    assert target.read_text() == "root's\n"


def test_a_signal_during_the_deferred_section_runs_its_handler_after_it_once() -> None:
    seen: list[str] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        seen.append("handled")

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        with DeferredSignals():
            os.kill(os.getpid(), signal.SIGUSR1)
            for _ in range(1000):  # Python runs handlers between bytecodes: give it many chances
                pass
            seen.append("inside")
        assert seen == ["inside", "handled"]
        assert signal.getsignal(signal.SIGUSR1) is handler
    finally:
        signal.signal(signal.SIGUSR1, previous)
