"""store/files.py: the textfile on disk: its default place, its versions held open, and writing it in parts, never
through a symlink."""

from __future__ import annotations

import os
import time
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

from .processes import small_ext4
from .stores import record, store_at
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


def written_six_times(directory: Path, now: float) -> list[os.stat_result]:
    """The textfile's status after each of six merges: other bytes each time (their update times, a minute
    apart from ``now``), the same size and the same layout line."""
    versions = []
    for minute in range(1, 7):
        record(store_at(directory, now + 60 * minute), events.provider_availability, "bare_metal", True)
        versions.append(os.stat(directory / "fraisier.prom"))
    return versions


def test_a_version_held_open_keeps_its_inode_from_the_versions_written_in_its_second_on_ext4(tmp_path: Path) -> None:
    """The seal gives the versions written in one second with one layout line the same mtime, and ext4 gives a
    freed inode number to the next new file: what keeps a version (a merger's, a server's) from taking a later
    one of its size for itself is its descriptor, which keeps its inode from being freed. So its identity needs
    no ctime (recorder/writer.py's FailedWrite, which holds nothing open, does)."""
    with small_ext4(tmp_path / "ext4") as mount_point:
        directory = mount_point / "textfile"
        for _ in range(5):
            time.sleep(1 - time.time() % 1)  # at the start of a second
            now = time.time() - 86400
            record(store_at(directory, now), events.provider_availability, "bare_metal", True)
            version, _ = TextfileStore(directory).read_data()
            assert version is not None
            _, inode, size, mtime = version.key
            try:
                later = written_six_times(directory, now)
                current = version.is_current()
            finally:
                version.close()
            if later[-1].st_mtime_ns == mtime:
                break
        assert later[-1].st_mtime_ns == mtime, "no seven versions in one second"
        assert all(status.st_size == size for status in later)
        assert inode not in [status.st_ino for status in later]
        assert not current


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
