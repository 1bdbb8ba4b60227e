"""A merge is one transaction over the file, run for the store by :class:`Transaction` over its participants, one
per protocol.

The steps, under the lock:

    load the file -> collect (each participant, in order) -> combine with the caller's changes
    -> before apply (in reverse order) -> apply -> after apply (in order) -> write a temporary file
    -> check the file read was as its layout claimed -> check the lock is still ours -> rename it over the file
    -> [release the lock]
    -> fsync the directory (the rename is durable) -> after commit (in order) -> close (in order, always)

The directory's fsync is the caller's only when a participant's after commit removes files the rename accounts
for (removes_after_commit); else another thread makes it, with the closes of the replaced versions, and the exit
waits for it (closing.close_off_path).

A participant owns one protocol of the directory: its files, its bookkeeping line in the document (declared in
format/bookkeeping.py), its place in the order and its clean-up. What it collects and the bookkeeping it writes
land in the same rename as the caller's changes, so a process killed at any point leaves all of them or none:
this is what makes a hand-over, a marker or a source's cursor count exactly once.

**The order is the ordering rule.** The store runs, in this order: the in-flight markers, the hand-overs, the
sources it was given (Fraisier's state database, say), and the series lifecycle. Collecting goes forwards:
markers are probed before hand-overs are listed, because a process whose end could not wait for the lock hands
it over *before* it releases its marker (listed first, a hand-over could be missed and its deployment counted
crashed as well as ended). Before applying goes backwards, like leaving nested blocks: the lifecycle first
(migrating histograms to the schema's buckets and refusing series over the bound, which the accounting of markers
then sees), the markers last (a dead marker's crash is applied to the migrated document). After applying and after
committing go forwards again.

A participant never raises for a problem of its own source (it logs it and collects nothing), so that one broken
source cannot stop the merge of the others; it raises FraisierTextfileError only for what must stop the whole
merge (the file itself cannot be read).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from fraisier_textfile import logger
from fraisier_textfile.errors import CorruptTextfileError, FraisierTextfileError, LockTimeoutError
from fraisier_textfile.store import process
from fraisier_textfile.store.closing import Closer, close_off_path, hand_pending, kept, replacing
from fraisier_textfile.store.files import FileVersion, Textfile, close_written, unlink_quietly
from fraisier_textfile.store.lock import Lock, LockLost
from fraisier_textfile.store.rules import apply_changes, clock_is_behind, combine
from fraisier_textfile.store.signals import DeferredSignals
from fraisier_textfile.store.vouching import Check, sealed

if TYPE_CHECKING:
    from fraisier_textfile.format.model import Document
    from fraisier_textfile.store import fs
    from fraisier_textfile.store.changes import Changes


class Merge:
    """One merge under way: what every participant sees, and where it adds its part."""

    __slots__ = ("as_written", "changes", "directory", "document", "own", "path", "running", "textfile")

    def __init__(
        self, directory: fs.PathName, path: fs.PathName, textfile: fs.Directory, document: Document, own: Changes,
        as_written: bool,
    ) -> None:
        self.directory = directory
        """The textfile directory, for messages (never opened again by path: see ``textfile``)."""
        self.path = path
        """The textfile, for messages."""
        self.textfile = textfile
        """The textfile directory, held open and checked: every file operation is relative to it."""
        self.document = document
        """The file as loaded, which the merge changes and writes."""
        self.own = own
        """The changes of the process merging, emptied once the file is renamed into place."""
        self.changes = own
        """What the merge applies: after collecting, the caller's changes combined with every participant's;
        a participant's ``before_apply`` may replace it (the lifecycle drops refused series)."""
        self.as_written = as_written
        """Whether the document is as this package writes it for the store's schema: kept from this process's
        last merge (nobody merged since), or a file read as its layout line lays it out (whose claims are checked
        before the rename: see vouching.py). Its histograms have the schema's buckets, whole series each: nothing
        in it needs migrating."""
        self.running: dict[str, int] = {}
        """Deployments running by provider that sources know of without an in-flight marker (rows of
        Fraisier's database): the markers' accounting adds them to the active gauge."""


