"""The textfile store: lock, read, merge, atomic replace.

Every process merges what it recorded since its last flush into ``<directory>/fraisier.prom``, which
node_exporter's textfile collector (or ``fraisier metrics``) serves:

    lock fraisier.prom.lock -> read fraisier.prom (or reuse what this process wrote last) -> merge
    -> render -> write .fraisier.prom.tmp.<random> -> fsync -> rename over fraisier.prom -> fsync dir -> unlock

The file holds the true totals over every process that ever ran: counters and histograms are summed, so an
increment is neither lost nor counted twice whatever number of processes race, and a process killed at any
moment leaves either the old file or the new one, never a partial one.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Collection, Mapping
from pathlib import Path

import filelock

from fraisier_textfile import catalogue as c
from fraisier_textfile import liveness
from fraisier_textfile.changes import Changes, Labels, deployment_series
from fraisier_textfile.errors import CorruptTextfileError, LockTimeoutError, TextfileWriteError
from fraisier_textfile.lifecycle import SeriesLifecycle
from fraisier_textfile.textformat import (
    Block,
    Document,
    ParseError,
    label_text,
    parse,
    parse_series_key,
    series_key,
)

TEXTFILE_NAME = "fraisier.prom"
LOCK_SUFFIX = ".lock"
# node_exporter reads every file whose name ends in .prom, hidden ones included: ours must not.
TEMPORARY_PREFIX = ".fraisier.prom.tmp."
DEFAULT_LOCK_TIMEOUT = 10.0
DIRECTORY_ENVIRONMENT = "FRAISIER_TEXTFILE_DIR"
LOCK_TIMEOUT_ENVIRONMENT = "FRAISIER_LOCK_TIMEOUT"


def default_textfile_directory() -> Path:
    """``$FRAISIER_TEXTFILE_DIR``, else a directory any user can write with no set-up:
    ``$XDG_STATE_HOME/fraisier/textfile`` (``~/.local/state/fraisier/textfile``)."""
    configured = os.environ.get(DIRECTORY_ENVIRONMENT)
    if configured:
        return Path(configured)
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "fraisier" / "textfile"


def default_lock_timeout() -> float:
    configured = os.environ.get(LOCK_TIMEOUT_ENVIRONMENT)
    if not configured:
        return DEFAULT_LOCK_TIMEOUT
    return c.check_seconds(LOCK_TIMEOUT_ENVIRONMENT, configured)


_WRITE_ERROR_FIXES = {
    errno.ENOSPC: "free space on that filesystem",
    errno.EDQUOT: "free space or raise the quota",
    errno.EACCES: "make the directory writable by this user, or choose another --textfile-dir",
    errno.EPERM: "make the directory writable by this user, or choose another --textfile-dir",
    errno.EROFS: "the filesystem is read-only: choose another --textfile-dir",
}


def _write_error(path: Path, action: str, error: OSError) -> TextfileWriteError:
    fix = _WRITE_ERROR_FIXES.get(error.errno or 0, "check the directory and the disk")
    return TextfileWriteError(path, f"cannot {action} {path}: {error.strerror or error}; {fix}")


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
        """Whether the path still names this version, unchanged."""
        try:
            status = os.stat(self.path)
        except OSError:
            return False
        return self._descriptor >= 0 and (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns) == self.key

    def close(self) -> None:
        if self._descriptor >= 0:
            os.close(self._descriptor)
            self._descriptor = -1

    def __del__(self) -> None:
        self.close()


class TextfileStore:
    """One textfile directory: merges changes into ``fraisier.prom`` and reads it back."""

    def __init__(self, directory: Path | str, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> None:
        self.directory = Path(directory)
        self.path = self.directory / TEXTFILE_NAME
        self.lock_path = self.directory / (TEXTFILE_NAME + LOCK_SUFFIX)
        self.lock_timeout = c.check_seconds("lock timeout", lock_timeout)
        # Group-writable, so that the users of one group (say, a deploy user and root) can share a directory;
        # not world-writable, so that an unrelated user cannot hold the lock.
        self._lock = filelock.FileLock(self.lock_path, timeout=self.lock_timeout, mode=0o664)
        # What this process last wrote, and the identity of the file it wrote: while the file on disk is
        # still that one, nobody else has merged since and it need not be read or parsed again.
        self._cached: tuple[FileVersion, Document] | None = None
        # Expiry, the series bound, bucket migration and forgetting, run inside each merge (lifecycle.py).
        self.lifecycle = SeriesLifecycle.from_environment(self.path)

    # Reading

    def read(self) -> Document:
        """The file as it is now, without taking the lock: it is only ever replaced whole, so a reader sees
        the old file or the new one. A missing file is an empty document."""
        return self.read_version()[1]

    def read_version(self, check_histograms: bool = True) -> tuple[FileVersion | None, Document]:
        """The file as :meth:`read` gives it, and the version of exactly the bytes read (None if there is no
        file): a reader can skip reading again while ``version.is_current()``."""
        version, text = self.read_text()
        return version, self.parse_text(text, check_histograms)

    def read_text(self) -> tuple[FileVersion | None, str]:
        """The file's text ("" if there is none) and its version, unparsed."""
        try:
            descriptor = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None, ""
        except OSError as error:
            raise TextfileWriteError(
                self.path, f"cannot read {self.path}: {error.strerror}; check its permissions"
            ) from None
        version = FileVersion(self.path, descriptor)
        chunks = []
        while chunk := os.read(descriptor, 1 << 20):
            chunks.append(chunk)
        try:
            return version, b"".join(chunks).decode("utf-8")
        except UnicodeDecodeError as error:
            version.close()
            raise CorruptTextfileError(self.path, f"not UTF-8 text (byte {error.start})") from None

    def parse_text(self, text: str, check_histograms: bool = True) -> Document:
        try:
            return parse(text, check_histograms)
        except ParseError as error:
            raise CorruptTextfileError(self.path, error.problem, error.line_number) from None

    def active_deployments(self, retired_markers: Collection[str]) -> dict[str, int]:
        """Deployments running now in live processes, by provider (for a reader serving the file live).
        ``retired_markers`` are those the file already accounts for (``Document.retired_markers``)."""
        counts: dict[str, int] = {}
        for marker in liveness.read_markers(self.directory):
            if marker.id not in retired_markers and liveness.is_alive(marker):
                counts[marker.provider] = counts.get(marker.provider, 0) + 1
        return counts

    # Merging

    def merge(self, changes: Changes) -> None:
        """Merge ``changes`` into the textfile under the lock. On any error nothing is written, the file is
        left byte-identical, and ``changes`` is untouched so that it can be merged again later."""
        self._make_directory()
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise LockTimeoutError(self.lock_path, self.lock_timeout) from None
        except OSError as error:
            raise _write_error(self.lock_path, "create the lock file", error) from None
        try:
            self._merge_locked(changes)
        finally:
            self._lock.release()

    def _make_directory(self) -> None:
        if self.directory.is_dir():
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            # node_exporter runs as another user: it must be able to enter the directory whatever our umask.
            os.chmod(self.directory, 0o755)
        except OSError as error:
            raise _write_error(self.directory, "create the directory", error) from None
        if not self.directory.is_dir():
            raise TextfileWriteError(self.directory, f"{self.directory} is not a directory: choose a directory")

    def _merge_locked(self, changes: Changes) -> None:
        document = self._load()
        cached, self._cached = self._cached, None  # the document is about to change; cached again once written
        read_from_disk = cached is None or document is not cached[1]  # not what we wrote
        if cached is not None:
            cached[0].close()
        changes = self.lifecycle.before_merge(document, changes, read_from_disk)
        to_remove = self._account_markers(document, changes)
        _apply(document, changes)
        self.lifecycle.after_merge(document, changes)
        version = self._replace(document.render())
        self._cached = (version, document)
        # Nothing below may fail the merge: the file is written. A marker that cannot be removed stays
        # listed as retired in the file, so it is never counted again.
        for marker_id in to_remove:
            liveness.remove_marker(self.directory, marker_id)

    def _load(self) -> Document:
        if self._cached is not None:
            cached_version, document = self._cached
            if cached_version.is_current():
                return document
            cached_version.close()
            self._cached = None
        self._remove_stale_temporaries()
        version, text = self.read_text()
        if version is not None:
            version.close()
        return self.parse_text(text, check_histograms=False)

    def _account_markers(self, document: Document, changes: Changes) -> set[str]:
        """Count live deployments, turn dead ones into ``crashed`` deployments, and list in the document the
        markers it now accounts for. Those are removed only after the file is written, and the list stays in
        the file until they are gone: so a merger killed at any point leaves each deployment counted once."""
        accounted = document.retired_markers | changes.retired_markers
        active: dict[str, int] = {provider: 0 for provider in changes.active_providers}
        existing = set()
        crashed = Changes()
        for marker in liveness.read_markers(self.directory):
            existing.add(marker.id)
            if marker.id in accounted:
                continue
            active.setdefault(marker.provider, 0)
            if liveness.is_alive(marker):
                active[marker.provider] += 1
            else:
                deployment_series(crashed, marker.provider, marker.fraise_type)
                crashed.add(c.DEPLOYMENTS, (marker.provider, "crashed", marker.fraise_type), 1.0)
                accounted.add(marker.id)
        _apply(document, crashed)
        _set_active(document, active)
        document.retired_markers = accounted & existing
        return document.retired_markers

    def _remove_stale_temporaries(self) -> None:
        """Temporary files are only made under the lock, which we hold: any left are from killed writers."""
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith(TEMPORARY_PREFIX):
                try:
                    os.unlink(entry.path)
                except OSError:
                    pass
        liveness.remove_stale_temporaries(self.directory)

    def _replace(self, text: str) -> FileVersion:
        """Write ``text`` as the new file; return its version, held open."""
        temporary = self.directory / f"{TEMPORARY_PREFIX}{_random_suffix()}"
        data = text.encode("utf-8")
        try:
            # O_EXCL|O_NOFOLLOW: never write through a symlink or into a file someone else prepared.
            descriptor = os.open(
                temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
            )
        except OSError as error:
            raise _write_error(self.directory, "create a temporary file in", error) from None
        try:
            try:
                os.fchmod(descriptor, 0o644)  # readable by node_exporter's user whatever our umask
                view = memoryview(data)
                while view:
                    written = os.write(descriptor, view)
                    view = view[written:]
                # Durable content before the rename: after a power loss the name must not point at an
                # empty file.
                os.fsync(descriptor)
                os.replace(temporary, self.path)
            except BaseException:
                os.close(descriptor)
                raise
        except OSError as error:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise _write_error(self.path, "write", error) from None
        self._fsync_directory()
        return FileVersion(self.path, descriptor)

    def _fsync_directory(self) -> None:
        """Make the rename itself durable."""
        try:
            descriptor = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            os.fsync(descriptor)
        except OSError:
            pass  # some filesystems do not support fsync on directories; the rename is still atomic
        finally:
            os.close(descriptor)


