"""The store's paths hold only what it created. Real FIFOs, symlinks, directories and devices in their place are
refused with one clear error, never followed, never waited on, and never quoted to an HTTP client. In the shared
hand-over directory one such entry must not stop every merge: named as a hand-over it is set aside, unopened, and
otherwise left alone."""

from __future__ import annotations

import os
import socket
import stat
import sys
import tempfile
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
from fraisier_textfile.catalogue import SCHEMA
from fraisier_textfile.changes import Changes
from fraisier_textfile.errors import UnexpectedFileError
from fraisier_textfile.store import handovers
from fraisier_textfile.store.handovers import HANDOVER_DIRECTORY, SET_ASIDE_FAMILY
from fraisier_textfile.store.markers import MARKER_DIRECTORY

from .processes import fraisier, free_port, opens_of, running
from .values import sample_values

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
        # Bound under a short name, then moved into place: a socket's path is limited to 107 bytes.
        short = Path(tempfile.mkdtemp(prefix="socket-", dir="/tmp"))
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(str(short / "s"))
        os.rename(short / "s", path)
        short.rmdir()
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


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink-to-a-file", "device", "socket"])
def test_an_entry_of_the_marker_directory_that_is_not_a_regular_file_is_left_alone_and_every_merge_goes_on(
    store: TextfileStore, elsewhere: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Bug: one FIFO, directory, symlink, device or socket in the markers' directory (group-writable, shared by the
    deploying users) made every merge of every process fail until a human removed it. It is now left where it is,
    never opened, followed or waited on, and said once: what no merge reads cannot be a deployment in flight."""
    directory = store.directory / MARKER_DIRECTORY
    directory.mkdir()
    planted = directory / "123-456-planted"
    plant(planted, kind, elsewhere)
    before = os.lstat(planted)
    target = Path(os.readlink(planted)) if kind == "symlink-to-a-file" else None
    target_before = target.read_bytes() if target is not None else None
    for _ in range(2):
        within(30, lambda: store.merge(one_event()))
    assert errors_of(store) == {"timeout": 2}
    assert os.lstat(planted).st_ino == before.st_ino  # not renamed, not replaced
    assert "planted" not in store.path.read_text()
    said = [record.getMessage() for record in caplog.records if "123-456-planted" in record.getMessage()]
    assert len(said) == 1 and "not a regular file" in said[0], said
    if target is not None:
        assert target.read_bytes() == target_before


def an_event(error_type: str) -> Changes:
    changes = Changes()
    events.deployment_error(changes, "bare_metal", error_type)
    return changes


def errors_of(store: TextfileStore) -> dict[str, float]:
    """The deployment errors in the file, by error type."""
    prefix = 'fraisier_deployment_errors_total{provider="bare_metal",error_type="'
    return {key[len(prefix):-2]: value for key, value in sample_values(store.path).items() if key.startswith(prefix)}


@contextmanager
def never_opened(path: Path, kind: str) -> Iterator[None]:
    """Fail if the entry planted at ``path`` (a symlink's target) is opened while the block runs (processes.opens_of,
    which follows a symlink). Not for what has no inode of its own (a dangling symlink), whose opens are anyone's
    (/dev/null), or that open cannot open (a socket)."""
    if kind not in ("fifo", "directory", "device", "symlink-to-a-file", "symlink-to-a-valid-hand-over"):
        yield
        return
    with opens_of(path) as opens:
        yield
        assert opens() == 0


NOT_REGULAR = ["fifo", "directory", "symlink-to-a-file", "symlink-to-dev-null", "dangling-symlink", "device", "socket"]


@pytest.mark.parametrize("name", ["123-456-planted", ".s00000000000000000001-1-0badc0de.json", "notes.txt"])
@pytest.mark.parametrize("kind", NOT_REGULAR)
def test_an_entry_of_any_kind_not_named_as_a_hand_over_is_left_alone_and_fails_no_merge(
    store: TextfileStore, elsewhere: Path, name: str, kind: str
) -> None:
    """Not a hand-over's name (``.*`` is a writer's temporary, removed after an hour only if a regular file): never
    opened, renamed or deleted, not counted, and every merge goes on."""
    directory = store.directory / HANDOVER_DIRECTORY
    directory.mkdir()
    path = directory / name
    plant(path, kind, elsewhere)
    os.utime(path, (1, 1), follow_symlinks=False)  # older than any writer's temporary: litter, if it were a file
    before = state(path)
    store.hand_over(an_event("handed"))
    with never_opened(path, kind):
        within(30, lambda: store.merge(an_event("merged")))
        within(30, lambda: store.merge(Changes()))
    assert errors_of(store) == {"handed": 1, "merged": 1}
    assert state(path) == before
    assert sample_values(store.path)[SET_ASIDE_FAMILY] == 0
    assert not store.handovers_waiting()


HANDOVER_KINDS = ["fifo", "directory", "symlink-to-a-valid-hand-over", "symlink-to-dev-null", "dangling-symlink",
                  "device", "socket"]
WHAT_IT_IS = {"fifo": "a FIFO", "directory": "a directory", "device": "a character device", "socket": "a socket"}


def planted_as_a_hand_over(store: TextfileStore, elsewhere: Path, kind: str) -> Path:
    """A hand-over written by the store (so named as it names them), then replaced by ``kind`` of entry."""
    store.hand_over(an_event("planted"))
    [path] = (store.directory / HANDOVER_DIRECTORY).glob("*.json")
    path.unlink()
    if kind == "symlink-to-a-valid-hand-over":
        valid = elsewhere / path.name
        valid.write_bytes(handovers.encode(an_event("elsewhere"), SCHEMA))
        path.symlink_to(valid)
    else:
        plant(path, kind, elsewhere)
    return path


@pytest.mark.parametrize("kind", HANDOVER_KINDS)
def test_an_entry_named_as_a_hand_over_that_is_not_a_regular_file_is_set_aside_and_every_other_event_merged(
    store: TextfileStore, elsewhere: Path, kind: str
) -> None:
    """Bug: one FIFO, directory or symlink named as a hand-over in the shared hand-over directory (a group member's
    mistake or malice) failed every merge of every process until a human removed it: each record call handed its
    events over, and none reached the file. It is now set aside as an unreadable hand-over is: renamed (never
    opened, followed or waited on), logged once naming what it is, counted; the merge applies everything else."""
    path = planted_as_a_hand_over(store, elsewhere, kind)
    store.hand_over(an_event("handed"))
    before = state(path)
    with never_opened(path, kind):
        result = fraisier("record", "error", "--provider", "bare_metal", "--error-type", "recorded",
                          textfile_dir=store.directory, timeout=60)  # fails, not hangs, if a FIFO is opened
    assert result.returncode == 0, result.stderr
    assert errors_of(store) == {"handed": 1, "recorded": 1}  # the symlink's valid hand-over is not counted
    assert sample_values(store.path)[SET_ASIDE_FAMILY] == 1
    aside = path.with_suffix(handovers.SET_ASIDE_SUFFIX)
    assert not os.path.lexists(path)
    assert state(aside) == before
    [line] = [line for line in result.stderr.splitlines() if str(path) in line]
    what = WHAT_IT_IS.get(kind, "a symlink (to ")
    assert f"is {what}" in line and "not a regular file" in line and str(aside) in line, line
    result = fraisier("textfile", "refresh", textfile_dir=store.directory, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")  # reported once: it is out of the way
    assert state(aside) == before


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


def test_the_server_serves_past_a_fifo_in_the_marker_directory(textfile_dir: Path, elsewhere: Path) -> None:
    """It answered 500 at every scrape while a FIFO was in the markers' directory; it is left alone, said once."""
    TextfileStore(textfile_dir).merge(one_event())
    (textfile_dir / MARKER_DIRECTORY).mkdir()
    fifo = textfile_dir / MARKER_DIRECTORY / "123-456-planted"
    os.mkfifo(fifo)
    log = elsewhere / "server.log"
    with never_opened(fifo, "fifo"), serving(textfile_dir, log) as url:
        for _ in range(2):
            status, body = scrape(url)
            assert status == 200, body
            errors = 'fraisier_deployment_errors_total{provider="bare_metal",error_type="timeout"}'
            assert sample_values(body)[errors] == 1
    assert log.read_text().count(f"{fifo} is a FIFO, not a regular file") <= 1


def test_the_server_sets_aside_a_fifo_named_as_a_hand_over_and_serves_every_other_event(
    textfile_dir: Path, elsewhere: Path
) -> None:
    """A scrape merges the hand-overs waiting (serve/sources.py): a FIFO among them, named as a hand-over, failed
    that merge and every later one, and what was handed over was never served. It is set aside, unopened, at the
    first scrape; every scrape answers 200 with the other events."""
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    path = planted_as_a_hand_over(store, elsewhere, "fifo")
    store.hand_over(an_event("handed"))
    log = elsewhere / "server.log"
    with never_opened(path, "fifo"), serving(textfile_dir, log) as url:
        for _ in range(3):
            status, body = scrape(url)
            assert status == 200, body
            values = sample_values(body)
            assert values['fraisier_deployment_errors_total{provider="bare_metal",error_type="handed"}'] == 1
            assert values[SET_ASIDE_FAMILY] == 1
    assert stat.S_ISFIFO(os.lstat(path.with_suffix(handovers.SET_ASIDE_SUFFIX)).st_mode)
    assert log.read_text().count(f"{path} cannot be applied (it is a FIFO, not a regular file)") == 1
