"""The store's file operations, relative to a directory held open and checked, never to a path resolved again.

Who may write the textfile directory is trusted with the metrics, nothing more (see "Who may write the
textfile directory" in docs/monitoring.md). Such a writer can replace ``.fraisier-handover``,
``.fraisier-inflight``, the lock file or the textfile by a symlink at any moment, also between two steps of a
merge run by root; one who may write a parent of the textfile directory (the deploying user owns Fraisier's
``/var/lib/fraisier``) can do as much to the textfile directory itself. So every operation on those directories
and on the files in them goes through a :class:`Directory`:

- it is opened once, with ``O_DIRECTORY|O_NOFOLLOW`` relative to its parent's descriptor, and checked with
  fstat (a directory, owned by a writer of the textfile directory);
- everything after that (scan, open, create, rename, unlink, fchmod, fsync) names entries relative to its
  descriptor (``dir_fd=``, ``os.scandir(fd)``), never opens a file following a symlink, never opens a FIFO or
  a device in a way that blocks, and never chmods a path (``os.chmod`` follows links: only ``fchmod`` on a
  descriptor we opened);
- work done later (the background removal of applied hand-overs, the removal of retired markers after the
  lock is released) keeps the descriptor of the directory its names were listed in (:meth:`Directory.copy`):
  a symlink swapped in meanwhile is never seen.

The textfile directory itself is opened by a walk of its path (:func:`open_directory`), one component at a time
from ``/``, each relative to its parent's descriptor: symlinks where only root or this process's user may write
are the operator's and followed; in a directory another user may write, the next component is opened with
``O_NOFOLLOW`` and checked, so that a symlink there is refused. Whatever its user, a process then uses such a
directory safely rather than refusing it. What root makes there is given to the directory's owner (:func:`give`).
"""

from __future__ import annotations

import errno
import os
import stat

from fraisier_textfile.errors import UnexpectedFileError, write_error
from fraisier_textfile.store.signals import DeferredSignals

