"""store/lock.py: fraisier.prom.lock, held with flock by one process at a time."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fraisier_textfile.errors import LockTimeoutError, UnexpectedFileError
from fraisier_textfile.store import fs
from fraisier_textfile.store.lock import Lock, try_lock

from .processes import exit_with

HOLD = """
import fcntl, os, sys
descriptor = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o664)
fcntl.flock(descriptor, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""


def start_holder(path: Path) -> subprocess.Popen[str]:
    """Another process holding ``path``'s flock until its stdin is closed."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


@contextmanager
def held_by_another_process(path: Path) -> Iterator[None]:
    """``path``'s flock held by another process until the block ends."""
    holder = start_holder(path)
    try:
        yield
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)


def test_a_lock_another_process_holds_times_out_and_is_taken_once_it_lets_go(tmp_path: Path) -> None:
    path = tmp_path / "fraisier.prom.lock"
    lock = Lock(path)
    with held_by_another_process(path):
        with pytest.raises(LockTimeoutError):
            lock.acquire(time.monotonic() + 0.2, 0.2, lambda: None)
        descriptor = os.open(path, os.O_RDWR)
        assert not try_lock(descriptor, path)
        os.close(descriptor)
    lock.acquire(time.monotonic() + 30, 30, lambda: None)
    assert lock.is_held()
    lock.release()
    assert not lock.is_held()


def test_a_timeout_longer_than_a_thread_can_wait_waits_for_a_holder_that_lets_go(tmp_path: Path) -> None:
    """Bug: a lock timeout past threading.TIMEOUT_MAX (about 292 years: "never give up" in practice, as
    FRAISIER_LOCK_TIMEOUT=1e10 or --lock-timeout 1e10 say) raised OverflowError from the wait for the process's
    other threads, before any lock was tried: ``fraisier-textfile textfile refresh`` ended with a traceback."""
    path = tmp_path / "fraisier.prom.lock"
    holder = start_holder(path)
    try:
        lock = Lock(path)

        def let_go() -> None:  # the wait's first safe point: the holder lets go while the lock is waited for
            if holder.stdin is not None and not holder.stdin.closed:
                holder.stdin.close()

        lock.acquire(time.monotonic() + 1e10, 1e10, let_go)
    finally:
        if holder.stdin is not None and not holder.stdin.closed:
            holder.stdin.close()
        holder.wait(timeout=30)
    assert lock.is_held()
    lock.release()


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


REMOVE_IN_A_LOOP = """
import os, select, sys
print("removing", flush=True)
while not select.select([sys.stdin], [], [], 0)[0]:
    try:
        os.unlink(sys.argv[1])
    except FileNotFoundError:
        pass
"""


