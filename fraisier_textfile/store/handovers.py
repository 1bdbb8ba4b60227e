"""Hand-overs: changes a process could not merge because the lock was busy, left for the next merger.

A process that cannot get the textfile's lock in time writes its changes durably into
``<textfile dir>/.fraisier-handover/<id>.json`` (temporary file, fsync, rename, fsync of the directory) and
forgets them. Every merge, by any process, applies the hand-overs it finds, oldest first and at most
HANDOVERS_PER_MERGE (textfile.py: its work is bounded like its wait), each exactly once: it lists their ids
in the file it writes (``applied-handovers``), renames that file into place, and only then deletes them. A
merger killed before the rename applied nothing; one killed after it left the ids in the file, so the next
merger skips those files and deletes them. The list keeps only ids whose file still exists. So when a
deletion happens does not matter to the totals: a merge that applied more than a few hand-overs deletes them
from a background thread (:func:`remove_soon`), off the record call that merged them.

Order is a counter, not the clock (:func:`new_id`): the latest value of a gauge must win after a clock step.
Growth is bounded: PENDING_LIMIT waiting, SET_ASIDE_LIMIT kept aside, both counted in the file.

Every file operation goes through the directory held open (store/fs.py): a writer of the textfile directory
may swap this one for a symlink at any moment. Nothing here takes the lock or reads the textfile: the store
(textfile.py) does both. Names never end in ``.prom`` and the directory is not read by node_exporter, which
does not recurse.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import logging
import os
import queue
import stat
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from fraisier_textfile.errors import (
    FraisierTextfileError,
    InvalidValueError,
    TextfileWriteError,
    UnexpectedFileError,
    write_error,
)
from fraisier_textfile.format.bookkeeping import WordList
from fraisier_textfile.format.model import Block, Document
from fraisier_textfile.format.schema import Family, Schema, default
from fraisier_textfile.store import fs
from fraisier_textfile.store.changes import Changes, HistogramDelta
from fraisier_textfile.store.rules import check_summable, combine
from fraisier_textfile.store.transaction import Merge, Participant
from fraisier_textfile.validate import check_label_value

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


def decode(data: bytes, schema: Schema | None = None) -> Changes:
    """The changes a hand-over holds, of ``schema``'s families (the default schema's if None). Raises
    UnreadableHandover if they cannot be applied by this version."""
    import json

    families = (schema or default()).by_name

    try:
        content = json.loads(data)
        version = content.get("version")
        if version.__class__ is int and version > FORMAT_VERSION:
            raise NewerHandover(f"format version {version}, newer than this version's {FORMAT_VERSION}")
        if version.__class__ is not int or version != FORMAT_VERSION:  # `true` == 1 in Python: not a version
            raise UnreadableHandover(f"format version {version!r}, not {FORMAT_VERSION}")
        changes = Changes()
        for name, labels, amount in content["added"]:
            changes.added[_series(families, name, labels)] = _number(name, amount)
        for name, labels, buckets, total, count in content["observed"]:
            key = _series(families, name, labels)
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
            changes.latest[_series(families, name, labels)] = _number(name, value)
        for name, labels, value in content["maximum"]:
            changes.maximum[_series(families, name, labels)] = _number(name, value)
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
_checked_series: dict[tuple[int, str, tuple[object, ...]], tuple[Family, tuple[str, ...]]] = {}
"""Series already checked by :func:`_series`: a merge under contention reads a hundred hand-overs of the same
few series, and checking their label values again cost most of reading them."""


def _series(families: dict[str, Family], name: str, labels: object) -> tuple[Family, tuple[str, ...]]:
    if labels.__class__ is list:
        seen = (id(families), name, tuple(labels))
        known = _checked_series.get(seen)
        if known is not None:
            return known
        checked = _check_series(families, name, labels)
        if len(_checked_series) >= 10_000:
            _checked_series.clear()
        # Only strings are kept: the tuple's items are compared by ==, and 1 == 1.0 == True.
        if all(value.__class__ is str for value in seen[2]):
            _checked_series[seen] = checked
        return checked
    return _check_series(families, name, labels)


def _check_series(families: dict[str, Family], name: str, labels: object) -> tuple[Family, tuple[str, ...]]:
    family = families.get(name)
    if family is None:
        raise UnreadableHandover(f"the family {name} is not in this store's schema (this version's catalogue)")
    if not isinstance(labels, list) or len(labels) != len(family.labels):
        raise UnreadableHandover(f"{name} has labels {labels!r}, not values for {', '.join(family.labels)}")
    # Checked as the recorder checks them: a newline or a lone surrogate would make every merge fail.
    return family, tuple(_label_value(label, value) for label, value in zip(family.labels, labels))


def _label_value(label: str, value: object) -> str:
    if value.__class__ is not str:
        raise UnreadableHandover(f"{label}={value!r} is not a string")
    return check_label_value(label, value)


def _marker_id(value: object) -> str:
    if value.__class__ is not str or not value or not value.isprintable() or " " in value or "/" in value:
        raise UnreadableHandover(f"the marker id {value!r} is not one fraisier writes")
    return str(value)


# Files
#
# Every operation below works relative to the hand-over directory held open (fs.Directory): a writer of the
# textfile directory may swap .fraisier-handover for a symlink at any moment, and a merger run by root must
# never read, delete, rename or chmod through it (see fs.py).


def open_directory(textfile: fs.Directory, create: bool = False) -> fs.Directory | None:
    """The hand-over directory of the textfile directory held by ``textfile``, checked (None if there is none
    and ``create`` is false). Raises UnexpectedFileError for anything else in its place."""
    return textfile.subdirectory(HANDOVER_DIRECTORY, create=create)


def write(directory: fs.Directory, changes: Changes, durable: bool = True) -> tuple[str, str]:
    """Write ``changes`` under a temporary name; return (temporary, final) names. The caller renames it
    (:func:`publish`) at the moment it forgets the changes, so that the two happen together. ``durable``:
    fsynced, so that a power loss keeps it; without, it survives the process (a SIGKILL), not the machine."""
    handover_id = new_id(directory)
    temporary = f"{TEMPORARY_PREFIX}{handover_id}{SUFFIX}"
    data = encode(changes)
    try:
        # O_EXCL|O_NOFOLLOW, mode 0644 by fchmod: never through a symlink or into a file someone else prepared,
        # and readable by a merger of another user whatever our umask.
        descriptor = directory.create(temporary, fs.FILE_MODE)
    except OSError as error:
        raise write_error(directory.path, "create a hand-over file in", error) from None
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
            # The events are forgotten by this process once renamed: they must survive a power loss.
            if durable:
                os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError as error:
        _unlink_quietly(directory, temporary)
        raise write_error(directory.path / temporary, "write the hand-over file", error) from None
    return temporary, f"{handover_id}{SUFFIX}"


def publish(directory: fs.Directory, temporary: str, final: str, durable: bool = True) -> None:
    """Rename a written hand-over into place: from now on the next merge applies it."""
    try:
        directory.rename(temporary, final)
    except OSError as error:
        _unlink_quietly(directory, temporary)
        raise write_error(directory.path / final, "publish the hand-over file", error) from None
    if durable:
        directory.fsync()


class Listing(NamedTuple):
    ids: list[str]
    """The complete hand-overs, oldest first (see :func:`new_id`)."""
    set_aside: int
    """How many are kept aside (see :func:`set_aside`)."""


def pending(directory: fs.Directory) -> Listing:
    """The ids of the complete hand-overs in the directory, oldest first (see :func:`new_id`), and how many are
    set aside. Raises UnexpectedFileError for anything in it that the store did not create."""
    try:
        entries = directory.entries()
    except OSError as error:
        raise write_error(directory.path, "read the hand-over directory", error) from None
    ids = []
    kept_aside = 0
    for entry in entries:
        if not entry.is_file(follow_symlinks=False):
            raise UnexpectedFileError(
                directory.path / entry.name,
                f"{directory.path / entry.name} is not a regular file (a symlink, FIFO, device or directory): "
                "fraisier writes only regular files there; remove it",
            )
        if entry.name.startswith(TEMPORARY_PREFIX) or not entry.name.endswith(SUFFIX):
            kept_aside += entry.name.endswith(SET_ASIDE_SUFFIX)
            continue
        handover_id = entry.name[: -len(SUFFIX)]
        if not handover_id.isprintable() or " " in handover_id:
            # Not a name new_id makes (a copy, a hand-made file): the file lists applied ids space-separated on
            # one line, so such an id would read back as two (and be applied again while its deletion is
            # pending), or could not be written at all (a newline), failing every merge.
            kept_aside += set_aside(directory, handover_id, "its name is not one fraisier writes")
            continue
        ids.append(handover_id)
    # Plain string order is the order written: numbered ids have the same width, and those of earlier versions
    # (wall-clock time first, digits) sort before every numbered one ("s"): they were written before.
    ids.sort()
    return Listing(ids, kept_aside)


PENDING_FAMILY = "fraisier_textfile_handovers_pending"
PENDING_HELP = (
    "Hand-overs waiting to be applied after the last merge (left for the next merge, or for a newer version); "
    "merges apply at most a few hundred each."
)
SET_ASIDE_FAMILY = "fraisier_textfile_handovers_set_aside"
SET_ASIDE_HELP = "Hand-overs that can never be applied, kept aside in the hand-over directory for inspection."


def count_in(document: Document, waiting: int, kept_aside: int) -> None:
    """Write the store's own gauges of the hand-over directory (families the catalogue does not hold, so kept
    as text, as lifecycle's refused-series counter is)."""
    for name, help_text, value in (
        (PENDING_FAMILY, PENDING_HELP, waiting), (SET_ASIDE_FAMILY, SET_ASIDE_HELP, kept_aside)
    ):
        block = Block(name, help=help_text, type="gauge")
        block.raw = f"# HELP {name} {help_text}\n# TYPE {name} gauge\n{name} {value}\n"
        document.blocks[name] = block