class Participant:
    """A protocol taking part in every merge of a store. Each hook does nothing unless overridden."""

    def collect(self, merge: Merge) -> Changes | None:
        """Under the lock, the file loaded: the changes this protocol adds to the merge (None: none). May set
        the bookkeeping lines it owns in ``merge.document``."""
        return None

    def before_apply(self, merge: Merge) -> None:
        """Once every participant has collected, before ``merge.changes`` is applied (in reverse order)."""

    def after_apply(self, merge: Merge) -> None:
        """Once ``merge.changes`` is applied, before the file is written (in order)."""

    def removes_after_commit(self, merge: Merge) -> bool:
        """Whether :meth:`after_commit` will remove files the written file accounts for: then the rename is made
        durable before it, in the caller's thread, else in another (closing.close_off_path)."""
        return False

    def after_commit(self, merge: Merge) -> None:
        """Once the file is renamed into place and the lock released: clean-up that may wait (removing the
        files the written file already accounts for). Never raises."""

    def close(self) -> None:
        """After every merge, committed or not: let go of what ``collect`` held open. Never raises."""


LITTER_INTERVAL = 60.0
"""Seconds between two looks of one store for killed writers' temporary files (textfile, markers, hand-overs).
They are litter, not data (a hand-over's is kept an hour anyway), and listing directories that 16 writers keep
changing waits on their locks, which made some merges of a race several times slower. A new process looks at
its first merge."""

Litter = tuple[Callable[["fs.Directory"], "fs.Directory | None"], Callable[["fs.Directory"], None]]
"""How to open a protocol's directory in the textfile directory, and how to remove its killed writers'
temporaries."""

log = logger.get_logger(__name__)


class NotVouched(Exception):
    """The file a merge read is not what its layout line claims (someone changed it since it was written): the
    merge starts again, reading it line by line (see vouching.py)."""


class RunOutcome(threading.local):
    """What a thread's last :meth:`Transaction.run` leaves for its caller, one per thread: threads that share a store
    never read each other's."""

    held_lock = False


