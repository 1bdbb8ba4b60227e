"""The marker files of deployments in flight (store/markers.py): written locked, read without following or
waiting on anything, removed once accounted for, and alive exactly while their writer's lock is held, whatever
/proc says."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fraisier_textfile.store import fs, markers
from fraisier_textfile.store.markers import MARKER_DIRECTORY
from fraisier_textfile.store.process_identity import process_start_time

from .processes import binary, require
from .values import sample_values

WORKERS = Path(__file__).with_name("marker_workers.py")


def start_worker(*arguments: str, prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*prefix, sys.executable, str(WORKERS), *arguments], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def markers_in(textfile_dir: Path) -> list[markers.Marker]:
    """The markers in the directory, as a merge lists them."""
    textfile = fs.open_directory(textfile_dir)
    if textfile is None:
        return []
    with textfile:
        found, directory = markers.list_markers(textfile)
    if directory is not None:
        directory.close()  # each marker holds the directory on its own
    return found


def alive(textfile_dir: Path) -> dict[str, bool]:
    return {marker.id: markers.is_alive(marker) for marker in markers_in(textfile_dir)}


def test_a_released_marker_is_dead_while_its_process_runs(
    textfile_dir: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """/proc shows the writer running with the marker's start time; its free lock says the deployment ended."""
    worker = start_worker("deploy_then_release", str(textfile_dir))
    processes.append(worker)
    assert worker.stdout is not None and worker.stdin is not None
    _, marker_id = worker.stdout.readline().split()
    assert alive(textfile_dir) == {marker_id: True}
    worker.stdin.write("release\n")
    worker.stdin.flush()
    assert worker.stdout.readline() == "released\n"
    assert process_start_time(worker.pid) == marker_id.split("-")[1]
    assert alive(textfile_dir) == {marker_id: False}


