"""The merge as a transaction over participants (fraisier_textfile/store/transaction.py): the order that is the
ordering rule, a participant's bookkeeping in the same rename as its counts, and clean-up whatever happens."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fraisier_textfile import TextfileStore
from fraisier_textfile import catalogue as c
from fraisier_textfile import changes as events
from fraisier_textfile.changes import Changes
from fraisier_textfile.errors import CorruptTextfileError
from fraisier_textfile.format.bookkeeping import Bookkeeping, text_value
from fraisier_textfile.sources.fraisier_state import participants
from fraisier_textfile.store import fs, handover_reuse, handovers
from fraisier_textfile.store import markers as marker_files
from fraisier_textfile.store.files import TEMPORARY_PREFIX
from fraisier_textfile.store.transaction import Merge, Participant

from .processes import WitnessedLock, exit_with, opens_of, start_store_worker
from .stores import record
from .test_fraisier_state import Fraisier
from .test_vouching import KEY as VOUCHED_KEY
from .test_vouching import SWAPPED, edited, written_file
from .values import sample_values

COUNTED = 'fraisier_rollbacks_total{provider="bare_metal",reason="source"}'
TIMEOUTS = 'fraisier_deployment_errors_total{provider="bare_metal",error_type="timeout"}'
CURSOR = Bookkeeping("test-source-cursor", text_value, text_value)


class Recording(Participant):
    """Notes every hook it is called in, with what it saw."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls

    def collect(self, merge: Merge) -> Changes | None:
        self.calls.append(f"{self.name}.collect")
        return None

    def before_apply(self, merge: Merge) -> None:
        self.calls.append(f"{self.name}.before_apply")

    def after_apply(self, merge: Merge) -> None:
        self.calls.append(f"{self.name}.after_apply")

    def after_commit(self, merge: Merge) -> None:
        # After the rename: the file holds what this merge applied.
        self.calls.append(f"{self.name}.after_commit:{os.path.exists(merge.path)}")

    def close(self) -> None:
        self.calls.append(f"{self.name}.close")


class CountingSource(Participant):
    """A source that adds one rollback per merge and keeps how many it has given in its own bookkeeping line."""

    def collect(self, merge: Merge) -> Changes | None:
        given = int(CURSOR.get(merge.document) or 0)
        changes = Changes()
        changes.add(c.ROLLBACKS, ("bare_metal", "source"), 1.0)
        CURSOR.put(merge.document, str(given + 1))
        return changes


def test_sources_run_between_the_stores_protocols_and_each_phase_goes_in_the_ruled_direction(tmp_path: Path) -> None:
    calls: list[str] = []
    store = TextfileStore(tmp_path, participants=[Recording("first", calls), Recording("second", calls)])
    store.merge(Changes())
    assert calls == [
        "first.collect", "second.collect",  # forwards, after the markers and the hand-overs
        "second.before_apply", "first.before_apply",  # backwards, like leaving nested blocks
        "first.after_apply", "second.after_apply",
        "first.after_commit:True", "second.after_commit:True",
        "first.close", "second.close",
    ]
    order = [type(participant).__name__ for participant in store.transaction.participants]
    assert order == ["InFlightMarkers", "Handovers", "Recording", "Recording", "LifecycleParticipant"]


def test_a_failed_merge_commits_nothing_and_still_closes_every_participant(tmp_path: Path) -> None:
    calls: list[str] = []
    (tmp_path / "fraisier.prom").write_text("not a textfile\n")
    store = TextfileStore(tmp_path, participants=[Recording("source", calls)])
    with pytest.raises(CorruptTextfileError):
        store.merge(Changes())
    assert calls == ["source.close"]  # the file could not be loaded: nothing collected, nothing committed
    assert (tmp_path / "fraisier.prom").read_text() == "not a textfile\n"


def test_a_participants_bookkeeping_and_its_counts_land_in_the_same_rename(tmp_path: Path) -> None:
    store = TextfileStore(tmp_path, participants=[CountingSource()])
    for _ in range(3):
        store.merge(Changes())
    assert sample_values(store.path)[COUNTED] == 3
    assert "# fraisier_textfile test-source-cursor: 3\n" in store.path.read_text()


KILLED_BETWEEN_WRITE_AND_RENAME = textwrap.dedent('''
    import os, signal, sys
    sys.path[:0] = [sys.argv[2]]
    from tests.test_transaction import CountingSource
    from fraisier_textfile.changes import Changes
    from fraisier_textfile.fraisier_store import FraisierStore

    store = FraisierStore(sys.argv[1], participants=[CountingSource()])
    rename = store.file.rename

    def killed_before_rename(*arguments):
        os.kill(os.getpid(), signal.SIGKILL)  # the temporary file is written; the rename never happens

    store.file.rename = killed_before_rename
    store.merge(Changes())
''')


def test_a_merger_killed_before_its_rename_leaves_neither_the_counts_nor_the_cursor(tmp_path: Path) -> None:
    """The source's cursor moves only with the counts it produced: a process killed after collecting and
    writing, before renaming, leaves the old file, whose cursor still says the source's events are to come."""
    store = TextfileStore(tmp_path, participants=[CountingSource()])
    store.merge(Changes())
    before = store.path.read_bytes()
    repository = str(Path(__file__).resolve().parents[1])
    killed = subprocess.run([sys.executable, "-c", KILLED_BETWEEN_WRITE_AND_RENAME, str(tmp_path), repository],
                            env=dict(os.environ, PYTHONPATH=repository), timeout=60, check=False)
    assert killed.returncode == -signal.SIGKILL
    assert store.path.read_bytes() == before
    store.merge(Changes())
    assert sample_values(store.path)[COUNTED] == 2
    assert "# fraisier_textfile test-source-cursor: 2\n" in store.path.read_text()


class BrokenSource(Participant):
    """Moves its cursor, then fails as a bug would."""

    def collect(self, merge: Merge) -> Changes | None:
        CURSOR.put(merge.document, "moved")
        raise ZeroDivisionError("a bug of the source's own")


def test_a_source_that_fails_unexpectedly_adds_nothing_moves_no_cursor_and_stops_no_other_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = TextfileStore(tmp_path, participants=[BrokenSource()])
    changes = Changes()
    changes.add(c.ROLLBACKS, ("bare_metal", "source"), 1.0)
    store.merge(changes)
    store.merge(Changes())
    assert sample_values(store.path)[COUNTED] == 1  # the caller's change is merged
    assert "test-source-cursor" not in store.path.read_text()  # the failed source's bookkeeping is put back
    assert caplog.text.count("BrokenSource took no part") == 1  # one warning, not one per merge


# A merger SIGKILLed at each step, with every participant's files waiting at once.

FRAISIER_SUCCESS = 'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'
ENDED = 'fraisier_deployments_total{provider="docker_compose",status="success",fraise_type="handed_over_end"}'
CRASHED = 'fraisier_deployments_total{provider="docker_compose",status="crashed",fraise_type="died"}'
ENDED_CRASHED = 'fraisier_deployments_total{provider="docker_compose",status="crashed",fraise_type="handed_over_end"}'
MERGER_OWN = 'fraisier_deployment_errors_total{provider="bare_metal",error_type="merger_own"}'
HANDED_OVER = 6  # past handovers.INLINE_REMOVALS: they are removed by the background thread


