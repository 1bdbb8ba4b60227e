"""One exception hierarchy. Every message is one line that names the file or value and says what to do."""

from __future__ import annotations

from pathlib import Path


class FraisierTextfileError(Exception):
    """Base of every error this package raises on purpose."""


class InvalidValueError(FraisierTextfileError, ValueError):
    """A label value, status or duration that cannot be recorded. Nothing was recorded."""


class TextfileError(FraisierTextfileError):
    """Something about the textfile or its directory. ``path`` names it."""

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = Path(path)
        super().__init__(message)


class CorruptTextfileError(TextfileError):
    """The textfile cannot be parsed, or disagrees with the catalogue. It was left as it was."""

    def __init__(self, path: Path | str, problem: str, line_number: int | None = None) -> None:
        self.problem = problem
        self.line_number = line_number
        where = f"{path}:{line_number}" if line_number is not None else f"{path}"
        super().__init__(
            path,
            f"{where}: {problem}; fix or remove the file "
            "(fraisier textfile check shows every problem; removing it resets the totals)",
        )


class TextfileWriteError(TextfileError):
    """The textfile could not be written (permissions, full disk, ...). The old file is unchanged."""


class LockTimeoutError(TextfileError):
    """The textfile's lock was not acquired in time. Nothing was written; the events are still pending."""

    def __init__(self, lock_path: Path | str, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(
            lock_path,
            f"could not lock {lock_path} within {timeout:g}s: another fraisier process holds it; "
            "retry, or raise the lock timeout (--lock-timeout or FRAISIER_LOCK_TIMEOUT)",
        )


class WebConfigError(FraisierTextfileError):
    """The web config file (``--web-config-file``) is malformed, or names a certificate or key that cannot be
    used. ``path`` names the web config file."""

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = Path(path)
        super().__init__(message)


class ServerStartError(FraisierTextfileError):
    """The exporter could not listen where it was asked to (port in use, unknown address, ...)."""

    def __init__(self, address: str, port: int, message: str) -> None:
        self.address = address
        self.port = port
        super().__init__(message)
