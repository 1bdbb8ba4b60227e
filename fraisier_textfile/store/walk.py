"""The textfile directory, opened by a checked walk of its path: the one path the store resolves.

The textfile directory is the operator's choice: it may be reached through a symlink, and it may sit in a
directory that another user may write. Fraisier's own set-up gives the deploying user ``/var/lib/fraisier`` and
puts the textfile directory in it, where root's events (a Fraisier command run with sudo, a root timer) are
merged too. That user could swap the textfile directory, or any directory on its path below theirs, for a symlink
to any directory of root's at any moment, and a path resolved by name would follow it. So the path is walked here
one component at a time, each relative to its parent's descriptor (see :func:`_walk`): whatever its user, a
process uses such a directory safely rather than refusing it, as sshd's StrictModes would. Everything after the
walk happens relative to the descriptor it gives (fs.Directory).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING

from fraisier_textfile.errors import TextfileError, UnexpectedFileError, write_error
from fraisier_textfile.store.fs import (
    DIRECTORY_MODE,
    Directory,
    finish,
    just_made,
    kind_of,
    make_directory,
    owner_name,
    writers_of,
)
from fraisier_textfile.store.signals import DeferredSignals

if TYPE_CHECKING:
    from pathlib import Path

    from fraisier_textfile.store.fs import PathName  # named by annotations only


def open_directory(
    path: PathName, *, create: bool = False, mode: int = DIRECTORY_MODE, wanted: str | None = None,
    search_only: bool = False,
) -> Directory | None:
    """The textfile directory at ``path``, opened by a checked walk (see :func:`_walk`), None if it does not
    exist and ``create`` is false. Made with its parents when ``create``: each directory made here gets ``mode``
    whatever the umask (node_exporter's user must be able to reach the file), and, made by root in another
    user's directory, belongs to that user; one that exists is left as it is (a group-shared 2775 keeps its
    mode). Raises UnexpectedFileError if it is not a directory, or is reached through a symlink or a directory
    that a user who may write its parent could have put there; TextfileWriteError for an OSError. ``wanted``:
    what the caller means to make in it, named in the error when something in the way is not a directory.
    ``search_only``: held with O_PATH, for a reader that opens files in it and lists nothing (it needs only to
    search the directory, as opening a file by its path did).

    The path is first opened as it is (one open, following links), and used if it is the very directory a walk
    found before in this process (see :data:`_vetted`); anything else there (a first look, a symlink swapped in, a
    directory re-pointed, the walk's directory replaced) is walked. Nothing there at all is None without a walk,
    unless it is to be made. A first look that makes what is missing (a merge's) walks at once.

    Signal handlers are held back until the directory is held by what closes it (or the walk failed): one that
    raises right after an open returns, before the number is kept anywhere (a Ctrl-C, an alarm-based timeout),
    would leave a directory open for the life of the process, one more at each such call. Here, not in the callers:
    every caller, a merge's or a reader's, a server's look or the lock's own, is covered."""
    with DeferredSignals():
        return _open_directory(os.fspath(path), create, mode, wanted, search_only)


def _open_directory(path: str, create: bool, mode: int, wanted: str | None, search_only: bool) -> Directory | None:
    flags = (os.O_PATH if search_only else os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC
    vetted = _vetted.get((path, os.geteuid()))
    if vetted is not None or not create:  # else a first look that makes what is missing: the walk is all of it
        try:
            descriptor = os.open(path, flags)
        except FileNotFoundError:
            if not create:
                return None  # nothing there by any way: nothing to walk (a reader's look at a directory to come)
        except OSError:
            pass  # the walk says what is there
        else:
            try:
                status = os.fstat(descriptor)
            except BaseException:
                os.close(descriptor)
                raise
            if _identity(status) == vetted:
                return Directory(descriptor, path)
            os.close(descriptor)
    walked = _walk(path, create, mode, wanted)
    if walked is None:
        return None
    try:
        if path.startswith("/"):  # a relative path names another directory once the process changes its own
            _vetted[path, os.geteuid()] = _identity(os.fstat(walked))
        if search_only:
            return Directory(walked, path)
        descriptor = os.open(".", flags, dir_fd=walked)
    except OSError as error:
        os.close(walked)
        raise write_error(path, "use the directory", error) from None
    except BaseException:
        os.close(walked)
        raise
    directory = Directory(descriptor, path)
    os.close(walked)
    return directory


_vetted: dict[tuple[str, int], tuple[int, ...]] = {}
"""What :func:`_walk` found at each path this process opened, and as which effective user (what it trusts
depends on who it is: a root process switched to the deploying user by seteuid follows that user's symlinks,
which root must not): the directory's device, inode, owner, group and mode. A directory with all five is the
one the walk checked, or one that took its inode number since (the walk's directory removed) with the same owner,
group and mode: a directory the same users may write, which root writing the store's files in harms nobody. Not
a descriptor held open: that would keep a removed directory's inode, and its filesystem mounted, for the life of
the process. A cache of facts that hold in a forked child as well."""


def _identity(status: os.stat_result) -> tuple[int, ...]:
    return status.st_dev, status.st_ino, status.st_uid, status.st_gid, status.st_mode


_PATH_DIRECTORY = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MOST_SYMLINKS = 40
"""Symlinks one walk follows at most: the kernel's own limit (ELOOP)."""
_MOST_LOOKS = 100
"""Times one walk looks again at a component that changed between its open and the look at what it is (a
writer swapping it back and forth): then the walk fails, as the merge would under any other error."""


def _walk(path: str, create: bool, mode: int, wanted: str | None) -> int | None:
    """An O_PATH descriptor of the directory ``path`` names, reached one component at a time from ``/`` (or the
    working directory), each opened relative to its parent's descriptor with ``O_NOFOLLOW``.

    Root writes into directories other users own (Fraisier's own set-up gives the deploying user
    ``/var/lib/fraisier``, and puts the textfile directory in it). A user who may write a parent on the way
    could swap the next component for a symlink to any directory of root's at any moment, and a path resolved
    by name would follow it: so the path is resolved here as the kernel would, but judging who put each
    component there.

    - A component in a directory that only root or this process's user may write (owned by one of them, not
      writable by its group or others: ``/``, ``/var/lib``, one's own home) was put there by them: a symlink
      there is theirs, the operator's, and is followed (its target's components walked in turn, as the
      kernel would).
    - A component in a directory another user may write is opened only if it is a directory itself: a symlink
      there is refused in one line naming it (but one of root's or this user's in a sticky directory of theirs,
      /tmp, which nobody else may replace). Where that directory is shared (group- or world-writable, as
      /tmp), the component must also belong to root, this process's user or the directory's owner (or to its
      group, the directory being group-writable): another writer may have made it first. (A directory one user
      owns and alone may write holds only what that user or root put there.)

    The descriptors are O_PATH, so that only search permission is needed on the way, as for a path.

    Missing components, when ``create``: made (``mkdirat``), given ``mode`` through their descriptor, and, when
    root makes one in another user's directory, given to that user (fchown, the parent's owner and group), as
    ``install -d -o USER`` and systemd-tmpfiles do: what the deploying user would have made, so that its own
    processes can use it next. Refusing instead (sshd's StrictModes) would lose root's events in the very
    set-up Fraisier documents, for a directory that user may make or remove at will anyway."""
    absolute = path.startswith("/")
    names = [name for name in reversed(path.split("/")) if name and name != "."]  # a stack: pop() is the next
    made = looks = followed = 0
    where = "/" if absolute else "."
    try:
        descriptor = os.open(where, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        raise write_error(path, "use the directory", error) from None
    try:
        status = os.fstat(descriptor)
        while names:
            name = names.pop()
            trusted = _only_trusted_may_write(status)
            try:
                child = os.open(name, _PATH_DIRECTORY, dir_fd=descriptor)
            except FileNotFoundError:
                if not create:
                    # Noted as closed before the close, here and below: a signal's handler that raises right after
                    # it must not have the except below close the number again (another thread's file by then).
                    closing, descriptor = descriptor, -1
                    os.close(closing)
                    return None
                made += 1  # made since the walk last went down a directory
                if made > 5:  # made and removed again by someone else, over and over
                    raise OSError(errno.ENOENT, os.strerror(errno.ENOENT)) from None
                _make(descriptor, name, mode, os.path.join(where, name), path, wanted)
                names.append(name)  # opened, and checked, as if it were there before
                continue
            except OSError as error:
                if error.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                try:
                    entry = os.stat(name, dir_fd=descriptor, follow_symlinks=False)
                    target = os.readlink(name, dir_fd=descriptor) if stat.S_ISLNK(entry.st_mode) else None
                except OSError as changed:  # removed, or no longer a symlink (EINVAL)
                    if changed.errno not in (errno.ENOENT, errno.EINVAL):
                        raise
                    target, entry = None, None
                if target is None:
                    if entry is not None and not stat.S_ISDIR(entry.st_mode):
                        raise _in_the_way(path, wanted) from None
                    looks += 1  # changed since the open (swapped back, removed): looked at again
                    if looks > _MOST_LOOKS:
                        raise error from None
                    names.append(name)
                    continue
                assert entry is not None  # a symlink's target was read
                if not trusted and not _only_trusted_may_replace(status, entry):
                    raise _symlink_refused(path, os.path.join(where, name), target, status) from None
                followed += 1
                if followed > _MOST_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP)) from None
                if target.startswith("/"):
                    closing, descriptor = descriptor, -1
                    os.close(closing)
                    where = "/"
                    descriptor = os.open(where, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                    status = os.fstat(descriptor)
                names.extend(name for name in reversed(target.split("/")) if name and name != ".")
                continue
            try:
                child_status = os.fstat(child)
                if not trusted and name != "..":
                    _check_placed_by_a_writer(path, os.path.join(where, name), status, child_status)
                # Another process's mkdir, not finished (killed, or not yet): in a directory another user may write,
                # or the textfile directory itself. One of root's elsewhere on the way is the operator's.
                if create and (not trusted or not names) and just_made(child_status):
                    finished = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=child)
                    try:
                        finish(finished, child_status, status, mode)
                    finally:
                        os.close(finished)
                    child_status = os.fstat(child)
            except BaseException:
                os.close(child)
                raise
            parent, descriptor, status = descriptor, child, child_status
            os.close(parent)
            where = os.path.normpath(os.path.join(where, name))
            made = 0
        return descriptor
    except OSError as error:
        if descriptor >= 0:
            os.close(descriptor)
        raise write_error(path, "use the directory", error) from None
    except BaseException:
        if descriptor >= 0:
            os.close(descriptor)
        raise


def _only_trusted_may_write(status: os.stat_result) -> bool:
    """Whether only root or this process's user may change the entries of the directory of ``status``."""
    return status.st_uid in (0, os.geteuid()) and not status.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _only_trusted_may_replace(parent: os.stat_result, entry: os.stat_result) -> bool:
    """Whether only root or this process's user may replace the entry of status ``entry`` in the directory of
    status ``parent``: in a sticky directory (/tmp), only the entry's owner or the directory's may."""
    trusted = (0, os.geteuid())
    return bool(parent.st_mode & stat.S_ISVTX) and parent.st_uid in trusted and entry.st_uid in trusted


def _check_placed_by_a_writer(path: str, component: str, parent: os.stat_result, status: os.stat_result) -> None:
    """Refuse the directory ``component`` (of ``status``) in a directory another user may write (``parent``)
    where it may have been made by anyone else than root, this process's user or the parent's owner: in a
    group- or world-writable parent, another writer may have made it first."""
    if not parent.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return  # only the parent's owner (or root) put it there
    owners = (0, os.geteuid(), parent.st_uid)
    if status.st_uid in owners or (
        not parent.st_mode & stat.S_IWOTH and parent.st_mode & stat.S_IWGRP and status.st_gid == parent.st_gid
    ):
        return
    raise UnexpectedFileError(
        path,
        f"{path}: {component} belongs to {owner_name(status.st_uid)}, in {os.path.dirname(component) or '/'}, "
        f"which {writers_of(parent)} may write: fraisier does not use a directory another user may have made "
        f"there; make it as {owner_name(parent.st_uid)} (sudo -u {owner_name(parent.st_uid)} install -d "
        f"{component}), or choose another --textfile-dir (FRAISIER_TEXTFILE_DIR)",
    )


def _symlink_refused(path: str, link: str, target: str, parent: os.stat_result) -> UnexpectedFileError:
    where = os.path.dirname(link) or "/"
    return UnexpectedFileError(
        path,
        f"{path}: {link} is a symlink (to {target}) in {where}, which {writers_of(parent)} may write: fraisier "
        "follows no symlink another user could have put there or re-point; use the real directory as "
        "--textfile-dir (FRAISIER_TEXTFILE_DIR), or put the symlink where only root may write",
    )


def _make(descriptor: int, name: str, mode: int, component: str, path: str, wanted: str | None) -> None:
    """Make the directory ``name`` in the directory held by ``descriptor`` with ``mode`` whatever the umask, and
    root's in another user's directory given to that user (see :func:`_walk` and fs.make_directory)."""
    try:
        make_directory(descriptor, name, mode)
    except FileExistsError:
        return  # made by another process meanwhile: theirs, with the mode they gave it
    except NotADirectoryError:
        raise _in_the_way(path, wanted) from None
    except OSError as error:
        raise write_error(component, "create the directory", error) from None


def _in_the_way(path: str | Path, wanted: str | None) -> TextfileError:
    """The error for a file where the directory ``path``, or one of its parents, should be. For the textfile
    directory itself (``wanted`` None), a TextfileWriteError with the errno mkdir would give (EEXIST for the
    directory's own place, ENOTDIR for a parent's); for something to be made in it, the one line naming it."""
    if wanted is not None:
        return _not_a_directory(path, wanted)
    code = errno.EEXIST if os.path.lexists(path) else errno.ENOTDIR
    return write_error(path, "create the directory", OSError(code, os.strerror(code)))


def _not_a_directory(name: str | Path, wanted: str) -> UnexpectedFileError:
    from pathlib import Path  # only for the error: the store works with strings

    path = Path(name)
    for candidate in (path, *path.parents):
        try:
            status = os.stat(candidate)
        except OSError:
            continue
        if not stat.S_ISDIR(status.st_mode):
            if candidate == path:
                return UnexpectedFileError(path, f"{path} is {kind_of(status.st_mode)}, not a directory: choose "
                                           "another --textfile-dir (FRAISIER_TEXTFILE_DIR), or remove it")
            return UnexpectedFileError(
                candidate,
                f"{candidate} is not a directory, so {wanted} cannot be made: choose another --textfile-dir "
                "(FRAISIER_TEXTFILE_DIR), or remove what is in the way",
            )
    return UnexpectedFileError(path, f"{path} is not a directory: choose another --textfile-dir")