def read(directory: fs.Directory, handover_id: str, schema: Schema | None = None) -> Changes:
    """The changes of one hand-over. Raises UnreadableHandover, or UnexpectedFileError for a non-regular file
    (opened without following a symlink and without blocking on a FIFO)."""
    name = f"{handover_id}{SUFFIX}"
    try:
        data = directory.read_regular(name)
    except OSError as error:
        raise write_error(directory.path / name, "read the hand-over file", error) from None
    return decode(data, schema)


def set_aside(directory: fs.Directory, handover_id: str, problem: str) -> bool:
    """Keep a hand-over that can never be applied for inspection, out of the way of every later merge. At most
    SET_ASIDE_LIMIT are kept: past that, one is deleted (a writer feeding bad files would fill the disk).
    Returns whether it was kept."""
    name = f"{handover_id}{SUFFIX}"
    aside = f"{handover_id}{SET_ASIDE_SUFFIX}"
    try:
        kept = count_set_aside(directory)
    except OSError:
        kept = 0
    try:
        if kept >= SET_ASIDE_LIMIT:
            log.error(
                "the hand-over %s cannot be applied (%s): deleted, its events are not counted (%d are kept "
                "already; inspect and remove them)", directory.path / name, problem, kept,
            )
            directory.unlink(name)
            return False
        log.error("the hand-over %s cannot be applied (%s): kept as %s, its events are not counted",
                  directory.path / name, problem, directory.path / aside)
        directory.rename(name, aside)
        return True
    except OSError as error:
        log.error("cannot move %s aside: %s", directory.path / name, error.strerror)
        return False