# A union of the builtin kind (types.UnionType), not typing's Union: typing's aliases cost a record run's import.
PathName = str | os.PathLike[str]
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
        # Noted as closed before the close: a signal's handler that raises right after it (a merge's directory is
        # closed where handlers run) must not leave the number to be closed again, by then another thread's file.
        descriptor, self.descriptor = self.descriptor, -1
        if descriptor >= 0:
            os.close(descriptor)

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
            status = os.fstat(descriptor)
            if not stat.S_ISREG(status.st_mode):
                raise self.unexpected(name)
            self.refuse_hidden(name, status)
        except BaseException:
            os.close(descriptor)
            raise
        return descriptor

    def hides(self, status: os.stat_result) -> bool:
        """Whether the file of ``status`` in this directory must not be read by this process: it is root, another
        user may write the directory, and that user may not read the file (it is not world-readable, nor that
        user's own). Such a user may move there any file of root's from elsewhere in their tree (a rename needs no
        permission on the file), and what root reads may be quoted back in a parse error, to a user whom sudo
        allows Fraisier's commands. What the store writes there is world-readable (FILE_MODE)."""
        # The cheap part first: the directory is looked at only by root, for a file not world-readable.
        if os.geteuid() != 0 or status.st_mode & stat.S_IROTH:
            return False
        directory = self.status()
        if directory.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return True
        return directory.st_uid not in (0, status.st_uid)

    def refuse_hidden(self, name: str, status: os.stat_result) -> None:
        """Raise UnexpectedFileError if the file ``name`` (of ``status``) must not be read by this process
        (:meth:`hides`)."""
        if self.hides(status):
            path = self.path_of(name)
            raise UnexpectedFileError(path, f"{path} {self.why_hidden(status)}; remove it")

    def why_hidden(self, status: os.stat_result) -> str:
        """Why a file of ``status`` that :meth:`hides` is not read, for messages (after its name)."""
        return (
            f"belongs to {owner_name(status.st_uid)} with mode {stat.S_IMODE(status.st_mode):04o}, in {self.path}, "
            f"which {writers_of(self.status())} may write: as root, fraisier reads no file there that its writers "
            "may not read (one of them may have moved a file of root's there)"
        )

    def read_regular(self, name: str, limit: int | None = None, largest: int | None = None) -> bytes:
        """The bytes of the regular file ``name`` (at most ``limit``), as :meth:`open_regular` opens it. One larger
        than ``largest`` bytes is refused (OSError EFBIG, whose strerror says its size): before a byte is read if its
        size says so, else once the read passes it."""
        descriptor = self.open_regular(name)
        try:
            if largest is not None:
                if (stated := os.fstat(descriptor).st_size) > largest:
                    raise OSError(errno.EFBIG, f"{stated} bytes, more than {largest}")
                # The size may change after the fstat (a writer of the directory growing the file), or lie (a file of
                # /proc says 0): the read stops past the bound too.
                limit = largest + 1 if limit is None else min(limit, largest + 1)
            chunks = []
            size = 0
            while limit is None or size < limit:
                chunk = os.read(descriptor, 1 << 16 if limit is None else min(1 << 16, limit - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            if largest is not None and size > largest:
                raise OSError(errno.EFBIG, f"{size} bytes read so far, more than {largest}")
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

    def settle_new(self, descriptor: int, mode: int) -> None:
        """Give a file this process has just made in this directory (``O_EXCL``) ``mode`` whatever the umask, and,
        made by root in another user's directory, to that user (:func:`give`): root's would lock that user's
        processes out. Never one found there: a writer of the directory may have moved any file of this user's
        there under that name, and would have it made group-writable, or be given it. Raises fchmod's OSError."""
        os.fchmod(descriptor, mode)
        give(descriptor, self.status())

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
        an OSError. Signal handlers are held back meanwhile, as in the walk (walk.open_directory)."""
        with DeferredSignals():
            return self._subdirectory(name, create, mode)

    def _subdirectory(self, name: str, create: bool, mode: int) -> Directory | None:
        path = self.path_of(name)
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
                    if create and just_made(status):  # another process's mkdir, not finished (killed, or not yet)
                        finish(descriptor, status, os.fstat(self.descriptor), mode)
                except OSError as error:
                    directory.close()
                    raise write_error(path, "use the directory", error) from None
                except BaseException:
                    directory.close()
                    raise
                return directory
            try:
                make_directory(self.descriptor, name, mode)
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
                f"{path} belongs to {owner_name(status.st_uid)} with mode {stat.S_IMODE(status.st_mode):04o}, "
                f"not to a user who may write {self.path}: fraisier does not use a directory another user "
                "planted there; remove it",
            )

    def unexpected(self, name: str, wanted: str = "a regular file") -> UnexpectedFileError:
        """The error for an entry that is not what the store creates there."""
        path = self.path_of(name)
        return UnexpectedFileError(
            path,
            f"{path} is {self.describe(name)}, not {wanted}: fraisier never follows or opens what it did not "
            "create; remove it",
        )

    def describe(self, name: str) -> str:
        """What the entry ``name`` is, for messages ("a FIFO", "a symlink (to ...)", "gone"), from its own status:
        never opened or followed. Raises lstat's OSError."""
        status = self.lstat(name)
        if status is None:
            return "gone"
        if stat.S_ISLNK(status.st_mode):
            try:
                target = os.readlink(_entry(name), dir_fd=self.descriptor)
            except OSError:
                target = "elsewhere"
            return f"a symlink (to {target})"
        return kind_of(status.st_mode)


def make_directory(parent: int, name: str, mode: int) -> None:
    """Make the directory ``name`` in the directory held by ``parent`` with ``mode`` whatever the umask, and, made
    by root in another user's directory, give it to that user (:func:`give`). Raises the mkdir's OSError
    (FileExistsError: made by someone else first, left as it is) and fchmod's.

    Made with :data:`MADE_MODE` until fchmod gives it its mode, through a descriptor of what was made, not
    through the name: a writer of the directory may have swapped it since the mkdir, for a symlink (not followed)
    or another directory (which keeps its mode and owner: :func:`just_made`); what is there is then opened, and
    judged, by the caller. Signal handlers are held back from the mkdir until then: one that raises in between
    (a Ctrl-C) would leave a directory of root's in that user's directory, which its processes could not write,
    nor node_exporter read."""
    with DeferredSignals():
        os.mkdir(_entry(name), MADE_MODE, dir_fd=parent)
        try:
            made = os.open(name, _OPEN_DIRECTORY, dir_fd=parent)
        except OSError:
            return
        try:
            finish(made, os.fstat(made), os.fstat(parent), mode)
        finally:
            os.close(made)


def finish(descriptor: int, status: os.stat_result, parent: os.stat_result, mode: int) -> None:
    """Give the directory held by ``descriptor`` (of status ``status``, in the directory of status ``parent``) its
    ``mode``, and root's in another user's directory to that user, if it is as a mkdir of :func:`make_directory`
    leaves it (:func:`just_made`): made by this process, or by another of its user's that was killed before it
    did, or has not done it yet while this one makes entries in it (which would be root's too, the directory
    being root's when they are made)."""
    if just_made(status):
        os.fchmod(descriptor, mode | (status.st_mode & stat.S_ISGID))
        give(descriptor, parent)


MADE_MODE = 0o1700
"""A directory's mode from its mkdir to its fchmod: its owner's alone, and sticky, which nobody gives a private
directory (the sticky bit is for directories others may write), so that it tells the directory just made from
one of this user's moved into its place meanwhile (:func:`just_made`). The umask never takes the sticky bit."""


def just_made(status: os.stat_result) -> bool:
    """Whether the directory of ``status``, opened by its name just after this process's mkdir of it, may be what
    that mkdir made: this process's user's, sticky, with no permission beyond :data:`MADE_MODE`'s (the umask may
    take some; a setgid bit is inherited). A writer of its parent may have renamed the new directory away and moved
    another directory of this user's (root's) in its place in between: that one must keep its mode and owner, or
    root would give the writer a directory of root's with what is in it. (Not "empty": another process of this
    user's may already have made entries in the one made, having found it there.)"""
    mode = stat.S_IMODE(status.st_mode)
    return status.st_uid == os.geteuid() and bool(mode & stat.S_ISVTX) and not mode & ~(MADE_MODE | stat.S_ISGID)


def give(descriptor: int, directory: os.stat_result) -> None:
    """Give what this process has just made in the directory of status ``directory`` (held by ``descriptor``) to
    the directory's owner and group, when this process is root and the directory another user's: the deploying
    user's processes must be able to lock, number and make entries in what root made in its directory, as in
    what they made themselves. Only ever called with a descriptor of a new file or directory (O_EXCL or
    mkdir), never of something found there, which another user may have moved in. Its group is the one the
    kernel gives what that user makes there: the directory's where it is setgid, else the user's own (not the
    directory's, whose other members that user never let in). A filesystem that refuses (NFS's root squash)
    leaves it root's: root's event is written all the same."""
    if os.geteuid() == 0 and directory.st_uid != 0:
        group = directory.st_gid if directory.st_mode & stat.S_ISGID else _primary_group(directory.st_uid)
        try:
            os.fchown(descriptor, directory.st_uid, directory.st_gid if group is None else group)
        except OSError:
            pass


def _primary_group(uid: int) -> int | None:
    import pwd  # here, not at the top: only root making something in another user's directory needs it

    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return None


def _entry(name: str) -> str:
    # A slash (or '..') would resolve a path from the descriptor: the very thing this module avoids.
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"{name!r} is not a single directory entry")
    return name


def kind_of(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file"),
        (stat.S_ISLNK, "a symlink"),
    )
    return next((name for test, name in kinds if test(mode)), "not a file")


def owner_name(uid: int) -> str:
    import pwd  # here, not at the top: only errors need it

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def writers_of(status: os.stat_result) -> str:
    """Who besides root may write the directory of ``status``, for messages."""
    if status.st_mode & stat.S_IWOTH:
        return "everyone"
    who = owner_name(status.st_uid) if status.st_uid != 0 else "root"
    if status.st_mode & stat.S_IWGRP:
        who += f" and the group {_group_name(status.st_gid)}"
    return who


def _group_name(gid: int) -> str:
    import grp  # here, not at the top: only errors need it

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"


def open_directory(
    path: PathName, *, create: bool = False, mode: int = DIRECTORY_MODE, wanted: str | None = None,
    search_only: bool = False,
) -> Directory | None:
    """The textfile directory at ``path``, opened by a checked walk of its path: see walk.open_directory."""
    return walk.open_directory(path, create=create, mode=mode, wanted=wanted, search_only=search_only)


# walk.py builds on Directory, so it is imported once this module is complete; with it, not by the first merge of a
# process (which would then pay for loading it), as every process that opens a store directory needs it.
from fraisier_textfile.store import walk  # noqa: E402
