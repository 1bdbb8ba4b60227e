"""The textfile on disk: its name, where it lives, reading it whole, and writing a new version of it.

A new version is written to a temporary file in the same directory (``.fraisier.prom.tmp.<random>``: a name
node_exporter does not read), fsynced, and renamed over the old one, after which the directory is fsynced: a
reader sees the old file or the new one, never a part, and a power loss leaves one of them whole. Anything at
the file's path that the store did not put there (a symlink, a FIFO, a device) is refused, never followed and
never opened in a way that could block.
"""

from __future__ import annotations

import _thread
import errno
import os
import stat
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from fraisier_textfile.errors import CorruptTextfileError, TextfileWriteError, UnexpectedFileError, write_error
from fraisier_textfile.format.model import Document
from fraisier_textfile.format.reader import parse_bytes, parse_unvouched, read_claimed
from fraisier_textfile.format.schema import Schema
from fraisier_textfile.format.syntax import ParseError
from fraisier_textfile.store import fs, process, vouching
from fraisier_textfile.store.signals import DeferredSignals

if TYPE_CHECKING:
    from pathlib import Path

    from fraisier_textfile.format.layout import Claims

TEXTFILE_NAME = "fraisier.prom"


# node_exporter reads every file whose name ends in .prom, hidden ones included: ours must not.
TEMPORARY_PREFIX = ".fraisier.prom.tmp."


DIRECTORY_ENVIRONMENT = "FRAISIER_TEXTFILE_DIR"


def default_textfile_directory() -> Path:
    """``$FRAISIER_TEXTFILE_DIR``, else a directory any user can write with no set-up:
    ``$XDG_STATE_HOME/fraisier/textfile`` (``~/.local/state/fraisier/textfile``)."""
    from pathlib import Path

    return Path(default_directory_name())


def default_directory_name() -> str:
    """:func:`default_textfile_directory` as a string, for the store and the CLI, which work with strings: a
    record run has no use for pathlib (see errors.py)."""
    configured = os.environ.get(DIRECTORY_ENVIRONMENT)
    if configured:
        return configured
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "fraisier", "textfile")


def unexpected(path: fs.PathName, status: os.stat_result | None, wanted: str = "a regular file") -> UnexpectedFileError:
    """The error for something at ``path`` that fraisier did not put there."""
    if status is not None and stat.S_ISLNK(status.st_mode):
        try:
            target = os.path.realpath(path)
        except OSError:
            target = "elsewhere"
        if os.path.basename(path) == TEXTFILE_NAME:
            return UnexpectedFileError(
                path,
                f"{path} is a symlink (to {target}): fraisier replaces the file by a rename and would replace "
                f"the link, or write through it; point --textfile-dir (FRAISIER_TEXTFILE_DIR) at the link's "
                f"real directory, {os.path.dirname(target)}",
            )
        return UnexpectedFileError(path, f"{path} is a symlink (to {target}), not {wanted}: remove it")
    if status is not None and stat.S_ISREG(status.st_mode) and status.st_nlink > 1:
        return UnexpectedFileError(
            path,
            f"{path} is a hard link (the file has {status.st_nlink} names, the others elsewhere), not {wanted}: "
            "fraisier never makes one, and would write through it to the other names; remove it (it creates "
            "its own)",
        )
    kind = "not a file" if status is None else fs.kind_of(status.st_mode)
    return UnexpectedFileError(
        path, f"{path} is {kind}, not {wanted}: fraisier never reads or writes it; remove it (it creates its own)"
    )