def handed(number: int) -> str:
    return f'fraisier_deployment_errors_total{{provider="bare_metal",error_type="handed_{number}"}}'


def run(name: str, *arguments: str) -> int:
    worker = start_store_worker(name, *arguments)
    _, error = worker.communicate(timeout=120)
    return worker.returncode if worker.returncode <= 0 else pytest.fail(f"{name} failed: {error}")


def expected() -> dict[str, float]:
    return {FRAISIER_SUCCESS: 3, ENDED: 1, CRASHED: 1, **{handed(number): 1 for number in range(HANDED_OVER)}}


@pytest.mark.parametrize(
    "step", ["collected", "written", "renamed", "released", "released-then-merged-by-another", "fsynced",
             "markers-removed", "hand-overs-being-removed", "committed"]
)
def test_a_merger_killed_at_any_step_leaves_every_participants_events_counted_exactly_once(
    fraisier: Fraisier, textfile_dir: Path, step: str
) -> None:
    """Fraisier's rows, hand-overs, a deployment whose end was handed over with its marker retired, and a
    crashed deployment's marker, all waiting at once; a merger of them all is SIGKILLed at ``step``. Nothing is
    counted twice by then, and the next merges (of other processes) count each exactly once and clean up."""
    store = TextfileStore(textfile_dir)
    for number in range(HANDED_OVER):
        changes = Changes()
        events.deployment_error(changes, "bare_metal", f"handed_{number}")
        store.hand_over(changes)
    assert run("deploy_and_hand_over_end", str(textfile_dir), "handed_over_end") == 0
    assert run("deploy_and_die", str(textfile_dir), "died") == 0
    for _ in range(3):
        fraisier.deploy("api", "success")

    assert run("merge_killed_at", str(textfile_dir), step) == -signal.SIGKILL
    if (textfile_dir / "fraisier.prom").exists():
        killed = sample_values(textfile_dir / "fraisier.prom")
        limits = {**expected(), ENDED_CRASHED: 0, MERGER_OWN: 1}
        over = {key: killed[key] for key, limit in limits.items() if killed.get(key, 0) > limit}
        assert not over, f"counted twice after a merger killed at {step}: {over}"

    for _ in range(2):  # later processes: each count exactly once, every file accounted for removed
        later = TextfileStore(textfile_dir, participants=participants())
        later.merge(Changes())
        handovers.wait_for_removals()
    values = sample_values(textfile_dir / "fraisier.prom")
    assert {key: values.get(key, 0) for key in expected()} == expected()
    assert values.get(ENDED_CRASHED, 0) == 0
    assert values.get(MERGER_OWN, 0) == (0 if step in ("collected", "written") else 1)
    assert not os.listdir(marker_files.marker_directory(textfile_dir))
    assert not [name for name in os.listdir(textfile_dir / handovers.HANDOVER_DIRECTORY)
                if name.endswith(handovers.SUFFIX)]


def test_temporaries_left_by_killed_writers_are_removed(textfile_dir: Path) -> None:
    textfile_dir.mkdir()
    litter = textfile_dir / f"{TEMPORARY_PREFIX}deadbeef"
    litter.write_text("half a file")
    record(TextfileStore(textfile_dir), events.deployment_error, "bare_metal", "timeout")
    assert not litter.exists()


def test_a_warm_store_is_not_fooled_by_a_reused_inode_and_a_coarse_clock(textfile_dir: Path) -> None:
    """Two other writers replace the file within one tick of a coarse mtime clock (older kernels): the
    newest file may get the first file's freed inode, its size and its mtime. The warm store must still
    notice the file changed, or the others' increments are lost."""
    first = TextfileStore(textfile_dir)
    record(first, events.deployment_error, "bare_metal", "timeout")
    written = first.path.stat()
    for _ in range(2):
        record(TextfileStore(textfile_dir), events.deployment_error, "bare_metal", "timeout")
    os.utime(first.path, ns=(written.st_atime_ns, written.st_mtime_ns))
    record(first, events.deployment_error, "bare_metal", "timeout")
    values = sample_values(first.path)
    assert values['fraisier_deployment_errors_total{provider="bare_metal",error_type="timeout"}'] == 4


