"""store/files.py: the textfile on disk: its default place, its versions held open, and writing it in parts, never
through a symlink."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fraisier_textfile import TextfileStore
from fraisier_textfile import changes as events
from fraisier_textfile.errors import TextfileWriteError, UnexpectedFileError
from fraisier_textfile.store import files
from fraisier_textfile.store.files import (
    TEMPORARY_PREFIX,
    FileVersion,
    default_textfile_directory,
    unexpected,
    write_parts,
)

from .stores import record
from .test_fs import Interrupted, closed_once, signalled_after


def test_the_default_directory_is_the_setting_else_the_users_state_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FRAISIER_TEXTFILE_DIR", str(tmp_path / "configured"))
    assert default_textfile_directory() == tmp_path / "configured"
    monkeypatch.delenv("FRAISIER_TEXTFILE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_textfile_directory() == tmp_path / "state" / "fraisier" / "textfile"


def test_a_version_is_current_until_the_file_is_replaced_even_by_the_same_bytes(tmp_path: Path) -> None:
    path = tmp_path / "fraisier.prom"
    path.write_bytes(b"# one\n")
    version = FileVersion(path, os.open(path, os.O_RDONLY))
    assert version.is_current()
    replacement = tmp_path / ".new"
    replacement.write_bytes(b"# one\n")
    os.utime(replacement, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))  # same size and mtime
    os.rename(replacement, path)
    assert not version.is_current()
    version.close()
    fresh = FileVersion(path, os.open(path, os.O_RDONLY))
    assert fresh.is_current()
    fresh.close()
    assert not fresh.is_current()  # closed: its inode may be reused, it can no longer vouch for the file


def test_a_symlink_in_place_of_the_file_is_not_its_version(tmp_path: Path) -> None:
    path = tmp_path / "fraisier.prom"
    path.write_bytes(b"# one\n")
    version = FileVersion(path, os.open(path, os.O_RDONLY))
    os.rename(path, tmp_path / "real")
    path.symlink_to(tmp_path / "real")
    assert not version.is_current()
    version.close()


def test_more_parts_than_one_writev_takes_are_all_written_in_order(tmp_path: Path) -> None:
    parts: list[bytes | memoryview] = [f"{number}\n".encode() for number in range(files._IOV_MAX * 2 + 7)]
    parts[5] = memoryview(b"a view\n")
    path = tmp_path / "out"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        write_parts(descriptor, parts)
    finally:
        os.close(descriptor)
    assert path.read_bytes() == b"".join(bytes(part) for part in parts)


def test_a_symlinked_textfile_is_refused_naming_the_real_directory_to_use(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "fraisier.prom").write_text("")
    path = tmp_path / "fraisier.prom"
    path.symlink_to(tmp_path / "real" / "fraisier.prom")
    error = unexpected(path, path.lstat())
    assert isinstance(error, UnexpectedFileError)
    assert str(error).endswith(f"real directory, {tmp_path / 'real'}")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert "is a FIFO, not a regular file" in str(unexpected(fifo, fifo.lstat()))


def test_never_writes_through_a_symlink(textfile_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A symlink planted at the temporary name makes the write fail rather than follow it."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    textfile_dir.mkdir()
    monkeypatch.setattr(files, "random_suffix", lambda: "planted")
    (textfile_dir / f"{TEMPORARY_PREFIX}planted").symlink_to(victim)
    store = TextfileStore(textfile_dir)
    store.transaction.remove_litter = lambda textfile, keep="": None  # type: ignore[method-assign]  # keep the plant in place
    with pytest.raises(TextfileWriteError, match="cannot create a temporary file"):
        record(store, events.deployment_error, "bare_metal", "timeout")
    assert victim.read_text() == "precious\n"


def test_parts_are_written_whole_whatever_writev_takes_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """writev(2) may stop mid-part (a signal, a nearly full disk): the rest is written from where it stopped."""
    real = os.writev

    def a_few_bytes_at_a_time(descriptor: int, buffers: list[memoryview]) -> int:
        return real(descriptor, [bytes(buffers[0][:7])])

    monkeypatch.setattr(os, "writev", a_few_bytes_at_a_time)
    parts: list[bytes | memoryview] = [b"abc", memoryview(b"0123456789" * 5)[3:41], b"", b"xyz\n" * 3]
    path = tmp_path / "out"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        files.write_parts(descriptor, parts)
    finally:
        os.close(descriptor)
    assert path.read_bytes() == b"".join(parts)


def test_a_handler_that_raises_as_a_version_is_closed_never_has_it_closed_twice(textfile_dir: Path) -> None:
    """As test_fs's for a directory: a version of the file (which a reader holds, and closes where handlers run)."""
    record(TextfileStore(textfile_dir), events.deployment_error, "bare_metal", "timeout")
    path = textfile_dir / "fraisier.prom"
    number = os.open(path, os.O_RDONLY)
    closed_once(FileVersion(path, number).close, number, textfile_dir)


@pytest.mark.parametrize(("look", "opened"), [*(("first", number) for number in range(1, 7)), ("again", 1)])
def test_a_handler_that_raises_right_after_an_open_of_the_merges_look_at_its_directory_leaves_nothing_open(
    tmp_path: Path, look: str, opened: int
) -> None:
    """A signal that arrives as one of the opens of a merge's look at its directory returns, its handler raising
    (a Ctrl-C, an alarm-based timeout): the handler runs once the directory is held by what closes it, never
    between an open and that hold, where the number would be dropped and the directory held open for the
    process's life (about one merge in thirty under a barrage of such signals)."""
    import gc

    from fraisier_textfile.store import process

    textfile = TextfileStore(tmp_path / "a" / "b").file
    if look == "again":  # the path's second look: one open, checked against what the first walk found
        textfile.open_directory().close()
    gc.collect()
    assert process.wait_for_closes(10) and process.wait_for_syncs(10) and process.background.wait(10)
    before = set(os.listdir("/proc/self/fd"))
    with signalled_after(os.open, opened), pytest.raises(Interrupted):
        textfile.open_directory().close()
    gc.collect()
    assert set(os.listdir("/proc/self/fd")) == before