def test_a_lock_file_removed_in_a_loop_is_locked_again_never_refused(tmp_path: Path) -> None:
    """A lock file removed between its open and its check (no name left: not a hard link) is locked anew at the
    path, never refused as a file fraisier did not make."""
    path = tmp_path / "fraisier.prom.lock"
    remover = subprocess.Popen([sys.executable, "-c", REMOVE_IN_A_LOOP, str(path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert remover.stdout is not None and remover.stdout.readline() == "removing\n"
        lock = Lock(path)
        # Each acquire meets the remover hundreds of times (it opens, finds the file gone, and opens again), so a
        # hundred of them meet the window tens of thousands of times: a refusal of a file with no name left (the
        # check `st_nlink != 1`) fails this at the first few. More only made it the suite's slowest test.
        for _ in range(100):
            try:
                lock.acquire(time.monotonic() + 5, 5, lambda: None)
            except LockTimeoutError:
                continue  # removed three times in a row while we locked: what a merge retries
            lock.release()
    finally:
        assert remover.stdin is not None
        remover.stdin.close()
        remover.wait(timeout=30)


@pytest.mark.parametrize("moment", ["taking it", "letting go of it"])
def test_a_child_forked_while_another_thread_takes_or_lets_go_of_the_lock_can_take_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    """Threads of one process take turns for the lock through a thread lock, taken before the lock is noted as held
    (process.held_locks, which the fork hook looks at) and let go of after it is no longer noted. A child forked by
    another thread in between inherits the thread lock held by a thread it does not have: with the store's own lock
    free, every wait of the child for it timed out (a child reusing its parent's store could never merge)."""
    import fcntl

    from fraisier_textfile.store import fs

    path = tmp_path / "fraisier.prom.lock"
    lock = Lock(path)
    at_moment, forked = threading.Event(), threading.Event()

    def pause_there() -> None:
        if threading.current_thread() is not threading.main_thread() and not at_moment.is_set():
            at_moment.set()
            assert forked.wait(10)

    if moment == "taking it":
        open_directory = fs.open_directory

        def pausing_open(*arguments: object, **options: object) -> fs.Directory | None:
            pause_there()  # the thread lock is taken, the lock not yet noted as held
            return open_directory(*arguments, **options)  # type: ignore[arg-type]

        monkeypatch.setattr(fs, "open_directory", pausing_open)
    else:
        flock = fcntl.flock

        def pausing_flock(descriptor: int, operation: int) -> None:
            if operation == fcntl.LOCK_UN:
                pause_there()  # no longer noted as held, the thread lock not yet let go of
            flock(descriptor, operation)

        monkeypatch.setattr(fcntl, "flock", pausing_flock)

    def take_and_let_go() -> None:
        lock.acquire(time.monotonic() + 10, 10, lambda: None)
        lock.release()

    thread = threading.Thread(target=take_and_let_go)
    thread.start()
    assert at_moment.wait(10)
    child = os.fork()
    if child == 0:  # pragma: no cover (the child's verdict is its exit status)

        def takes_it() -> int:
            lock.acquire(time.monotonic() + 2, 2, lambda: None)
            lock.release()
            return 0

        exit_with(takes_it)
    forked.set()
    thread.join(10)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_lock_file_replaced_between_two_merges_is_locked_anew(tmp_path: Path) -> None:
    """The next merge locks the file now of that name, not the one the last merge locked: it would hold an inode
    nobody else locks while another process holds the new file's lock."""
    path = tmp_path / "fraisier.prom.lock"
    lock = Lock(path)
    lock.acquire(time.monotonic() + 5, 5, lambda: None)
    lock.release()
    path.unlink()  # an admin "removing a stale lock", or a tmp cleaner
    with held_by_another_process(path), pytest.raises(LockTimeoutError):
        lock.acquire(time.monotonic() + 0.3, 0.3, lambda: None)
    lock.acquire(time.monotonic() + 5, 5, lambda: None)
    assert lock.is_held()
    lock.release()


FORK_AFTER_A_MERGE = """
import os, sys, time
from fraisier_textfile.errors import LockTimeoutError
from fraisier_textfile.store.lock import Lock
lock = Lock(sys.argv[1])
lock.acquire(time.monotonic() + 5, 5, lambda: None)
lock.release()
reading, writing = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(writing)
    os.read(reading, 1)  # the parent holds the lock now
    try:
        lock.acquire(time.monotonic() + 0.5, 0.5, lambda: None)
    except LockTimeoutError:
        os._exit(0)
    os._exit(1)  # it took a lock its parent holds
os.close(reading)
lock.acquire(time.monotonic() + 5, 5, lambda: None)
os.write(writing, b"x")
_, status = os.waitpid(pid, 0)
lock.release()
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_child_forked_between_two_merges_never_takes_the_lock_its_parent_holds(tmp_path: Path) -> None:
    """A descriptor of the parent's lock file in the child would be one open file with the parent's: a flock through
    it by the child would be the parent's own lock, taken again, never a conflict. The child opens the file anew."""
    path = tmp_path / "fraisier.prom.lock"
    done = subprocess.run([sys.executable, "-c", FORK_AFTER_A_MERGE, str(path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


def lock_files_open(path: Path) -> int:
    """How many descriptors of this process have ``path`` open."""
    count = 0
    for descriptor in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{descriptor}") == str(path)
        except OSError:
            pass  # the listing's own
    return count


def merge_by_a_handler_while_waiting(lock: Lock, path: Path, directory: fs.Directory | None = None) -> None:
    """``lock`` taken and let go of, waiting for another process's hold, by a caller whose safe point runs a
    handler that merges itself (the lock is reentrant): that merge gets the lock first, once the other process
    lets go."""
    holder = start_holder(path)
    handled: list[bool] = []

    def handler_merges() -> None:
        if not handled:
            handled.append(True)
            assert holder.stdin is not None
            holder.stdin.close()  # lets go: the handler's merge gets the lock
            lock.acquire(time.monotonic() + 30, 30, lambda: None, directory)
            lock.release()

    try:
        lock.acquire(time.monotonic() + 30, 30, handler_merges, directory)
        assert handled
        assert lock.is_held()
        lock.release()
    finally:
        if holder.stdin is not None:
            holder.stdin.close()
        holder.wait(timeout=30)


@pytest.mark.parametrize("own_directory", [False, True], ids=["a-merge's-directory", "its-own-directory"])
def test_a_merge_by_a_handler_while_the_lock_is_waited_for_leaves_the_lock_held(tmp_path: Path,
                                                                                own_directory: bool) -> None:
    """The handler's merge lets go of the lock and of the directory it was given; the merge that waited then holds
    the lock, in its own directory still: else its look before the rename finds the lock not held, and it warns
    of a lock file removed and merges again."""
    directory = None if own_directory else fs.open_directory(tmp_path)
    merge_by_a_handler_while_waiting(Lock(tmp_path / "fraisier.prom.lock"), tmp_path / "fraisier.prom.lock",
                                     directory)


def test_a_lock_file_replaced_while_a_handler_merges_during_the_wait_is_locked_anew_by_the_merge_that_waited(
        tmp_path: Path) -> None:
    """The waiting merge has the old lock file open; the lock file is replaced, and a handler's merge at the wait's
    safe point locks the new one. Once the old one is let go of, the waiting merge must see that its
    file is no longer the one of that name (its own device and inode, not the handler's merge's), or it holds a
    lock nobody else takes while another process locks the file of that name."""
    path = tmp_path / "fraisier.prom.lock"
    lock = Lock(path)
    lock.acquire(time.monotonic() + 5, 5, lambda: None)
    lock.release()
    holder = start_holder(path)  # holds the file the waiting merge opens
    handled: list[bool] = []

    def handler_merges() -> None:
        if not handled:
            handled.append(True)
            path.unlink()  # an admin "removing a stale lock"
            lock.acquire(time.monotonic() + 5, 5, lambda: None)  # makes and locks the new file
            lock.release()
            assert holder.stdin is not None
            holder.stdin.close()  # the old file let go of

    try:
        lock.acquire(time.monotonic() + 30, 30, handler_merges)
        assert handled
        other = os.open(path, os.O_RDWR)  # another process's open of the file of that name
        try:
            assert not try_lock(other, path)
        finally:
            os.close(other)
        lock.release()
    finally:
        if holder.stdin is not None:
            holder.stdin.close()
        holder.wait(timeout=30)


def test_a_lock_file_removed_while_another_process_holds_it_for_good_is_not_waited_for(
        tmp_path: Path) -> None:
    """An admin removes the lock file a stuck process holds ("removing a stale lock"), so that merges go on under a
    new one. A lock that merged before must lock the file of that name, not wait for the stuck holder's file until its
    merge times out."""
    path = tmp_path / "fraisier.prom.lock"
    lock = Lock(path)
    lock.acquire(time.monotonic() + 5, 5, lambda: None)
    lock.release()
    with held_by_another_process(path):  # stuck
        path.unlink()
        lock.acquire(time.monotonic() + 2, 2, lambda: None)
        assert lock.is_held()
        lock.release()
