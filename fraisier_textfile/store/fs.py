"""The store's file operations, relative to a directory held open and checked, never to a path resolved again.

Who may write the textfile directory is trusted with the metrics, nothing more (see "Who may write the
textfile directory" in docs/monitoring.md). Such a writer can replace ``.fraisier-handover`` or
``.fraisier-inflight`` by a symlink at any moment, also between two steps of a merge run by root. So every
operation on those directories and on the files in them goes through a :class:`Directory`:

- it is opened once, with ``O_DIRECTORY|O_NOFOLLOW`` relative to its parent's descriptor, and checked with
  fstat (a directory, owned by a writer of the textfile directory);
- everything after that (scan, open, create, rename, unlink, fchmod, fsync) names entries relative to its
  descriptor (``dir_fd=``, ``os.scandir(fd)``), never opens a file following a symlink, never opens a FIFO or
  a device in a way that blocks, and never chmods a path (``os.chmod`` follows links: only ``fchmod`` on a
  descriptor we opened);
- work done later (the background removal of applied hand-overs, the removal of retired markers after the
  lock is released) keeps the descriptor of the directory its names were listed in (:meth:`Directory.copy`):
  a symlink swapped in meanwhile is never seen.

The textfile directory itself is the one place a path is resolved: it is the operator's choice (it may be
reached through a symlink), and its parents must not be writable by the writers it trusts: root checks it
(:func:`check_path_for_root`).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING, Union

from fraisier_textfile.errors import TextfileError, TextfileWriteError, UnexpectedFileError, write_error

if TYPE_CHECKING:
    from pathlib import Path

PathName = Union[str, "os.PathLike[str]"]
"""A path as the store takes it: it works with strings (a record run has no use for pathlib: see errors.py), and
takes a Path too."""

DIRECTORY_MODE = 0o755
"""The textfile directory, when the store creates it: node_exporter's user must enter it and read the file."""
SHARED_DIRECTORY_MODE = 0o775
"""The store's subdirectories: group-writable, so that the users of one group can delete each other's
applied hand-overs and retired markers (a setgid bit inherited from a 2775 textfile directory is kept)."""
FILE_MODE = 0o644