def test_within_a_call_the_closing_thread_is_handed_its_work_at_the_end_and_before_the_next_merge(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record call (GroupCommit.merge_or_hand_over) hands the thread that closes the version its merge replaced
    its work once the call is done, not while the call finishes; a second merge within the call hands the first's
    before it starts, so that it never finds an fsync owed that no thread makes. Every version is closed in the end."""
    from fraisier_textfile.changes import Changes
    from fraisier_textfile.store import process

    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    handed: list[int] = []
    hand = files.Closer.hand

    def noting(closer: files.Closer, versions: list[files.FileVersion], synced: int = -1) -> None:
        handed.append(len(versions))
        hand(closer, versions, synced)

    monkeypatch.setattr(files.Closer, "hand", noting)
    with files.CloseAfterCall():
        changes = Changes()
        events.deployment_error(changes, "bare_metal", "first")
        store.merge(changes)
        assert handed == []
        changes = Changes()
        events.deployment_error(changes, "bare_metal", "second")
        store.merge(changes)
        assert handed == [1]
    assert handed == [1, 1]
    assert process.wait_for_closes(10)
    assert not process.replaced_versions


INTERRUPTED_AS_THE_CALL_HANDS = """
import json, signal, sys
from fraisier_textfile import TextfileStore
from fraisier_textfile import changes as events
from fraisier_textfile.changes import Changes
from fraisier_textfile.store import process

class Interrupted(Exception):
    pass

def interrupt(frame, event, argument):
    # Right after the call's end takes a closer's work out of the pending list, before it is handed.
    if event == "c_return" and frame.f_code.co_name == "hand_pending" and getattr(argument, "__name__", "") == "pop":
        sys.setprofile(None)
        signal.raise_signal(signal.SIGUSR1)

def handler(signum, frame):
    raise Interrupted

store = TextfileStore(sys.argv[1])
def call(reason):
    changes = Changes()
    events.deployment_error(changes, "bare_metal", reason)
    if sys.argv[2] == "merge":
        store.merge(changes)
    else:
        store.merge_or_hand_over(changes, 5)
call("first")
process.wait_for_syncs(10)
signal.signal(signal.SIGUSR1, handler)
sys.setprofile(interrupt)
try:
    call("second")
except Interrupted:
    interrupted = True
else:
    interrupted = False
synced = process.wait_for_syncs(10)
closed = process.wait_for_closes(10)
print(json.dumps({"interrupted": interrupted, "synced": synced, "closed": closed,
                  "open versions": len(process.replaced_versions)}))
"""


@pytest.mark.parametrize("call", ["merge", "merge_or_hand_over"])
def test_a_handler_that_raises_as_the_call_hands_the_closing_thread_its_work_leaves_nothing_owed(
    textfile_dir: Path, call: str
) -> None:
    """A call hands the closing thread its work at its end (files.CloseAfterCall), where a signal's handler that raises
    (Ctrl-C) may run: the rename's fsync and the close of the version it replaced must still be made, or the exit
    waits for an fsync nobody makes (process.SYNC_EXIT_WAIT) and the replaced version stays open for good."""
    textfile_dir.mkdir(exist_ok=True)
    done = subprocess.run([sys.executable, "-c", INTERRUPTED_AS_THE_CALL_HANDS, str(textfile_dir), call],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"interrupted": True, "synced": True, "closed": True, "open versions": 0}


FORKED_WITH_WORK_PENDING = """
import os, sys, threading
from fraisier_textfile import TextfileStore
from fraisier_textfile import changes as events
from fraisier_textfile.changes import Changes
from fraisier_textfile.store import files, process

store = TextfileStore(sys.argv[1])
def merge(reason):
    changes = Changes()
    events.deployment_error(changes, "bare_metal", reason)
    store.merge(changes)
merge("first")
process.wait_for_syncs(10)
process.wait_for_closes(10)
with files.CloseAfterCall():  # as a source's hook within a call would be
    merge("second")  # the closing thread's work pending: the rename's fsync, the replaced version's close
    child = os.fork()
    if child == 0:
        opened = [os.open(sys.argv[1], os.O_RDONLY) for _ in range(8)]  # the numbers the fork hook closed, reused
if child == 0:
    process.wait_for_closes(10)
    try:
        for descriptor in opened:
            os.fstat(descriptor)
    except OSError as error:
        print("a file of the child closed by the parent's pending work:", error, file=sys.stderr)
        os._exit(1)
    if threading.active_count() != 1 or process.closing:
        print("the child started a closing thread for the parent's work", file=sys.stderr)
        os._exit(2)
    os._exit(0)
_, status = os.waitpid(child, 0)
assert process.wait_for_syncs(10) and process.wait_for_closes(10) and not process.replaced_versions
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_child_forked_while_the_closing_threads_work_is_pending_closes_nothing_twice_and_starts_no_thread(
    textfile_dir: Path,
) -> None:
    """Forked within a call, after its merge (a source's hook may fork), a child has the pending work of the call
    (files.CloseAfterCall) and goes on to its end: the fork hook closed its copies of what that work would close (the
    replaced version, the directory owed an fsync), whose numbers the child may have reused since. The parent's own
    thread does that work; the child must neither close those numbers again nor start a thread for them."""
    textfile_dir.mkdir(exist_ok=True)
    done = subprocess.run([sys.executable, "-c", FORKED_WITH_WORK_PENDING, str(textfile_dir)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
