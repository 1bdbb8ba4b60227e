"""The textfile store: lock, read, merge, atomic replace.

Every process merges what it recorded since its last flush into ``<directory>/fraisier.prom``, which
node_exporter's textfile collector (or ``fraisier metrics``) serves:

    lock fraisier.prom.lock -> read fraisier.prom (or reuse what this process wrote last) -> apply the
    hand-overs waiting in .fraisier-handover/ -> merge -> render -> write .fraisier.prom.tmp.<random> -> fsync
    -> rename over fraisier.prom -> fsync dir -> unlock -> delete the hand-overs applied

The file holds the true totals over every process that ever ran: counters and histograms are summed, so an
increment is neither lost nor counted twice whatever number of processes race, and a process killed at any
moment leaves either the old file or the new one, never a partial one. A process that cannot get the lock in
time may hand its changes over (see handovers.py) instead of waiting longer.

The store's paths are only ever what it created: fraisier.prom and the lock a regular file, its directories
directories. Anything else there (a symlink, a FIFO, a device) is refused with UnexpectedFileError, never
followed and never opened in a way that could block.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import time
from collections.abc import Collection, Iterable
from pathlib import Path

from fraisier_textfile import validate
from fraisier_textfile.errors import (
    CorruptTextfileError,
    FraisierTextfileError,
    LockTimeoutError,
    TextfileWriteError,
    write_error,
)
from fraisier_textfile.format.model import Document
from fraisier_textfile.format.reader import parse, parse_bytes
from fraisier_textfile.format.schema import Schema, default
from fraisier_textfile.format.syntax import ParseError
from fraisier_textfile.store import fs, handovers, inflight
from fraisier_textfile.store import markers as marker_files
from fraisier_textfile.store.changes import Changes
from fraisier_textfile.store.files import (
    DIRECTORY_ENVIRONMENT as DIRECTORY_ENVIRONMENT,
)
from fraisier_textfile.store.files import (
    TEMPORARY_PREFIX,
    TEXTFILE_NAME,
    FileVersion,
    lstat_or_none,
    random_suffix,
    unexpected,
    unlink_quietly,
    write_parts,
)
from fraisier_textfile.store.files import default_textfile_directory as default_textfile_directory
from fraisier_textfile.store.lifecycle import LifecycleParticipant as LifecycleParticipant
from fraisier_textfile.store.lifecycle import SeriesLifecycle
from fraisier_textfile.store.lock import DEFAULT_LOCK_TIMEOUT, LOCK_SUFFIX, DeferredSignals, Lock, LockLost, owner_name
from fraisier_textfile.store.lock import default_lock_timeout as default_lock_timeout
from fraisier_textfile.store.rules import apply_changes, clock_is_behind, combine
from fraisier_textfile.store.transaction import Merge, Participant

LITTER_INTERVAL = 60.0
"""Seconds between two looks of one store for killed writers' temporary files (textfile, markers, hand-overs).
They are litter, not data (a hand-over's is kept an hour anyway), and listing directories that 16 writers keep
changing waits on their locks, which made some merges of a race several times slower. A new process looks at
its first merge."""


log = logging.getLogger(__name__)
_failed_sources_logged: set[tuple[str, str]] = set()


class TextfileStore:
    """One textfile directory: merges changes into ``fraisier.prom`` and reads it back."""

    def __init__(self, directory: Path | str, lock_timeout: float = DEFAULT_LOCK_TIMEOUT, *,
                 lifecycle: SeriesLifecycle | None = None, participants: Iterable[Participant] = (),
                 schema: Schema | None = None, markers: inflight.MarkerRules | None = None) -> None:
        """``lifecycle``: the settings of expiry and the series bound; by default read from the environment
        (``SeriesLifecycle.from_environment``, which raises InvalidValueError for a bad value).
        ``participants``: sources that take part in every merge (see store/transaction.py), after the markers
        and the hand-overs and before the lifecycle.
        ``schema``: the families this store's file owns and rewrites (format/schema.py); by default Fraisier's
        catalogue. Changes merged must name families of this schema. ``markers``: what markers of deployments
        in flight count (inflight.MarkerRules); by default Fraisier's with Fraisier's schema, none with another
        (a store of another schema counts no deployments)."""
        self.directory = Path(directory)
        self.schema = schema or default()
        self.path = self.directory / TEXTFILE_NAME
        self.lock_path = self.directory / (TEXTFILE_NAME + LOCK_SUFFIX)
        self.lock_timeout = validate.check_seconds("lock timeout", lock_timeout)
        self._lock = Lock(self.lock_path)
        # What this process last wrote, and the identity of the file it wrote: while the file on disk is
        # still that one, nobody else has merged since and it need not be read or parsed again.
        self._cached: tuple[FileVersion, Document] | None = None
        self._corrupt: tuple[FileVersion, CorruptTextfileError] | None = None
        """The version of the file that failed to parse, and how: see _load."""
        self._next_litter_check = 0.0  # see LITTER_INTERVAL
        # Expiry, the series bound, bucket migration and forgetting, run inside each merge (lifecycle.py).
        self.lifecycle = SeriesLifecycle.from_environment(self.path) if lifecycle is None else lifecycle
        if markers is None and self.schema is default():  # Fraisier's schema: Fraisier's markers
            markers = _fraisier_marker_rules()
        self.sources: list[Participant] = list(participants)
        """The participants given (sources read under the lock), in their order."""
        self.handovers = handovers.Handovers()
        self.markers = None if markers is None else inflight.InFlightMarkers(markers)
        self.lifecycle.active = None if markers is None else markers.active
        # The order is the ordering rule (see transaction.py).
        self._participants: list[Participant] = [
            *([self.markers] if self.markers is not None else []), self.handovers, *self.sources,
            LifecycleParticipant(self.lifecycle),
        ]

    # Reading

    def read(self) -> Document:
        """The file as it is now, without taking the lock: it is only ever replaced whole, so a reader sees
        the old file or the new one. A missing file is an empty document. Histograms with other bounds than
        the catalogue's are read as they are: the next merge migrates them (lifecycle.migrate_histogram)."""
        return self.read_version(check_histograms=False)[1]

    def read_version(self, check_histograms: bool = True) -> tuple[FileVersion | None, Document]:
        """The file as :meth:`read` gives it, and the version of exactly the bytes read (None if there is no
        file): a reader can skip reading again while ``version.is_current()``."""
        version, data = self.read_data()
        return version, self.parse_data(data, check_histograms)

    def read_text(self) -> tuple[FileVersion | None, str]:
        """The file's text ("" if there is none) and its version, unparsed (see :meth:`read_data`)."""
        version, data = self.read_data()
        try:
            return version, data.decode("utf-8")
        except UnicodeDecodeError as error:
            if version is not None:
                version.close()
            raise CorruptTextfileError(self.path, f"not UTF-8 text (byte {error.start})") from None

    def read_data(self) -> tuple[FileVersion | None, bytes]:
        """The file's bytes (empty if there is none) and its version, unparsed. Anything but a regular file at
        the path (a symlink, a FIFO, a device, a directory) is refused without being followed or read."""
        try:
            status = os.lstat(self.path)
        except FileNotFoundError:
            return None, b""
        except OSError as error:
            raise write_error(self.path, "read", error) from None
        # A hard link is a file with other names elsewhere (a writer's link to a file it may not read, where
        # fs.protected_hardlinks is off): read as the textfile, its lines would be quoted in parse errors.
        if not stat.S_ISREG(status.st_mode) or status.st_nlink > 1:
            raise unexpected(self.path, status)
        try:
            # O_NOFOLLOW|O_NONBLOCK: what was a regular file a moment ago may have been replaced by a symlink
            # or a FIFO since; neither is followed or waited on.
            descriptor = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None, b""
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise unexpected(self.path, lstat_or_none(self.path)) from None
            raise TextfileWriteError(
                self.path, f"cannot read {self.path}: {error.strerror}; check its permissions", error.errno
            ) from None
        try:
            status = os.fstat(descriptor)
            if not stat.S_ISREG(status.st_mode) or status.st_nlink > 1:
                raise unexpected(self.path, status)
            # One read of the size fstat gives, into one buffer: no list of chunks to join, so the bytes are
            # copied once, by the kernel, and decoded once. (Only a file that changed meanwhile, which the
            # lock rules out for a merge, needs more reads.)
            data = os.read(descriptor, status.st_size + 1)
            more = os.read(descriptor, 1 << 20) if data else b""
            if more:
                chunks = [data, more]
                while chunk := os.read(descriptor, 1 << 20):
                    chunks.append(chunk)
                data = b"".join(chunks)
            version = FileVersion(self.path, descriptor)
        except OSError as error:
            os.close(descriptor)
            raise write_error(self.path, "read", error) from None
        except BaseException:
            os.close(descriptor)
            raise
        return version, data

    def parse_text(self, text: str, check_histograms: bool = True) -> Document:
        try:
            return parse(text, check_histograms, self.schema)
        except ParseError as error:
            raise CorruptTextfileError(self.path, error.problem, error.line_number) from None

    def parse_data(self, data: bytes, check_histograms: bool = True) -> Document:
        """The document of the file's bytes (see format.reader.parse_bytes: one this package wrote is not
        checked line by line again)."""
        try:
            return parse_bytes(data, check_histograms, self.schema)
        except ParseError as error:
            raise CorruptTextfileError(self.path, error.problem, error.line_number) from None

    def active_deployments(self, retired_markers: Collection[str]) -> dict[str, int]:
        """Deployments running now in live processes, by provider (for a reader serving the file live).
        ``retired_markers`` are those the file already accounts for (``inflight.RETIRED_MARKERS``)."""
        counts: dict[str, int] = {}
        textfile = fs.open_directory(self.directory)
        if textfile is not None and self.markers is not None:
            with textfile:
                counts = self.markers.active_deployments(textfile, retired_markers)
        self._add_sources_running(counts)
        return counts

    def _add_sources_running(self, counts: dict[str, int]) -> None:
        """Deployments a source knows to be running without an in-flight marker (a row of Fraisier's database,
        say): a source with an ``active_deployments()`` method adds its live count."""
        for source in self.sources:
            active = getattr(source, "active_deployments", None)
            if active is not None:
                for provider, count in active().items():
                    counts[provider] = counts.get(provider, 0) + count

    # Merging

    def merge(self, changes: Changes, *, timeout: float | None = None) -> None:
        """Merge ``changes``, and every hand-over waiting, into the textfile under the lock, waiting for it
        at most ``timeout`` seconds (None: the store's lock timeout; 0: not at all). On success ``changes``
        is emptied. On any error nothing is written, the file is left byte-identical, and ``changes`` is
        untouched so that it can be merged again later. Raises only FraisierTextfileError subclasses
        (LockTimeoutError when the lock stayed busy)."""
        try:
            self._merge_once(changes, self.lock_timeout if timeout is None else timeout)
        except FraisierTextfileError:
            # Also after a failure: this process may have held the lock (a lock timeout too, when its lock
            # file was replaced mid-merge and the new one stayed busy).
            self._merge_late_handovers(failed=True)
            raise
        self._merge_late_handovers()

    def hand_over(self, changes: Changes, *, durable: bool = True) -> None:
        """Write ``changes`` for the next merge by any process to apply exactly once, without the lock, and
        empty ``changes``. ``durable``: fsynced (two fsyncs, milliseconds on a disk), so that they survive a
        power loss; without, they survive this process's death, not the machine's. Raises TextfileWriteError
        (``changes`` untouched) if they cannot be written."""
        if not changes:
            return
        with DeferredSignals(), self._open_directory() as textfile:
            directory = handovers.open_directory(textfile, create=True)
            assert directory is not None
            with directory:
                temporary, final = handovers.write(directory, changes, durable, self.schema)
                handovers.publish(directory, temporary, final, durable)
                changes.clear()

    def merge_or_hand_over(self, changes: Changes, wait: float, *, durable: bool = True) -> bool:
        """Merge ``changes``, waiting at most ``wait`` seconds for the lock; if it stays busy, hand them over.
        True: merged now. False: handed over; the next merge by any process writes them (this process tries
        once more at once). Either way ``changes`` is emptied. Raises what :meth:`merge` raises for other
        problems (a corrupt file, a full disk), with ``changes`` untouched."""
        try:
            self.merge(changes, timeout=wait)
            return True
        except LockTimeoutError:
            pass
        self.hand_over(changes, durable=durable)
        # The hand-over is on disk before this try. If the lock is busy, its holder will look for hand-overs
        # after releasing it (see _merge_late_handovers), and so sees this one.
        try:
            self.merge(Changes(), timeout=0)
        except FraisierTextfileError as error:
            log.debug("hand-over left for the next merge: %s", error)
        return False

    def _merge_once(self, changes: Changes, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        participants = self._participants
        with DeferredSignals() as signals, self._open_directory() as textfile:
            for attempt in itertools.count(1):
                if attempt > 3 and time.monotonic() > deadline:  # something removes the lock file over and over
                    raise LockTimeoutError(self.lock_path, timeout)
                self._lock.acquire(deadline, timeout, signals.deliver)
                try:
                    try:
                        merge = self._merge_locked(changes, textfile)
                    except LockLost:
                        log.warning("%s was removed or replaced during a merge: merging again", self.lock_path)
                        continue
                    finally:
                        self._lock.release()
                    # After the release (see transaction.py): nothing here may fail the merge, the file is written.
                    for participant in participants:
                        participant.after_commit(merge)
                finally:
                    for participant in participants:
                        participant.close()
                return
            raise AssertionError("unreachable")

    def _merge_late_handovers(self, failed: bool = False) -> None:
        """After releasing the lock, merge the hand-overs that arrived while it was held.

        The invariant that makes every hand-over written once, soon: a process that hands over writes its
        file *before* trying the lock once without waiting, and every holder of the lock looks for
        hand-overs *after* releasing it. So when the hand-over's own try fails, the lock had a holder that
        releases it after the file existed, and that holder's look finds it; if its own try fails in turn,
        the next holder's look does, and so on until one gets the lock. (A holder killed meanwhile leaves the
        hand-over to the next merge, by any process.) This is also group commit: under contention the waiters
        hand over and one holder writes them all in one merge.

        Under sustained contention new hand-overs keep arriving, and a holder that looped for ever would hold
        up the deployment it belongs to: it stops after handovers.LATE_MERGE_BUDGET seconds, leaving what remains to
        the next merge of any process (under such load, one within milliseconds; otherwise at the latest the
        next ``fraisier textfile refresh``). Nothing is lost or applied twice either way. A failure with the
        ``reported`` message (the caller's own, raised to its caller) is not logged a second time."""
        stop = time.monotonic() + handovers.LATE_MERGE_BUDGET
        # A merge that left older hand-overs (HANDOVERS_PER_MERGE) has done its share: those that arrived
        # meanwhile are behind them, for the next merge of any process, as they are.
        while time.monotonic() < stop and not self.handovers.backlog_left and self.handovers_waiting():
            try:
                self._merge_once(Changes(), timeout=0)
            except LockTimeoutError:
                return  # its holder looks again after releasing it
            except FraisierTextfileError as error:
                # After a failed merge this is most likely the same problem, which its caller reports: a
                # recorder hit by a corrupt file would otherwise log it again with every event.
                log.log(logging.DEBUG if failed else logging.WARNING,
                        "hand-overs waiting in %s were not merged: %s", self.directory, error)
                return

    def handovers_waiting(self) -> bool:
        """Whether hand-overs wait in the directory that no merge by this store has seen yet."""
        return self.handovers.waiting(self.directory)

    def merge_backlog(self, *, timeout: float | None = None) -> None:
        """Merge until no hand-over is left (each merge applies at most handovers.HANDOVERS_PER_MERGE): for a command
        whose job is a complete file (``fraisier textfile refresh``), not for a record call. Raises what
        :meth:`merge` raises."""
        self.merge(Changes(), timeout=timeout)
        for _ in range(100_000):  # bounded: writers that never stop handing over must not keep it for ever
            if not self.handovers_waiting():
                return
            before = set(self.handovers.handled)
            self.merge(Changes(), timeout=timeout)
            if self.handovers.handled == before:
                return  # only hand-overs left for a newer version, or set aside: nothing more to apply

    def _open_directory(self) -> fs.Directory:
        """The textfile directory, created with mode 0755 whatever the umask if missing (node_exporter runs as
        another user: it must be able to enter it)."""
        directory = fs.open_directory(self.directory, create=True)
        assert directory is not None
        return directory

    def _merge_locked(self, changes: Changes, textfile: fs.Directory) -> Merge:
        """The transaction's steps under the lock (see transaction.py), up to the rename; returns the merge for
        the steps after the release."""
        document = self._load(textfile)
        cached, self._cached = self._cached, None  # the document is about to change; cached again once written
        if cached is not None:
            cached[0].close()
        # Not what we wrote: then it needs the checks a file from elsewhere needs (histogram buckets).
        merge = Merge(self.directory, self.path, textfile, document, changes,
                      read_from_disk=cached is None or document is not cached[1])
        participants = self._participants
        collected = [part for part in (self._collect(p, merge) for p in participants) if part]
        if collected:
            merge.changes = combine([*collected, changes])
        self._add_sources_running(merge.running)
        for participant in reversed(participants):
            participant.before_apply(merge)
        apply_changes(document, merge.changes, self.path, time.time(), clock_is_behind(self.path))
        for participant in participants:
            participant.after_apply(merge)
        temporary, descriptor = self._write_temporary(document.parts(), textfile)
        if not self._lock.is_held():
            # Someone removed the lock file while we held it: another merger may have locked a new one and
            # read the file we are about to replace. Start again under the lock now at the path.
            os.close(descriptor)
            unlink_quietly(textfile, temporary)
            raise LockLost
        # Signals are held back (see DeferredSignals): the rename and the clear happen together.
        version = self._rename(temporary, descriptor, textfile)
        self._cached = None if version is None else (version, document)
        changes.clear()
        return merge

    def _collect(self, participant: Participant, merge: Merge) -> Changes | None:
        """A participant's part of the merge. A source given to the store that fails unexpectedly (a bug of its
        own, a file of its source no check foresaw) must not fail every merge of the others: its bookkeeping is
        put back as it was, so that its cursor never moves without its counts, it adds nothing this time, and
        the failure is one warning per kind. The store's own protocols are not caught: their failures are the
        file's (a corrupt textfile), which must stop the merge."""
        if participant not in self.sources:
            return participant.collect(merge)
        bookkeeping = dict(merge.document.meta)
        try:
            return participant.collect(merge)
        except FraisierTextfileError:
            raise
        except Exception as error:
            merge.document.meta.clear()
            merge.document.meta.update(bookkeeping)
            kind = (type(participant).__name__, type(error).__name__)
            if kind not in _failed_sources_logged:
                _failed_sources_logged.add(kind)
                log.warning("%s took no part in this merge of %s: it failed with %r; the other changes are merged, "
                            "and it is tried again at the next merge (please report this)", kind[0], self.path, error,
                            exc_info=log.isEnabledFor(logging.DEBUG))
            return None

    def _load(self, textfile: fs.Directory) -> Document:
        if self._cached is not None:
            cached_version, document = self._cached
            if cached_version.is_current():
                return document
            cached_version.close()
            self._cached = None
        if self._corrupt is not None:
            corrupt_version, error = self._corrupt
            if corrupt_version.is_current():
                raise error.with_traceback(None)
            corrupt_version.close()
            self._corrupt = None
        if time.monotonic() >= self._next_litter_check:
            self._next_litter_check = time.monotonic() + LITTER_INTERVAL
            self._remove_stale_temporaries(textfile)
        version, data = self.read_data()
        try:
            document = self.parse_data(data, check_histograms=False)
        except CorruptTextfileError as error:
            # The same bytes fail the same way. Until the file changes (the operator's fix), merges answer
            # from here rather than read and parse it again: for a big file that costs seconds, and a
            # recorder hit by it would pay them with every event it records.
            if version is not None:
                self._corrupt = (version, error)
            raise
        if version is not None:
            version.close()
        return document

    def _remove_stale_temporaries(self, textfile: fs.Directory) -> None:
        """Temporary files are only made under the lock, which we hold: any left are from killed writers. Each
        directory is scanned and cleaned through its checked descriptor: one a writer swapped for a symlink is
        refused (the merge says so), never followed."""
        try:
            for entry in list(textfile.entries()):
                if entry.name.startswith(TEMPORARY_PREFIX) and entry.is_file(follow_symlinks=False):
                    unlink_quietly(textfile, entry.name)
        except OSError:
            return
        for open_directory, remove in (
            (marker_files.open_directory, marker_files.remove_stale_temporaries),
            (handovers.open_directory, handovers.remove_stale_temporaries),
        ):
            try:
                directory = open_directory(textfile)
            except FraisierTextfileError:
                continue  # refused with one clear line by the merge itself
            if directory is None:
                continue
            with directory:
                try:
                    remove(directory)
                except OSError:
                    pass  # litter only: a later merger tries again

    def _write_temporary(self, parts: Iterable[bytes | memoryview], textfile: fs.Directory) -> tuple[str, int]:
        """Write the text ``parts`` make durably to a new temporary file; return its name and its open
        descriptor."""
        temporary = f"{TEMPORARY_PREFIX}{random_suffix()}"
        try:
            # O_EXCL|O_NOFOLLOW, 0644 by fchmod: never through a symlink or into a file someone else prepared,
            # and readable by node_exporter's user whatever our umask.
            descriptor = textfile.create(temporary, fs.FILE_MODE)
        except OSError as error:
            raise write_error(self.directory, "create a temporary file in", error) from None
        try:
            try:
                write_parts(descriptor, parts)
                # Durable content before the rename: after a power loss the name must not point at an
                # empty file.
                os.fsync(descriptor)
            except BaseException:
                os.close(descriptor)
                raise
        except OSError as error:
            unlink_quietly(textfile, temporary)
            raise write_error(self.path, "write", error) from None
        except BaseException:
            unlink_quietly(textfile, temporary)
            raise
        return temporary, descriptor

    def _rename(self, temporary: str, descriptor: int, textfile: fs.Directory) -> FileVersion | None:
        """Rename the written temporary over the textfile; return the new file's version, held open (None if it
        cannot be had: the next merge reads the file). Once renamed, nothing here raises: the caller must
        forget the changes the file now holds."""
        try:
            textfile.replace(temporary, TEXTFILE_NAME)
        except OSError as error:
            os.close(descriptor)
            unlink_quietly(textfile, temporary)
            raise self._replace_error(error) from None
        textfile.fsync()
        try:
            return FileVersion(self.path, descriptor)
        except OSError:
            os.close(descriptor)
            return None

    def _replace_error(self, error: OSError) -> TextfileWriteError:
        """The error for a rename over the textfile that failed. In a sticky directory (mode 1777, as /tmp)
        only the file's owner may replace it, however writable the directory: say so, not "make it writable"."""
        if error.errno in (errno.EPERM, errno.EACCES):
            try:
                directory, target = os.stat(self.directory), os.lstat(self.path)
            except OSError:
                pass
            else:
                if directory.st_mode & stat.S_ISVTX and target.st_uid != os.geteuid():
                    owner = owner_name(target.st_uid)
                    return TextfileWriteError(
                        self.path,
                        f"cannot write {self.path}: {error.strerror}; it belongs to {owner} and its directory is "
                        f"sticky (chmod +t), so only {owner} can replace it: share a directory without the sticky "
                        "bit (a group directory, chmod 2775), or choose another --textfile-dir",
                        error.errno,
                    )
        return write_error(self.path, "write", error)


def _fraisier_marker_rules() -> inflight.MarkerRules:
    # The one place the store reaches above itself, for its default only: what Fraisier's deployments in flight
    # count is said by its events (changes.py). A store given a schema (or its rules) does not come here.
    from fraisier_textfile.changes import MARKER_RULES

    return MARKER_RULES
