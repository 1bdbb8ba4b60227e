"""store/walk.py: the textfile directory opened by a walk of its path, symlinks followed where only root or this
user may write, refused where another user may; what root makes in another user's directory is that user's."""

from __future__ import annotations

import gc
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fraisier_textfile import TextfileStore
from fraisier_textfile.changes import Changes
from fraisier_textfile.errors import UnexpectedFileError
from fraisier_textfile.store import fs, process, walk


def test_a_directory_made_with_its_parents_gets_its_mode_whatever_the_umask(tmp_path: Path, umask_077: None) -> None:
    made = fs.open_directory(tmp_path / "state" / "fraisier" / "textfile", create=True)
    assert made is not None
    made.close()
    for path in (tmp_path / "state", tmp_path / "state" / "fraisier", tmp_path / "state" / "fraisier" / "textfile"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, path


def test_an_existing_group_shared_directory_keeps_its_mode(tmp_path: Path, umask_077: None) -> None:
    (tmp_path / "shared").mkdir()
    os.chmod(tmp_path / "shared", 0o2775)
    opened = fs.open_directory(tmp_path / "shared", create=True)
    assert opened is not None
    opened.close()
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o2775


@pytest.fixture
def nobodys(tmp_path: Path) -> Path:
    """A directory of another user's (nobody's) on the textfile directory's path, holding ``metrics``."""
    if os.geteuid() != 0:
        pytest.skip("only root can give a directory to another user")
    nobody = pwd.getpwnam("nobody")
    parent = tmp_path / "nobodys"
    (parent / "metrics").mkdir(parents=True)
    for path in (parent, parent / "metrics"):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    return parent


def test_a_textfile_directory_reached_through_a_symlink_only_this_user_may_write_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real" / "metrics").mkdir(parents=True)
    (tmp_path / "link").symlink_to("real")  # relative: walked from the link's directory
    (tmp_path / "absolute").symlink_to(tmp_path / "link" / "metrics")
    for path in (tmp_path / "link" / "metrics", tmp_path / "absolute", tmp_path / "real" / ".." / "link" / "metrics"):
        with fs.open_directory(path) as directory:  # type: ignore[union-attr]
            assert os.path.samestat(directory.status(), (tmp_path / "real" / "metrics").stat())
            assert directory.path == str(path)


def test_a_symlink_in_a_directory_another_user_may_write_is_refused_in_one_line(nobodys: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (nobodys / "link").symlink_to(tmp_path / "elsewhere")
    for path in (nobodys / "link", nobodys / "link" / "deeper"):
        with pytest.raises(UnexpectedFileError, match=f"^{path}: {nobodys / 'link'} is a symlink \\(to "
                           f"{tmp_path / 'elsewhere'}\\) in {nobodys}, which nobody may write: .*--textfile-dir"):
            fs.open_directory(path, create=True)
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_directory_swapped_for_a_symlink_after_its_walk_is_walked_again_and_refused(
    nobodys: Path, tmp_path: Path
) -> None:
    """The walk is made once per path; later opens follow the path and use the directory only if it is the one
    walked: a symlink swapped in since leads elsewhere, which is walked, and refused."""
    path = nobodys / "metrics"
    with fs.open_directory(path) as directory:  # type: ignore[union-attr]
        walked = directory.status()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.rename(path, nobodys / "metrics.real")
    path.symlink_to(elsewhere)
    with pytest.raises(UnexpectedFileError, match="is a symlink"):
        fs.open_directory(path, create=True)
    os.unlink(path)
    os.rename(nobodys / "metrics.real", path)
    with fs.open_directory(path) as directory:  # type: ignore[union-attr]
        assert os.path.samestat(directory.status(), walked)
    assert list(elsewhere.iterdir()) == []


def test_what_root_makes_in_another_users_directory_is_that_users(nobodys: Path, umask_077: None) -> None:
    """As `install -d -o USER`: the user's own processes use it next as if they had made it."""
    made = fs.open_directory(nobodys / "new" / "metrics", create=True)
    assert made is not None
    made.close()
    nobody = pwd.getpwnam("nobody")
    for path in (nobodys / "new", nobodys / "new" / "metrics"):
        status = path.lstat()
        assert (status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)) == (nobody.pw_uid, nobody.pw_gid, 0o755)


def test_a_directory_another_user_made_first_in_a_shared_directory_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a directory to another user")
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    (sticky / "metrics").mkdir()
    nobody = pwd.getpwnam("nobody")
    os.chown(sticky / "metrics", nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(UnexpectedFileError, match=f"^{sticky / 'metrics'}: .* belongs to nobody, in {sticky}, which "
                       "everyone may write"):
        fs.open_directory(sticky / "metrics")


def test_in_a_sticky_directory_a_symlink_only_its_owner_may_replace_is_followed_another_users_refused(
    tmp_path: Path,
) -> None:
    """/tmp: everyone may write it, but only an entry's owner (or root) may replace that entry."""
    if os.geteuid() != 0:
        pytest.skip("only root can give a symlink to another user")
    sticky = tmp_path / "sticky"
    (tmp_path / "real").mkdir()
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    (sticky / "mine").symlink_to(tmp_path / "real")
    (sticky / "theirs").symlink_to(tmp_path / "real")
    nobody = pwd.getpwnam("nobody")
    os.lchown(sticky / "theirs", nobody.pw_uid, nobody.pw_gid)
    with fs.open_directory(sticky / "mine") as directory:  # type: ignore[union-attr]
        assert os.path.samestat(directory.status(), (tmp_path / "real").stat())
    with pytest.raises(UnexpectedFileError, match=f"^{sticky / 'theirs'}: {sticky / 'theirs'} is a symlink"):
        fs.open_directory(sticky / "theirs")


def test_what_root_makes_in_another_users_directory_gets_that_users_group_as_that_user_would_give_it(
    tmp_path: Path,
) -> None:
    """Not the directory's group (another group's members would write the lock file and the hand-overs): the
    user's own, or the directory's where it is setgid, as the kernel gives it to what the user makes."""
    if os.geteuid() != 0:
        pytest.skip("only root can give a directory to another user")
    nobody = pwd.getpwnam("nobody")
    for setgid, group in ((False, nobody.pw_gid), (True, 0)):
        parent = tmp_path / f"setgid-{setgid}"
        parent.mkdir()
        os.chown(parent, nobody.pw_uid, 0)
        os.chmod(parent, 0o2755 if setgid else 0o755)
        made = fs.open_directory(parent / "metrics", create=True)
        assert made is not None
        made.close()
        status = (parent / "metrics").lstat()
        assert (status.st_uid, status.st_gid) == (nobody.pw_uid, group), setgid


SWITCHES_USER = """
import os, sys
from fraisier_textfile.errors import UnexpectedFileError
from fraisier_textfile.store import fs
path, user = sys.argv[1], int(sys.argv[2])
os.seteuid(user)
fs.open_directory(path).close()  # the user's own symlink, in its own directory: followed
os.seteuid(0)
try:
    fs.open_directory(path, create=True)
except UnexpectedFileError as error:
    print(error)
"""


def test_a_walk_made_as_another_user_is_not_taken_for_roots(tmp_path: Path) -> None:
    """Bug: the walk was remembered per path, whatever the user it was made as. A root process that switches
    its effective user (seteuid) to the deploying user and back walked the path as that user, who may follow
    its own symlinks: root then used the directory that walk found, a directory of root's the symlink leads to,
    without walking again. A walk is remembered per path and user now: root's walk refuses the symlink."""
    if os.geteuid() != 0:
        pytest.skip("only root can switch users")
    nobody = pwd.getpwnam("nobody")
    parent = Path(tempfile.mkdtemp(prefix="switches-", dir="/tmp"))  # nobody must be able to search it
    try:
        os.chmod(parent, 0o755)
        (parent / "roots").mkdir(mode=0o755)
        (parent / "nobodys").mkdir(mode=0o755)
        os.chown(parent / "nobodys", nobody.pw_uid, nobody.pw_gid)
        (parent / "nobodys" / "metrics").symlink_to(parent / "roots")
        os.lchown(parent / "nobodys" / "metrics", nobody.pw_uid, nobody.pw_gid)
        run = subprocess.run([sys.executable, "-c", SWITCHES_USER, str(parent / "nobodys" / "metrics"),
                              str(nobody.pw_uid)], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith(f"{parent / 'nobodys' / 'metrics'}: {parent / 'nobodys' / 'metrics'} is a "
                                     f"symlink (to {parent / 'roots'}) in {parent / 'nobodys'}, which nobody may"), (
            run.stdout)
    finally:
        shutil.rmtree(parent)


def test_a_directory_missing_with_many_parents_is_made_at_the_first_merge(tmp_path: Path) -> None:
    """Bug: the walk allowed itself five makes per component still to walk, counted over the whole path (against
    a writer removing what it makes, over and over): from eleven missing directories on, the first merge failed
    with "No such file or directory", and made some of them. Each component may now be made again five times."""
    path = tmp_path.joinpath(*(f"level{number}" for number in range(40)))
    made = fs.open_directory(path, create=True)
    assert made is not None
    with made:
        assert os.path.samestat(made.status(), path.stat())


# Root's merge or start of a deployment into ``textfile``; just after its mkdir of ``name``, either a SIGINT (as a
# Ctrl-C) or another root process's merge into the same directory (``merge``, a script).
AFTER_MKDIR = """
import os, signal, subprocess, sys
from fraisier_textfile import TextfileStore
from fraisier_textfile import changes as events
from fraisier_textfile.changes import Changes
what, textfile, name, then = sys.argv[1:]
made = False


def after_mkdir(event, arguments):
    global made
    if event == "os.mkdir" and arguments[0] == name:
        made = True
    elif made and event == "open":
        made = False
        if then in ("interrupt", "kill"):
            os.kill(os.getpid(), signal.SIGINT if then == "interrupt" else signal.SIGKILL)
        else:
            subprocess.run([sys.executable, "-c", then, textfile], check=True)


sys.addaudithook(after_mkdir)
changes = Changes()
events.deployment_error(changes, "bare_metal", "timeout")
store = TextfileStore(textfile, lock_timeout=2)
try:
    if what == "merge":
        store.merge(changes)
    else:
        store.start_deployment("bare_metal", "api", lambda *problem: None)
except KeyboardInterrupt:
    print("interrupted")
"""


@pytest.mark.parametrize(("what", "made"), [("merge", "new"), ("start_deployment", "metrics/.fraisier-inflight")])
def test_an_interrupt_just_after_root_makes_a_directory_in_another_users_leaves_it_to_that_user(
    nobodys: Path, what: str, made: str
) -> None:
    """Bug: root made a missing directory in the deploying user's directory with mode 0700, then gave it its mode
    and that user: a Ctrl-C (a handler that raises) in between, outside a merge's held signals, left it root's with
    mode 0700. That user's processes could not write there any more, nor node_exporter read it, and root's next
    merge filled it, so that the user could not even remove it. The handlers are held back until it is given."""
    textfile = nobodys / made.split("/")[0]
    run = subprocess.run([sys.executable, "-c", AFTER_MKDIR, what, str(textfile), made.split("/")[-1], "interrupt"],
                         capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout) == (0, "interrupted\n"), run.stderr
    status = (nobodys / made).stat()
    nobody = pwd.getpwnam("nobody")
    assert (status.st_uid, stat.S_IMODE(status.st_mode)) == (nobody.pw_uid, 0o755 if what == "merge" else 0o775)


MERGES = """
import sys
from fraisier_textfile import TextfileStore
from fraisier_textfile import changes as events
from fraisier_textfile.changes import Changes
changes = Changes()
events.deployment_error(changes, "bare_metal", "timeout")
TextfileStore(sys.argv[1], lock_timeout=2).merge(changes)
"""


@pytest.mark.parametrize("then", ["kill", "merge"])
def test_a_directory_root_made_and_has_not_given_yet_is_given_by_the_next_root_process(
    nobodys: Path, then: str
) -> None:
    """Root's process making the missing textfile directory in the deploying user's directory is SIGKILLed just
    after its mkdir, or another root process merges into that directory before the first gives it its mode and
    owner: the directory stayed root's with mode 0700, the lock file and what else the second made in it root's
    too (the directory was root's when they were made), and that user's processes could not use it. The next
    process to walk into a directory in the state a mkdir leaves it (fs.MADE_MODE) finishes the job."""
    textfile = nobodys / "new"
    run = subprocess.run([sys.executable, "-c", AFTER_MKDIR, "merge", str(textfile), "new",
                          "kill" if then == "kill" else MERGES], capture_output=True, text=True, timeout=60)
    assert run.returncode == (-signal.SIGKILL if then == "kill" else 0), run.stderr
    if then == "kill":
        subprocess.run([sys.executable, "-c", MERGES, str(textfile)], check=True, timeout=60)
    nobody = pwd.getpwnam("nobody").pw_uid
    for path, mode in ((textfile, 0o755), (textfile / "fraisier.prom.lock", 0o664)):
        status = path.stat()
        assert (status.st_uid, stat.S_IMODE(status.st_mode)) == (nobody, mode), path
    assert "fraisier_deployment_errors_total" in (textfile / "fraisier.prom").read_text()


def test_a_directory_of_roots_on_the_way_in_the_mode_of_one_just_made_is_left_as_it_is(tmp_path: Path) -> None:
    """The walk finishes a directory left in the mode of one just made (fs.MADE_MODE) only where it may be the
    store's: in a directory another user may write (where root gives what it makes), or the textfile directory
    itself. A directory of root's on the way, in a directory only root may write, is the operator's whatever its
    mode."""
    on_the_way = tmp_path / "sticky-private"
    on_the_way.mkdir()
    os.chmod(on_the_way, fs.MADE_MODE)
    made = fs.open_directory(on_the_way / "metrics", create=True)
    assert made is not None
    made.close()
    assert stat.S_IMODE(on_the_way.stat().st_mode) == fs.MADE_MODE
    assert stat.S_IMODE((on_the_way / "metrics").stat().st_mode) == 0o755


@pytest.mark.parametrize("close", range(1, 9))
def test_a_handler_that_raises_after_any_close_of_a_walk_closes_nothing_twice_and_leaks_nothing(
    tmp_path: Path, close: int
) -> None:
    """The walk closes each directory's descriptor once it holds the next (and where a symlink sends it back to /):
    a signal's handler that raises right after one of those closes must come out as raised, with every descriptor
    closed once: not the walk's clean-up closing the number again (another thread's file by then; here, an EBADF in
    the handler's place) nor the next directory's descriptor left open."""
    from .test_fs import interrupted_after

    path = tmp_path / "a" / "b" / "c" / "d"
    # Earlier tests' merges close the versions they replaced in other threads, and a store dropped closes its
    # descriptors when collected: settled first, so that no close but the walk's lands in between (nor is counted).
    gc.collect()
    assert process.wait_for_closes(10) and process.background.wait(10)
    before = set(os.listdir("/proc/self/fd"))
    with interrupted_after(os.close, close), pytest.raises(KeyboardInterrupt):
        fs.open_directory(path, create=True)
    assert set(os.listdir("/proc/self/fd")) == before


def _lock_taken_and_released(store: TextfileStore) -> None:
    lock = store.transaction.lock
    lock.acquire(time.monotonic() + 10, 10, lambda: None)  # no directory held: the lock opens its own
    lock.release()


_OPENERS_OUTSIDE_A_MERGE: dict[str, Callable[[TextfileStore], object]] = {
    "read": lambda store: store.read_data(),
    "handovers_waiting": lambda store: store.handovers_waiting(),
    "active_deployments": lambda store: store.active_deployments(()),
    "lock": _lock_taken_and_released,
}


@pytest.mark.parametrize("look", ["first", "again"])
@pytest.mark.parametrize("caller", list(_OPENERS_OUTSIDE_A_MERGE))
def test_a_handler_that_raises_right_after_an_open_outside_a_merge_leaves_nothing_open(
    tmp_path: Path, caller: str, look: str
) -> None:
    """Bug (note16): the walk's opens and a subdirectory's were guarded against a signal handler that raises (a
    Ctrl-C, an alarm-based timeout) only under a merge's held signals: a reader's look, a server's look for
    hand-overs, its count of deployments in flight and the lock opening its own directory left the directory open
    for the process's life when the handler ran right after an open, before the number was held by what closes it.
    Each open is interrupted in turn, on a first walk of the path and on a path walked before."""
    from .test_fs import Interrupted, signalled_after

    call = _OPENERS_OUTSIDE_A_MERGE[caller]
    directory = tmp_path / "a" / "b"
    TextfileStore(directory).merge(Changes())
    for made in (".fraisier-handover", ".fraisier-inflight"):
        (directory / made).mkdir(exist_ok=True)
    interrupted = 0
    for opened in range(1, 20):
        store = TextfileStore(directory)
        if look == "first":
            walk._vetted.clear()
        else:
            call(TextfileStore(directory))  # the path walked before, by a store of its own
        gc.collect()
        assert process.wait_for_closes(10) and process.wait_for_syncs(10) and process.background.wait(10)
        before = set(os.listdir("/proc/self/fd"))
        try:
            with signalled_after(os.open, opened):
                call(store)
        except Interrupted:
            interrupted += 1
        else:
            break  # fewer opens than that: each was interrupted
        finally:
            del store
            gc.collect()
        assert set(os.listdir("/proc/self/fd")) == before, f"open {opened} interrupted"
    assert interrupted