class FileVersion:
    """One version of the textfile, held open.

    A merger or a server that has the file's content in memory must know whether the file on disk is still
    that version. (inode, size, mtime) alone can be fooled: ext4 hands a freed inode to the next new file at
    once, and the seal (vouching.py) gives the versions written in one second with one layout line the same
    mtime (before Linux 6.13 the kernel's tick did so within a tick), so two merges can leave a file with the
    old inode, size and mtime but other content. While this descriptor is open the inode cannot be reused, so
    the same inode on disk is this very file.
    """

    __slots__ = ("_descriptor", "key", "path", "steady")

    def __init__(self, path: fs.PathName, descriptor: int, status: os.stat_result | None = None,
                 steady: bool = False) -> None:
        """``status``: the descriptor's fstat, when the caller has just taken it; ``steady``: the caller read the
        file whole and found the same size and mtime after the read as before it."""
        self.path = os.fspath(path)
        self._descriptor = descriptor
        if status is None:
            status = os.fstat(descriptor)
        self.key = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
        self.steady = steady
        """The bytes read are the file's at the mtime of ``key``: nobody changed it in place during the read
        (see vouching.sealed)."""

    def is_current(self, directory: fs.Directory | None = None) -> bool:
        """Whether the path still names this version, unchanged (a symlink put in its place does not).
        ``directory``: the file's directory held open, where its name is looked up (a merge's); None: by the
        path (a reader's look, which only decides whether to read again)."""
        try:
            if directory is None:
                status: os.stat_result | None = os.lstat(self.path)
            else:
                status = directory.lstat(os.path.basename(self.path))
        except OSError:
            return False
        return (self._descriptor >= 0 and status is not None
                and (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns) == self.key)

    def close(self) -> None:
        descriptor, self._descriptor = self._descriptor, -1  # before the close: see fs.Directory.close
        if descriptor >= 0:
            os.close(descriptor)

    def __del__(self) -> None:
        self.close()


_READ_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def lstat_in(directory: fs.Directory, name: str) -> os.stat_result | None:
    """``name``'s own status in ``directory`` (held open), None if it cannot be had."""
    try:
        return directory.lstat(name)
    except OSError:
        return None


def write_parts(descriptor: int, parts: Iterable[bytes | memoryview]) -> None:
    """Write ``parts`` with writev(2), up to IOV_MAX at a time: the spans of the file read go from where they
    are, never joined into one copy of the file (a merge of a large file would need twice its size), and a
    fresh merge of a large file makes one system call instead of one per part."""
    pending = parts if isinstance(parts, list) else list(parts)
    while pending:
        batch = pending[:_IOV_MAX] if len(pending) > _IOV_MAX else pending
        size = sum(map(len, batch))
        written = os.writev(descriptor, batch) if size else 0
        if written == size:  # all of it, as a regular file takes it: no part to look at
            pending = pending[len(batch) :]
            continue
        if not written:  # not for a regular file (a full disk raises ENOSPC): never loop on it
            raise OSError(errno.EIO, "write(2) wrote nothing")
        # A regular file takes it all unless the disk is full or a signal lands: then go on from where it ended.
        for number, part in enumerate(batch):
            if written < len(part):
                pending = [memoryview(part)[written:], *batch[number + 1 :], *pending[len(batch) :]]
                break
            written -= len(part)


_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024


def start_writeback(descriptor: int) -> None:
    """Have the kernel start writing the file's dirty pages to the device now, without waiting for it: the fsync
    after then waits only for what is left, and the caller's work meanwhile overlaps the device's.

    Python's os has no sync_file_range(2); posix_fadvise(POSIX_FADV_DONTNEED) starts that writeback too (Linux
    writes the range's dirty pages back, WB_SYNC_NONE, as PostgreSQL's pg_flush_data relies on where it lacks
    sync_file_range), then drops only its clean pages: those just written are dirty or being written, and stay
    cached for the next reader. Where it is missing or refused, the fsync does all the writing, as before."""
    try:
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    except (AttributeError, OSError):
        pass


def close_written(descriptor: int) -> None:
    """Close the descriptor of a temporary :meth:`Textfile.write_temporary` returned, which is not renamed."""
    process.writing.pop(descriptor, None)  # before the close: see _close_all
    os.close(descriptor)


def unlink_quietly(directory: fs.Directory, name: str) -> None:
    try:
        directory.unlink(name)
    except OSError:
        pass


def random_suffix() -> str:
    return os.urandom(8).hex()


