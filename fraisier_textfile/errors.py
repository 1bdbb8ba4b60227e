"""One exception hierarchy. Every message is one line that names the file or value and says what to do.

Every failure in the metrics path is a :class:`FraisierTextfileError`: a caller catches one class, never a
raw ``OSError``. Each class defines ``__reduce__`` from its own constructor arguments, so that an error
crosses a process boundary (multiprocessing, concurrent.futures) whole: pickle rebuilds an exception by
calling its class with ``args``, which here hold only the message.
"""

from __future__ import annotations

import errno as errnos
import os

TYPE_CHECKING = False  # typing is not imported here: see fraisier_textfile/__init__.py

if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any


def _as_path(path: Path | str | os.PathLike[str]) -> Path:
    # pathlib is loaded by the first error that names a path: a record run that meets none does without it (with
    # urllib.parse and ipaddress, which it imports, it is a few of our modules' worth of start-up).
    from pathlib import Path

    return Path(path)


class FraisierTextfileError(Exception):
    """Base of every error this package raises on purpose."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self.args, self.__dict__)


class InvalidValueError(FraisierTextfileError, ValueError):
    """A label value, status or duration that cannot be recorded. Nothing was recorded."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self.args, self.__dict__)


class TextfileError(FraisierTextfileError):
    """Something about the textfile or its directory. ``path`` names it."""

    def __init__(self, path: Path | str | os.PathLike[str], message: str) -> None:
        self._given = path
        self._path: Path | None = None
        super().__init__(message)

    @property
    def path(self) -> Path:
        # Made when first asked for: a busy lock is an error the store raises and catches in every hand-over,
        # and nobody asks for its path.
        if self._path is None:
            self._path = _as_path(self._given)
        return self._path

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, str(self)), self.__dict__)


class UnexpectedFileError(TextfileError):
    """One of the store's paths holds something it did not create: a symlink, a FIFO, a device, a directory
    where a file belongs, or a file where a directory belongs. It is refused, never followed or opened for
    reading in a way that could block. ``path`` names it."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, str(self)), self.__dict__)


class CorruptTextfileError(TextfileError):
    """The textfile cannot be parsed, or disagrees with the catalogue. It was left as it was."""

    def __init__(self, path: Path | str | os.PathLike[str], problem: str, line_number: int | None = None) -> None:
        self.problem = problem
        self.line_number = line_number
        where = f"{path}:{line_number}" if line_number is not None else f"{path}"
        super().__init__(
            path,
            f"{where}: {problem}; fix or remove the file "
            "(fraisier textfile check shows every problem; removing it resets the totals)",
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.problem, self.line_number), self.__dict__)


class TextfileWriteError(TextfileError):
    """The textfile could not be read or written (permissions, full disk, ...). The old file is unchanged.
    ``errno`` is the operating system's error number when one caused it (``errno.ENOSPC``, ...)."""

    def __init__(self, path: Path | str | os.PathLike[str], message: str, errno: int | None = None) -> None:
        self.errno = errno
        super().__init__(path, message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, str(self), self.errno), self.__dict__)


class LockTimeoutError(TextfileError, TimeoutError):
    """The textfile's lock was not acquired in time. Nothing was written; the events are still pending.
    Also a ``TimeoutError``, for callers that catch timeouts of any kind."""

    def __init__(self, lock_path: Path | str | os.PathLike[str], timeout: float) -> None:
        self.timeout = timeout
        super().__init__(
            lock_path,
            f"could not lock {lock_path} within {timeout:g}s: another fraisier process holds it; "
            "retry, or raise the lock timeout (--lock-timeout or FRAISIER_LOCK_TIMEOUT)",
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.timeout), self.__dict__)


class WebConfigError(FraisierTextfileError):
    """The web config file (``--web-config-file``) is malformed, or names a certificate or key that cannot be
    used. ``path`` names the web config file."""

    def __init__(self, path: Path | str | os.PathLike[str], message: str) -> None:
        self.path = _as_path(path)
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, str(self)), self.__dict__)


class ServerStartError(FraisierTextfileError):
    """The exporter could not listen where it was asked to (port in use, unknown address, ...)."""

    def __init__(self, address: str, port: int, message: str) -> None:
        self.address = address
        self.port = port
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.address, self.port, str(self)), self.__dict__)


_WRITE_ERROR_FIXES = {
    errnos.ENOSPC: "free space on that filesystem",
    errnos.EDQUOT: "free space or raise the quota",
    errnos.EACCES: "make the directory writable by this user, or choose another --textfile-dir",
    errnos.EPERM: "make the directory writable by this user, or choose another --textfile-dir",
    errnos.EROFS: "the filesystem is read-only: choose another --textfile-dir",
}


def write_error(path: Path | str | os.PathLike[str], action: str, error: OSError) -> TextfileWriteError:
    """The TextfileWriteError for an OSError met while doing ``action`` ("write", "create the lock file", ...)
    to ``path``: one line with the system's reason and the fix, the errno kept."""
    fix = _WRITE_ERROR_FIXES.get(error.errno or 0, "check the directory and the disk")
    return TextfileWriteError(path, f"cannot {action} {path}: {error.strerror or error}; {fix}", error.errno)
