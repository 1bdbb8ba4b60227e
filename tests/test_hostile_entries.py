"""The store's paths hold only what it created. Real FIFOs, symlinks, directories and devices in their place are
refused with one clear error, never followed, never waited on, and never quoted to an HTTP client."""

from __future__ import annotations

import os
import socket
import stat
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from fraisier_textfile import TextfileStore
from fraisier_textfile import changes as events
from fraisier_textfile.changes import Changes
from fraisier_textfile.errors import UnexpectedFileError
from fraisier_textfile.store.handovers import HANDOVER_DIRECTORY
from fraisier_textfile.store.markers import MARKER_DIRECTORY

from .processes import fraisier, free_port, running

SECRET = "TOP-SECRET-do-not-serve\n"


def plant(path: Path, kind: str, elsewhere: Path) -> None:
    """Put a real ``kind`` of entry at ``path``; ``elsewhere`` is a directory outside the textfile directory."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink-to-a-file":
        secret = elsewhere / path.name
        secret.write_text(SECRET)
        path.symlink_to(secret)
    elif kind == "symlink-to-dev-null":
        path.symlink_to("/dev/null")
    elif kind == "dangling-symlink":
        path.symlink_to(elsewhere / "nothing-here")
    elif kind == "device":
        try:
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # the /dev/null device
        except PermissionError:
            pytest.skip("only root can make a device node")
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(str(path))
    elif kind == "regular-file":
        path.write_text("not a directory\n")
    else:
        raise AssertionError(kind)


def state(path: Path) -> tuple[int, str]:
    """What is at ``path``: its type and, for a symlink, where it points."""
    mode = os.lstat(path).st_mode
    return stat.S_IFMT(mode), os.readlink(path) if stat.S_ISLNK(mode) else ""


def within(seconds: float, call: Callable[[], object]) -> object:
    """Run ``call``; fail (instead of hanging the suite) if it has not returned after ``seconds``."""
    outcome: list[tuple[str, Any]] = []

    def run() -> None:
        try:
            outcome.append(("returned", call()))
        except BaseException as error:  # handed to the test below
            outcome.append(("raised", error))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still blocked after {seconds}s"
    kind, value = outcome[0]
    if kind == "raised":
        raise value
    return value


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    directory = tmp_path / "elsewhere"
    directory.mkdir()
    return directory


@pytest.fixture
def store(textfile_dir: Path) -> Iterator[TextfileStore]:
    textfile_dir.mkdir()
    yield TextfileStore(textfile_dir, lock_timeout=2)


def one_event() -> Changes:
    changes = Changes()
    events.deployment_error(changes, "bare_metal", "timeout")
    return changes


TEXTFILE_KINDS = [
    "fifo", "directory", "symlink-to-a-file", "symlink-to-dev-null", "dangling-symlink", "device", "socket"
]


@pytest.mark.parametrize("kind", TEXTFILE_KINDS)
def test_a_merge_refuses_anything_but_a_regular_file_at_the_textfile(
    store: TextfileStore, elsewhere: Path, kind: str
) -> None:
    plant(store.path, kind, elsewhere)
    before = state(store.path)
    changes = one_event()
    with pytest.raises(UnexpectedFileError) as refused:
        within(30, lambda: store.merge(changes))
    message = str(refused.value)
    assert message.startswith(f"{store.path} is ")
    assert "remove it" in message or "point --textfile-dir" in message
    assert state(store.path) == before
    assert changes  # kept, to be merged once the path is fixed
    if kind == "symlink-to-a-file":
        assert (elsewhere / "fraisier.prom").read_text() == SECRET


def test_a_writer_whose_textfile_is_a_symlink_names_the_real_directory(store: TextfileStore, elsewhere: Path) -> None:
    """The documented layout's mistake: --textfile-dir is node_exporter's directory, which holds a symlink to
    the real file. Replacing the link would split the writers in two; the writer says where to point instead."""
    TextfileStore(elsewhere).merge(one_event())
    real = (elsewhere / "fraisier.prom").read_bytes()
    store.path.symlink_to(elsewhere / "fraisier.prom")
    result = fraisier("record", "error", "--provider", "bare_metal", "--error-type", "x", textfile_dir=store.directory,
                      timeout=60)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"Error: {store.path} is a symlink")
    assert line.endswith(f"point --textfile-dir (FRAISIER_TEXTFILE_DIR) at the link's real directory, {elsewhere}")
    assert store.path.is_symlink()
    assert (elsewhere / "fraisier.prom").read_bytes() == real


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink-to-a-file", "device"])
def test_the_command_line_refuses_in_one_line_and_never_blocks(
    store: TextfileStore, elsewhere: Path, kind: str
) -> None:
    plant(store.path, kind, elsewhere)
    for command in (
        ("record", "error", "--provider", "bare_metal", "--error-type", "x"),
        ("textfile", "show"),
        ("textfile", "check"),
        ("textfile", "refresh"),
    ):
        result = fraisier(*command, textfile_dir=store.directory, timeout=60)
        assert result.returncode == 1, (command, result.stderr)
        [line] = result.stderr.splitlines()
        assert line.startswith(f"Error: {store.path} is "), (command, line)
        assert SECRET.strip() not in result.stdout + result.stderr


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink-to-a-file", "dangling-symlink"])
def test_a_merge_refuses_anything_but_a_regular_file_at_the_lock(
    store: TextfileStore, elsewhere: Path, kind: str
) -> None:
    plant(store.lock_path, kind, elsewhere)
    before = state(store.lock_path)
    with pytest.raises(UnexpectedFileError, match=f"^{store.lock_path} is "):
        within(30, lambda: store.merge(one_event()))
    assert state(store.lock_path) == before
    assert not store.path.exists()


@pytest.mark.parametrize("name", [MARKER_DIRECTORY, HANDOVER_DIRECTORY])
@pytest.mark.parametrize("kind", ["regular-file", "fifo", "symlink-to-a-directory"])
def test_a_merge_refuses_anything_but_a_directory_at_its_directories(
    store: TextfileStore, elsewhere: Path, name: str, kind: str
) -> None:
    path = store.directory / name
    if kind == "symlink-to-a-directory":
        path.symlink_to(elsewhere)
    else:
        plant(path, kind, elsewhere)
    changes = one_event()
    with pytest.raises(UnexpectedFileError, match=f"^{path} is .*(remove it|a directory)"):
        within(30, lambda: store.merge(changes))
    assert changes
    assert not store.path.exists()
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("name", [MARKER_DIRECTORY, HANDOVER_DIRECTORY])
@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink-to-a-file", "device"])
def test_a_merge_refuses_anything_but_regular_files_inside_its_directories(
    store: TextfileStore, elsewhere: Path, name: str, kind: str
) -> None:
    directory = store.directory / name
    directory.mkdir()
    plant(directory / "123-456-planted", kind, elsewhere)
    changes = one_event()
    with pytest.raises(UnexpectedFileError, match=f"^{directory}/123-456-planted is "):
        within(30, lambda: store.merge(changes))
    assert changes
    assert not store.path.exists()


@contextmanager
def serving(directory: Path, log: Path) -> Iterator[str]:
    """``fraisier metrics`` on ``directory``, ready once its landing page answers (/metrics will not: 500)."""
    port = free_port()
    command = [sys.executable, "-m", "fraisier_textfile", "--textfile-dir", str(directory), "metrics",
               "--address", "127.0.0.1", "--port", str(port)]
    with running(command, f"http://127.0.0.1:{port}/", log):
        yield f"http://127.0.0.1:{port}/metrics"


def scrape(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink-to-a-file", "device", "corrupt-file"])
def test_the_server_answers_a_fixed_500_and_keeps_serving(textfile_dir: Path, elsewhere: Path, kind: str) -> None:
    """No body ever carries another file's contents, or our own file's; a FIFO never wedges the server."""
    textfile_dir.mkdir()
    path = textfile_dir / "fraisier.prom"
    if kind == "corrupt-file":
        path.write_text(f"{SECRET.strip()} is not a sample\n")
    else:
        plant(path, kind, elsewhere)
    with serving(textfile_dir, elsewhere / "server.log") as url:
        for _ in range(3):
            status, body = scrape(url)
            assert status == 500
            assert body.startswith(f"cannot serve {path}: ")
            assert body.endswith("; the server's log has the details\n")
            assert "TOP-SECRET" not in body
        status, _ = scrape(url.removesuffix("metrics"))
        assert status == 200


def test_the_server_refuses_a_fifo_in_the_marker_directory(textfile_dir: Path, elsewhere: Path) -> None:
    TextfileStore(textfile_dir).merge(one_event())
    (textfile_dir / MARKER_DIRECTORY).mkdir()
    os.mkfifo(textfile_dir / MARKER_DIRECTORY / "123-456-planted")
    with serving(textfile_dir, elsewhere / "server.log") as url:
        for _ in range(2):
            status, body = scrape(url)
            assert status == 500
            assert body.startswith(f"cannot serve {textfile_dir / MARKER_DIRECTORY}: something other than what ")
