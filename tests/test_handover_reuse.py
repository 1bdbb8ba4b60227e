"""Spent hand-overs (store/handover_reuse.py): a merge keeps the hand-overs it applied as spent files, their writer
takes them back for its next hand-over, and nothing in that is counted twice, followed, opened when it is not a
regular file, or written into when it is not the writer's own spent hand-over."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from fraisier_textfile import TextfileStore
from fraisier_textfile.changes import Changes
from fraisier_textfile.store import fs, handover_order, handover_reuse, handovers

from .stores import ListingOrder, handovers_left
from .test_handover_aside import one
from .test_handovers import error_count
from .test_hostile_entries import within
from .values import sample_values


@pytest.fixture(autouse=True)
def reuse_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hand-overs are taken back where new files are costly (handover_reuse.pays): these tests take them back on
    whatever filesystem holds their directory; the choice itself is tested below, with ``auto``."""
    monkeypatch.setenv(handover_reuse.SETTING, "on")


def directory_of(textfile_dir: Path) -> Path:
    return textfile_dir / handovers.HANDOVER_DIRECTORY


def names(textfile_dir: Path, suffix: str) -> list[str]:
    return sorted(name for name in os.listdir(directory_of(textfile_dir)) if name.endswith(suffix)
                  and not name.startswith("."))


def handed_over_and_applied(store: TextfileStore, error_type: str) -> Path:
    """Hand ``error_type`` over, merge it: the path of the spent file its hand-over became."""
    store.hand_over(one(error_type))
    [handover] = names(store.directory, handovers.SUFFIX)
    store.merge(Changes())
    assert handovers.wait_for_removals()
    spent = directory_of(store.directory) / (handover[: -len(handovers.SUFFIX)] + handover_reuse.SUFFIX)
    assert spent.is_file(), os.listdir(directory_of(store.directory))
    return spent


def test_a_writer_takes_back_its_applied_hand_over_for_the_next_one(textfile_dir: Path) -> None:
    """The point: no new inode and no deletion per hand-over once the first is applied; each counted once."""
    store = TextfileStore(textfile_dir)
    spent = handed_over_and_applied(store, "first")
    inode = spent.stat().st_ino
    store.hand_over(one("second"))
    [second] = names(textfile_dir, handovers.SUFFIX)
    assert (directory_of(textfile_dir) / second).stat().st_ino == inode
    assert names(textfile_dir, handover_reuse.SUFFIX) == []
    store.merge(Changes())
    values = sample_values(store.path)
    assert (error_count(values, "first"), error_count(values, "second")) == (1, 1)
    assert handovers_left(textfile_dir) == []


def test_a_longer_hand_over_then_a_shorter_one_in_the_same_file_reads_whole(textfile_dir: Path) -> None:
    """The old bytes past the new ones are cut: a shorter hand-over written over a longer one is still JSON."""
    store = TextfileStore(textfile_dir)
    long = Changes()
    for number in range(50):
        key, amount = one(f"long_{number}").added.popitem()
        long.add(*key, amount)
    store.hand_over(long)
    store.merge(Changes())
    store.hand_over(one("short"))
    [short] = names(textfile_dir, handovers.SUFFIX)
    data = (directory_of(textfile_dir) / short).read_bytes()
    assert data.endswith(b"}") and data.startswith(handover_reuse.header(short[: -len(handovers.SUFFIX)]))
    store.merge(Changes())
    values = sample_values(store.path)
    assert error_count(values, "short") == 1 and error_count(values, "long_49") == 1
    assert values.get(handovers.SET_ASIDE_FAMILY, 0) == 0


