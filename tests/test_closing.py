"""store/closing.py: the closing thread, which closes the versions a merge replaced and makes its rename durable
off the caller's path, and gets its work once a call is done (CloseAfterCall)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fraisier_textfile import TextfileStore
from fraisier_textfile import changes as events
from fraisier_textfile.store import closing
from fraisier_textfile.store.files import FileVersion


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
    hand = closing.Closer.hand

    def noting(closer: closing.Closer, versions: list[FileVersion], synced: int = -1) -> None:
        handed.append(len(versions))
        hand(closer, versions, synced)

    monkeypatch.setattr(closing.Closer, "hand", noting)
    with closing.CloseAfterCall():
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
    """A call hands the closing thread its work at its end (closing.CloseAfterCall), where a signal's handler that
    raises (Ctrl-C) may run: the rename's fsync and the close of the version it replaced must still be made, or the exit
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
from fraisier_textfile.store import closing, process

store = TextfileStore(sys.argv[1])
def merge(reason):
    changes = Changes()
    events.deployment_error(changes, "bare_metal", reason)
    store.merge(changes)
merge("first")
process.wait_for_syncs(10)
process.wait_for_closes(10)
with closing.CloseAfterCall():  # as a source's hook within a call would be
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
    (closing.CloseAfterCall) and goes on to its end: the fork hook closed its copies of what that work would close (the
    replaced version, the directory owed an fsync), whose numbers the child may have reused since. The parent's own
    thread does that work; the child must neither close those numbers again nor start a thread for them."""
    textfile_dir.mkdir(exist_ok=True)
    done = subprocess.run([sys.executable, "-c", FORKED_WITH_WORK_PENDING, str(textfile_dir)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
