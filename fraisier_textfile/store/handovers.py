"""Hand-overs: changes a process could not merge because the lock was busy, left for the next merger.

A process that cannot get the textfile's lock in time writes its changes durably into
``<textfile dir>/.fraisier-handover/<id>.json`` (temporary file, fsync, rename, fsync of the directory) and
forgets them. Every merge, by any process, applies every hand-over it finds exactly once: it lists their ids
in the file it writes (``Document.meta["applied-handovers"]``), renames that file into place, and only then
deletes them. A merger killed before the rename applied nothing; one killed after it left the ids in the
file, so the next merger skips those files and deletes them. The list keeps only ids whose file still exists.
So when a deletion happens does not matter to the totals: a merge that applied more than a few hand-overs
deletes them from a background thread (:func:`remove_soon`), off the record call that merged them.

Nothing here takes the lock or reads the textfile: the store (textfile.py) does both. Names never end in
``.prom`` and the directory is not read by node_exporter, which does not recurse.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import stat
import threading
import time
from pathlib import Path
from typing import Any

from fraisier_textfile import catalogue as c
from fraisier_textfile.changes import Changes, HistogramDelta
from fraisier_textfile.errors import InvalidValueError, UnexpectedFileError, write_error
from fraisier_textfile.format.bookkeeping import WordList

HANDOVER_DIRECTORY = ".fraisier-handover"
APPLIED = WordList("applied-handovers")
"""The hand-overs the file already holds, in the order they were applied: listed until their files are gone."""
"""The key of ``Document.meta`` that lists the hand-overs a file already holds."""
SUFFIX = ".json"
TEMPORARY_PREFIX = "."
FORMAT_VERSION = 1
# A temporary hand-over is written without the lock, so one may be in progress while a merger looks: only
# one older than this is a killed writer's litter.
STALE_TEMPORARY_SECONDS = 3600.0
# Every field of Changes that a merge uses, serialised. A test checks this against Changes itself, so that
# a field added there cannot be silently dropped here.
FIELDS = ("added", "observed", "latest", "maximum", "active_providers", "retired_markers")

log = logging.getLogger(__name__)


class UnreadableHandover(ValueError):
    """A hand-over file this version cannot apply (corrupt, or written by a version with other families). The
    store sets such a file aside: this never escapes it."""


class NewerHandover(UnreadableHandover):
    """A hand-over in a newer format than this version's: left in place for a merger of that version (during
    an upgrade both run), never set aside, which would lose its events for it too."""


def handover_directory(textfile_directory: Path) -> Path:
    return textfile_directory / HANDOVER_DIRECTORY


def new_id() -> str:
    """Time first, so that sorting the ids sorts the hand-overs by when they were written (the latest value of
    a gauge must win), then what makes it unique."""
    return f"{time.time_ns():020d}-{os.getpid()}-{os.urandom(6).hex()}"


# Encoding


def encode(changes: Changes) -> bytes:
    import json  # here, not at the top: only a process that hands over pays for it

    content: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "added": [[family.name, list(labels), amount] for (family, labels), amount in changes.added.items()],
        "observed": [
            [family.name, list(labels), delta.buckets, delta.sum, delta.count]
            for (family, labels), delta in changes.observed.items()
        ],
        "latest": [[family.name, list(labels), value] for (family, labels), value in changes.latest.items()],
        "maximum": [[family.name, list(labels), value] for (family, labels), value in changes.maximum.items()],
        "active_providers": sorted(changes.active_providers),
        "retired_markers": sorted(changes.retired_markers),
    }
    return json.dumps(content, separators=(",", ":")).encode("utf-8")


def decode(data: bytes) -> Changes:
    """The changes a hand-over holds. Raises UnreadableHandover if they cannot be applied by this version."""
    import json

    try:
        content = json.loads(data)
        version = content.get("version")
        if version.__class__ is int and version > FORMAT_VERSION:
            raise NewerHandover(f"format version {version}, newer than this version's {FORMAT_VERSION}")
        if version.__class__ is not int or version != FORMAT_VERSION:  # `true` == 1 in Python: not a version
            raise UnreadableHandover(f"format version {version!r}, not {FORMAT_VERSION}")
        changes = Changes()
        for name, labels, amount in content["added"]:
            changes.added[_series(name, labels)] = _number(name, amount)
        for name, labels, buckets, total, count in content["observed"]:
            key = _series(name, labels)
            if len(buckets) != len(key[0].buckets) + 1:
                raise UnreadableHandover(f"{name} has {len(buckets)} buckets here, not {len(key[0].buckets) + 1}")
            # As the recorder writes them, the buckets are ints >= 0: checked in one pass, not one call each.
            if buckets.__class__ is list and all(bucket.__class__ is int for bucket in buckets) and min(buckets) >= 0:
                delta = HistogramDelta(buckets)
            else:
                delta = HistogramDelta([_whole_number(name, bucket) for bucket in buckets])
            delta.sum = _number(name, total)
            delta.count = _whole_number(name, count)
            if delta.count != sum(delta.buckets):  # else the file's +Inf bucket and count would disagree
                raise UnreadableHandover(f"{name} has the count {count!r}, not the sum of its buckets")
            changes.observed[key] = delta
        for name, labels, value in content["latest"]:
            changes.latest[_series(name, labels)] = _number(name, value)
        for name, labels, value in content["maximum"]:
            changes.maximum[_series(name, labels)] = _number(name, value)
        changes.active_providers.update(_label_value("provider", value) for value in content["active_providers"])
        changes.retired_markers.update(_marker_id(marker) for marker in content["retired_markers"])
    except UnreadableHandover:
        raise
    except InvalidValueError as error:
        raise UnreadableHandover(str(error)) from None
    # RecursionError: json's decoder recurses into arrays; a file of nested brackets must be set aside too.
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
        raise UnreadableHandover(f"not a hand-over this version can read ({type(error).__name__}: {error})") from None
    return changes


def _number(name: str, value: object) -> float:
    """A value as the recorder makes them: a finite number >= 0 (what else would poison every later merge)."""
    if value.__class__ is float and 0 <= value < _INFINITY:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise UnreadableHandover(f"{name} has the value {value!r}, not a finite number >= 0")
    try:
        return float(value)
    except OverflowError:
        # A JSON integer has no bound, and every int is < inf: one past the largest float cannot be converted.
        # Escaping as OverflowError, it would fail this merge and every later one instead of being set aside.
        raise UnreadableHandover(f"{name} has the value {value!r:.40}..., not a finite number >= 0") from None


def _whole_number(name: str, value: object) -> int:
    number = _number(name, value)
    if not number.is_integer():
        raise UnreadableHandover(f"{name} has the count {value!r}, not a whole number")
    return int(number)


_INFINITY = float("inf")
_checked_series: dict[tuple[str, tuple[object, ...]], tuple[c.Family, tuple[str, ...]]] = {}
"""Series already checked by :func:`_series`: a merge under contention reads a hundred hand-overs of the same
few series, and checking their label values again cost most of reading them."""


def _series(name: str, labels: object) -> tuple[c.Family, tuple[str, ...]]:
    if labels.__class__ is list:
        seen = (name, tuple(labels))
        known = _checked_series.get(seen)
        if known is not None:
            return known
        checked = _check_series(name, labels)
        if len(_checked_series) >= 10_000:
            _checked_series.clear()
        # Only strings are kept: the tuple's items are compared by ==, and 1 == 1.0 == True.
        if all(value.__class__ is str for value in seen[1]):
            _checked_series[seen] = checked
        return checked
    return _check_series(name, labels)


def _check_series(name: str, labels: object) -> tuple[c.Family, tuple[str, ...]]:
    family = c.FAMILIES_BY_NAME.get(name)
    if family is None:
        raise UnreadableHandover(f"the family {name} is not in this version's catalogue")
    if not isinstance(labels, list) or len(labels) != len(family.labels):
        raise UnreadableHandover(f"{name} has labels {labels!r}, not values for {', '.join(family.labels)}")
    # Checked as the recorder checks them: a newline or a lone surrogate would make every merge fail.
    return family, tuple(_label_value(label, value) for label, value in zip(family.labels, labels))


def _label_value(label: str, value: object) -> str:
    if value.__class__ is not str:
        raise UnreadableHandover(f"{label}={value!r} is not a string")
    return c.check_label_value(label, value)


def _marker_id(value: object) -> str:
    if value.__class__ is not str or not value or not value.isprintable() or " " in value or "/" in value:
        raise UnreadableHandover(f"the marker id {value!r} is not one fraisier writes")
    return str(value)


# Files


def write(textfile_directory: Path, changes: Changes, durable: bool = True) -> tuple[Path, Path]:
    """Write ``changes`` under a temporary name; return (temporary, final) paths. The caller renames it
    (:func:`publish`) at the moment it forgets the changes, so that the two happen together. ``durable``:
    fsynced, so that a power loss keeps it; without, it survives the process (a SIGKILL), not the machine."""
    directory = handover_directory(textfile_directory)
    _make_directory(directory)
    handover_id = new_id()
    temporary = directory / f"{TEMPORARY_PREFIX}{handover_id}{SUFFIX}"
    data = encode(changes)
    try:
        # O_EXCL|O_NOFOLLOW: never write through a symlink or into a file someone else prepared.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise write_error(directory, "create a hand-over file in", error) from None
    try:
        try:
            os.fchmod(descriptor, 0o644)  # readable by a merger of another user whatever our umask
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
            # The events are forgotten by this process once renamed: they must survive a power loss.
            if durable:
                os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError as error:
        _unlink_quietly(temporary)
        raise write_error(temporary, "write the hand-over file", error) from None
    return temporary, directory / f"{handover_id}{SUFFIX}"


def publish(temporary: Path, final: Path, durable: bool = True) -> None:
    """Rename a written hand-over into place: from now on the next merge applies it."""
    try:
        os.rename(temporary, final)
    except OSError as error:
        _unlink_quietly(temporary)
        raise write_error(final, "publish the hand-over file", error) from None
    if durable:
        fsync_directory(final.parent)


def pending(textfile_directory: Path) -> list[str]:
    """The ids of the complete hand-overs in the directory, oldest first (none if it does not exist).
    Raises UnexpectedFileError for anything in it, or in its place, that the store did not create."""
    directory = handover_directory(textfile_directory)
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise _not_a_directory(directory) from None
    except OSError as error:
        raise write_error(directory, "read the hand-over directory", error) from None
    # scandir follows a symlink to a directory: make sure the directory itself is one.
    try:
        is_directory = stat.S_ISDIR(os.lstat(directory).st_mode)
    except OSError:
        is_directory = False
    if not is_directory:
        raise _not_a_directory(directory)
    ids = []
    for entry in entries:
        if not entry.is_file(follow_symlinks=False):
            raise UnexpectedFileError(
                entry.path,
                f"{entry.path} is not a regular file (a symlink, FIFO, device or directory): fraisier writes "
                "only regular files there; remove it",
            )
        if entry.name.startswith(TEMPORARY_PREFIX) or not entry.name.endswith(SUFFIX):
            continue
        handover_id = entry.name[: -len(SUFFIX)]
        if not handover_id.isprintable() or " " in handover_id:
            # Not a name new_id makes (a copy, a hand-made file): the file lists applied ids space-separated on
            # one line, so such an id would read back as two (and be applied again while its deletion is
            # pending), or could not be written at all (a newline), failing every merge.
            set_aside(textfile_directory, handover_id, "its name is not one fraisier writes")
            continue
        ids.append(handover_id)
    ids.sort()
    return ids


def read(textfile_directory: Path, handover_id: str) -> Changes:
    """The changes of one hand-over. Raises UnreadableHandover, or UnexpectedFileError for a non-regular file
    (opened without following a symlink and without blocking on a FIFO)."""
    path = handover_directory(textfile_directory) / f"{handover_id}{SUFFIX}"
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as error:
        raise write_error(path, "read the hand-over file", error) from None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise UnexpectedFileError(path, f"{path} is not a regular file: remove it")
        chunks = []
        while chunk := os.read(descriptor, 1 << 16):
            chunks.append(chunk)
    except OSError as error:
        raise write_error(path, "read the hand-over file", error) from None
    finally:
        os.close(descriptor)
    return decode(b"".join(chunks))


def set_aside(textfile_directory: Path, handover_id: str, problem: str) -> None:
    """Keep a hand-over that can never be applied for inspection, out of the way of every later merge."""
    path = handover_directory(textfile_directory) / f"{handover_id}{SUFFIX}"
    aside = path.with_name(f"{handover_id}.unreadable")
    log.error("the hand-over %s cannot be applied (%s): kept as %s, its events are not counted", path, problem, aside)
    try:
        os.rename(path, aside)
    except OSError as error:
        log.error("cannot move %s aside: %s", path, error.strerror)


def remove(textfile_directory: Path, handover_ids: list[str]) -> None:
    """Delete applied hand-overs. A failure is only logged: the file lists them as applied, so a later merge
    skips them and tries again."""
    directory = handover_directory(textfile_directory)
    for handover_id in handover_ids:
        path = directory / f"{handover_id}{SUFFIX}"
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as error:
            log.warning("cannot remove the applied hand-over %s: %s", path, error.strerror)


INLINE_REMOVALS = 4
"""Applied hand-overs a merge deletes itself; past that many, a background thread deletes them. Under
contention one merge applies a hundred hand-overs (group commit), and deleting them waits on the filesystem's
journal, which other writers' fsyncs keep busy: 40-80 ms measured with 16 processes racing on 2 cores, most of
the slowest record calls' time, for files that no reader needs gone."""
EXIT_WAIT = 0.2
"""Seconds a process waits at exit for its background deletions; what is left, a later merge deletes."""