def test_the_rename_is_made_durable_after_the_lock_is_released_and_before_what_it_accounts_for_is_removed(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Other writers do not wait for the disk's journal: the directory's fsync (which makes the rename durable)
    runs once the lock is free; the hand-overs the new file accounts for are removed only after it."""
    from fraisier_textfile.store import fs

    store = TextfileStore(textfile_dir)
    handed = Changes()
    events.deployment_error(handed, "bare_metal", "timeout")
    store.hand_over(handed)
    handover_directory = textfile_dir / ".fraisier-handover"
    [handover] = [path for path in handover_directory.iterdir() if path.suffix == ".json"]
    seen: list[tuple[bool, bool]] = []
    fsync = fs.Directory.fsync

    def noting_fsync(directory: fs.Directory) -> None:
        if directory.path == str(textfile_dir):
            seen.append((lock_is_free(store.lock_path), handover.exists()))
        fsync(directory)

    monkeypatch.setattr(fs.Directory, "fsync", noting_fsync)
    changes = Changes()
    events.deployment_complete(changes, "bare_metal", "api", "success", 1.0)
    store.merge(changes)
    assert seen and seen[0] == (True, True)  # lock free, hand-over not yet removed
    assert sample_values(store.path.read_text())['fraisier_deployment_errors_total{provider="bare_metal",'
                                                 'error_type="timeout"}'] == 1


class RemovesTheLockFileOnce(Participant):
    """Removes the lock file under the first merge that collects (as a cleaner would): that merge is lost and made
    again under a new lock (LockLost)."""

    def __init__(self, lock_path: Path) -> None:
        self.lock_path = lock_path
        self.removed = False

    def collect(self, merge: Merge) -> Changes | None:
        if not self.removed:
            self.removed = True
            self.lock_path.unlink()
        return None


class DurabilityOrder:
    """What this process does to the textfile directory, in order, from every thread: ``rename`` (a new
    fraisier.prom put in place), ``fsync`` (the directory's), ``remove <name>`` (a hand-over or a marker deleted, or
    a hand-over renamed to a spent one, store/handover_reuse.py).
    Recorded by wrapping os's functions, which still do what they do."""

    def __init__(self, textfile_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        import threading

        self.textfile = os.stat(textfile_dir)
        self.accounting = {os.stat(textfile_dir / handovers.HANDOVER_DIRECTORY).st_ino
                           if (textfile_dir / handovers.HANDOVER_DIRECTORY).exists() else -1,
                           os.stat(marker_files.marker_directory(textfile_dir)).st_ino
                           if os.path.exists(marker_files.marker_directory(textfile_dir)) else -1}
        self.steps: list[str] = []
        self._lock = threading.Lock()
        fsync, unlink, replace, rename = os.fsync, os.unlink, os.replace, os.rename

        def is_textfile_directory(descriptor: int | None) -> bool:
            return descriptor is not None and os.path.samestat(os.fstat(descriptor), self.textfile)

        def noted(step: str) -> None:
            with self._lock:
                self.steps.append(step)

        def noting_fsync(descriptor: int) -> None:
            synced = is_textfile_directory(descriptor)
            fsync(descriptor)
            if synced:
                noted("fsync")

        def noting_unlink(path: str, *, dir_fd: int | None = None) -> None:
            accounted = (dir_fd is not None and os.fstat(dir_fd).st_ino in self.accounting
                         and not path.startswith(".") and not path.startswith("sequence"))
            if accounted:
                noted(f"remove {path}")  # before: what matters is that the fsync came first
            unlink(path, dir_fd=dir_fd)

        def noting_move(move: Callable[..., None]) -> Callable[..., None]:
            def moved(source: str, destination: str, *, src_dir_fd: int | None = None,
                      dst_dir_fd: int | None = None) -> None:
                if (destination.endswith(handover_reuse.SUFFIX) and src_dir_fd is not None
                        and os.fstat(src_dir_fd).st_ino in self.accounting):
                    noted(f"remove {source}")  # an applied hand-over kept for its writer: gone as a hand-over
                move(source, destination, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
                if destination == "fraisier.prom" and is_textfile_directory(dst_dir_fd):
                    noted("rename")

            return moved

        monkeypatch.setattr(os, "fsync", noting_fsync)
        monkeypatch.setattr(os, "unlink", noting_unlink)
        monkeypatch.setattr(os, "replace", noting_move(replace))
        monkeypatch.setattr(os, "rename", noting_move(rename))

    def removals_before_their_rename_is_durable(self) -> list[str]:
        early = []
        durable = True  # what the file accounted for before this process renamed anything was made durable
        for step in self.steps:
            if step in ("rename", "fsync"):
                durable = step == "fsync"
            elif not durable:
                early.append(step)
        return early


@pytest.mark.parametrize("waiting", [
    "hand-overs removed by the merge", "hand-overs removed in the background", "its own deployment's end",
    "a dead process's deployment", "an end handed over with its marker", "all of them and Fraisier's state",
    "all of them, the lock lost and merged again", "hand-overs, the file changed in place and merged again",
])
def test_nothing_a_merge_accounts_for_is_removed_before_its_rename_is_durable(
    fraisier: Fraisier, textfile_dir: Path, monkeypatch: pytest.MonkeyPatch, waiting: str
) -> None:
    """The ordering rule, in every path that removes files after a commit: each hand-over and marker the new file
    accounts for is deleted only once the directory's fsync has made the rename durable (a power loss in between
    would bring back the old file and lose, or count again, what the deleted files held)."""
    from fraisier_textfile.store import process

    changed_in_place = waiting == "hand-overs, the file changed in place and merged again"
    if changed_in_place:  # a file vouched for by its layout line, then changed where only its checksums tell
        edited(written_file(textfile_dir), f"{VOUCHED_KEY} 1.0\n", f"fraisier_deployments_total{{{SWAPPED}}} 1.0\n")
    store = TextfileStore(textfile_dir, participants=participants() if waiting.startswith("all") else ())
    everything = waiting.startswith("all")
    if everything or waiting.startswith("hand-overs"):
        for number in range(2 if waiting == "hand-overs removed by the merge" else HANDED_OVER):
            changes = Changes()
            events.deployment_error(changes, "bare_metal", f"handed_{number}")
            store.hand_over(changes)
    if everything or waiting == "a dead process's deployment":
        assert run("deploy_and_die", str(textfile_dir), "died") == 0
    if everything or waiting == "an end handed over with its marker":
        assert run("deploy_and_hand_over_end", str(textfile_dir), "handed_over_end") == 0
    if everything:
        fraisier.deploy("api", "success")
    end = Changes()
    if everything or waiting == "its own deployment's end":
        deployment = store.start_deployment("bare_metal", "api", lambda error, where: pytest.fail(str(error)))
        events.deployment_complete(end, "bare_metal", "api", "success", 1.0)
        events.deployment_ended(end, "bare_metal", deployment)
    if waiting.endswith("the lock lost and merged again"):
        store.transaction.participants.append(RemovesTheLockFileOnce(Path(store.lock_path)))
    process.wait_for_syncs(10)
    attempts: list[int] = []
    locked = store.transaction._locked

    def counted_attempt(changes: Changes, textfile: fs.Directory) -> Merge:
        attempts.append(1)
        return locked(changes, textfile)

    monkeypatch.setattr(store.transaction, "_locked", counted_attempt)
    order = DurabilityOrder(textfile_dir, monkeypatch)
    store.merge(end)
    handovers.wait_for_removals()
    assert process.wait_for_syncs(10)
    assert any(step.startswith("remove") for step in order.steps), order.steps  # the path was taken
    assert not order.removals_before_their_rename_is_durable(), order.steps
    left = [path.name for folder in (marker_files.marker_directory(textfile_dir), handovers.HANDOVER_DIRECTORY)
            if (textfile_dir / folder).exists() for path in (textfile_dir / folder).iterdir()
            if path.suffix == handovers.SUFFIX or folder != handovers.HANDOVER_DIRECTORY]
    assert not left  # each was accounted for, then removed
    if changed_in_place or waiting.endswith("merged again"):
        assert len(attempts) == 2  # the first attempt found the file changed (NotVouched) or the lock gone
    if changed_in_place:
        assert sample_values(store.path)[VOUCHED_KEY] == 1.0


def test_a_merge_that_removes_nothing_returns_before_its_rename_is_durable_and_another_thread_makes_it(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing to remove after the commit, the caller has its answer once the rename is made (a reader sees the
    new file): the directory's fsync is made by another thread, through a descriptor of its own. A child forked
    before that fsync is made holds no copy of that descriptor (the thread that would close it is not in the child)."""
    import stat
    import threading

    from fraisier_textfile.store import process

    store = TextfileStore(textfile_dir)
    record(store, events.deployment_error, "bare_metal", "timeout")
    process.wait_for_syncs(10)
    let_the_fsync_go = threading.Event()
    synced_by: list[int] = []
    fsync = os.fsync

    def held_fsync(descriptor: int) -> None:
        if stat.S_ISDIR(os.fstat(descriptor).st_mode) and threading.current_thread() is not threading.main_thread():
            let_the_fsync_go.wait(10)
            synced_by.append(threading.get_ident())
        fsync(descriptor)

    monkeypatch.setattr(os, "fsync", held_fsync)
    record(store, events.deployment_error, "bare_metal", "timeout")  # returns while the fsync is held
    assert sample_values(store.path)['fraisier_deployment_errors_total{provider="bare_metal",'
                                     'error_type="timeout"}'] == 2
    owed = list(process.syncing)
    assert len(owed) == 1 and os.path.samestat(os.fstat(owed[0]), os.stat(textfile_dir))
    child = os.fork()
    if child == 0:  # pragma: no cover (the child's verdict is its exit status)

        def verdict() -> int:
            try:
                os.fstat(owed[0])
            except OSError:
                return 2 * bool(process.syncing)
            return 1

        exit_with(verdict)
    _, status = os.waitpid(child, 0)
    let_the_fsync_go.set()
    assert process.wait_for_syncs(10)
    assert synced_by and synced_by[0] != threading.get_ident()
    assert not process.syncing
    assert os.waitstatus_to_exitcode(status) == 0  # 1: the child held the descriptor; 2: still noted as owed


def test_a_child_forked_by_another_thread_as_a_merge_leaves_its_fsync_to_a_thread_holds_no_copy_of_its_descriptor(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The descriptor duplicated for the thread that makes the rename durable is noted as owed (a child closes the
    ones noted) in the same step that makes it: a fork by another thread between the two would leave the child a
    copy nobody closes, a directory held open for the child's whole life."""
    import threading

    from fraisier_textfile.store import process

    store = store_after_one_merge(textfile_dir)
    forker = ForkFromAnotherThread(textfile_dir, monkeypatch)
    dup = os.dup

    def forking_dup(descriptor: int) -> int:
        duplicate = dup(descriptor)
        if threading.current_thread() is threading.main_thread():
            forker.fork_now(duplicate)
        return duplicate

    monkeypatch.setattr(os, "dup", forking_dup)
    record(store, events.deployment_error, "bare_metal", "timeout")
    monkeypatch.undo()
    assert process.wait_for_syncs(10)
    assert not forker.child_held_a_copy()


def test_a_merge_that_can_have_no_descriptor_for_the_thread_makes_its_rename_durable_itself(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The descriptor table full just as the merge duplicates the directory's descriptor for the thread that would
    make the rename durable (a real EMFILE: the limit lowered to the lowest free number for that one call): the
    merge makes the fsync itself, before it returns, and nothing is owed."""
    import errno
    import resource
    import stat
    import threading

    from fraisier_textfile.store import process

    store = TextfileStore(textfile_dir)
    record(store, events.deployment_error, "bare_metal", "timeout")
    process.wait_for_syncs(10)
    dup, fsync = os.dup, os.fsync
    refused: list[int] = []
    synced_by: list[bool] = []

    def dup_with_a_full_table(descriptor: int) -> int:
        lowest_free = dup(descriptor)  # the number the dup would get
        os.close(lowest_free)
        limits = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, limits[1]))
        try:
            return dup(descriptor)
        except OSError as error:
            refused.append(error.errno or 0)
            raise
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)

    def noting_fsync(descriptor: int) -> None:
        fsync(descriptor)
        if stat.S_ISDIR(os.fstat(descriptor).st_mode):
            synced_by.append(threading.current_thread() is threading.main_thread())

    monkeypatch.setattr(os, "dup", dup_with_a_full_table)
    monkeypatch.setattr(os, "fsync", noting_fsync)
    record(store, events.deployment_error, "bare_metal", "timeout")
    owed = len(process.syncing)
    monkeypatch.undo()
    assert refused == [errno.EMFILE]
    assert synced_by == [True] and owed == 0
    assert sample_values(store.path)['fraisier_deployment_errors_total{provider="bare_metal",'
                                     'error_type="timeout"}'] == 2


def test_a_child_forked_by_another_thread_as_the_owed_fsync_is_done_holds_no_copy_of_its_descriptor(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread that made the rename durable takes the descriptor out of the owed ones and closes it in one step
    for a fork: a child forked by another thread between the two would keep a copy nobody closes."""
    import threading

    from fraisier_textfile.store import process

    store = store_after_one_merge(textfile_dir)
    forker = ForkFromAnotherThread(textfile_dir, monkeypatch)
    close = os.close

    def forking_close(descriptor: int) -> None:
        if (threading.current_thread() is not threading.main_thread() and holds(descriptor, textfile_dir)
                and descriptor not in process.syncing):
            forker.fork_now(descriptor)
        close(descriptor)

    monkeypatch.setattr(os, "close", forking_close)
    record(store, events.deployment_error, "bare_metal", "timeout")
    assert process.wait_for_syncs(10)
    monkeypatch.undo()
    assert not forker.child_held_a_copy()


def store_after_one_merge(textfile_dir: Path) -> TextfileStore:
    """A store that merged once, its rename made durable since: the next merge replaces a version, nothing owed."""
    from fraisier_textfile.store import process

    store = TextfileStore(textfile_dir)
    record(store, events.deployment_error, "bare_metal", "timeout")
    assert process.wait_for_syncs(10)
    return store


class ForkFromAnotherThread:
    """A thread that forks once, when the thread under test asks it to (:meth:`fork_now`, from a wrapped os call)
    and waits until the fork is made or found waiting for ``process.creating`` (the lock the fork hook takes): the
    child's exit status says whether it holds a copy of the descriptor named."""

    def __init__(self, directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        import threading

        from fraisier_textfile.store import process

        self.directory = directory
        self.descriptor = -1
        self.child = -1
        self.asked, self.met = threading.Event(), threading.Event()
        self.met_in_time: bool | None = None
        monkeypatch.setattr(process, "creating", WitnessedLock(process.creating, self.met))
        self.thread = threading.Thread(target=self._fork)
        self.thread.start()

    def fork_now(self, descriptor: int) -> None:
        if not self.asked.is_set():
            self.descriptor = descriptor
            self.asked.set()
            # The fork is made now if it may; else it waits for this moment's end. Waited for, never timed out on.
            self.met_in_time = self.met.wait(60)

    def _fork(self) -> None:
        if not self.asked.wait(60):
            return
        child = os.fork()
        if child == 0:  # pragma: no cover (the child's verdict is its exit status)
            exit_with(lambda: int(holds(self.descriptor, self.directory)))
        self.child = child
        self.met.set()

    def child_held_a_copy(self) -> bool:
        self.thread.join(60)
        assert self.met_in_time, "the moment under test never came, or the fork never came at it"
        assert self.child > 0 and not self.thread.is_alive(), "the fork was never made"
        return os.waitstatus_to_exitcode(os.waitpid(self.child, 0)[1]) != 0


def holds(descriptor: int, directory: Path) -> bool:
    """Whether ``descriptor`` is open on ``directory``."""
    try:
        return os.path.samestat(os.fstat(descriptor), os.stat(directory))
    except OSError:
        return False


def test_a_rename_left_to_another_thread_is_made_durable_without_waiting_behind_the_stores_background_work(
    textfile_dir: Path
) -> None:
    """The store's background thread removes applied hand-overs, which on a busy disk can take seconds: the fsync of
    a later merge's directory is not queued behind them."""
    import threading

    from fraisier_textfile.store import process

    store = TextfileStore(textfile_dir)
    record(store, events.deployment_error, "bare_metal", "timeout")
    removals_done = threading.Event()

    def removals_that_take_their_time() -> None:
        removals_done.wait(20)

    process.background.submit(removals_that_take_their_time)
    try:
        record(store, events.deployment_error, "bare_metal", "timeout")
        assert process.wait_for_syncs(5)
        assert not process.syncing
    finally:
        removals_done.set()
        process.background.wait(10)


SLOW_DIRECTORY_FSYNC = """
import os, stat, sys, time

directory, noted = sys.argv[1], sys.argv[2]
fsync = os.fsync

def slow_fsync(descriptor):
    # The directory's fsync, slowed down past the exit's wait for closes (a busy disk's journal commit), then
    # noted: only a thread whose fsync the exit waited for writes the note.
    from fraisier_textfile.store import process

    directory_synced = stat.S_ISDIR(os.fstat(descriptor).st_mode)
    if directory_synced:
        time.sleep(4 * process.EXIT_WAIT)
    fsync(descriptor)
    if directory_synced:
        with open(noted, "w") as file:
            file.write("synced")
"""

SYNC_SLOWLY_THEN_EXIT = SLOW_DIRECTORY_FSYNC + """
from fraisier_textfile import TextfileStore
from fraisier_textfile.changes import Changes
from fraisier_textfile.store import process

store = TextfileStore(directory)
store.merge(Changes())
process.wait_for_syncs(10)
process.os.fsync = slow_fsync  # the thread left the fsync calls it through process.py's os
store.merge(Changes())
# The interpreter ends here, the directory's fsync still under way.
"""


def test_a_process_that_exits_right_after_a_merge_waits_until_its_rename_is_durable(textfile_dir: Path) -> None:
    """The exit waits for a directory's fsync left to another thread, longer than for the closes of replaced
    versions: a process that recorded and ended leaves its rename durable, as when its caller waited for it."""
    assert note_of_a_process_running(SYNC_SLOWLY_THEN_EXIT, textfile_dir) == "synced"


RECORD_BY_THE_CLI = SLOW_DIRECTORY_FSYNC + """
os.fsync = slow_fsync
sys.argv = ["fraisier", "--textfile-dir", directory, "record", "deployment", "--provider", "bare_metal",
            "--fraise-type", "api", "--status", "success", "--duration", "1"]
from fraisier_textfile.cli.dispatch import script

script()  # ends the process with os._exit once the exit hooks ran (cli.end_now)
"""


def test_fraisier_record_ending_with_os_exit_leaves_its_rename_durable(textfile_dir: Path) -> None:
    """The console script ends the process with os._exit after running the exit hooks, not by the interpreter's
    end: the store's hook among them waits for the fsync left to another thread, which os._exit would cut short."""
    assert note_of_a_process_running(RECORD_BY_THE_CLI, textfile_dir) == "synced"
    assert sample_values(textfile_dir / "fraisier.prom")[
        'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'] == 1


MERGE_IN_AN_EXIT_HOOK_REGISTERED_FIRST = SLOW_DIRECTORY_FSYNC + """
import atexit

def record_at_exit():
    os.fsync = slow_fsync
    store.merge(Changes())

# Registered before the package is imported: run after the store's own exit hook (the last registered runs first).
atexit.register(record_at_exit)
from fraisier_textfile import TextfileStore
from fraisier_textfile.changes import Changes
from fraisier_textfile.store import process

store = TextfileStore(directory)
store.merge(Changes())
process.wait_for_syncs(10)
"""


def test_a_merge_made_by_an_exit_hook_that_runs_after_the_stores_makes_its_rename_durable_before_the_end(
    textfile_dir: Path
) -> None:
    """A program's own exit hook, registered before it imported the package, runs after the store's, which waited
    for the fsyncs owed then: a merge made there has nothing left to wait for it, so it makes its rename durable
    itself, as a merge's caller did, rather than leave it to a thread the interpreter's end may cut short."""
    assert note_of_a_process_running(MERGE_IN_AN_EXIT_HOOK_REGISTERED_FIRST, textfile_dir) == "synced"


@pytest.mark.parametrize("child", ["os.fork, ended with os._exit", "a multiprocessing worker"])
def test_a_forked_child_that_merges_then_ends_without_exit_hooks_leaves_its_rename_durable(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch, child: str
) -> None:
    """A forked child is mostly ended with os._exit (the idiom, and how multiprocessing ends its workers), which
    runs no exit hook: no wait for an fsync left to another thread would come, and the thread dies with the
    process. A child makes its rename durable before its merge returns, as every merge did."""
    import multiprocessing
    import stat
    import time

    store = TextfileStore(textfile_dir)
    record(store, events.deployment_error, "bare_metal", "timeout")
    noted = textfile_dir.parent / "noted"

    def merge_then_end() -> None:
        fsync = os.fsync

        def slow_fsync(descriptor: int) -> None:  # a busy disk's journal commit, noted once made
            directory_synced = stat.S_ISDIR(os.fstat(descriptor).st_mode)
            if directory_synced:
                time.sleep(0.5)
            fsync(descriptor)
            if directory_synced:
                noted.write_text("synced")

        monkeypatch.setattr(os, "fsync", slow_fsync)  # in the child: the test's process is not touched
        record(store, events.deployment_error, "bare_metal", "timeout")

    if child == "a multiprocessing worker":
        worker = multiprocessing.get_context("fork").Process(target=merge_then_end)
        worker.start()
        worker.join(60)
        assert worker.exitcode == 0
    else:
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child's verdict is its exit status)

            def merged() -> int:
                merge_then_end()
                return 0

            exit_with(merged)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert noted.exists() and noted.read_text() == "synced"
    assert sample_values(store.path)['fraisier_deployment_errors_total{provider="bare_metal",'
                                     'error_type="timeout"}'] == 2


FORKSERVER_WORKER = SLOW_DIRECTORY_FSYNC + """
import multiprocessing


def merge_then_end():
    os.fsync = slow_fsync
    from fraisier_textfile import TextfileStore
    from fraisier_textfile import changes as events
    from fraisier_textfile.changes import Changes

    changes = Changes()
    events.deployment_error(changes, "bare_metal", "timeout")
    TextfileStore(directory).merge(changes)


if __name__ == "__main__":
    worker = multiprocessing.get_context("forkserver").Process(target=merge_then_end)
    worker.start()
    worker.join(60)
    sys.exit(worker.exitcode)
"""


def test_a_multiprocessing_worker_that_imports_the_package_itself_leaves_its_rename_durable(
    textfile_dir: Path
) -> None:
    """A worker of multiprocessing's forkserver (Python 3.14's default on Linux) is forked before it imports the
    package, and multiprocessing ends it with os._exit, running no exit hook: as in any forked child, its merges
    make their renames durable before they return."""
    textfile_dir.mkdir()
    noted = textfile_dir.parent / "noted"
    worker = textfile_dir.parent / "forkserver_worker.py"  # forkserver imports the program's main module: a file
    worker.write_text(FORKSERVER_WORKER)
    result = subprocess.run([sys.executable, str(worker), str(textfile_dir), str(noted)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert noted.exists() and noted.read_text() == "synced"


MERGES_FASTER_THAN_THE_DIRECTORYS_FSYNC = """
import os, resource, stat, sys, time
from fraisier_textfile import TextfileStore
from fraisier_textfile import changes as events
from fraisier_textfile.changes import Changes
from fraisier_textfile.store import process

directory, noted = sys.argv[1], sys.argv[2]
fsync = os.fsync

def slow_fsync(descriptor):
    if stat.S_ISDIR(os.fstat(descriptor).st_mode):
        time.sleep(0.05)  # a directory's fsync slower than a merge (a journal busy with other writers' commits)
    fsync(descriptor)

os.fsync = slow_fsync
store = TextfileStore(directory)
store.merge(Changes())
process.wait_for_syncs(10)
# Room for a merge's own descriptors, a few times over: not for one more per merge made.
resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 32,) * 2)
failed = 0
for _ in range(MERGES):
    changes = Changes()
    events.deployment_error(changes, "bare_metal", "timeout")
    try:
        store.merge(changes)
    except Exception as error:
        failed += 1
        print(error, file=sys.stderr)
with open(noted, "w") as file:
    file.write(f"{failed} failed")
""".replace("MERGES", "60")


def test_a_process_that_merges_faster_than_its_directory_is_synced_never_fails_a_merge_for_it(
    textfile_dir: Path
) -> None:
    """The fsync left to another thread holds a thread, a directory's descriptor and the versions the merge
    replaced until it is made: merges made faster than the disk syncs the directory must not pile them up until
    the process runs out of descriptors and its merges fail. Every merge is counted, none failed."""
    assert note_of_a_process_running(MERGES_FASTER_THAN_THE_DIRECTORYS_FSYNC, textfile_dir) == "0 failed"
    assert sample_values(textfile_dir / "fraisier.prom")['fraisier_deployment_errors_total{provider="bare_metal",'
                                                         'error_type="timeout"}'] == 60


def note_of_a_process_running(script: str, textfile_dir: Path) -> str:
    """Run ``script`` (given the textfile directory and a note's path) in a new interpreter, which must exit 0: what
    it noted by its end."""
    textfile_dir.mkdir()
    noted = textfile_dir.parent / "noted"
    result = subprocess.run([sys.executable, "-c", script, str(textfile_dir), str(noted)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return noted.read_text() if noted.exists() else "(nothing noted)"


def lock_is_free(lock_path: Path) -> bool:
    """Whether flock(2) on a descriptor of its own gets the lock now (a merge's lock, held on another
    descriptor, refuses it even within the same process)."""
    import fcntl

    descriptor = os.open(lock_path, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(descriptor)
    return True


def open_textfiles(path: Path) -> list[tuple[int, bool]]:
    """The inodes of every version of ``path`` this process holds open, each with whether it is still the file at
    the path."""
    current = path.stat().st_ino if path.exists() else None
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
            status = os.stat(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.removesuffix(" (deleted)") == str(path):
            found.append((status.st_ino, status.st_ino == current))
    return found


def replaced_versions_closed(path: Path) -> bool:
    """Wait until no version of ``path`` that a rename replaced is held open by this process (they are closed off
    the merge's path, by another thread): False if one still is after 10 s."""
    deadline = time.monotonic() + 10
    while any(not current for _, current in open_textfiles(path)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def threads_back_to(threads: int) -> bool:
    """Wait until this process runs no more than ``threads`` threads (_thread._count: those of the threading module
    and bare ones alike): False if it still runs more after 10 s."""
    import _thread

    deadline = time.monotonic() + 10
    while _thread._count() > threads:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("stores", [1, 2], ids=["one store", "a store each"])
def test_threads_merging_at_once_beside_a_forking_thread_leave_nothing_owed_open_or_running(
    tmp_path: Path, stores: int
) -> None:
    """Two threads merge 300 times each, with one store or a store each (two directories), while a third forks
    children: every event is counted, each child starts with nothing owed (the parent's thread makes the renames
    durable), and once the threads are done no fsync is owed, no thread runs, and no descriptor is left open but
    the version each store keeps."""
    import _thread
    import threading

    from fraisier_textfile.store import process

    directories = [tmp_path / f"textfile{number}" for number in range(stores)]
    shared = [TextfileStore(directory) for directory in directories]
    threads, descriptors = _thread._count(), set(os.listdir("/proc/self/fd"))
    done = threading.Event()
    children: list[int] = []

    def merging(store: TextfileStore) -> None:
        for _ in range(300):
            record(store, events.deployment_error, "bare_metal", "timeout")

    def forking() -> None:
        while not done.wait(0.005):
            child = os.fork()
            if child == 0:  # pragma: no cover (the child's verdict is its exit status)
                exit_with(lambda: int(bool(process.syncing)))
            children.append(child)

    workers = [threading.Thread(target=merging, args=(shared[number % stores],)) for number in range(2)]
    forker = threading.Thread(target=forking)
    for thread in [forker, *workers]:
        thread.start()
    for thread in workers:
        thread.join(120)
    done.set()
    forker.join(10)
    assert [os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) for child in children] == [0] * len(children)
    assert process.wait_for_syncs(10) and not process.syncing
    assert threads_back_to(threads)
    assert all(replaced_versions_closed(directory / "fraisier.prom") for directory in directories)
    assert len(set(os.listdir("/proc/self/fd")) - descriptors) == stores  # the version each store keeps
    assert [sample_values(directory / "fraisier.prom")['fraisier_deployment_errors_total{provider="bare_metal",'
                                                       'error_type="timeout"}'] for directory in directories] == (
        [600.0] if stores == 1 else [300.0, 300.0])


@pytest.mark.parametrize("kept", [False, True], ids=["read from disk", "kept from the last merge"])
def test_the_version_a_merge_replaces_is_open_during_its_rename_and_closed_after(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch, kept: bool
) -> None:
    """The last descriptor of a file a rename unlinked frees its blocks: held open until after the rename, the
    rename costs no freeing, and the merge closes it afterwards, off its caller's path, never leaking it."""
    from fraisier_textfile.store import fs

    record(TextfileStore(textfile_dir), events.deployment_error, "bare_metal", "timeout")
    store = TextfileStore(textfile_dir)
    if kept:
        record(store, events.deployment_error, "bare_metal", "timeout")
    assert replaced_versions_closed(store.path)
    before = store.path.stat().st_ino
    held_at_rename: list[bool] = []
    replace = fs.Directory.replace

    def noting_replace(directory: fs.Directory, source: str, target: str) -> None:
        if target == store.path.name:
            held_at_rename.append(any(inode == before for inode, _ in open_textfiles(store.path)))
        replace(directory, source, target)

    monkeypatch.setattr(fs.Directory, "replace", noting_replace)
    record(store, events.deployment_error, "bare_metal", "timeout")
    assert held_at_rename == [True]
    assert store.path.stat().st_ino != before
    assert replaced_versions_closed(store.path)


def test_a_kept_version_another_merger_replaced_is_closed_at_the_next_merge(textfile_dir: Path) -> None:
    store = TextfileStore(textfile_dir)
    for _ in range(3):
        record(store, events.deployment_error, "bare_metal", "timeout")  # kept
        record(TextfileStore(textfile_dir), events.deployment_error, "bare_metal", "timeout")  # replaces it
    record(store, events.deployment_error, "bare_metal", "timeout")  # finds the one it kept replaced
    assert replaced_versions_closed(store.path)
    assert [current for _, current in open_textfiles(store.path)] == [True]  # only the version just written
    values = sample_values(store.path)
    assert values['fraisier_deployment_errors_total{provider="bare_metal",error_type="timeout"}'] == 7


def test_a_merge_that_starts_over_after_writing_leaves_no_thread_waiting_and_no_version_open(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread that closes the version a merge replaces is started while the new version is written back
    (closing.Closer); a merge that then starts over (its lock file replaced meanwhile) hands it the version it read
    all the same, and the thread ends: none is left waiting, no version open."""
    import _thread

    from fraisier_textfile.store.lock import Lock

    record(TextfileStore(textfile_dir), events.deployment_error, "bare_metal", "timeout")
    path = textfile_dir / "fraisier.prom"
    assert replaced_versions_closed(path)
    threads = _thread._count()
    lost = [True]
    is_held = Lock.is_held

    def lost_once(lock: Lock) -> bool:
        if lost:
            lost.pop()
            return False
        return is_held(lock)

    monkeypatch.setattr(Lock, "is_held", lost_once)
    store = TextfileStore(textfile_dir)  # its first merge reads the file: checked, and litter looked for, meanwhile
    record(store, events.deployment_error, "bare_metal", "timeout")
    assert not lost
    assert replaced_versions_closed(path)
    assert threads_back_to(threads)
    assert sample_values(path)['fraisier_deployment_errors_total{provider="bare_metal",error_type="timeout"}'] == 2


def test_a_closer_left_by_a_merge_interrupted_by_a_fork_is_not_handed_anything(textfile_dir: Path) -> None:
    """A child forked by another thread while a merge waited for the device has a copy of that merge's state, its
    closing thread among it, but not the thread: its own next merge starts a closer of its own, never hands the
    versions it replaces to the one that is not there (they would stay open for the child's life)."""

    handed: list[list[int]] = []

    class NotThere:
        def hand(self, descriptors: list[int]) -> None:
            handed.append(descriptors)

    record(TextfileStore(textfile_dir), events.deployment_error, "bare_metal", "timeout")
    store = TextfileStore(textfile_dir)
    store.transaction._closer = NotThere()  # type: ignore[assignment]  # as a fork in that merge's wait leaves it
    record(store, events.deployment_error, "bare_metal", "timeout")
    assert handed == []
    assert replaced_versions_closed(store.path)


CLOSE_SLOWLY_THEN_EXIT = """
import os, sys, time
from fraisier_textfile import TextfileStore
from fraisier_textfile.changes import Changes
from fraisier_textfile.store import files

directory, noted = sys.argv[1], sys.argv[2]
store = TextfileStore(directory)
store.merge(Changes())  # the file exists; the next merge reads it and replaces it
replaced = os.stat(os.path.join(directory, "fraisier.prom")).st_ino
close = os.close

def slow_close(descriptor):
    # The replaced version's close, slowed down (on a busy disk, freeing a big file's blocks takes that long):
    # noted once it is done, which only a closing thread that ran to its end can do.
    inode = os.fstat(descriptor).st_ino
    close(descriptor)
    if inode == replaced:
        time.sleep(0.05)
        with open(noted, "w") as file:
            file.write("closed")

files.os.close = slow_close  # the store's closing threads call it through files.py's os
store.merge(Changes())
# The interpreter ends here, the closing thread still in its close.
"""


def test_a_process_that_exits_right_after_a_merge_lets_its_closing_thread_end_first(textfile_dir: Path) -> None:
    """A thread still running Python when the interpreter finalizes is ended by pthread_exit the moment it wants the
    GIL back, which can crash the process (CPython gh-87135: a SIGSEGV or an abort, a deployment whose command
    died after it succeeded). So the exit waits for the threads that close replaced versions, however slow their
    close, within the store's exit wait."""
    assert note_of_a_process_running(CLOSE_SLOWLY_THEN_EXIT, textfile_dir) == "closed"


def test_a_merge_by_another_thread_of_the_process_with_the_same_store_takes_no_part_of_this_ones_closing(
    textfile_dir: Path
) -> None:
    """Threads of one process take turns for the lock, and a merge closes what it replaced after it let go of the
    lock (after its directory's fsync and its participants' clean-up): a merge of the same store by another thread
    can run meanwhile. It must neither drop the closing thread this merge started (left waiting for the life of the
    process: one more thread per such overlap), nor have its own versions closed by this one."""
    import _thread
    import threading

    record(TextfileStore(textfile_dir), events.deployment_error, "bare_metal", "timeout")
    threads = _thread._count()
    other_collected = threading.Event()
    others: list[threading.Thread] = []

    class Overlapping(Participant):
        """Once this merge has let go of the lock, another thread merges with the same store, up to its collect."""

        def collect(self, merge: Merge) -> Changes | None:
            if threading.current_thread() is not threading.main_thread():
                other_collected.set()
            return None

        def after_commit(self, merge: Merge) -> None:
            if threading.current_thread() is threading.main_thread() and not others:
                others.append(threading.Thread(target=record, args=(store, events.deployment_error, "bare_metal",
                                                                   "timeout")))
                others[0].start()
                assert other_collected.wait(10)

    store = TextfileStore(textfile_dir, participants=[Overlapping()])
    # Its first merge reads the file: its closer is started while the device writes the new version back.
    record(store, events.deployment_error, "bare_metal", "timeout")
    others[0].join(10)
    assert replaced_versions_closed(store.path)
    assert threads_back_to(threads)
    assert sample_values(store.path)[TIMEOUTS] == 3


def holds_version(inode: int, unlinked: bool) -> bool:
    """Whether this process holds a descriptor of the file ``inode`` (``unlinked``: once a rename unlinked it; ext4
    gives a freed inode's number to the next new file, which may be one of this process's)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            status = os.stat(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if status.st_ino == inode and not (unlinked and status.st_nlink):
            return True
    return False


def let_go_of(inode: int, unlinked: bool = True) -> bool:
    """Wait until this process holds no descriptor of the file ``inode`` (closed off the merge's path, by another
    thread): False if it still does after 10 s."""
    deadline = time.monotonic() + 10
    while holds_version(inode, unlinked):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("moment", ["while it parses what it read", "while the device writes back",
                                    "between the rename and the close", "while the closing thread closes"])
def test_a_child_forked_while_another_thread_merges_holds_no_version_that_merge_replaced(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    """A fork by one thread while another merges gives the child copies of the descriptors of the versions that merge
    replaces, but not the thread that closes them: the child must close its copies itself, or it keeps the blocks of
    a file nobody can see for as long as it lives (a worker forked by a long-lived program). Its own merges with the
    store go on as before."""
    import threading

    from fraisier_textfile.store import closing, files, process

    record(TextfileStore(textfile_dir), events.deployment_error, "bare_metal", "timeout")
    # That merge's thread (its rename's fsync) is done before the closes are patched: else it could be the one to fork.
    assert process.wait_for_closes(10)
    replaced = (textfile_dir / "fraisier.prom").stat().st_ino
    at_moment, forked = threading.Event(), threading.Event()

    def fork_here() -> None:
        if at_moment.is_set():
            return  # the child's own merge
        at_moment.set()
        assert forked.wait(10)

    class AfterCommit(Participant):
        def after_commit(self, merge: Merge) -> None:
            if moment == "between the rename and the close":
                fork_here()

    store = TextfileStore(textfile_dir, participants=[AfterCommit()])
    if moment == "while it parses what it read":
        parse_claimed = store.file.parse_claimed

        def parse_after_the_fork(data: bytes) -> object:
            fork_here()
            return parse_claimed(data)

        monkeypatch.setattr(store.file, "parse_claimed", parse_after_the_fork)
    elif moment == "while the device writes back":
        store.transaction.litter.append((lambda directory: fork_here(), lambda directory: None))
    elif moment == "while the closing thread closes":
        close_all = closing._close_all

        def close_after_the_fork(versions: list[files.FileVersion], synced: int = -1) -> None:
            if threading.current_thread() is not threading.main_thread():
                fork_here()
            close_all(versions, synced)

        monkeypatch.setattr(closing, "_close_all", close_after_the_fork)
    # The store's first merge reads the file (checked while the device writes back, litter looked for there, the
    # closing thread started there).
    merging = threading.Thread(target=record, args=(store, events.deployment_error, "bare_metal", "timeout"))
    merging.start()
    assert at_moment.wait(10)
    child = os.fork()
    if child == 0:  # pragma: no cover (the child's verdict is its exit status)

        def verdict() -> int:
            held = not let_go_of(replaced, unlinked=False)  # unlinked or not yet: the child has made no file
            record(store, events.deployment_error, "bare_metal", "timeout")
            # Nor the version that merge was writing (the child's merge replaced it): the child's own is current.
            return 2 * held + 4 * (not let_go_of(replaced)) + 8 * (not replaced_versions_closed(store.path))

        exit_with(verdict)
    forked.set()
    merging.join(10)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, (
        "the child held the replaced version (2: at the fork, 4: after), or the one written then (8)")
    assert let_go_of(replaced)
    assert sample_values(store.path)[TIMEOUTS] == 3


def test_the_look_for_litter_during_the_writeback_removes_killed_writers_temporaries_and_follows_no_plant(
    textfile_dir: Path, tmp_path: Path
) -> None:
    """A merge that reads the file looks for killed writers' temporaries while the device writes its new version
    back: those of the textfile, of markers (their writer gone) and of hand-overs (an hour old) go; what a writer of
    the directory planted under a temporary's name (a symlink to a file elsewhere, a FIFO, a directory) is neither
    followed, opened, waited on nor removed; a regular file of another user's under that name is litter like any;
    the merge's own temporary is renamed into place."""
    record(TextfileStore(textfile_dir), events.deployment_error, "bare_metal", "timeout")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    planted = {"link": textfile_dir / f"{TEMPORARY_PREFIX}link", "fifo": textfile_dir / f"{TEMPORARY_PREFIX}fifo",
               "directory": textfile_dir / f"{TEMPORARY_PREFIX}directory"}
    planted["link"].symlink_to(victim)
    os.mkfifo(planted["fifo"])
    planted["directory"].mkdir()
    others = textfile_dir / f"{TEMPORARY_PREFIX}others"
    others.write_text("half a file")
    os.chown(others, 65534, 65534)
    killed = textfile_dir / f"{TEMPORARY_PREFIX}deadbeef"
    killed.write_text("half a file")
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its PID names no process
    (textfile_dir / marker_files.MARKER_DIRECTORY).mkdir()
    half_marker = textfile_dir / marker_files.MARKER_DIRECTORY / f".{gone.pid}-1-0000dead"
    half_marker.write_text("{")
    (textfile_dir / handovers.HANDOVER_DIRECTORY).mkdir(exist_ok=True)
    half_handover = textfile_dir / handovers.HANDOVER_DIRECTORY / f"{handovers.TEMPORARY_PREFIX}deadbeef"
    half_handover.write_text("{")
    hour_ago = time.time() - handovers.STALE_TEMPORARY_SECONDS - 60
    os.utime(half_handover, (hour_ago, hour_ago))
    before = (textfile_dir / "fraisier.prom").stat().st_ino
    with opens_of(planted["fifo"]) as fifo_opens, opens_of(victim) as victim_opens:
        record(TextfileStore(textfile_dir), events.deployment_error, "bare_metal", "timeout")  # reads: checks meanwhile
        assert fifo_opens() == 0 and victim_opens() == 0
    assert (textfile_dir / "fraisier.prom").stat().st_ino != before
    assert sample_values(textfile_dir / "fraisier.prom")[TIMEOUTS] == 2
    assert all(os.path.lexists(path) for path in planted.values())
    assert victim.read_text() == "precious\n"
    assert not any(os.path.lexists(path) for path in (others, killed, half_marker, half_handover))
    assert sorted(name for name in os.listdir(textfile_dir) if name.startswith(TEMPORARY_PREFIX)) == sorted(
        path.name for path in planted.values())


def test_a_merge_whose_look_at_its_lock_fails_after_writing_leaves_no_temporary_open_or_on_disk(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The look that the lock is still ours, made once the new version is written, may fail itself (the lock file's
    lstat: EIO, ENOMEM; no way to have it fail for real here): the merge fails with it, the file as it was, and the
    temporary it wrote is neither left open for the life of the process nor left on disk for the next litter look."""
    from fraisier_textfile.errors import TextfileWriteError, write_error
    from fraisier_textfile.store import process
    from fraisier_textfile.store.lock import Lock

    record(TextfileStore(textfile_dir), events.deployment_error, "bare_metal", "timeout")
    before = (textfile_dir / "fraisier.prom").read_bytes()

    def failing(lock: Lock) -> bool:
        raise write_error(lock.path, "use the lock file", OSError(5, "Input/output error"))

    monkeypatch.setattr(Lock, "is_held", failing)
    with pytest.raises(TextfileWriteError, match="Input/output error"):
        record(TextfileStore(textfile_dir), events.deployment_error, "bare_metal", "timeout")
    assert (textfile_dir / "fraisier.prom").read_bytes() == before
    assert not [name for name in os.listdir(textfile_dir) if name.startswith(TEMPORARY_PREFIX)]
    assert not process.writing
    assert replaced_versions_closed(textfile_dir / "fraisier.prom")
    open_temporaries = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if TEMPORARY_PREFIX in target:
            open_temporaries.append(target)
    assert open_temporaries == []
