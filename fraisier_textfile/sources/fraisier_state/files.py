"""Reading the small files Fraisier and its operators write (status files, fraises.yaml), under the textfile's lock.

Anyone who may write their directories may put anything in their place: only a regular file of a bounded size, not
empty, is opened and read, without blocking, so that a FIFO, a device, a file of /proc or a huge file costs a merge
nothing but a log line.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

MAX_FILE_BYTES = 4 * 1024 * 1024
"""Status files are small; anything larger is not read (a merge must not stall on it)."""


def read_regular_file(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes; raises OSError otherwise."""
    descriptor = _open_regular_file(path, limit)
    if descriptor is None:
        return b""
    try:
        chunks = []
        remaining = limit + 1
        while remaining > 0:
            chunk = os.read(descriptor, min(remaining, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
        return data
    finally:
        os.close(descriptor)


def read_head(path: Path, count: int) -> bytes:
    """The first ``count`` bytes (or fewer) of ``path``, if it is a regular file of any size; else OSError."""
    descriptor = _open_regular_file(path, None)
    if descriptor is None:
        return b""
    try:
        return os.read(descriptor, count)
    finally:
        os.close(descriptor)


def _open_regular_file(path: Path, limit: int | None) -> int | None:
    """A descriptor open for reading on ``path`` if it is a regular file (of at most ``limit`` bytes); None if it
    is an empty one, which is not opened: the files of /proc say they are empty, and some are consumed by being
    read (/proc/kmsg hands the kernel's messages to one reader, a syslog's, which would lose them).

    What is not a regular file is never opened: opening a device runs its driver (/dev/watchdog arms the host's
    watchdog, a tape rewinds), and anyone who may write the directory may put a symlink to one there, read by
    root at every scrape. So the path is first resolved to an O_PATH descriptor, which opens nothing, and only a
    regular file is then opened, through /proc/self/fd: that very inode, whatever is swapped in meanwhile.
    Without blocking: the merge holds the textfile's lock."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    path_only = getattr(os, "O_PATH", 0)
    if not path_only:  # not Linux: the file's type is checked once it is open
        descriptor = os.open(path, flags)
    else:
        handle = os.open(path, path_only | os.O_CLOEXEC)
        try:
            status = os.fstat(handle)
            _check(status, path, limit)
            if status.st_size == 0:
                return None
            try:
                descriptor = os.open(f"/proc/self/fd/{handle}", flags)
            except FileNotFoundError:  # no /proc: by its name again, then checked to be the same file
                descriptor = os.open(path, flags)
                if not os.path.samestat(os.fstat(descriptor), os.fstat(handle)):
                    os.close(descriptor)
                    raise OSError(errno.EAGAIN, "replaced while it was opened", str(path)) from None
        finally:
            os.close(handle)
    try:
        _check(os.fstat(descriptor), path, limit)
    except OSError:
        os.close(descriptor)
        raise
    return descriptor


def _check(status: os.stat_result, path: Path, limit: int | None) -> None:
    if not stat.S_ISREG(status.st_mode):
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    if limit is not None and status.st_size > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
