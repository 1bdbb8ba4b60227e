"""Hand-overs: changes a process could not merge because the lock was busy, left for the next merger.

A process that cannot get the textfile's lock in time writes its changes durably into
``<textfile dir>/.fraisier-handover/<id>.json`` (temporary file, rename, fsync of the file, fsync of the
directory: see :func:`publish`) and forgets them. Every merge, by any process, applies the hand-overs it finds,
oldest first and at most HANDOVERS_PER_MERGE (textfile.py: its work is bounded like its wait), each exactly once:
it lists their ids in the file it writes (``applied-handovers``), renames that file into place, and only then
deletes them. A merger killed before the rename applied nothing; one killed after it left the ids in the file, so
the next merger skips those files and deletes them. The list keeps only ids whose file still exists. So when a
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

import os
import stat
import time
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from fraisier_textfile.errors import (
    FraisierTextfileError,
    InvalidValueError,
    UnexpectedFileError,
    write_error,
)
from fraisier_textfile.format.bookkeeping import WordList
from fraisier_textfile.format.model import Block, Document
from fraisier_textfile.format.schema import Schema
from fraisier_textfile.logger import get_logger
from fraisier_textfile.store import fs, process
from fraisier_textfile.store.changes import Changes
from fraisier_textfile.store.files import unlink_quietly, write_parts
from fraisier_textfile.store.rules import check_summable, combine
from fraisier_textfile.store.transaction import Merge, Participant

if TYPE_CHECKING:
    from fraisier_textfile.store.handover_aside import SET_ASIDE_LIMIT as SET_ASIDE_LIMIT
    from fraisier_textfile.store.handover_aside import SET_ASIDE_SUFFIX as SET_ASIDE_SUFFIX
    from fraisier_textfile.store.handover_aside import set_aside as set_aside
    from fraisier_textfile.store.handover_codec import FIELDS as FIELDS
    from fraisier_textfile.store.handover_codec import decode as decode
    from fraisier_textfile.store.handover_codec import encode as encode
    from fraisier_textfile.store.handover_order import SEQUENCE_FILE as SEQUENCE_FILE
    from fraisier_textfile.store.handover_order import TooManyWaiting as TooManyWaiting
    from fraisier_textfile.store.handover_order import id_for as id_for

# How a hand-over is encoded (handover_codec.py) and ordered (handover_order.py), and what is set aside
# (handover_aside.py), is loaded by the first hand-over written, or the first merge that finds the hand-over
# directory: a record run into a directory that never saw a hand-over has no use for any. The names used from here
# (by the tests) stay reachable from here.
_LOADED_WHEN_USED = {
    **dict.fromkeys(("SET_ASIDE_LIMIT", "SET_ASIDE_SUFFIX", "set_aside"), "handover_aside"),
    **dict.fromkeys(("FIELDS", "decode", "encode"), "handover_codec"),
    **dict.fromkeys(("SEQUENCE_FILE", "TooManyWaiting", "id_for"), "handover_order"),
}


def __getattr__(name: str) -> Any:
    module = _LOADED_WHEN_USED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"fraisier_textfile.store.{module}"), name)


HANDOVER_DIRECTORY = ".fraisier-handover"
APPLIED = WordList("applied-handovers")
"""The hand-overs the file already holds, in the order they were applied: listed until their files are gone."""
SUFFIX = ".json"
TEMPORARY_PREFIX = "."
# A temporary hand-over is written without the lock, so one may be in progress while a merger looks: only
# one older than this is a killed writer's litter.
STALE_TEMPORARY_SECONDS = 3600.0
log = get_logger(__name__)


# Files
#
# Every operation below works relative to the hand-over directory held open (fs.Directory): a writer of the
# textfile directory may swap .fraisier-handover for a symlink at any moment, and a merger run by root must
# never read, delete, rename or chmod through it (see fs.py).


def open_directory(textfile: fs.Directory, create: bool = False) -> fs.Directory | None:
    """The hand-over directory of the textfile directory held by ``textfile``, checked (None if there is none
    and ``create`` is false). Raises UnexpectedFileError for anything else in its place."""
    return textfile.subdirectory(HANDOVER_DIRECTORY, create=create)


def write(directory: fs.Directory, changes: Changes, schema: Schema) -> tuple[str, str, int]:
    """Write ``changes`` under a temporary name; return (temporary, final) names and the file's descriptor, still
    open. The caller renames it (:func:`publish`, which makes it durable through that descriptor and closes it) at
    the moment it forgets the changes, so that the two happen together."""
    from fraisier_textfile.store import handover_codec, handover_order, handover_reuse

    handover_id = handover_order.new_id(directory)
    temporary = f"{TEMPORARY_PREFIX}{handover_id}{SUFFIX}"
    data = handover_codec.encode(changes, schema, handover_id)
    # One of this process's applied hand-overs, taken back (handover_reuse.py), else a new file.
    taken = handover_reuse.claim(directory, temporary)
    descriptor, old_size = taken if taken is not None else (None, 0)
    if descriptor is None:
        try:
            # O_EXCL|O_NOFOLLOW, mode 0644 by fchmod: never through a symlink or into a file someone else prepared,
            # and readable by a merger of another user whatever our umask.
            descriptor = directory.create(temporary, fs.FILE_MODE)
        except OSError as error:
            raise write_error(directory.path, "create a hand-over file in", error) from None
    try:
        write_parts(descriptor, (data,))
        if old_size > len(data):
            os.ftruncate(descriptor, len(data))  # the old bytes past the new ones
    except BaseException as error:
        os.close(descriptor)
        unlink_quietly(directory, temporary)
        if isinstance(error, OSError):
            raise write_error(directory.path_of(temporary), "write the hand-over file", error) from None
        raise
    return temporary, f"{handover_id}{SUFFIX}", descriptor


def publish(directory: fs.Directory, temporary: str, final: str, descriptor: int, durable: bool = True) -> None:
    """Rename a written hand-over into place: from now on the next merge applies it. ``descriptor``: the file's,
    as :func:`write` left it open; closed here whatever happens. ``durable``: then the file (through that
    descriptor: the inode written, whatever its name holds by then) and the directory are fsynced, so that a power
    loss keeps it; without, it survives the process (a SIGKILL), not the machine.

    The fsyncs come after the rename: a merger may apply the hand-over at once, since its bytes were all written
    before the rename (whole in the page cache, whatever happens to this process), and the call that forgets the
    events returns only after both. On ext4 the file's fsync commits the rename in the same journal commit, so
    the directory's has nothing left to wait for: one commit per hand-over, not two, which under many writers
    halves the time they queue on the journal (bench/README.md). A power loss before the fsyncs, the call not
    returned, may leave the name with no bytes: a merger removes such a file (:func:`read`)."""
    try:
        try:
            directory.rename(temporary, final)
        except OSError as error:
            unlink_quietly(directory, temporary)
            raise write_error(directory.path_of(final), "publish the hand-over file", error) from None
        from fraisier_textfile.store.handover_reuse import remember

        remember(directory, final[: -len(SUFFIX)])
        if durable:
            # Past the rename a failure cannot take it back (a merger may have applied it already): it stays
            # handed over, and the failure is logged. A merger that applied and removed it meanwhile made its
            # own commit durable first; the fsync of an unlinked file still succeeds.
            try:
                os.fsync(descriptor)
            except OSError as error:
                log.warning("cannot make the hand-over %s durable: %s", directory.path_of(final), error.strerror)
    finally:
        os.close(descriptor)
    if durable:
        directory.fsync()


def pending(directory: fs.Directory) -> tuple[list[str], int, list[str], int]:
    """The ids of the complete hand-overs in the directory, oldest first (see :func:`new_id`), how many are set
    aside (see handover_aside.py), the ids of the entries named as hand-overs that can never be applied
    whatever they hold (set aside now, or left where they are if that failed), and how many more spent hand-overs
    the directory may keep (handover_reuse.py).

    The directory is shared by a group (SHARED_DIRECTORY_MODE): one entry a member made there by mistake or on
    purpose must not stop every merge of every process. Named as a hand-over but not a regular file (a FIFO, a
    directory, a symlink to anything, a device, a socket), it is set aside by its name, never opened or followed;
    any other name is not ours and is left alone, whatever it is, but the hand-overs' counter: one that is not a
    regular file, or that writers refuse (handover_aside.unusable_counter), is moved aside too
    (handover_aside.set_counter_aside), and the next hand-over makes a new one."""
    from fraisier_textfile.store.handover_aside import (
        SET_ASIDE_SUFFIX,
        not_regular,
        set_aside,
        set_counter_aside,
        unusable_counter,
    )
    from fraisier_textfile.store.handover_order import SEQUENCE_FILE
    from fraisier_textfile.store.handover_reuse import room

    try:
        entries = directory.entries()
    except OSError as error:
        raise write_error(directory.path, "read the hand-over directory", error) from None
    ids = []
    refused = []
    kept_aside = sum(1 for entry in entries if entry.name.endswith(SET_ASIDE_SUFFIX))
    for entry in entries:
        name = entry.name
        if name.startswith(TEMPORARY_PREFIX) or not name.endswith(SUFFIX):
            if name == SEQUENCE_FILE:
                counter_problem = unusable_counter(directory, entry)
                if counter_problem is not None:
                    kept_aside += set_counter_aside(directory, counter_problem, kept_aside)
            continue
        handover_id = name[: -len(SUFFIX)]
        problem: str | None
        if not handover_id.isprintable() or " " in handover_id:
            # Not a name new_id makes (a copy, a hand-made file): the file lists applied ids space-separated on
            # one line, so such an id would read back as two (and be applied again while its deletion is
            # pending), or could not be written at all (a newline), failing every merge.
            problem = "its name is not one fraisier writes"
        elif not entry.is_file(follow_symlinks=False):
            problem = not_regular(directory, name)
            if problem is None:
                continue  # gone since the listing
        else:
            ids.append(handover_id)
            continue
        kept_aside += set_aside(directory, handover_id, problem, kept_aside)
        refused.append(handover_id)
    # Plain string order is the order written: numbered ids have the same width, and those of earlier versions
    # (wall-clock time first, digits) sort before every numbered one ("s"): they were written before.
    ids.sort()
    return ids, kept_aside, refused, room(entry.name for entry in entries)


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


class EmptyHandover(Exception):
    """A hand-over with no bytes: the name of one whose writer lost power before its fsync (see :func:`publish`),
    whose call never returned. It holds no events: removed, never set aside (this never escapes the module)."""


def read(directory: fs.Directory, handover_id: str, schema: Schema) -> Changes:
    """The changes of one hand-over (opened without following a symlink and without blocking on a FIFO). Raises
    UnreadableHandover, EmptyHandover, NeverReadable (handover_aside.py: also for one larger than
    handover_codec.LARGEST, unread), or TextfileWriteError for an error that may pass (EIO, EMFILE, ENOMEM...: this
    merge fails, the next tries again)."""
    from fraisier_textfile.store import handover_codec
    from fraisier_textfile.store.handover_aside import NeverReadable

    name = f"{handover_id}{SUFFIX}"
    try:
        data = directory.read_regular(name, largest=handover_codec.LARGEST)
    except UnexpectedFileError:
        raise NeverReadable.refused(directory, name) from None
    except OSError as error:
        never = NeverReadable.of(error)
        if never is None:
            raise write_error(directory.path_of(name), "read the hand-over file", error) from None
        raise never from None
    if not data:
        raise EmptyHandover(handover_id)
    return handover_codec.decode(data, schema, handover_id)


def remove(directory: fs.Directory, handover_ids: list[str], spent_room: int = 0) -> None:
    """Remove applied hand-overs: up to ``spent_room`` of them renamed to spent hand-overs, for their writers
    to take back (handover_reuse.py), the rest deleted. A failure is only logged: the file lists them as applied,
    so a later merge skips them and tries again."""
    if spent_room > 0:
        from fraisier_textfile.store.handover_reuse import pays, retire

        if pays(directory):
            handover_ids = retire(directory, handover_ids, spent_room)
    for handover_id in handover_ids:
        name = f"{handover_id}{SUFFIX}"
        try:
            directory.unlink(name)
        except OSError as error:
            log.warning("cannot remove the applied hand-over %s: %s", directory.path_of(name), error.strerror)


INLINE_REMOVALS = 4
"""Applied hand-overs a merge deletes itself; past that many, a background thread deletes them. Under
contention one merge applies a hundred hand-overs (group commit), and deleting them waits on the filesystem's
journal, which other writers' fsyncs keep busy: most of the slowest record calls' time under a race
(bench/README.md), for files that no reader needs gone."""


def remove_soon(directory: fs.Directory, handover_ids: list[str], spent_room: int = 0) -> None:
    """Delete applied hand-overs: a few at once, more from the process's background thread (see INLINE_REMOVALS
    and process.py), through a descriptor of its own of ``directory`` (the caller closes its own): the name is
    never resolved again."""
    if len(handover_ids) <= INLINE_REMOVALS:
        remove(directory, handover_ids, spent_room)
    else:
        held, ids = directory.copy(), list(handover_ids)

        def job() -> None:
            try:
                remove(held, ids, spent_room)
            except Exception:  # a bug here must not stop the thread: the ids stay listed for a later merge
                log.exception("deleting applied hand-overs in %s failed", held.path)
            finally:
                held.close()

        process.background.submit(job)


def wait_for_removals(timeout: float = 10.0) -> bool:
    """Wait until the background deletions queued so far are done (at most ``timeout`` seconds); True if they
    are. A command that should leave a tidy directory (``fraisier textfile refresh``) calls it."""
    return process.background.wait(timeout)


def remove_stale_temporaries(directory: fs.Directory) -> None:
    """Temporary hand-overs of writers killed before their rename: their events were never forgotten by a
    live process, so they are litter (kept for an hour, since a live writer may be mid-way)."""
    from fraisier_textfile.store.handover_reuse import remove_stale

    try:
        # Names only (listdir, not scandir): the directory may hold 100,000 hand-overs, and few are temporary.
        every = directory.names()
    except OSError:
        return
    remove_stale(directory, every)
    names = [name for name in every if name.startswith(TEMPORARY_PREFIX)]
    now = time.time()
    for name in names:
        try:
            status = directory.lstat(name)
            if status is not None and stat.S_ISREG(status.st_mode) and now - status.st_mtime > STALE_TEMPORARY_SECONDS:
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
"""Seconds a merge call may take in all, its own merge and those of the hand-overs that arrived while it held the
lock, beyond the first of those (always merged: the hand-over invariant, group_commit.py): one or two merges. Under
sustained contention the other writers' own merges take the rest; a holder that kept on merging would make its
own caller the slowest."""

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
        self._spent_room = 0

    def collect(self, merge: Merge) -> Changes | None:
        self.backlog_left = False
        document = merge.document
        directory = self._directory = open_directory(merge.textfile)
        if directory is None:
            self.handled = set()
            return None
        from fraisier_textfile.store.handover_aside import NeverReadable, set_aside
        from fraisier_textfile.store.handover_codec import ForeignHandover, NewerHandover, UnreadableHandover
        from fraisier_textfile.store.handover_left import LeftForOthers
        from fraisier_textfile.store.handover_order import sequence_of

        ids, kept_aside, refused, self._spent_room = pending(directory)
        left_for_others = LeftForOthers(directory, os.path.basename(merge.path), document.schema.fingerprint)
        remembered = left_for_others.remembered() if ids else frozenset()
        self._newest = (sequence_of(ids[-1]) or 0) if ids else 0
        already = set(APPLIED.get(document))
        # Those applied before and still here are an earlier merge's, about to be retired (after its release, or
        # from its background thread): their room is theirs, else merges that overlap each fill the same room.
        self._spent_room = max(0, self._spent_room - sum(1 for handover_id in ids if handover_id in already))
        read_now: dict[str, Changes] = {}
        handled = set(refused)  # one left in place (not set aside) starts no merge after each: none can apply it
        newer = 0
        newly_left = remembered_waiting = 0
        left: list[str] = []
        for number, handover_id in enumerate(ids):
            if handover_id in already:
                handled.add(handover_id)
                continue
            if handover_id in remembered:  # read by an earlier merge: not again (handover_left.py)
                handled.add(handover_id)
                newer += 1
                remembered_waiting += 1
                continue
            if len(read_now) + newly_left >= HANDOVERS_PER_MERGE:
                # The work a merge does is bounded like its wait for the lock: the rest waits for the next
                # merger. Each is applied exactly once all the same: only the ids read here are listed.
                rest = [other for other in ids[number:] if other not in already]
                left = [other for other in rest if other not in remembered]
                newer += len(rest) - len(left)
                remembered_waiting += len(rest) - len(left)
                break
            handled.add(handover_id)
            try:
                read_now[handover_id] = read(directory, handover_id, document.schema)
            except ForeignHandover as error:
                newer += 1
                newly_left += 1
                left_for_others.note(handover_id)
                if process.first_time("hand-over left for another merger", handover_id):
                    log.info("the hand-over %s was %s: left for a merger of that schema",
                             directory.path_of(f"{handover_id}{SUFFIX}"), error)
            except NewerHandover as error:
                newer += 1
                newly_left += 1
                left_for_others.note(handover_id)
                if process.first_time("hand-over left for another merger", handover_id):
                    log.warning(
                        "the hand-over %s was written by a newer version of fraisier_textfile (%s): left for a "
                        "merger of that version; upgrade this one", directory.path_of(f"{handover_id}{SUFFIX}"), error,
                    )
            except (UnreadableHandover, NeverReadable) as error:
                kept_aside += set_aside(directory, handover_id, str(error), kept_aside)
            except EmptyHandover:
                log.info("the hand-over %s is empty, the litter of a writer stopped before its fsync: removed",
                         directory.path_of(f"{handover_id}{SUFFIX}"))
                unlink_quietly(directory, f"{handover_id}{SUFFIX}")
        left_for_others.save(ids, remembered_waiting)
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
                    kept_aside += set_aside(directory, handover_id, str(error), kept_aside)
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
            _hand_over_latest(merge.own, directory, document.schema)
        return combined if read_now else None

    def after_apply(self, merge: Merge) -> None:
        applied = tuple(self._applied)
        directory = self._directory
        if directory is not None and not set(APPLIED.get(merge.document)) <= set(applied):
            # Ids leave the list once their files are gone (retired or deleted by an earlier merge, after its
            # commit). The removal is made durable before the file that drops them: on an ext4 without a journal
            # nothing orders the hand-over directory's blocks after the textfile directory's, and a power loss
            # would bring back <id>.json, its own bytes under its own name, listed no more: applied twice. (A
            # journaled ext4 commits them in order already; there it costs a commit, in a merge that drops ids.)
            directory.fsync()
        APPLIED.put(merge.document, applied)

    def removes_after_commit(self, merge: Merge) -> bool:
        # The applied ones only: moving the counter on (note_merged) needs no durable rename, the counter is a hint
        # never fsynced, and the hand-overs it passes stay until a merge applies them.
        return self._directory is not None and bool(self._applied)

    def after_commit(self, merge: Merge) -> None:
        # After the release: removing files waits on the filesystem's journal, which under load (other writers'
        # fsyncs) can take seconds for a few hundred hand-overs. Through the descriptor of the directory they
        # were listed in: a writer may have swapped it for a symlink since the lock was released.
        directory = self._directory
        if directory is None:
            return
        if self._newest is not None:
            from fraisier_textfile.store.handover_order import note_merged

            note_merged(directory, self._newest, self._oldest_waiting)
        if self._applied:
            remove_soon(directory, self._applied, self._spent_room)

    def close(self) -> None:
        if self._directory is not None:
            self._directory.close()
        self._directory = None
        self._applied = []
        self._newest = self._oldest_waiting = None
        self._spent_room = 0

    def waiting_in(self, textfile: fs.Directory, seen: Collection[str] = ()) -> bool:
        """Whether hand-overs wait in the textfile directory held open that no merge of this participant has
        seen yet, nor are in ``seen`` (those another store's merge saw)."""
        try:
            directory = open_directory(textfile)
            if directory is None:
                return False
            with directory:
                names = directory.names()
        except (OSError, FraisierTextfileError):
            return False
        return any(
            name.endswith(SUFFIX) and not name.startswith(TEMPORARY_PREFIX)
            and name[: -len(SUFFIX)] not in self.handled and name[: -len(SUFFIX)] not in seen
            for name in names
        )


def _hand_over_latest(changes: Changes, directory: fs.Directory, schema: Schema) -> None:
    """Hand over the latest gauges of ``changes`` behind the hand-overs waiting, and take them out of it."""
    latest = Changes()
    latest.latest.update(changes.latest)
    try:
        temporary, final, descriptor = write(directory, latest, schema)
        publish(directory, temporary, final, descriptor, durable=False)
    except FraisierTextfileError as error:
        log.debug("latest gauges applied now, not behind the hand-overs waiting: %s", error)
        return
    changes.latest.clear()