_OPEN_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_REGULAR = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Directory:
    """A directory held by a descriptor. Names given to its methods are single entries in it: never a path
    with a slash, so that nothing is resolved outside it. Close it (or use it as a context manager)."""

    __slots__ = ("descriptor", "path")

    def __init__(self, descriptor: int, path: str) -> None:
        self.descriptor = descriptor
        self.path = path
        """What the directory was called when opened: for messages only, never opened again."""

    def path_of(self, name: str) -> str:
        """What the entry ``name`` is called, for messages."""
        return os.path.join(self.path, name)

    def __enter__(self) -> Directory:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()

    def close(self) -> None:
        if self.descriptor >= 0:
            os.close(self.descriptor)
            self.descriptor = -1

    def __del__(self) -> None:
        self.close()

    def copy(self) -> Directory:
        """A second hold on the same directory, for work that outlives this one (a background removal)."""
        return Directory(os.dup(self.descriptor), self.path)

    def status(self) -> os.stat_result:
        return os.fstat(self.descriptor)

    # Entries

    def entries(self) -> list[os.DirEntry[str]]:
        """The entries, as os.scandir gives them (``entry.path`` is the bare name here: use ``entry.name``).
        A list, not a generator: a hand-over directory may hold 100,000 entries, each a yield more."""
        with os.scandir(self.descriptor) as scan:
            return list(scan)

    def names(self) -> list[str]:
        return os.listdir(self.descriptor)

    def lstat(self, name: str) -> os.stat_result | None:
        """The entry's own status (a symlink is not followed), None if there is none."""
        try:
            return os.stat(_entry(name), dir_fd=self.descriptor, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def exists(self, name: str) -> bool:
        return self.lstat(name) is not None

    def open_regular(self, name: str) -> int:
        """A read-only descriptor on the regular file ``name``. Raises UnexpectedFileError for a symlink, a
        FIFO, a device or a directory (never followed, never waited on), OSError for the rest."""
        try:
            descriptor = os.open(_entry(name), _READ_REGULAR, dir_fd=self.descriptor)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
                raise self.unexpected(name) from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise self.unexpected(name)
        except BaseException:
            os.close(descriptor)
            raise
        return descriptor

    def read_regular(self, name: str, limit: int | None = None) -> bytes:
        """The bytes of the regular file ``name`` (at most ``limit``), as :meth:`open_regular` opens it."""
        descriptor = self.open_regular(name)
        try:
            chunks = []
            size = 0
            while limit is None or size < limit:
                chunk = os.read(descriptor, 1 << 16 if limit is None else min(1 << 16, limit - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            return b"".join(chunks)
        finally:
            os.close(descriptor)

    def create(self, name: str, mode: int = FILE_MODE) -> int:
        """A new file ``name`` (O_EXCL: never a file or a link someone prepared), opened for writing, with
        ``mode`` whatever the umask. OSError if it cannot be made."""
        descriptor = os.open(_entry(name), _CREATE_NEW, mode, dir_fd=self.descriptor)
        try:
            os.fchmod(descriptor, mode)
        except BaseException:
            os.close(descriptor)
            self.unlink(name)
            raise
        return descriptor

    def rename(self, source: str, destination: str) -> None:
        """Rename an entry within the directory (a symlink is renamed, not followed)."""
        os.rename(_entry(source), _entry(destination), src_dir_fd=self.descriptor, dst_dir_fd=self.descriptor)

    def replace(self, source: str, destination: str) -> None:
        os.replace(_entry(source), _entry(destination), src_dir_fd=self.descriptor, dst_dir_fd=self.descriptor)

    def unlink(self, name: str) -> bool:
        """Remove the entry ``name`` (a symlink itself, never its target); False if it was not there. Other
        OSErrors are raised."""
        try:
            os.unlink(_entry(name), dir_fd=self.descriptor)
        except FileNotFoundError:
            return False
        return True

    def fsync(self) -> None:
        """Make a rename in the directory durable."""
        try:
            os.fsync(self.descriptor)
        except OSError:
            pass  # some filesystems cannot fsync a directory; the rename is atomic all the same

    # Subdirectories

    def subdirectory(self, name: str, *, create: bool = False, mode: int = SHARED_DIRECTORY_MODE) -> Directory | None:
        """The subdirectory ``name``, opened without following a symlink and checked (a directory, owned as
        a writer of this directory would own it). None if there is none and ``create`` is false. Created with
        ``mode`` (fchmod on its descriptor, never a chmod of the name, which a writer may have swapped for a
        symlink since the mkdir). Raises UnexpectedFileError for anything else there, TextfileWriteError for
        an OSError."""
        path = self.path_of(name)
        made = False
        for _ in range(5):  # made and removed again by someone else between the mkdir and the open: retried
            try:
                descriptor = os.open(_entry(name), _OPEN_DIRECTORY, dir_fd=self.descriptor)
            except FileNotFoundError:
                if not create:
                    return None
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise self.unexpected(name, "a directory") from None
                raise write_error(path, "open the directory", error) from None
            else:
                directory = Directory(descriptor, path)
                try:
                    status = os.fstat(descriptor)
                    self._check_owner(name, status)
                    if made and status.st_uid == os.geteuid():
                        os.fchmod(descriptor, mode | (status.st_mode & stat.S_ISGID))
                except OSError as error:
                    directory.close()
                    raise write_error(path, "use the directory", error) from None
                except BaseException:
                    directory.close()
                    raise
                return directory
            try:
                os.mkdir(_entry(name), 0o700, dir_fd=self.descriptor)  # 0700 until fchmod gives it its mode
                made = True
            except FileExistsError:
                pass
            except OSError as error:
                raise write_error(path, "create the directory", error) from None
        raise write_error(path, "create the directory", OSError(errno.ENOENT, os.strerror(errno.ENOENT)))

    def _check_owner(self, name: str, status: os.stat_result) -> None:
        """A subdirectory must belong to someone who may write this directory anyway: this process's user,
        root, this directory's owner, or (this directory being group-writable) its group. Anything else was
        planted by a user the set-up does not trust (in a world-writable directory, say)."""
        parent = os.fstat(self.descriptor)
        trusted = status.st_uid in (os.geteuid(), 0, parent.st_uid) or (
            parent.st_mode & stat.S_IWGRP and status.st_gid == parent.st_gid
        )
        if not trusted or status.st_mode & stat.S_IWOTH:
            path = self.path_of(name)
            raise UnexpectedFileError(
                path,
                f"{path} belongs to {_owner_name(status.st_uid)} with mode {stat.S_IMODE(status.st_mode):04o}, "
                f"not to a user who may write {self.path}: fraisier does not use a directory another user "
                "planted there; remove it",
            )

    def unexpected(self, name: str, wanted: str = "a regular file") -> UnexpectedFileError:
        """The error for an entry that is not what the store creates there."""
        path = self.path_of(name)
        status = self.lstat(name)
        if status is None:
            kind = "gone"
        elif stat.S_ISLNK(status.st_mode):
            try:
                target = os.readlink(_entry(name), dir_fd=self.descriptor)
            except OSError:
                target = "elsewhere"
            kind = f"a symlink (to {target})"
        else:
            kind = _kind(status.st_mode)
        return UnexpectedFileError(
            path,
            f"{path} is {kind}, not {wanted}: fraisier never follows or opens what it did not create; remove it",
        )


def open_directory(
    path: PathName, *, create: bool = False, mode: int = DIRECTORY_MODE, wanted: str | None = None
) -> Directory | None:
    """The textfile directory at ``path`` (links on the way are followed: the path is the operator's), None if
    it does not exist and ``create`` is false. Made with its parents when ``create``: each directory made here
    gets ``mode`` whatever the umask (node_exporter's user must be able to reach the file); one that exists is
    left as it is (a group-shared 2775 keeps its mode). Raises UnexpectedFileError if it is not a directory,
    TextfileWriteError for an OSError. ``wanted``: what the caller means to make in it, named in the error when
    something in the way is not a directory."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    path = os.fspath(path)
    if os.geteuid() == 0:
        check_path_for_root(path)
    for _ in range(5):
        try:
            return Directory(os.open(path, flags), path)
        except FileNotFoundError:
            if not create:
                return None
        except NotADirectoryError:
            raise _in_the_way(path, wanted) from None
        except OSError as error:
            raise write_error(path, "use the directory", error) from None
        _make_with_parents(path, mode, wanted)
    raise write_error(path, "create the directory", OSError(errno.ENOENT, os.strerror(errno.ENOENT)))


def check_path_for_root(path: str) -> None:
    """Refuse a textfile directory whose own writers could point its path elsewhere: one in (or reached through)
    a directory that a writer of it may write, or through a symlink or a directory to be made where anyone but
    root may write. Its path is resolved by name at every merge, and root would follow a symlink such a writer
    put in its place to any directory of root's, and create fraisier.prom, its lock and the store's directories
    there: the writers are trusted with the metrics, not with that. Checked whether or not it is swapped now, as
    sshd's StrictModes does (whatever the moment shows, real directory, symlink or nothing, is refused). Other
    accounts owning a parent are the system's (Debian's /var/lib/prometheus belongs to prometheus). Raises
    TextfileWriteError."""
    absolute = os.path.abspath(path)
    walks = [_walk(absolute)]
    try:
        walks.append(_walk(os.path.realpath(absolute)))
    except OSError:
        pass  # changing under us (a symlink on the way removed): the path as given is walked all the same
    # The writers of what each walk found at the end, together: one walk may have met a symlink swapped in (to a
    # directory only root writes) and the other the writer's own directory.
    writers = _Writers()
    for walk in walks:
        if walk and walk[-1][3] is not None and stat.S_ISDIR(walk[-1][3].st_mode):
            writers.add(walk[-1][3])
    for walk in walks:
        for parent, parent_status, name, status in walk:
            replacer = writers.replacer(parent_status, status)
            if replacer is not None:
                raise TextfileWriteError(
                    path,
                    f"{path}: root does not use this textfile directory: {parent} may be written by {replacer}, "
                    f"who could replace {name} by a symlink to any directory of root's; keep it in a directory "
                    "its writers cannot write (/var/lib/prometheus/node-exporter), or run this as its writer",
                    errno.EPERM,
                )


_Step = tuple[str, os.stat_result, str, "os.stat_result | None"]


def _walk(chain: str) -> list[_Step]:
    """Each component of ``chain``: its parent, the parent's status, its name, its own status (not following a
    symlink). The walk ends at the first that is missing or cannot be looked at (None: swapped meanwhile, say),
    which is then judged as a directory root would make there: a failure must never let a path through."""
    steps: list[_Step] = []
    parent = "/"
    parent_status = os.stat(parent)
    for name in [part for part in chain.split("/") if part]:  # an absolute path: its components after /
        entry = os.path.join(parent, name)
        try:
            status: os.stat_result | None = os.lstat(entry)
            next_status = os.stat(entry)
        except OSError:
            steps.append((parent, parent_status, name, None))
            break
        steps.append((parent, parent_status, name, status))
        parent, parent_status = entry, next_status
    return steps


class _Writers:
    """Who may write the textfile directory (root aside): its owner, its group if group-writable, anyone if
    world-writable."""

    def __init__(self) -> None:
        self.owners: set[int] = set()
        self.groups: set[int] = set()
        self.anyone = False

    def add(self, status: os.stat_result) -> None:
        if status.st_uid != 0:
            self.owners.add(status.st_uid)
        if status.st_mode & stat.S_IWGRP:
            self.groups.add(status.st_gid)
        self.anyone = self.anyone or bool(status.st_mode & stat.S_IWOTH)

    def replacer(self, parent: os.stat_result, entry: os.stat_result | None) -> str | None:
        """Who, among the writers or anyone, may replace ``entry`` in the directory ``parent`` (None: none)."""
        sticky = bool(parent.st_mode & stat.S_ISVTX)
        if entry is None or stat.S_ISLNK(entry.st_mode):
            # A directory root is about to make, or a symlink it would follow: whoever else may write the
            # parent chooses where root writes (the writers cannot be told from the target: a symlink swapped in
            # points at a directory only root writes), so only root may.
            if entry is not None and entry.st_uid != 0:
                return f"{_user_name(entry.st_uid)} (the owner of the symlink)"
            if parent.st_uid != 0:
                return f"its owner {_user_name(parent.st_uid)}"
            if parent.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not (sticky and entry is not None):
                return "everyone" if parent.st_mode & stat.S_IWOTH else f"the group {_group_name(parent.st_gid)}"
            return None
        if parent.st_uid != 0 and self.includes_user(parent.st_uid):
            return f"its owner {_user_name(parent.st_uid)}, a writer of the textfile directory"
        if sticky:  # only the entry's owner may rename it
            if entry.st_uid != 0 and self.includes_user(entry.st_uid):
                return f"{_user_name(entry.st_uid)} (the owner of the entry in this sticky directory)"
            return None
        if parent.st_mode & stat.S_IWOTH:
            return "everyone"
        if parent.st_mode & stat.S_IWGRP and self.includes_group(parent.st_gid):
            return f"the group {_group_name(parent.st_gid)}, writers of the textfile directory among them"
        return None

    def includes_user(self, uid: int) -> bool:
        if self.anyone or uid in self.owners:
            return True
        return any(_member(uid, group) for group in self.groups)

    def includes_group(self, gid: int) -> bool:
        if self.anyone or gid in self.groups:
            return True
        return any(_member(owner, gid) for owner in self.owners)


def _member(uid: int, gid: int) -> bool:
    import grp
    import pwd

    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return False
    if user.pw_gid == gid:
        return True
    try:
        return user.pw_name in grp.getgrgid(gid).gr_mem
    except KeyError:
        return False


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _group_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"


def _make_with_parents(path: str, mode: int, wanted: str | None) -> None:
    missing = []
    candidate = path.rstrip("/") or "/"
    while candidate and not os.path.lexists(candidate):
        missing.append(candidate)
        parent = os.path.dirname(candidate)
        candidate = "" if parent == candidate else parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue  # made by another process meanwhile: theirs, with the mode they gave it
        except FileNotFoundError:
            continue  # a parent removed meanwhile: the caller's open says what is there
        except NotADirectoryError:
            raise _in_the_way(path, wanted) from None
        except OSError as error:
            raise write_error(directory, "create the directory", error) from None
        # The mode through a descriptor of what we made, not through the name (which may have been swapped).
        try:
            descriptor = os.open(directory, _OPEN_DIRECTORY)
        except OSError:
            continue
        try:
            os.fchmod(descriptor, mode)
        except OSError:
            pass
        finally:
            os.close(descriptor)


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
                return UnexpectedFileError(path, f"{path} is {_kind(status.st_mode)}, not a directory: choose "
                                           "another --textfile-dir (FRAISIER_TEXTFILE_DIR), or remove it")
            return UnexpectedFileError(
                candidate,
                f"{candidate} is not a directory, so {wanted} cannot be made: choose another --textfile-dir "
                "(FRAISIER_TEXTFILE_DIR), or remove what is in the way",
            )
    return UnexpectedFileError(path, f"{path} is not a directory: choose another --textfile-dir")


def _entry(name: str) -> str:
    # A slash (or '..') would resolve a path from the descriptor: the very thing this module avoids.
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"{name!r} is not a single directory entry")
    return name


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file"),
        (stat.S_ISLNK, "a symlink"),
    )
    return next((name for test, name in kinds if test(mode)), "not a file")


def _owner_name(uid: int) -> str:
    import pwd  # here, not at the top: only errors need it

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