class Textfile:
    """The textfile of one directory on disk: reading and parsing it, and writing a new version of it in its place
    (see the module's note)."""

    def __init__(self, directory: fs.PathName, schema: Schema) -> None:
        self.directory = directory = os.fspath(directory)
        self.path = os.path.join(directory, TEXTFILE_NAME)
        self.schema = schema
        """The families the file owns: how its bytes are parsed."""

    def read_data(self, textfile: fs.Directory | None = None) -> tuple[FileVersion | None, bytes]:
        """The file's bytes (empty if there is none) and its version, unparsed. Anything but a regular file at
        the path (a symlink, a FIFO, a device, a directory) is refused without being followed or read.
        ``textfile``: the textfile directory held open (a merge's), where the file is opened by its name; None:
        it is opened here (see fs.open_directory)."""
        if textfile is None:
            # Signal handlers held back as in the walk (a merge holds them already): one that raises right after
            # the file's open, before the number is kept, would leave the file open for the process's life.
            with DeferredSignals():
                # Search permission is all a reader needs: it opens one file in the directory and lists nothing.
                directory = fs.open_directory(self.directory, search_only=True)
                if directory is None:
                    return None, b""
                with directory:
                    return self._read_in(directory)
        return self._read_in(textfile)

    def _read_in(self, textfile: fs.Directory) -> tuple[FileVersion | None, bytes]:
        try:
            status = textfile.lstat(TEXTFILE_NAME)
        except OSError as error:
            raise write_error(self.path, "read", error) from None
        if status is None:
            return None, b""
        # A hard link is a file with other names elsewhere (a writer's link to a file it may not read, where
        # fs.protected_hardlinks is off): read as the textfile, its lines would be quoted in parse errors.
        if not stat.S_ISREG(status.st_mode) or status.st_nlink > 1:
            raise unexpected(self.path, status)
        try:
            # O_NOFOLLOW|O_NONBLOCK: what was a regular file a moment ago may have been replaced by a symlink
            # or a FIFO since; neither is followed or waited on.
            descriptor = os.open(TEXTFILE_NAME, _READ_FILE, dir_fd=textfile.descriptor)
        except FileNotFoundError:
            return None, b""
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise unexpected(self.path, lstat_in(textfile, TEXTFILE_NAME)) from None
            raise TextfileWriteError(
                self.path, f"cannot read {self.path}: {error.strerror}; check its permissions", error.errno
            ) from None
        try:
            status = os.fstat(descriptor)
            if not stat.S_ISREG(status.st_mode) or status.st_nlink > 1:
                raise unexpected(self.path, status)
            textfile.refuse_hidden(TEXTFILE_NAME, status)
            # One read of the size fstat gives, into one buffer: no list of chunks to join, so the bytes are
            # copied once, by the kernel, and decoded once. (Only a file that changed meanwhile, which the
            # lock rules out for a merge, needs more reads.)
            data = os.read(descriptor, status.st_size + 1)
            # A small buffer to find the end: os.read allocates what it is asked for, and a megabyte is an mmap
            # and a munmap for the nothing a file read whole gives.
            more = os.read(descriptor, 1 << 16) if data else b""
            if more:
                chunks = [data, more]
                while chunk := os.read(descriptor, 1 << 20):
                    chunks.append(chunk)
                data = b"".join(chunks)
            # Its identity as fstat gave it before the read: a change during the read makes it out of date. The
            # look after the read tells whether the bytes are the file's at that mtime (vouching.py's seal).
            after = os.fstat(descriptor)
            steady = after.st_mtime_ns == status.st_mtime_ns and after.st_size == status.st_size == len(data)
            version = FileVersion(self.path, descriptor, status, steady)
        except OSError as error:
            os.close(descriptor)
            raise write_error(self.path, "read", error) from None
        except BaseException:
            os.close(descriptor)
            raise
        return version, data

    def parse_data(self, data: bytes, check_histograms: bool = True) -> Document:
        """The document of the file's bytes (see format.reader.parse_bytes: one this package wrote is not
        checked line by line again)."""
        try:
            return parse_bytes(data, self.schema, check_histograms)
        except ParseError as error:
            raise CorruptTextfileError(self.path, error.problem, error.line_number) from None

    def parse_claimed(self, data: bytes) -> tuple[Document, Claims | None]:
        """For a merge, which checks the claims while it writes (vouching.py): the document of the file's bytes
        as its layout line lays it out, and the claims to check before anything of it is trusted; a file not
        laid out so is read line by line (no claims). Histograms are left to the merge's check."""
        claimed = read_claimed(data, self.schema)
        if claimed is not None:
            return claimed
        try:
            return parse_unvouched(data, self.schema, check_histograms=False), None
        except ParseError as error:
            raise CorruptTextfileError(self.path, error.problem, error.line_number) from None

    def open_directory(self) -> fs.Directory:
        """The textfile directory, created with mode 0755 whatever the umask if missing (node_exporter runs as
        another user: it must be able to enter it)."""
        directory = fs.open_directory(self.directory, create=True)
        assert directory is not None
        return directory

    def remove_stale_temporaries(self, textfile: fs.Directory, keep: str = "") -> None:
        """Temporary files are only made under the lock, which the caller holds: any left are from killed
        writers (but ``keep``, the caller's own). Raises OSError if ``textfile`` cannot be listed."""
        for entry in list(textfile.entries()):
            if entry.name.startswith(TEMPORARY_PREFIX) and entry.name != keep and entry.is_file(follow_symlinks=False):
                unlink_quietly(textfile, entry.name)

    def write_temporary(self, parts: Iterable[bytes | memoryview], textfile: fs.Directory,
                        meanwhile: Callable[[str], object] | None = None, seal: str | None = None) -> tuple[str, int]:
        """Write the text ``parts`` make durably to a new temporary file; return its name and its open
        descriptor (noted in process.writing until :meth:`rename` or :func:`close_written`). ``meanwhile``: work
        done once the bytes are written, while the device writes them back (see :func:`start_writeback`), before
        the fsync waits for it; it is given the temporary's name. ``seal``: the value of the layout line written,
        whose seal the file gets (vouching.seal)."""
        temporary = f"{TEMPORARY_PREFIX}{random_suffix()}"
        try:
            # O_EXCL|O_NOFOLLOW, 0644 by fchmod: never through a symlink or into a file someone else prepared,
            # and readable by node_exporter's user whatever our umask.
            descriptor = textfile.create(temporary, fs.FILE_MODE)
        except OSError as error:
            raise write_error(self.directory, "create a temporary file in", error) from None
        process.writing[descriptor] = _thread.get_ident()
        try:
            try:
                write_parts(descriptor, parts)
                if seal is not None:
                    vouching.seal(descriptor, seal)  # after the last write, which sets the mtime again
                if meanwhile is not None:
                    start_writeback(descriptor)
                    meanwhile(temporary)
                # Durable content before the rename: after a power loss the name must not point at an
                # empty file.
                os.fsync(descriptor)
            except BaseException:
                close_written(descriptor)
                raise
        except OSError as error:
            unlink_quietly(textfile, temporary)
            raise write_error(self.path, "write", error) from None
        except BaseException:
            unlink_quietly(textfile, temporary)
            raise
        return temporary, descriptor

    def rename(self, temporary: str, descriptor: int, textfile: fs.Directory) -> FileVersion | None:
        """Rename the written temporary over the textfile; return the new file's version, held open (None if it
        cannot be had: the next merge reads the file). Once renamed, nothing here raises: the caller must
        forget the changes the file now holds, and fsync the directory (transaction.py: once the lock is free)."""
        try:
            textfile.replace(temporary, TEXTFILE_NAME)
        except OSError as error:
            close_written(descriptor)
            unlink_quietly(textfile, temporary)
            raise self.replace_error(error, textfile) from None
        process.writing.pop(descriptor, None)  # the caller's version from here on (a merge's, kept)
        try:
            return FileVersion(self.path, descriptor)
        except OSError:
            os.close(descriptor)
            return None

    def replace_error(self, error: OSError, textfile: fs.Directory) -> TextfileWriteError:
        """The error for a rename over the textfile in ``textfile`` (held open) that failed. In a sticky directory
        (mode 1777, as /tmp) only the file's owner may replace it, however writable the directory: say so, not
        "make it writable"."""
        if error.errno in (errno.EPERM, errno.EACCES):
            try:
                directory, target = textfile.status(), textfile.lstat(TEXTFILE_NAME)
            except OSError:
                pass
            else:
                if directory.st_mode & stat.S_ISVTX and target is not None and target.st_uid != os.geteuid():
                    owner = fs.owner_name(target.st_uid)
                    return TextfileWriteError(
                        self.path,
                        f"cannot write {self.path}: {error.strerror}; it belongs to {owner} and its directory is "
                        f"sticky (chmod +t), so only {owner} can replace it: share a directory without the sticky "
                        "bit (a group directory, chmod 2775), or choose another --textfile-dir",
                        error.errno,
                    )
        return write_error(self.path, "write", error)