class Transaction:
    """The merges of one store: the lock, the file, the participants in their order, and what this process
    keeps between two merges (the document it wrote last; the version of the file that failed to parse)."""

    def __init__(self, file: Textfile, lock: Lock, participants: Sequence[Participant],
                 sources: Sequence[Participant], litter: Sequence[Litter] = ()) -> None:
        """``participants``: every participant in the order that is the ordering rule; ``sources``: those of
        them given by the store's user, whose unexpected failures are contained (see :meth:`_collect`);
        ``litter``: the protocols' directories to clean of killed writers' temporaries now and then."""
        self.file = file
        self.lock = lock
        self.participants = list(participants)
        self.sources = list(sources)
        self.litter = list(litter)
        # What this process last wrote, and the identity of the file it wrote: while the file on disk is
        # still that one, nobody else has merged since and it need not be read or parsed again. With it, the check
        # of the claims it was read on, if it was taken at its seal: a merge that fails on it checks them then.
        self._cached: tuple[FileVersion, Document, Check | None] | None = None
        self._corrupt: tuple[FileVersion, CorruptTextfileError] | None = None
        """The version of the file that failed to parse, and how: see _load."""
        self._next_litter_check = 0.0  # see LITTER_INTERVAL
        self._litter_due = False
        """The merge under way looks for killed writers' temporaries (see _while_written)."""
        self._check_claims_first = False
        """The last merge found the file not as its layout line claimed: the next read checks the claims before
        it takes anything from the file."""
        self._replaced: list[FileVersion] = []
        """The versions of the file this merge read or kept and is about to replace: held open until the rename
        is made, so that the rename does not free their blocks, then closed off the caller's path
        (closing.close_off_path)."""
        self._closer: Closer | None = None
        """The thread that closes ``_replaced`` once this merge's rename is made, if started ahead (see
        _while_written)."""
        self._runs = RunOutcome()

    @property
    def held_lock(self) -> bool:
        """Whether this thread's last :meth:`run` took the lock, even if it then failed: only a holder owes the look
        for hand-overs that arrived while it held it (group_commit.py)."""
        return self._runs.held_lock

    def run(self, changes: Changes, timeout: float, textfile: fs.Directory) -> None:
        """One merge of ``changes`` into the textfile directory held by ``textfile`` (open and checked), waiting
        at most ``timeout`` seconds for the lock (see the module's note)."""
        hand_pending()  # a merge before it in this call (closing.CloseAfterCall): its fsync owed is under way first
        deadline = time.monotonic() + timeout
        participants = self.participants
        runs = self._runs
        runs.held_lock = False
        with DeferredSignals() as signals:
            for attempt in itertools.count(1):
                if attempt > 3 and time.monotonic() > deadline:  # something removes the lock file over and over
                    raise LockTimeoutError(self.lock.path, timeout)
                self.lock.acquire(deadline, timeout, signals.deliver, textfile)
                runs.held_lock = True
                replaced: list[FileVersion] = []
                closer: Closer | None = None
                durable_later: fs.Directory | None = None
                try:
                    try:
                        merge = self._locked(changes, textfile)
                    except LockLost:
                        log.warning("%s was removed or replaced during a merge: merging again", self.lock.path)
                        continue
                    except NotVouched:
                        self._check_claims_first = True
                        continue
                    finally:
                        # Taken while the lock is held: once it is released, another thread of this process may
                        # merge with this store, and its versions and closer are its own.
                        replaced, self._replaced = self._replaced, []
                        closer, self._closer = self._closer, None
                        self.lock.release()
                    # The rename is made durable once the lock is free: the next writer need not wait for the
                    # journal's commit, and it reads the new file either way. Before after_commit: nothing the
                    # file accounts for (hand-overs, markers) is removed before the rename that accounts for it
                    # is durable. A merge that removes nothing leaves it to another thread (close_off_path).
                    if any(participant.removes_after_commit(merge) for participant in participants):
                        textfile.fsync()
                    else:
                        durable_later = textfile
                    # After the release (see the module's note): nothing here may fail the merge, the file is written.
                    for participant in participants:
                        participant.after_commit(merge)
                finally:
                    close_off_path(replaced, closer, durable_later)
                    for participant in participants:
                        participant.close()
                return
            raise AssertionError("unreachable")

    def _locked(self, changes: Changes, textfile: fs.Directory) -> Merge:
        """The transaction's steps under the lock (see the module's note), up to the rename; returns the merge for
        the steps after the release."""
        self._litter_due = False
        # A closer left here by a merge a fork interrupted (the child has its state, not its thread) is not ours.
        self._closer = None
        document, check, written_ns = self._load(textfile)
        cached, self._cached = self._cached, None  # the document is about to change; cached again once written
        if cached is not None:
            replacing(cached[0], self._replaced)
        # Not as we write it: then it needs the checks a file from elsewhere needs (histogram buckets).
        as_written = check is not None or (cached is not None and document is cached[1])
        merge = Merge(self.file.directory, self.file.path, textfile, document, changes, as_written)
        try:
            participants = self.participants
            collected = [part for part in (self._collect(p, merge) for p in participants) if part]
            if collected:
                merge.changes = combine([*collected, changes])
            count_running(self.sources, merge.running)
            for participant in reversed(participants):
                participant.before_apply(merge)
            behind = clock_is_behind(self.file.path, written_ns)
            apply_changes(document, merge.changes, self.file.path, time.time(), behind)
            for participant in participants:
                participant.after_apply(merge)
            parts = document.parts()
            temporary, descriptor = self.file.write_temporary(
                parts, textfile, self._while_written(check, textfile), document.layout_line
            )
        except Exception:
            # Whatever a file taken on trust made go wrong (a value that is no number) is the file's: read it again.
            # Taken at its seal too: a forged seal gets the refusal an unsealed file gets (vouching.py).
            if check is not None and not check.holds():
                raise NotVouched from None
            raise
        if check is not None and not check.sealed and not check.holds():
            close_written(descriptor)
            unlink_quietly(textfile, temporary)
            raise NotVouched
        try:
            if not self.lock.is_held():
                # Someone removed the lock file while we held it: another merger may have locked a new one and
                # read the file we are about to replace. Start again under the lock now at the path.
                raise LockLost
        except BaseException:  # that, or the look itself failed (the lock file's lstat): the temporary goes
            close_written(descriptor)
            unlink_quietly(textfile, temporary)
            raise
        # Signals are held back (see DeferredSignals): the rename and the clear happen together.
        version = self.file.rename(temporary, descriptor, textfile)
        unchecked = check if check is not None and check.sealed else None
        self._cached = None if version is None else (version, document, unchecked)
        changes.clear()
        return merge

    def _while_written(self, check: Check | None, textfile: fs.Directory) -> Callable[[str], None] | None:
        """What the merge does while the device writes its new version back, before the fsync waits for it
        (files.start_writeback), given the temporary's name; None: nothing. The check of the claims the file was
        read on (vouching.py); and, when due, the look for killed writers' temporaries, all but the one being
        written (under the lock still, where no live writer has one); and, with either, the start of the thread that
        closes the version it replaces after the rename, and makes that rename durable when nothing else waits for
        it (closing.close_off_path). With neither (a warm merge), None: the writeback is left to the fsync, whose own
        start of it costs less than a separate one with nothing to overlap it, and the thread starts once the call
        is done (closing.CloseAfterCall; bench/README.md has the comparison)."""
        litter = self._litter_due
        if check is not None and check.sealed:
            check = None  # nothing to check (vouching.py)
        if check is None and not litter:
            return None

        def work(temporary: str) -> None:
            if check is not None and not check.holds():
                return  # the file is merged again from the start
            if self._replaced:
                try:
                    self._closer = Closer()
                except RuntimeError:
                    pass  # closed as close_off_path does where no thread can be had
            if litter:
                self._next_litter_check = time.monotonic() + LITTER_INTERVAL
                self.remove_litter(textfile, keep=temporary)

        return work

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
            if process.first_time("source failed", *kind):
                log.warning("%s took no part in this merge of %s: it failed with %r; the other changes are merged, "
                            "and it is tried again at the next merge (please report this)", kind[0], self.file.path,
                            error, exc_info=log.isEnabledFor(logger.DEBUG))
            return None

    def _load(self, textfile: fs.Directory) -> tuple[Document, Check | None, int | None]:
        """The document to merge into, the check of its claims still to be made (None: nothing to check; one taken
        at its seal, kept with the document cached, is made only if the merge fails), and the file's mtime in
        nanoseconds as found (None: no file; rules.clock_is_behind judges it, with no look of its own at the file)."""
        if self._cached is not None:
            cached_version, document, unchecked = self._cached
            if cached_version.is_current(textfile):
                return document, unchecked, cached_version.key[3]
            # Another merger's rename unlinked it: its blocks are ours to free.
            replacing(cached_version, self._replaced)
            self._cached = None
        if self._corrupt is not None:
            corrupt_version, error = self._corrupt
            if corrupt_version.is_current(textfile):
                raise error.with_traceback(None)
            corrupt_version.close()
            self._corrupt = None
        # Looked for while the new version is written back (see _while_written), where it costs no wall time.
        self._litter_due = time.monotonic() >= self._next_litter_check
        version, data = self.file.read_data(textfile)
        if version is not None:
            # Noted at once, not after the parse: a child forked by another thread meanwhile closes its copy.
            replacing(version, self._replaced)
        check = None
        try:
            if self._check_claims_first:
                self._check_claims_first = False
                document = self.file.parse_data(data, check_histograms=False)
            else:
                document, claims = self.file.parse_claimed(data)
                if claims is not None:
                    check = Check(claims, version is not None and version.steady and sealed(claims, version.key[3]))
        except CorruptTextfileError as error:
            # The same bytes fail the same way. Until the file changes (the operator's fix), merges answer
            # from here rather than read and parse it again: for a big file that costs seconds, and a
            # recorder hit by it would pay them with every event it records.
            if version is not None:
                kept(version, self._replaced)
                self._corrupt = (version, error)
            raise
        return document, check, None if version is None else version.key[3]

    def remove_litter(self, textfile: fs.Directory, keep: str = "") -> None:
        """Temporary files are only made under the lock, which we hold: any left are from killed writers (but
        ``keep``, this merge's own). Each directory is scanned and cleaned through its checked descriptor: one a
        writer swapped for a symlink is refused (the merge says so), never followed."""
        try:
            self.file.remove_stale_temporaries(textfile, keep)
        except OSError:
            return
        for open_directory, remove in self.litter:
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


def count_running(sources: Iterable[Participant], counts: dict[str, int]) -> None:
    """Add to ``counts`` the deployments a source knows to be running without an in-flight marker (a row of
    Fraisier's database, say): a source with an ``active_deployments()`` method adds its live count."""
    for source in sources:
        active = getattr(source, "active_deployments", None)
        if active is not None:
            for provider, count in active().items():
                counts[provider] = counts.get(provider, 0) + count