SET_ASIDE_SUFFIX = ".unreadable"
SET_ASIDE_LIMIT = 1000
"""Hand-overs kept aside for inspection at most; they are counted in the file (SET_ASIDE_FAMILY)."""


def count_set_aside(directory: fs.Directory) -> int:
    return sum(1 for name in directory.names() if name.endswith(SET_ASIDE_SUFFIX))


def remove(directory: fs.Directory, handover_ids: list[str]) -> None:
    """Delete applied hand-overs. A failure is only logged: the file lists them as applied, so a later merge
    skips them and tries again."""
    for handover_id in handover_ids:
        name = f"{handover_id}{SUFFIX}"
        try:
            directory.unlink(name)
        except OSError as error:
            log.warning("cannot remove the applied hand-over %s: %s", directory.path / name, error.strerror)


INLINE_REMOVALS = 4
"""Applied hand-overs a merge deletes itself; past that many, a background thread deletes them. Under
contention one merge applies a hundred hand-overs (group commit), and deleting them waits on the filesystem's
journal, which other writers' fsyncs keep busy: 40-80 ms measured with 16 processes racing on 2 cores, most of
the slowest record calls' time, for files that no reader needs gone."""
EXIT_WAIT = 0.2
"""Seconds a process waits at exit for its background deletions; what is left, a later merge deletes."""