def test_a_hand_over_holding_the_bytes_of_an_applied_one_is_set_aside_not_applied_again(
    textfile_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After a power loss between a writer's rename of a spent file it took back and its fsync, the new name may
    hold the old bytes: a hand-over already applied. Made here as the power loss would leave it."""
    store = TextfileStore(textfile_dir)
    spent = handed_over_and_applied(store, "first")
    later = directory_of(textfile_dir) / f"{handover_order.id_for(10**6)}{handovers.SUFFIX}"
    os.rename(spent, later)
    with caplog.at_level(logging.WARNING):
        store.merge(Changes())
    values = sample_values(store.path)
    assert error_count(values, "first") == 1
    assert values[handovers.SET_ASIDE_FAMILY] == 1
    assert names(textfile_dir, handovers.SET_ASIDE_SUFFIX) == [later.name[: -len(handovers.SUFFIX)]
                                                               + handovers.SET_ASIDE_SUFFIX]
    assert "applied before" in caplog.text


def planted_file(spent: Path, content: bytes) -> Path:
    """A regular file of this user's with ``content`` in place of the spent file ``spent``."""
    spent.unlink()
    spent.write_bytes(content)
    os.chmod(spent, fs.FILE_MODE)
    return spent


@pytest.mark.parametrize("entry", [
    "another file of this user's", "a hard link to the spent hand-over", "another user's copy of it",
    "its copy with another mode", "a symlink to its copy", "a FIFO", "a directory",
])
def test_a_writer_takes_back_nothing_but_its_own_spent_hand_over_and_leaves_the_rest_as_it_was(
    textfile_dir: Path, tmp_path: Path, entry: str
) -> None:
    """A writer of the shared directory may put anything under the spent file's name (a rename needs no right on
    the file): the writer then makes a new file, never opening what is not a regular file (a FIFO would hang it),
    never following a symlink, never writing into another file, which stays byte for byte as it was."""
    store = TextfileStore(textfile_dir)
    spent = handed_over_and_applied(store, "first")
    original = spent.read_bytes()
    elsewhere = tmp_path / "copy"
    if entry == "another file of this user's":
        planted_file(spent, b"a file of this user's, moved here\n")
    elif entry == "a hard link to the spent hand-over":
        os.link(spent, elsewhere)
    elif entry == "another user's copy of it":
        planted_file(spent, original)
        os.chown(spent, 65534, 65534)
    elif entry == "its copy with another mode":
        planted_file(spent, original)
        os.chmod(spent, 0o600)
    elif entry == "a symlink to its copy":
        elsewhere.write_bytes(original)
        os.chmod(elsewhere, fs.FILE_MODE)
        spent.unlink()
        spent.symlink_to(elsewhere)
    elif entry == "a FIFO":
        spent.unlink()
        os.mkfifo(spent)
    else:
        spent.unlink()
        spent.mkdir()
    before = os.lstat(spent)
    content = None if not stat.S_ISREG(before.st_mode) else spent.read_bytes()
    target = elsewhere.read_bytes() if elsewhere.exists() else None
    within(30, lambda: store.hand_over(one("second")))
    [second] = names(textfile_dir, handovers.SUFFIX)
    assert (directory_of(textfile_dir) / second).stat().st_ino != before.st_ino
    after = os.lstat(spent)
    assert (after.st_ino, after.st_mode, after.st_uid) == (before.st_ino, before.st_mode, before.st_uid)
    if content is not None:
        assert spent.read_bytes() == content
    if target is not None:
        assert elsewhere.read_bytes() == target
    store.merge(Changes())
    values = sample_values(store.path)
    assert (error_count(values, "first"), error_count(values, "second")) == (1, 1)


def test_a_merge_keeps_at_most_spent_limit_files_and_none_of_a_writer_gone(textfile_dir: Path) -> None:
    store = TextfileStore(textfile_dir)
    for number in range(handover_reuse.SPENT_LIMIT + 6):
        store.hand_over(one(f"mine_{number}"))
    script = textwrap.dedent("""
        import sys
        from fraisier_textfile import TextfileStore
        from fraisier_textfile import changes as events
        from fraisier_textfile.changes import Changes
        changes = Changes()
        events.deployment_error(changes, "bare_metal", "gone")
        TextfileStore(sys.argv[1]).hand_over(changes)
    """)
    subprocess.run([sys.executable, "-c", script, str(textfile_dir)], check=True, timeout=60)
    store.merge(Changes())
    assert handovers.wait_for_removals()
    spent = names(textfile_dir, handover_reuse.SUFFIX)
    assert len(spent) == handover_reuse.SPENT_LIMIT
    assert all(f"-{os.getpid()}-" in name for name in spent)  # the gone writer's was deleted
    assert handovers_left(textfile_dir) == []
    values = sample_values(store.path)
    assert error_count(values, "gone") == 1 and error_count(values, f"mine_{handover_reuse.SPENT_LIMIT + 5}") == 1


def test_the_litter_pass_deletes_the_spent_files_of_writers_gone_or_that_waited_too_long(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = TextfileStore(textfile_dir)
    mine = handed_over_and_applied(store, "mine")
    gone = directory_of(textfile_dir) / f"{handover_order.id_for(7)}{handover_reuse.SUFFIX}".replace(
        f"-{os.getpid()}-", f"-{dead_pid()}-")
    gone.write_bytes(b"{}")
    directory = fs.open_directory(str(directory_of(textfile_dir)))
    assert directory is not None
    with directory:
        handovers.remove_stale_temporaries(directory)
        assert (mine.exists(), gone.exists()) == (True, False)
        later = time.time() + handover_reuse.SPENT_STALE_SECONDS + 1
        monkeypatch.setattr(time, "time", lambda: later)
        handovers.remove_stale_temporaries(directory)
    assert not mine.exists()


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_forked_child_takes_back_none_of_its_parents_spent_hand_overs(textfile_dir: Path) -> None:
    store = TextfileStore(textfile_dir)
    spent = handed_over_and_applied(store, "parent")
    inode = spent.stat().st_ino
    pid = os.fork()
    if pid == 0:
        try:
            store.hand_over(one("child"))
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert spent.stat().st_ino == inode  # still there, for the parent
    store.hand_over(one("parent_again"))
    assert not spent.exists()
    store.merge(Changes())
    values = sample_values(store.path)
    assert [error_count(values, name) for name in ("parent", "child", "parent_again")] == [1, 1, 1]


def test_a_writer_killed_after_taking_back_a_spent_file_leaves_litter_never_counted(textfile_dir: Path) -> None:
    """SIGKILLed between taking the file back (renamed to its temporary name) and publishing it: its events were
    never forgotten by a returned call; the old bytes under the temporary name are not a hand-over."""
    script = textwrap.dedent("""
        import os, signal, sys
        from fraisier_textfile import TextfileStore
        from fraisier_textfile import changes as events
        from fraisier_textfile.changes import Changes
        from fraisier_textfile.store import handover_reuse, handovers
        store = TextfileStore(sys.argv[1])
        def error(name):
            changes = Changes()
            events.deployment_error(changes, "bare_metal", name)
            return changes
        store.hand_over(error("first"))
        store.merge(Changes())
        assert handovers.wait_for_removals()
        claim = handover_reuse.claim
        def claim_then_die(directory, temporary):
            descriptor = claim(directory, temporary)
            assert descriptor is not None
            os.kill(os.getpid(), signal.SIGKILL)
        handover_reuse.claim = claim_then_die
        store.hand_over(error("second"))
    """)
    killed = subprocess.run([sys.executable, "-c", script, str(textfile_dir)], timeout=60)
    assert killed.returncode == -9
    assert [name for name in os.listdir(directory_of(textfile_dir)) if name.startswith(".")]  # the litter
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    values = sample_values(store.path)
    assert (error_count(values, "first"), error_count(values, "second")) == (1, 0)
    assert values.get(handovers.SET_ASIDE_FAMILY, 0) == 0


def test_a_hand_over_torn_between_its_new_bytes_and_the_spent_ones_is_set_aside(textfile_dir: Path) -> None:
    """What a power loss may leave of a hand-over written over a spent one on a journaled ext4, whose overwrites of
    allocated blocks are not ordered with the rename: its first bytes new (its own id), the rest the old
    hand-over's. Made here as the power loss would leave it, from two hand-overs of the same length."""
    store = TextfileStore(textfile_dir)
    spent = handed_over_and_applied(store, "first_")
    old = spent.read_bytes()
    store.hand_over(one("second"))
    [second] = names(textfile_dir, handovers.SUFFIX)
    path = directory_of(textfile_dir) / second
    new = path.read_bytes()
    assert len(new) == len(old) and new != old
    cut = len(handover_reuse.header(second[: -len(handovers.SUFFIX)]))
    path.write_bytes(new[:cut] + old[cut:])  # the id new, the events and the rest the applied hand-over's
    store.merge(Changes())
    values = sample_values(store.path)
    assert (error_count(values, "first_"), error_count(values, "second")) == (1, 0)
    assert values[handovers.SET_ASIDE_FAMILY] == 1


def test_two_threads_handing_over_at_once_both_hand_over_when_one_spent_file_is_left(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ids a process remembers are shared by its threads: two may both see the one spent file left, and the
    second to take the id from the list must find it empty, not raise (its events would be lost). The threads'
    system calls are held in the one order that shows it (it happens, rarely, without)."""
    import threading

    store = TextfileStore(textfile_dir)
    spent = handed_over_and_applied(store, "first")
    first_looked, second_done = threading.Event(), threading.Event()
    waited: list[bool] = []
    lstat = fs.Directory.lstat

    def held_lstat(self: fs.Directory, name: str) -> os.stat_result | None:
        found = lstat(self, name)
        if name == spent.name and threading.current_thread() is first and not first_looked.is_set():
            first_looked.set()
            # The first thread looked; the second hands over whole meanwhile (it takes the id, or finds it taken).
            # Waited for, never timed out on: a second thread that cannot go on while the first is held fails this.
            waited.append(second_done.wait(30))
        return found

    monkeypatch.setattr(fs.Directory, "lstat", held_lstat)
    failures: list[BaseException] = []

    def hand_over(name: str, then: threading.Event | None) -> None:
        try:
            store.hand_over(one(name))
        except BaseException as error:
            failures.append(error)
        finally:
            if then is not None:
                then.set()

    first = threading.Thread(target=hand_over, args=("one_thread", None))
    first.start()
    assert first_looked.wait(10)
    second = threading.Thread(target=hand_over, args=("other_thread", second_done))
    second.start()
    first.join(60)
    second.join(60)
    monkeypatch.undo()
    assert waited == [True]
    assert failures == []
    store.merge(Changes())
    values = sample_values(store.path)
    assert [error_count(values, name) for name in ("first", "one_thread", "other_thread")] == [1, 1, 1]
    assert handovers_left(textfile_dir) == []


def test_a_litter_pass_while_a_writer_takes_back_an_old_spent_file_fails_no_hand_over(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hand-over that waited over an hour before a merge applied it keeps its old mtime as a spent file, and
    under its writer's temporary name, until the new bytes are written: a litter pass (any process's, which takes
    a temporary that old for a killed writer's) must not delete it between the writer's rename and its write."""
    store = TextfileStore(textfile_dir)
    store.hand_over(one("first"))
    [handover] = names(textfile_dir, handovers.SUFFIX)
    two_hours_ago = time.time() - 2 * handovers.STALE_TEMPORARY_SECONDS
    os.utime(directory_of(textfile_dir) / handover, (two_hours_ago, two_hours_ago))
    store.merge(Changes())
    assert handovers.wait_for_removals()
    assert names(textfile_dir, handover_reuse.SUFFIX)
    take = handover_reuse._take

    def litter_pass_after(directory: fs.Directory, handover_id: str, temporary: str) -> tuple[int, int] | None:
        taken = take(directory, handover_id, temporary)
        with directory.copy() as other:  # another process's descriptor of the directory
            handovers.remove_stale_temporaries(other)
        return taken

    monkeypatch.setattr(handover_reuse, "_take", litter_pass_after)
    store.hand_over(one("second"))
    monkeypatch.undo()
    store.merge(Changes())
    values = sample_values(store.path)
    assert (error_count(values, "first"), error_count(values, "second")) == (1, 1)
    assert handovers_left(textfile_dir) == []


def test_concurrent_merges_keep_at_most_spent_limit_files(textfile_dir: Path, tmp_path: Path) -> None:
    """Each merge retires its hand-overs after releasing the lock, into the room it counted under it: merges whose
    retires overlap must not each use the same room. Writers racing, each handing over and merging, alive to the
    end (a spent file of a writer gone is not kept); the count of spent files is watched the whole time (the
    limit made small, so that the overlaps fill it)."""
    limit, writers_count, rounds, batch = 6, 8, 30, 6
    finished = tmp_path / "finished"
    finished.mkdir()
    script = textwrap.dedent(f"""
        import os, sys
        from fraisier_textfile import TextfileStore
        from fraisier_textfile import changes as events
        from fraisier_textfile.changes import Changes
        from fraisier_textfile.store import handover_reuse, handovers
        handover_reuse.SPENT_LIMIT = {limit}
        store = TextfileStore(sys.argv[1])
        sys.stdin.read(1)
        for _ in range({rounds}):
            for _ in range({batch}):
                changes = Changes()
                events.deployment_error(changes, "bare_metal", "raced")
                store.hand_over(changes, durable=False)
            store.merge(Changes())
        assert handovers.wait_for_removals()
        open(os.path.join(sys.argv[2], str(os.getpid())), "w").close()
        sys.stdin.read()
    """)
    directory_of(textfile_dir).mkdir(parents=True)
    writers = [subprocess.Popen([sys.executable, "-c", script, str(textfile_dir), str(finished)],
                                stdin=subprocess.PIPE) for _ in range(writers_count)]
    most = 0
    try:
        for writer in writers:
            assert writer.stdin is not None
            writer.stdin.write(b"g")
            writer.stdin.flush()
        deadline = time.monotonic() + 240
        while len(os.listdir(finished)) < writers_count and time.monotonic() < deadline:
            assert all(writer.poll() is None for writer in writers)
            most = max(most, len(names(textfile_dir, handover_reuse.SUFFIX)))
    finally:
        for writer in writers:
            assert writer.stdin is not None
            writer.stdin.close()
        for writer in writers:
            assert writer.wait(240) == 0
    assert len(os.listdir(finished)) == writers_count
    assert 0 < most <= limit
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    assert error_count(sample_values(store.path), "raced") == writers_count * rounds * batch


def test_an_applied_hand_over_leaves_the_list_only_once_its_removal_is_durable(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reverse of the ordering rule (test_transaction): a merge drops from ``applied-handovers`` the ids whose
    files are gone (retired to spent files, or deleted). On an ext4 without a journal nothing orders the hand-over
    directory's blocks after the textfile's: were the new file durable and the removal not, a power loss would
    bring back ``<id>.json``, its own bytes under its own name (the id check passes), listed no more: applied
    twice. So the hand-over directory is fsynced after the removal and before the rename of the file that drops
    its id. Recorded by wrapping os's functions, which still do what they do."""
    store = TextfileStore(textfile_dir)
    for number in range(3):
        store.hand_over(one(f"handed_{number}"), durable=False)
    order = ListingOrder(monkeypatch, directory_of(textfile_dir), store.path.name, handovers.APPLIED.key,
                         handovers.SUFFIX)
    steps = order.steps
    store.merge(Changes())  # applies them, lists them, retires them after its commit
    assert handovers.wait_for_removals()
    store.merge(one("later"))  # finds them gone: drops them from the list
    monkeypatch.undo()
    listings = [set(value.split()) for step, value in steps if step == "listed"]
    assert len(listings) == 2 and len(listings[0]) == 3 and not listings[1], steps
    removed = {value for step, value in steps if step == "removed"}
    assert removed == listings[0], steps
    last_removal = max(index for index, (step, _) in enumerate(steps) if step == "removed")
    dropping = [index for index, (step, _) in enumerate(steps) if step == "listed"][1]
    assert ("sync", "") in steps[last_removal:dropping], steps
    values = sample_values(store.path)
    assert [error_count(values, f"handed_{number}") for number in range(3)] == [1, 1, 1]


KILLED_WHILE_TAKING_BACK = """
import os, signal, sys
from fraisier_textfile import TextfileStore
from fraisier_textfile import changes as events
from fraisier_textfile.changes import Changes
from fraisier_textfile.store import fs, handover_reuse, handovers

directory, step = sys.argv[1:]
store = TextfileStore(directory)
first = Changes()
for number in range(40):  # longer than the second: its file is cut (ftruncate) after the second's bytes
    events.deployment_error(first, "bare_metal", f"first_{number}")
store.hand_over(first)
store.merge(Changes())
assert handovers.wait_for_removals()


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def then_die(function, when=lambda *arguments: True):
    def wrapped(*arguments):
        result = function(*arguments)
        if when(*arguments):
            die()
        return result
    return wrapped


if step in ("renamed", "published"):
    fs.Directory.rename = then_die(fs.Directory.rename, lambda self, source, destination: (
        source.endswith(handover_reuse.SUFFIX) if step == "renamed"
        else source.startswith(".") and destination.endswith(handovers.SUFFIX)))
elif step == "opened":
    handover_reuse._open_own = then_die(handover_reuse._open_own)
elif step == "written":
    handovers.write_parts = then_die(handovers.write_parts)
elif step == "cut":
    os.ftruncate = then_die(os.ftruncate)
second = Changes()
events.deployment_error(second, "bare_metal", "second")
store.hand_over(second)
"""


@pytest.mark.parametrize("step", ["renamed", "opened", "written", "cut", "published"])
def test_a_writer_killed_at_each_step_of_taking_back_a_spent_file_counts_each_event_once(
    textfile_dir: Path, step: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGKILLed after the rename to its temporary name, the open, the write of the new bytes, the cut of the old
    ones past them, or the rename into place: the first hand-over stays counted once, the second is counted once
    if it was published (its call's return was near) and never otherwise, nothing is set aside, and what the
    writer left under its temporary name is litter that a later litter pass removes."""
    killed = subprocess.run([sys.executable, "-c", KILLED_WHILE_TAKING_BACK, str(textfile_dir), step], timeout=60)
    assert killed.returncode == -9
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    assert handovers.wait_for_removals()
    values = sample_values(store.path)
    assert [error_count(values, name) for name in ("first_0", "first_39", "second")] == [
        1, 1, 1 if step == "published" else 0]
    assert values.get(handovers.SET_ASIDE_FAMILY, 0) == 0
    assert names(textfile_dir, handovers.SUFFIX) == []
    later = time.time() + handovers.STALE_TEMPORARY_SECONDS + 1
    monkeypatch.setattr(time, "time", lambda: later)
    directory = fs.open_directory(str(directory_of(textfile_dir)))
    assert directory is not None
    with directory:
        handovers.remove_stale_temporaries(directory)
    assert handovers_left(textfile_dir) == []


def test_a_process_writing_to_two_textfile_directories_takes_back_in_each_only_its_files_there(
    tmp_path: Path,
) -> None:
    """The ids a process remembers are by hand-over directory: in each it takes back the spent file it left there,
    never looks for one of the other's, and each directory counts its own events once."""
    stores = [TextfileStore(tmp_path / name) for name in ("one", "two")]
    spent = {}
    for store in stores:
        spent[store.directory] = handed_over_and_applied(store, f"first_in_{store.directory.name}").stat().st_ino
    for _ in range(3):
        for store in stores:
            store.hand_over(one(f"again_in_{store.directory.name}"))
            [taken] = names(store.directory, handovers.SUFFIX)
            assert (directory_of(store.directory) / taken).stat().st_ino == spent[store.directory]
            store.merge(Changes())
            assert handovers.wait_for_removals()
    for store in stores:
        values = sample_values(store.path)
        assert error_count(values, f"first_in_{store.directory.name}") == 1
        assert error_count(values, f"again_in_{store.directory.name}") == 3
        other = "two" if store.directory.name == "one" else "one"
        assert error_count(values, f"again_in_{other}") == 0


MOUNTS = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard,resv_strict
46 27 7:0 / /mnt/journaled rw,relatime - ext4 /dev/loop0 rw
47 27 7:1 / /mnt/plain rw,relatime - ext4 /dev/loop1 rw
48 27 8:1 / /srv rw,noatime - xfs /dev/sda1 rw,attr2,discard,inode64
49 27 8:2 / /data rw,relatime shared:5 - btrfs /dev/sda2 rw,ssd,discard=async,space_cache=v2
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24683784k
50 27 8:3 /sub /bind rw,relatime - ext4 /dev/sda3 rw
"""


@pytest.mark.parametrize(("device", "journal", "pays"), [
    ("254:0", "28580", True),  # mounted with discard: each deletion waits for the device
    ("7:0", "28580", False),  # a journaled ext4 (its jbd2 thread's pid)
    ("7:1", "<none>", True),  # an ext4 without a journal: the inode allocator's scan of freed inodes
    ("8:1", None, True),  # xfs, discard
    ("8:2", None, False),  # btrfs's asynchronous discard costs no deletion its wait
    ("0:23", None, False),  # tmpfs
    ("8:3", "1", False),  # a bind mount of a journaled ext4
    ("9:9", None, False),  # not mounted (a device gone): the default, as before
])
def test_hand_overs_are_taken_back_where_new_files_are_costly(device: str, journal: str | None, pays: bool) -> None:
    major, minor = map(int, device.split(":"))
    assert handover_reuse.costly_files(os.makedev(major, minor), MOUNTS, lambda *_: journal) is pays


def test_on_a_filesystem_where_new_files_are_cheap_hand_overs_are_deleted_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tmpfs (as a journaled ext4): a new file and a deletion cost little there, and taking one back costs more
    system calls; ``auto`` (the default) leaves hand-overs as before, ``on`` takes them back all the same."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or handover_reuse.costly_files(os.stat(shm).st_dev):
        pytest.fail("this test needs /dev/shm, a tmpfs")
    textfile_dir = Path(tempfile.mkdtemp(dir=shm)) / "textfile"
    try:
        monkeypatch.setenv(handover_reuse.SETTING, "auto")
        store = TextfileStore(textfile_dir)
        store.hand_over(one("first"))
        store.merge(Changes())
        assert handovers.wait_for_removals()
        assert names(textfile_dir, handover_reuse.SUFFIX) == []
        monkeypatch.setenv(handover_reuse.SETTING, "on")
        store = TextfileStore(textfile_dir)
        handed_over_and_applied(store, "second")
        values = sample_values(store.path)
        assert (error_count(values, "first"), error_count(values, "second")) == (1, 1)
    finally:
        shutil.rmtree(textfile_dir.parent)


def test_a_setting_that_is_not_on_off_or_auto_is_named_once_and_auto_is_used(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(handover_reuse.SETTING, "yes")
    directory = fs.open_directory(str(textfile_dir), create=True)
    assert directory is not None
    with directory, caplog.at_level(logging.WARNING):
        expected = handover_reuse.costly_files(directory.status().st_dev)
        assert [handover_reuse.pays(directory) for _ in range(3)] == [expected] * 3
    [line] = [record.getMessage() for record in caplog.records if handover_reuse.SETTING in record.getMessage()]
    assert "'yes' is not on, off or auto" in line