def test_a_locked_marker_from_another_pid_namespace_is_alive_until_released(
    textfile_dir: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """Its PID means nothing here, but its lock does: alive while held, dead once free (an older version's
    marker from another namespace stays active, as tests/test_races.py shows)."""
    require(os.geteuid() == 0, "a PID namespace needs root: run the tests as root (CI does)")
    unshare = binary("unshare")
    worker = start_worker("deploy_then_release", str(textfile_dir), prefix=(unshare, "--pid", "--fork", "--mount-proc"))
    processes.append(worker)
    assert worker.stdout is not None and worker.stdin is not None
    assert worker.stdout.readline().startswith("deploying ")
    [marker] = markers_in(textfile_dir)
    assert marker.pid_namespace != os.readlink("/proc/self/ns/pid")
    assert marker.pid == 1  # the first process of its namespace
    assert markers.is_alive(marker)
    worker.stdin.write("release\n")
    worker.stdin.flush()
    assert worker.stdout.readline() == "released\n"
    assert not markers.is_alive(marker)


def test_a_locked_marker_from_another_boot_is_dead(textfile_dir: Path, processes: list[subprocess.Popen[str]]) -> None:
    """A directory shared with another host or kept across a reboot: another boot id is a dead writer,
    whatever holds a lock."""
    worker = start_worker("deploy_then_release", str(textfile_dir))
    processes.append(worker)
    assert worker.stdout is not None
    _, marker_id = worker.stdout.readline().split()
    path = textfile_dir / MARKER_DIRECTORY / marker_id
    content = json.loads(path.read_text())
    assert alive(textfile_dir) == {marker_id: True}
    with open(path, "r+", encoding="utf-8") as file:  # rewritten in place: the same inode, still locked
        file.truncate()
        json.dump({**content, "boot": "another-boot"}, file)
    assert alive(textfile_dir) == {marker_id: False}


def test_a_marker_this_process_holds_is_alive_until_removed(textfile_dir: Path) -> None:
    marker = markers.create_marker(textfile_dir, "bare_metal", "api")
    assert marker.held
    [read] = markers_in(textfile_dir)
    assert read.locked and markers.is_alive(read)
    markers.remove_marker(textfile_dir, marker.id)
    assert not marker.held  # removing our own marker released it
    marker.release()  # again: nothing happens
    assert markers_in(textfile_dir) == []
    assert not markers.is_alive(read)


def test_a_marker_is_locked_from_the_moment_it_has_its_name(textfile_dir: Path) -> None:
    """The lock is taken on the temporary and follows the inode through the rename."""
    import fcntl

    marker = markers.create_marker(textfile_dir, "bare_metal", "api")
    assert marker.path == str(textfile_dir / MARKER_DIRECTORY / marker.id)
    assert [p.name for p in (textfile_dir / MARKER_DIRECTORY).iterdir()] == [marker.id]
    descriptor = os.open(str(marker.path), os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        marker.release()
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    finally:
        os.close(descriptor)


def test_a_half_written_marker_is_removed_only_once_its_writer_is_provably_gone(textfile_dir: Path) -> None:
    import fcntl

    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its PID names no process
    own_start = process_start_time(os.getpid())
    directory = textfile_dir / MARKER_DIRECTORY
    directory.mkdir(parents=True)
    litter = directory / f".{gone.pid}-1-0000dead"
    being_written = directory / f".{os.getpid()}-{own_start}-0000live"  # created, not locked yet
    locked = directory / f".{gone.pid}-1-000locked"  # a PID that says nothing, a lock that says alive
    for path in (litter, being_written, locked):
        path.write_text("{")
    descriptor = os.open(locked, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        markers.remove_stale_temporaries(textfile_dir)
        assert sorted(p.name for p in directory.iterdir()) == sorted([being_written.name, locked.name])
    finally:
        os.close(descriptor)


def test_what_is_not_a_regular_file_among_the_markers_is_skipped_never_followed_or_waited_on(
    textfile_dir: Path,
) -> None:
    marker = markers.create_marker(textfile_dir, "bare_metal", "api")
    directory = textfile_dir / MARKER_DIRECTORY
    os.mkfifo(directory / f"{os.getpid()}-1-00000f1f")  # opening it for reading would wait for a writer
    (directory / f"{os.getpid()}-1-0000d1e0").mkdir()
    outside = textfile_dir.parent / "not-a-marker"
    outside.write_text('{"provider": "bare_metal", "fraise_type": "api"}')
    (directory / f"{os.getpid()}-1-00001111").symlink_to(outside)
    script = (
        "import sys; from pathlib import Path; from fraisier_textfile.store import fs, markers; "
        "directory = markers.open_directory(fs.open_directory(Path(sys.argv[1]))); "
        "print([m.id for m in markers.read_markers_in(directory)])"
    )
    listed = subprocess.run(
        [sys.executable, "-c", script, str(textfile_dir)], capture_output=True, text=True, timeout=60, check=True
    )
    assert listed.stdout == f"{[marker.id]}\n"


@pytest.mark.parametrize("name", ["copy\nof", "copy of", "tab\there"], ids=["newline", "space", "tab"])
def test_a_marker_named_so_that_the_retired_list_cannot_hold_it_is_ignored(textfile_dir: Path, name: str) -> None:
    """The file lists retired markers by id, space-separated on one line: a copy named with a newline failed
    every merge (bare ValueError), one with a blank would read back as two ids and count its crash again."""
    from fraisier_textfile import TextfileStore
    from fraisier_textfile.changes import Changes

    marker = markers.create_marker(textfile_dir, "bare_metal", "api")
    directory = textfile_dir / MARKER_DIRECTORY
    shutil.copy(directory / marker.id, directory / name)  # nobody holds the copy's lock: it looks dead
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    store.merge(Changes())
    assert [m.id for m in markers_in(textfile_dir)] == [marker.id]
    crashed = 'fraisier_deployments_total{provider="bare_metal",status="crashed",fraise_type="api"}'
    assert sample_values(store.path).get(crashed, 0) == 0
    markers.remove_marker(textfile_dir, marker.id)
