"""The textfile on disk: its name, where it lives, reading it whole, and writing a new version of it.

A new version is written to a temporary file in the same directory (``.fraisier.prom.tmp.<random>``: a name
node_exporter does not read), fsynced, and renamed over the old one, after which the directory is fsynced: a
reader sees the old file or the new one, never a part, and a power loss leaves one of them whole. Anything at
the file's path that the store did not put there (a symlink, a FIFO, a device) is refused, never followed and
never opened in a way that could block.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from fraisier_textfile.errors import UnexpectedFileError
from fraisier_textfile.store import fs

TEXTFILE_NAME = "fraisier.prom"


# node_exporter reads every file whose name ends in .prom, hidden ones included: ours must not.
TEMPORARY_PREFIX = ".fraisier.prom.tmp."


DIRECTORY_ENVIRONMENT = "FRAISIER_TEXTFILE_DIR"


def default_textfile_directory() -> Path:
    """``$FRAISIER_TEXTFILE_DIR``, else a directory any user can write with no set-up:
    ``$XDG_STATE_HOME/fraisier/textfile`` (``~/.local/state/fraisier/textfile``)."""
    configured = os.environ.get(DIRECTORY_ENVIRONMENT)
    if configured:
        return Path(configured)
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "fraisier" / "textfile"


def unexpected(path: Path, status: os.stat_result | None, wanted: str = "a regular file") -> UnexpectedFileError:
    """The error for something at ``path`` that fraisier did not put there."""
    if status is not None and stat.S_ISLNK(status.st_mode):
        try:
            target = os.path.realpath(path)
        except OSError:
            target = "elsewhere"
        if path.name == TEXTFILE_NAME:
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
    kinds = (
        (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file"),
    )
    kind = next((name for test, name in kinds if status is not None and test(status.st_mode)), "not a file")
    return UnexpectedFileError(
        path, f"{path} is {kind}, not {wanted}: fraisier never reads or writes it; remove it (it creates its own)"
    )


class FileVersion:
    """One version of the textfile, held open.

    A merger or a server that has the file's content in memory must know whether the file on disk is still
    that version. (inode, size, mtime) alone can be fooled: ext4 hands a freed inode to the next new file at
    once, and before Linux 6.13 mtime moves only once per kernel tick, so two merges within a tick can
    leave a file with the old inode, size and mtime but other content. While this descriptor is open the
    inode cannot be reused, so the same inode on disk is this very file.
    """

    __slots__ = ("_descriptor", "key", "path")

    def __init__(self, path: Path, descriptor: int) -> None:
        self.path = path
        self._descriptor = descriptor
        status = os.fstat(descriptor)
        self.key = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)

    def is_current(self) -> bool:
        """Whether the path still names this version, unchanged (a symlink put in its place does not)."""
        try:
            status = os.lstat(self.path)
        except OSError:
            return False
        return self._descriptor >= 0 and (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns) == self.key

    def close(self) -> None:
        if self._descriptor >= 0:
            os.close(self._descriptor)
            self._descriptor = -1

    def __del__(self) -> None:
        self.close()


def lstat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def write_parts(descriptor: int, parts: Iterable[bytes | memoryview]) -> None:
    """Write ``parts`` with writev(2), up to IOV_MAX at a time: the spans of the file read go from where they
    are, never joined into one copy of the file (a merge of a large file would need twice its size), and a
    fresh merge of a large file makes one system call instead of one per part."""
    pending = [memoryview(part) for part in parts if len(part)]
    while pending:
        batch = pending[:_IOV_MAX]
        written = os.writev(descriptor, batch)
        if not written:  # not for a regular file (a full disk raises ENOSPC): never loop on it
            raise OSError(errno.EIO, "write(2) wrote nothing")
        # A regular file takes it all unless the disk is full or a signal lands: then go on from where it ended.
        for number, part in enumerate(batch):
            if written < len(part):
                pending = [part[written:], *batch[number + 1 :], *pending[len(batch) :]]
                break
            written -= len(part)
        else:
            pending = pending[len(batch) :]


_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024


def unlink_quietly(directory: fs.Directory, name: str) -> None:
    try:
        directory.unlink(name)
    except OSError:
        pass


def random_suffix() -> str:
    return os.urandom(8).hex()
