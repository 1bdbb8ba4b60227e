"""Hand-overs that can never be applied, set aside: why each one cannot be, and moving it out of the way.

One hand-over that cannot be applied must not fail this merge and every later one: it is renamed
``<id>.unreadable`` (:func:`set_aside`), kept for inspection up to SET_ASIDE_LIMIT and counted in the file
(handovers.SET_ASIDE_FAMILY), its problem logged. The problem is its content (handover_codec.UnreadableHandover),
its name (handovers.pending), or what the entry is: the hand-over directory is shared by a group, and a member may
leave there under a hand-over's name a FIFO, a directory, a symlink to anything, a device or a socket, or a file
this process may not read (or, as root, must not: fs.Directory.hides), or one larger than any hand-over
(handover_codec.LARGEST: a sparse file of any size takes no disk), which is set aside unread. One that is not a
regular file is described from its own status and renamed by its name, through the directory held open: never
opened, followed or waited on. Only what can never succeed is set aside: an error that may pass (EIO, EMFILE,
ENOMEM...) fails the merge, and the next tries again (handovers.read).

Loaded by the first merge that finds the hand-over directory, as handover_codec.py and handover_order.py are.
"""

from __future__ import annotations

import errno
import os
import stat

from fraisier_textfile.store import fs, process
from fraisier_textfile.store.handovers import SUFFIX, log

SET_ASIDE_SUFFIX = ".unreadable"
SET_ASIDE_LIMIT = 1000
"""Hand-overs kept aside for inspection at most; they are counted in the file (SET_ASIDE_FAMILY)."""


class NeverReadable(Exception):
    """A hand-over this process can never read, whatever it holds: not a regular file (swapped in since the
    listing), one it may not read, or, as root, one the directory's writers may not read (fs.Directory.hides). Set
    aside as an unreadable one is (this never escapes the store)."""

    @classmethod
    def refused(cls, directory: fs.Directory, name: str) -> NeverReadable:
        """For the hand-over ``name`` that fs refused to read (UnexpectedFileError): why, for the log."""
        return cls(_why_refused(directory, name))

    @classmethod
    def of(cls, error: OSError) -> NeverReadable | None:
        """For ``error``, raised reading a hand-over: why it can never be read, for the log; None for an error
        that may pass."""
        if isinstance(error, PermissionError):
            return cls(f"this process may not read it ({error.strerror})")
        if error.errno == errno.EFBIG:
            return cls(f"it is too large for a hand-over: {error.strerror}")
        return None


def _why_refused(directory: fs.Directory, name: str) -> str:
    """What fs refused in the hand-over ``name`` (UnexpectedFileError), said from its own status, for the log."""
    try:
        status = directory.lstat(name)
        if status is not None and stat.S_ISREG(status.st_mode) and directory.hides(status):
            return f"it {directory.why_hidden(status)}"
    except OSError:
        pass
    return not_regular(directory, name) or "it is gone"


def not_regular(directory: fs.Directory, name: str) -> str | None:
    """Why the entry ``name``, not a regular file, cannot be a hand-over, for the log (None: it is gone)."""
    try:
        what = directory.describe(name)
    except OSError as error:
        what = f"something this process cannot look at ({error.strerror})"
    return None if what == "gone" else f"it is {what}, not a regular file"


def unusable_counter(directory: fs.Directory, entry: os.DirEntry[str]) -> str | None:
    """Why the hand-overs' counter ``entry`` is one no writer will use, for the log (None: it is usable, or gone).
    Writers refuse (handover_order._open_sequence) what is not a regular file, a file with other names (a hard link:
    a snapshot of the directory by ``cp -al``, or a writer's link to a file of root's), since writing
    it would change those, and, as root, a file its writers may not read; left there, every hand-over after would be
    numbered 0, for ever, its order lost. Only the entry's own status is looked at, now, not the listing's type: a
    writer's new counter, made since the listing where the FIFO was, is not moved aside. It is never opened."""
    try:
        status = directory.lstat(entry.name)
    except OSError:
        return None  # looked at again by the next merge
    if status is None:
        return None
    if not stat.S_ISREG(status.st_mode):
        return not_regular(directory, entry.name)
    if status.st_nlink > 1:
        return f"it has {status.st_nlink - 1} other name(s) (hard links), which writing it would change"
    if directory.hides(status):
        return f"it {directory.why_hidden(status)}"
    return None


def set_aside(directory: fs.Directory, handover_id: str, problem: str, kept: int) -> bool:
    """Keep a hand-over that can never be applied for inspection, out of the way of every later merge: renamed
    (through the directory held open, so whatever it is, it is never opened or followed). At most SET_ASIDE_LIMIT
    are kept: past that, one is deleted (a writer feeding bad files would fill the disk). ``kept``: how many are
    kept already, counted from the merge's listing (a listing for each would make a merge over many bad ones
    quadratic). Returns whether it was kept."""
    return _move_aside(directory, f"{handover_id}{SUFFIX}", f"{handover_id}{SET_ASIDE_SUFFIX}", problem, kept,
                       "the hand-over {path} cannot be applied ({problem})", "its events are not counted")


def set_counter_aside(directory: fs.Directory, problem: str, kept: int) -> bool:
    """Move the hand-overs' counter (handover_order.SEQUENCE_FILE) out of the way when no writer will use it
    (:func:`unusable_counter`: a FIFO, a directory, a symlink a writer of the directory put there, a hard link), as
    :func:`set_aside` moves a hand-over: a writer numbers its hand-overs 0 while it is there (handover_order.py
    refuses to use it), and the next one makes a new counter, which the next merge moves past every hand-over it
    lists (handover_order.note_merged), as after a power loss. Returns whether it was kept."""
    from fraisier_textfile.store.handover_order import SEQUENCE_FILE

    aside = f"{SEQUENCE_FILE}-{os.urandom(6).hex()}{SET_ASIDE_SUFFIX}"
    return _move_aside(directory, SEQUENCE_FILE, aside, problem, kept,
                       "the hand-overs' counter {path} cannot be used ({problem})",
                       "the next hand-over makes a new one")


def _move_aside(directory: fs.Directory, name: str, aside: str, problem: str, kept: int, what: str,
                then: str) -> bool:
    path = directory.path_of(name)
    said = what.format(path=path, problem=problem)
    past_bound = kept >= SET_ASIDE_LIMIT
    try:
        if past_bound:
            directory.unlink(name)
        else:
            directory.rename(name, aside)
    except FileNotFoundError:
        return False  # removed meanwhile (by whoever put it there): nothing left to set aside, nor to say
    except OSError as error:
        # Left where it is (a directory past the bound, which unlink cannot remove; a rename the directory refuses):
        # every merge meets it again and goes on without it, so each process says so once, not at every merge.
        if process.first_time("hand-over not set aside", path):
            log.error("%s, nor %s: %s; left in place; remove it", said, "deleted" if past_bound else "moved aside",
                      error.strerror)
        return False
    if past_bound:
        log.error("%s: deleted, %s (%d are kept already; inspect and remove them)", said, then, kept)
        return False
    log.error("%s: kept as %s, %s", said, directory.path_of(aside), then)
    return True