class _Remover:
    """One daemon thread per process that deletes applied hand-overs, in the order they were queued."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[tuple[Path, list[str]]] = queue.SimpleQueue()
        self.idle = threading.Condition()
        self.outstanding = 0
        self.thread: threading.Thread | None = None

    def submit(self, textfile_directory: Path, handover_ids: list[str]) -> None:
        with self.idle:
            self.outstanding += 1
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="fraisier-handover-removal", daemon=True)
                self.thread.start()
        self.queue.put((textfile_directory, handover_ids))

    def _run(self) -> None:
        while True:
            textfile_directory, handover_ids = self.queue.get()
            try:
                remove(textfile_directory, handover_ids)
            except Exception:  # a bug here must not kill the thread: the ids stay listed for a later merge
                log.exception("deleting applied hand-overs in %s failed", textfile_directory)
            with self.idle:
                self.outstanding -= 1
                self.idle.notify_all()

    def wait(self, timeout: float) -> bool:
        with self.idle:
            return self.idle.wait_for(lambda: self.outstanding == 0, timeout)


_remover = _Remover()


def _new_remover_in_child() -> None:
    # A forked child has no remover thread, and the parent's condition may have been held at the fork.
    global _remover
    _remover = _Remover()


os.register_at_fork(after_in_child=_new_remover_in_child)


def remove_soon(textfile_directory: Path, handover_ids: list[str]) -> None:
    """Delete applied hand-overs: a few at once, more from the background thread (see INLINE_REMOVALS)."""
    if len(handover_ids) <= INLINE_REMOVALS:
        remove(textfile_directory, handover_ids)
    else:
        _remover.submit(textfile_directory, list(handover_ids))


def wait_for_removals(timeout: float = 10.0) -> bool:
    """Wait until the background deletions queued so far are done (at most ``timeout`` seconds); True if they
    are. A command that should leave a tidy directory (``fraisier textfile refresh``) calls it."""
    return _remover.wait(timeout)


atexit.register(lambda: _remover.wait(EXIT_WAIT))


def remove_stale_temporaries(textfile_directory: Path) -> None:
    """Temporary hand-overs of writers killed before their rename: their events were never forgotten by a
    live process, so they are litter (kept for an hour, since a live writer may be mid-way)."""
    directory = handover_directory(textfile_directory)
    try:
        entries = [entry for entry in os.scandir(directory) if entry.name.startswith(TEMPORARY_PREFIX)]
    except OSError:
        return
    now = time.time()
    for entry in entries:
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMPORARY_SECONDS:
                os.unlink(entry.path)
        except OSError:
            pass


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    try:
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some filesystems do not support fsync on directories; the rename is still atomic
    finally:
        os.close(descriptor)


def _make_directory(directory: Path) -> None:
    try:
        os.mkdir(directory, 0o775)
    except FileExistsError:
        try:
            is_directory = stat.S_ISDIR(os.lstat(directory).st_mode)
        except OSError as error:
            raise write_error(directory, "use the hand-over directory", error) from None
        if not is_directory:
            raise _not_a_directory(directory) from None
        return
    except OSError as error:
        raise write_error(directory, "create the hand-over directory", error) from None
    try:
        # Group-writable like the lock file, so that a merger of another user of the group can delete the
        # hand-overs it applied; the setgid bit it inherits from a shared textfile directory (chmod 2775) is kept.
        os.chmod(directory, 0o775 | (os.stat(directory).st_mode & stat.S_ISGID))
    except OSError:
        pass


def _not_a_directory(directory: Path) -> UnexpectedFileError:
    return UnexpectedFileError(
        directory,
        f"{directory} is not a directory (a symlink or another kind of file): fraisier keeps its hand-overs in "
        "a directory it creates there; remove it",
    )


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
