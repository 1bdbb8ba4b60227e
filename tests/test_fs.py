"""store/fs.py: a directory held by a checked descriptor, and nothing in it resolved by path again."""

from __future__ import annotations

import os
import pwd
import signal
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fraisier_textfile.errors import UnexpectedFileError
from fraisier_textfile.store import fs


@pytest.fixture
def parent(tmp_path: Path) -> Iterator[fs.Directory]:
    directory = fs.open_directory(tmp_path / "textfile", create=True)
    assert directory is not None
    with directory:
        yield directory


def test_a_subdirectory_is_made_group_writable_keeping_the_setgid_bit(tmp_path: Path, umask_077: None) -> None:
    (tmp_path / "shared").mkdir()
    os.chmod(tmp_path / "shared", 0o2775)
    with fs.open_directory(tmp_path / "shared") as parent:  # type: ignore[union-attr]
        child = parent.subdirectory("child", create=True)
        assert child is not None
        child.close()
    assert stat.S_IMODE((tmp_path / "shared" / "child").stat().st_mode) == 0o2775


@pytest.mark.parametrize("kind", ["symlink", "file", "fifo"])
def test_a_subdirectory_that_is_not_one_is_refused_in_one_line_never_followed(
    parent: fs.Directory, tmp_path: Path, kind: str
) -> None:
    path = Path(parent.path) / "child"
    if kind == "symlink":
        (tmp_path / "elsewhere").mkdir()
        path.symlink_to(tmp_path / "elsewhere")
    elif kind == "file":
        path.write_text("x")
    else:
        os.mkfifo(path)
    with pytest.raises(UnexpectedFileError, match=f"^{path} is .*remove it$"):
        parent.subdirectory("child", create=True)
    assert os.path.lexists(path)


def test_a_subdirectory_planted_by_a_user_who_may_not_write_the_parent_is_refused(parent: fs.Directory) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a directory to another user")
    planted = Path(parent.path) / "child"
    planted.mkdir()
    nobody = pwd.getpwnam("nobody")
    os.chown(planted, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(UnexpectedFileError, match=f"^{planted} belongs to nobody with mode 0755, not to a user"):
        parent.subdirectory("child")


def test_a_world_writable_subdirectory_is_refused(parent: fs.Directory) -> None:
    planted = Path(parent.path) / "child"
    planted.mkdir()
    os.chmod(planted, 0o777)
    with pytest.raises(UnexpectedFileError, match="with mode 0777"):
        parent.subdirectory("child")


def test_operations_stay_in_the_directory_held_after_its_name_is_swapped(parent: fs.Directory, tmp_path: Path) -> None:
    child = parent.subdirectory("child", create=True)
    assert child is not None
    with child:
        (Path(parent.path) / "child" / "applied").write_text("x")
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "applied").write_text("not ours")
        os.rename(Path(parent.path) / "child", Path(parent.path) / "moved")
        (Path(parent.path) / "child").symlink_to(elsewhere)
        assert child.unlink("applied")
    assert (elsewhere / "applied").read_text() == "not ours"
    assert not (Path(parent.path) / "moved" / "applied").exists()


@pytest.mark.parametrize("name", ["a/b", "..", ".", ""])
def test_a_name_that_is_not_one_entry_is_a_programming_error(parent: fs.Directory, name: str) -> None:
    with pytest.raises(ValueError, match="not a single directory entry"):
        parent.unlink(name)


def test_a_file_is_created_with_its_mode_whatever_the_umask_and_never_over_a_planted_one(
    parent: fs.Directory, umask_077: None
) -> None:
    descriptor = parent.create("new", 0o644)
    os.close(descriptor)
    assert stat.S_IMODE((Path(parent.path) / "new").stat().st_mode) == 0o644
    with pytest.raises(FileExistsError):
        parent.create("new")


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_reading_refuses_what_is_not_a_regular_file_without_blocking(
    parent: fs.Directory, tmp_path: Path, kind: str
) -> None:
    if kind == "symlink":
        (tmp_path / "secret").write_text("secret")
        (Path(parent.path) / "entry").symlink_to(tmp_path / "secret")
    else:
        os.mkfifo(Path(parent.path) / "entry")
    with pytest.raises(UnexpectedFileError, match=f"^{Path(parent.path) / 'entry'} is a (symlink|FIFO)"):
        parent.read_regular("entry")


@contextmanager
def interrupted_after(function: Callable[..., object], call: int = 1) -> Iterator[None]:
    """A KeyboardInterrupt raised in this thread as soon as the C function ``function`` returns from its ``call``-th
    call: where a SIGINT's handler runs, or any handler that raises, between two bytecodes (a profile function is
    called there)."""
    fired: list[bool] = []
    calls = 0

    def interrupt(frame: object, event: str, argument: object) -> None:
        nonlocal calls
        if event == "c_return" and argument is function and not fired:
            calls += 1
            if calls == call:
                fired.append(True)
                raise KeyboardInterrupt

    sys.setprofile(interrupt)
    try:
        yield
    finally:
        sys.setprofile(None)
    assert fired


class Interrupted(Exception):
    """What the handler of a real signal raises (as a Ctrl-C's or an alarm-based timeout's would)."""


@contextmanager
def signalled_after(function: Callable[..., object], call: int) -> Iterator[None]:
    """A real SIGUSR1 raised in this thread as soon as the C function ``function`` returns from its ``call``-th call,
    its handler raising :class:`Interrupted` wherever Python runs it (at once, unless handlers are held back)."""
    calls = 0

    def interrupt(frame: object, event: str, argument: object) -> None:
        nonlocal calls
        if event == "c_return" and argument is function:
            calls += 1
            if calls == call:
                signal.raise_signal(signal.SIGUSR1)

    def handler(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGUSR1, handler)
    sys.setprofile(interrupt)
    try:
        yield
    finally:
        sys.setprofile(None)
        signal.signal(signal.SIGUSR1, previous)


def closed_once(close: Callable[[], None], number: int, where: Path) -> None:
    """``close`` closes descriptor ``number``: interrupted right after the close by a handler that raises, then made
    to close again once the number is another file's (as another thread's next open would make it), it must leave
    that file open."""
    with interrupted_after(os.close), pytest.raises(KeyboardInterrupt):
        close()
    other = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
    if other != number:  # the lowest free number, as it often is; else put there
        os.dup2(other, number)
        os.close(other)
    try:
        close()
        os.fstat(number)  # still open
    finally:
        os.close(number)


def test_a_handler_that_raises_as_a_directory_is_closed_never_has_it_closed_twice(tmp_path: Path) -> None:
    """A signal handler that raises right after the close (a merge's directory is closed after the merge, where
    handlers run) must not leave the number noted as open: closed again later (at the object's end), it would close
    whatever file another thread opened meanwhile under that number (the lock's, say, releasing the lock)."""
    directory = fs.open_directory(tmp_path)
    assert directory is not None
    closed_once(directory.close, directory.descriptor, tmp_path)