def _random_suffix() -> str:
    return os.urandom(8).hex()


def _key(family: c.Family, labels: Labels, suffix: str = "") -> str:
    return series_key(family.name + suffix, family.labels, labels)


def _apply(document: Document, changes: Changes) -> None:
    for (family, labels), amount in changes.added.items():
        block = document.block(family)
        key = _key(family, labels)
        block.set(key, (block.value(key) or 0.0) + amount)
    for (family, labels), delta in changes.observed.items():
        block = document.block(family)
        pairs = label_text(family.labels, labels)
        bucket_prefix = f"{family.name}_bucket{{{pairs}," if pairs else f"{family.name}_bucket{{"
        cumulative = 0
        for bound, count in zip(family.bucket_bounds, delta.buckets):
            cumulative += count
            key = f'{bucket_prefix}le="{bound}"}}'
            block.set(key, (block.value(key) or 0.0) + cumulative)
        key = _key(family, labels, "_sum")
        block.set(key, (block.value(key) or 0.0) + delta.sum)
        key = _key(family, labels, "_count")
        block.set(key, (block.value(key) or 0.0) + delta.count)
    for (family, labels), value in changes.latest.items():
        document.block(family).set(_key(family, labels), value)
    for (family, labels), value in changes.maximum.items():
        block = document.block(family)
        key = _key(family, labels)
        current = block.value(key)
        if current is None or value > current:
            block.set(key, value)


def _set_active(document: Document, active: dict[str, int]) -> None:
    family = c.ACTIVE_DEPLOYMENTS
    if family.name in document.blocks or active:
        count_active_deployments(document.block(family), active)


def count_active_deployments(block: Block, counts: Mapping[str, int]) -> None:
    """Set the active-deployments block to ``counts``: every provider the block already has keeps its series
    (0 with nothing running), and providers new to it follow. The store does this at each merge, and
    ``fraisier metrics`` at each scrape, so both write the same block."""
    family = c.ACTIVE_DEPLOYMENTS
    known = [parse_series_key(key)[1].get("provider", "") for key, _ in block.samples()]
    for provider in known:
        if provider:
            block.set(_key(family, (provider,)), float(counts.get(provider, 0)))
    for provider in sorted(set(counts) - set(known)):
        block.set(_key(family, (provider,)), float(counts[provider]))