class _Remover:
    """One daemon thread per process that deletes applied hand-overs, in the order they were queued. Each job
    holds its own descriptor of the directory the ids were listed in: the name is never resolved again."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[tuple[fs.Directory, list[str]]] = queue.SimpleQueue()
        self.idle = threading.Condition()
        self.outstanding = 0
        self.thread: threading.Thread | None = None

    def submit(self, directory: fs.Directory, handover_ids: list[str]) -> None:
        with self.idle:
            self.outstanding += 1
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="fraisier-handover-removal", daemon=True)
                self.thread.start()
        self.queue.put((directory, handover_ids))

    def _run(self) -> None:
        while True:
            directory, handover_ids = self.queue.get()
            try:
                remove(directory, handover_ids)
            except Exception:  # a bug here must not kill the thread: the ids stay listed for a later merge
                log.exception("deleting applied hand-overs in %s failed", directory.path)
            finally:
                directory.close()
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


def remove_soon(directory: fs.Directory, handover_ids: list[str]) -> None:
    """Delete applied hand-overs: a few at once, more from the background thread (see INLINE_REMOVALS), through
    a descriptor of its own of ``directory`` (the caller closes its own)."""
    if len(handover_ids) <= INLINE_REMOVALS:
        remove(directory, handover_ids)
    else:
        _remover.submit(directory.copy(), list(handover_ids))


def wait_for_removals(timeout: float = 10.0) -> bool:
    """Wait until the background deletions queued so far are done (at most ``timeout`` seconds); True if they
    are. A command that should leave a tidy directory (``fraisier textfile refresh``) calls it."""
    return _remover.wait(timeout)


atexit.register(lambda: _remover.wait(EXIT_WAIT))


def remove_stale_temporaries(directory: fs.Directory) -> None:
    """Temporary hand-overs of writers killed before their rename: their events were never forgotten by a
    live process, so they are litter (kept for an hour, since a live writer may be mid-way)."""
    try:
        # Names only (listdir, not scandir): the directory may hold 100,000 hand-overs, and few are temporary.
        names = [name for name in directory.names() if name.startswith(TEMPORARY_PREFIX)]
    except OSError:
        return
    now = time.time()
    for name in names:
        try:
            status = directory.lstat(name)
            if status is not None and stat.S_ISREG(status.st_mode) and now - status.st_mtime > STALE_TEMPORARY_SECONDS:
                directory.unlink(name)
        except OSError:
            pass


# Order


SEQUENCE_FILE = "sequence"
"""The counter that orders hand-overs (no dot: names starting with one are temporaries; no .json: not a
hand-over)."""
_SEQUENCE_WAIT = 0.05
"""Seconds a writer waits for the counter's lock. Its holders only read and write a few bytes; a writer of the
directory holding it for ever must not hang a deployment: past this, the counter is read without the lock
(two hand-overs may then share a number; both are applied, in an arbitrary order between them)."""
_SEQUENCE_DIGITS = 20


def new_id(directory: fs.Directory) -> str:
    """A hand-over's id: ``s<sequence>-<pid>-<random>``. Sorting ids sorts the hand-overs by when they were
    written, so that the latest value of a gauge wins.

    The sequence is a counter in the hand-over directory (``sequence``), taken and incremented under a flock,
    not the wall clock: a clock stepped back (NTP, a VM restored, a process under faketime) would make a later
    report sort first and an older value win. The counter is not fsynced (it would add a journal commit to
    each hand-over): after a power loss it may go back, and a merger that lists a hand-over numbered at or
    past it moves it on (:func:`note_merged`), so only hand-overs written between the reboot and the
    first merge may sort before older ones."""
    return id_for(_next_sequence(directory))


def id_for(sequence: int) -> str:
    """The id of a hand-over numbered ``sequence`` by this process."""
    return f"s{sequence:0{_SEQUENCE_DIGITS}d}-{os.getpid()}-{os.urandom(6).hex()}"


def sequence_of(handover_id: str) -> int | None:
    if handover_id[:1] != "s":
        return None
    number = handover_id[1 : 1 + _SEQUENCE_DIGITS]
    return int(number) if len(number) == _SEQUENCE_DIGITS and number.isdigit() and number.isascii() else None


def _next_sequence(directory: fs.Directory) -> int:
    descriptor = _open_sequence(directory)
    if descriptor is None:
        return 0
    try:
        _lock_sequence(descriptor)
        last, before_oldest_waiting = _read_sequence(descriptor)
        if last - before_oldest_waiting >= PENDING_LIMIT:
            raise TooManyWaiting(
                directory.path,
                f"{last - before_oldest_waiting} hand-overs wait unapplied in {directory.path}, the most kept: no "
                "merge has applied them (each says why in the log; check the textfile and its lock), so these "
                "events are not handed over",
                errno.ENOSPC,
            )
        value = last + 1
        try:
            _write_sequence(descriptor, value, before_oldest_waiting)
        except OSError:
            pass  # a counter owned by another user, read-only to us: the number is still past every earlier one
        return value
    finally:
        os.close(descriptor)  # also drops the lock


PENDING_LIMIT = 100_000
"""Hand-overs at most waiting unapplied (while merges keep failing: a corrupt file, a lock held for ever);
past it a hand-over is refused (TooManyWaiting: the caller keeps its events or says they are lost), so that a
broken set-up cannot fill the disk with them. Counted in the file as PENDING_FAMILY."""


class TooManyWaiting(TextfileWriteError):
    """PENDING_LIMIT hand-overs wait unapplied: no more is written."""


def note_merged(directory: fs.Directory, newest: int, oldest_waiting: int | None) -> None:
    """After a merge listed the hand-overs numbered up to ``newest`` and left those from ``oldest_waiting`` on
    (None: none), keep the counter past ``newest`` (never fsynced, it may have gone back in a power loss) and
    note where the waiting ones start, for PENDING_LIMIT. The counter is not created here: a writer does."""
    descriptor = _open_sequence(directory, create=False)
    if descriptor is None:
        return
    try:
        _lock_sequence(descriptor)
        last, _ = _read_sequence(descriptor)
        # None waiting of those listed: those written since (numbered past newest) are not applied yet, but with
        # nothing listed newest is unknown (0), and they are counted as applied: an undercount, never a refusal.
        before_oldest_waiting = oldest_waiting - 1 if oldest_waiting is not None else newest or last
        _write_sequence(descriptor, max(last, newest), before_oldest_waiting)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _open_sequence(directory: fs.Directory, create: bool = True) -> int | None:
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        descriptor = os.open(SEQUENCE_FILE, flags, 0o664, dir_fd=directory.descriptor)
    except PermissionError:
        try:
            descriptor = directory.open_regular(SEQUENCE_FILE)
        except (OSError, UnexpectedFileError):
            return None
    except OSError:
        return None  # a symlink or a FIFO planted there: refused; the hand-over is numbered 0 (see order)
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            os.close(descriptor)
            return None
        if status.st_uid == os.geteuid() and stat.S_IMODE(status.st_mode) != 0o664:
            os.fchmod(descriptor, 0o664)  # the users of one group share the counter whatever the umask
    except OSError:
        pass
    return descriptor


def _lock_sequence(descriptor: int) -> None:
    deadline = time.monotonic() + _SEQUENCE_WAIT
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.0002)
        except OSError:
            return


def _read_sequence(descriptor: int) -> tuple[int, int]:
    """The counter: the last number given, and the number before the oldest hand-over waiting."""
    try:
        fields = os.pread(descriptor, 64, 0).split()[:2]
    except OSError:
        return 0, 0
    # Anything but the numbers we write (a writer of the directory is trusted with the metrics, not with
    # crashing this process or refusing every hand-over): counted from 0, bounded so that the id keeps its width.
    if not fields or not all(field.isdigit() and len(field) < _SEQUENCE_DIGITS for field in fields):
        return 0, 0
    last = int(fields[0])
    return last, min(int(fields[1]), last) if len(fields) == 2 else last


def _write_sequence(descriptor: int, last: int, before_oldest_waiting: int) -> None:
    data = f"{last} {before_oldest_waiting}\n".encode()
    os.pwrite(descriptor, data, 0)
    os.ftruncate(descriptor, len(data))


def _unlink_quietly(directory: fs.Directory, name: str) -> None:
    try:
        directory.unlink(name)
    except OSError:
        pass


# The hand-overs in a merge


HANDOVERS_PER_MERGE = 256
"""Hand-overs one merge reads and applies at most, oldest first. Its wait for the lock is bounded by the
caller's budget; its work must be too: after a long lock hold thousands wait, and applying them all would make
one record call pay for all of them. The rest is left for the next merges (this process's late merges, other
processes' merges, ``fraisier textfile refresh``); under contention one merge applies about a hundred (group
commit), well under this."""

LATE_MERGE_BUDGET = 0.025
"""Seconds a process may spend, after its own merge, merging hand-overs that arrived while it held the lock:
one or two merges. Under sustained contention the other writers' own merges take the rest; a holder that kept
on merging would make its own caller the slowest."""

_newer_handovers_logged: set[str] = set()


class Handovers(Participant):
    """The hand-overs waiting in the directory, in every merge: at most HANDOVERS_PER_MERGE, oldest first, are
    applied and listed (``applied-handovers``) by the same rename as their counts, and removed after the commit
    (in the background past INLINE_REMOVALS); until removed they stay listed, so no merger applies one twice."""

    def __init__(self) -> None:
        self.handled: set[str] = set()
        """The hand-overs the last merge found (applied, or set aside): the others arrived since."""
        self.backlog_left = False
        """Whether the last merge left older hand-overs for a later one (HANDOVERS_PER_MERGE)."""
        self._directory: fs.Directory | None = None
        self._applied: list[str] = []
        self._newest: int | None = None
        self._oldest_waiting: int | None = None

    def collect(self, merge: Merge) -> Changes | None:
        self.backlog_left = False
        document = merge.document
        directory = self._directory = open_directory(merge.textfile)
        if directory is None:
            self.handled = set()
            return None
        ids, kept_aside = pending(directory)
        self._newest = (sequence_of(ids[-1]) or 0) if ids else 0
        already = set(APPLIED.get(document))
        read_now: dict[str, Changes] = {}
        handled = set()
        newer = 0
        left: list[str] = []
        for number, handover_id in enumerate(ids):
            if handover_id in already:
                handled.add(handover_id)
                continue
            if len(read_now) >= HANDOVERS_PER_MERGE:
                # The work a merge does is bounded like its wait for the lock: the rest waits for the next
                # merger. Each is applied exactly once all the same: only the ids read here are listed.
                left = [other for other in ids[number:] if other not in already]
                break
            handled.add(handover_id)
            try:
                read_now[handover_id] = read(directory, handover_id, document.schema)
            except NewerHandover as error:
                newer += 1
                if handover_id not in _newer_handovers_logged:
                    _newer_handovers_logged.add(handover_id)
                    log.warning(
                        "the hand-over %s was written by a newer version of fraisier_textfile (%s): left for a "
                        "merger of that version; upgrade this one", directory.path / f"{handover_id}{SUFFIX}", error,
                    )
            except UnreadableHandover as error:
                kept_aside += set_aside(directory, handover_id, str(error))
        # One that can never be summed into this file would fail this merge and every later one: set aside.
        # Checked for all at once (amounts are >= 0, so if their total can be summed into the file, each can),
        # and one by one only when that fails, to find the one at fault.
        combined = combine(list(read_now.values()))
        try:
            check_summable(document, combined, merge.path)
        except InvalidValueError:
            # Checked in order with those kept before it, not alone: each may fit the file while their total
            # overflows, and then none would be set aside and this merge and every later one would fail.
            kept: list[Changes] = []
            for handover_id, changes in list(read_now.items()):
                try:
                    check_summable(document, combine([*kept, changes]), merge.path)
                except InvalidValueError as error:
                    kept_aside += set_aside(directory, handover_id, str(error))
                    del read_now[handover_id]
                else:
                    kept.append(changes)
            combined = combine(kept)
        self.handled = handled
        self.backlog_left = bool(left)
        self._applied = [handover_id for handover_id in ids if handover_id in already or handover_id in read_now]
        count_in(document, len(left) + newer, kept_aside)
        self._oldest_waiting = sequence_of(left[0]) if left else None
        if left and merge.own.latest:
            # Older hand-overs wait for a later merge: applied now, this process's latest gauges would be
            # overwritten by older reports when those are applied. They are handed over behind them instead, and
            # taken out of the caller's changes: should this merge fail after this, the rest of them is left to
            # its caller as always, and the gauges are in the hand-over.
            _hand_over_latest(merge.own, directory)
        return combined if read_now else None

    def after_apply(self, merge: Merge) -> None:
        APPLIED.put(merge.document, tuple(self._applied))

    def after_commit(self, merge: Merge) -> None:
        # After the release: removing files waits on the filesystem's journal, which under load (other writers'
        # fsyncs) can take seconds for a few hundred hand-overs. Through the descriptor of the directory they
        # were listed in: a writer may have swapped it for a symlink since the lock was released.
        directory = self._directory
        if directory is None:
            return
        if self._newest is not None:
            note_merged(directory, self._newest, self._oldest_waiting)
        if self._applied:
            remove_soon(directory, self._applied)

    def close(self) -> None:
        if self._directory is not None:
            self._directory.close()
        self._directory = None
        self._applied = []
        self._newest = self._oldest_waiting = None

    def waiting(self, textfile_directory: Path) -> bool:
        """Whether hand-overs wait that no merge of this participant has seen yet."""
        try:
            textfile = fs.open_directory(textfile_directory)
            if textfile is None:
                return False
            with textfile:
                directory = open_directory(textfile)
            if directory is None:
                return False
            with directory:
                names = directory.names()
        except (OSError, FraisierTextfileError):
            return False
        return any(
            name.endswith(SUFFIX) and not name.startswith(TEMPORARY_PREFIX) and name[: -len(SUFFIX)] not in self.handled
            for name in names
        )


def _hand_over_latest(changes: Changes, directory: fs.Directory) -> None:
    """Hand over the latest gauges of ``changes`` behind the hand-overs waiting, and take them out of it."""
    latest = Changes()
    latest.latest.update(changes.latest)
    try:
        temporary, final = write(directory, latest, durable=False)
        publish(directory, temporary, final, durable=False)
    except FraisierTextfileError as error:
        log.debug("latest gauges applied now, not behind the hand-overs waiting: %s", error)
        return
    changes.latest.clear()
