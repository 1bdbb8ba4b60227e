"""Spent hand-overs: the files of applied hand-overs, kept for their writers to write their next hand-overs in.

Why: a merge used to delete every hand-over it applied, and each writer made a new file for each hand-over. A new
file and a deleted one cost more than their bytes. On an ext4 without a journal the inode allocator skips, and
reads the deletion time of, every inode freed in the last minutes; on a filesystem mounted with ``discard`` each
deletion waits for the device to discard the file's blocks; and both hold the directory's lock, on which every
other writer of the directory queues (bench/README.md, "bench_handover.py"). So a merge renames an applied
hand-over ``<id>.json`` to ``<id>.spent`` instead (:func:`retire`), and the process that wrote it takes it back
for its next hand-over (:func:`claim`): a rename, the new bytes over the old, a rename. Only where that pays
(:func:`pays`): on a journaled ext4 or a tmpfs a new file costs two system calls and little else, and taking one
back more.

The rules that keep the hand-over protocol whole:

- A spent file is never read by a merge: it is named neither as a hand-over nor as a temporary, and the merge
  that applied it listed its id (``applied-handovers``) before the rename, so no merge reads ``<id>.json`` again.
- Its writer takes back only its own hand-overs (the ids it published, remembered in this process), and only a
  file that is still one: a regular file of this user's with one link, mode FILE_MODE, whose bytes begin with
  that id (handover_codec writes it first). A writer of the directory may move any file of ours under that name
  (a rename needs no permission on the file); root then writes into nothing but its own spent hand-over.
- A hand-over carries its own id first and a checksum of its bytes last, and a merge sets aside one whose id is
  not its name's or whose bytes do not match (handover_codec): after a power loss between a writer's rename and
  its fsync, the name may hold the old bytes of the spent file it reused, a hand-over already applied, or a mix of
  old and new sectors (an overwrite of allocated blocks is not ordered with the rename, even on a journaled ext4),
  neither of which may be applied.
- Bounded: at most SPENT_LIMIT spent files wait in a directory (the rest is deleted as before), and the litter
  pass deletes those whose writer is gone or that waited longer than SPENT_STALE_SECONDS.

Earlier versions never make or read spent files and delete what they apply, as before: a spent file in a
directory only they use waits for the next litter pass of this version.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Iterable

from fraisier_textfile.logger import get_logger
from fraisier_textfile.store import fs, process

SUFFIX = ".spent"
HANDOVER_SUFFIX = ".json"  # handovers.SUFFIX (not imported: handovers imports this module)
SPENT_LIMIT = 64
"""Spent files a directory keeps at most: about one per process that hands over now and then, a few for the
busiest, each a file of a few hundred bytes."""
SPENT_STALE_SECONDS = 600.0
"""A spent file its writer has not taken back in this long is deleted by the litter pass, its writer alive or not:
a process that hands over takes one back at each hand-over."""
REMEMBERED = 256
"""Ids of this process's hand-overs remembered for taking back: more than a merge applies at once."""
_LOOKED_AT = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_TAKEN = os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
log = get_logger(__name__)


class _Published:
    """The ids of the hand-overs this process published, oldest first, by hand-over directory (a process may
    write to several textfile directories). A forked child starts with none: its parent takes back its own."""

    def __init__(self) -> None:
        self.pid = 0
        self.ids: dict[str, deque[str]] = {}

    def mine(self, directory: fs.Directory) -> deque[str]:
        if self.pid != os.getpid():
            self.pid = os.getpid()
            self.ids = {}
        # By path, not by inode (no system call): a wrong guess only costs a look, every file is checked.
        key = directory.path
        ids = self.ids.get(key)
        if ids is None:
            if len(self.ids) >= 16:  # a process writing to ever new directories (tests): keep the latest
                self.ids.clear()
            ids = self.ids[key] = deque(maxlen=REMEMBERED)
        return ids


_published = _Published()


# Where taking back pays

SETTING = "FRAISIER_TEXTFILE_REUSE_HANDOVERS"
"""``auto`` (the default): hand-overs are taken back where new and deleted files are costly (:func:`costly_files`);
``on``: everywhere; ``off``: nowhere, as before."""
_paying: dict[str, bool] = {}
"""Whether taking back pays, by hand-over directory path (a path stays on its filesystem for a process's life)."""


def pays(directory: fs.Directory) -> bool:
    """Whether hand-overs are taken back in ``directory`` (see SETTING). Where a new file and a deletion cost
    little (a journaled ext4, tmpfs), taking one back costs more: seven system calls where a new file costs two,
    and in bench_floor's race on a journaled ext4 its p99 was 1.2x main's (bench/README.md)."""
    setting = os.environ.get(SETTING, "auto")
    if setting in ("on", "off"):
        return setting == "on"
    if setting != "auto" and process.first_time(SETTING, setting):
        log.warning("%s=%r is not on, off or auto: auto is used (set one of those three)", SETTING, setting)
    known = _paying.get(directory.path)
    if known is None:
        try:
            known = costly_files(directory.status().st_dev)
        except OSError:
            known = False
        _paying[directory.path] = known
    return known


def costly_files(device: int, mounts: str | None = None,
                 journal_of: Callable[[int, int], str | None] | None = None) -> bool:
    """Whether new and deleted files are costly on the filesystem of ``device``: one mounted with ``discard``
    (each deletion waits for the device to discard the file's blocks; not ``discard=async``), or an ext4 without a
    journal (each new file costs the inode allocator a scan of the inodes freed in the last minutes). ``mounts``:
    /proc/self/mountinfo's text; ``journal_of(major, minor)``: an ext4's /sys/fs/ext4/<device>/journal_task (the
    journal thread's pid, ``<none>`` without one), None if unknown. False where it cannot be told: as before."""
    if mounts is None:
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as file:
                mounts = file.read()
        except OSError:
            return False
    wanted = f"{os.major(device)}:{os.minor(device)}"
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 7 or fields[2] != wanted or "-" not in fields[6:]:
            continue
        separator = fields.index("-", 6)
        kind = fields[separator + 1] if len(fields) > separator + 1 else ""
        options = {*fields[5].split(","), *(fields[separator + 3].split(",") if len(fields) > separator + 3 else ())}
        if "discard" in options:
            return True
        if kind == "ext4":
            journal = (journal_of or ext4_journal)(os.major(device), os.minor(device))
            return journal == "<none>"
        return False
    return False


def ext4_journal(major: int, minor: int) -> str | None:
    """The journal of the ext4 on device ``major:minor``, from /sys/fs/ext4/<device>/journal_task: its jbd2 thread's
    pid, ``<none>`` without a journal; None where it cannot be told (not an ext4, no sysfs). The one probe of it
    (bench/_common.py says it in each bench's first line)."""
    try:
        name = os.path.basename(os.readlink(f"/sys/dev/block/{major}:{minor}"))
        with open(f"/sys/fs/ext4/{name}/journal_task", encoding="ascii", errors="replace") as task:
            return task.read().strip()
    except OSError:
        return None


def remember(directory: fs.Directory, handover_id: str) -> None:
    """Note a hand-over this process has just published (renamed into place) in ``directory``: once applied, it may
    be taken back."""
    _published.mine(directory).append(handover_id)


def header(handover_id: str) -> bytes:
    """The bytes every hand-over with this id begins with (handover_codec.encode)."""
    return b'{"id":"' + handover_id.encode("ascii", "replace") + b'"'


def claim(directory: fs.Directory, temporary: str) -> tuple[int, int] | None:
    """A descriptor, open for writing at offset 0, on a spent hand-over of this process's, renamed to ``temporary``,
    and its size; None if there is none to take back (the caller makes a new file). Never raises: taking one back
    is an optimisation, and whatever goes wrong here leaves the caller to make a new file."""
    ids = _published.mine(directory)
    if not ids or not pays(directory):
        return None
    for _ in range(2):  # at most two looks: a hand-over call must not scan
        # Taken off the list before the look, put back if not applied yet: the threads of a process share the
        # list, and each must look at the id it took (one atomic pop), never pop one another thread looked at.
        try:
            oldest = ids.popleft()
        except IndexError:
            return None
        try:
            found = directory.lstat(oldest + SUFFIX)
            if found is None and directory.lstat(oldest + HANDOVER_SUFFIX) is not None:
                ids.appendleft(oldest)
                return None  # not applied yet, nor are the newer ones (merges apply the oldest first)
        except OSError:
            ids.appendleft(oldest)
            return None
        if found is None:
            continue  # deleted: by an earlier version, past SPENT_LIMIT, or set aside
        # Only a regular file of this user's is taken (never a device, a FIFO or a symlink a writer of the
        # directory put there); what the name holds once it is ours is checked again, through its descriptor.
        if stat.S_ISREG(found.st_mode) and found.st_uid == os.geteuid() and _fresh(found):
            return _take(directory, oldest, temporary)
        return None
    return None


def _fresh(found: os.stat_result) -> bool:
    """Whether a spent file's bytes are recent enough to be taken back. Under the temporary name, until the new
    bytes are written, the file keeps the mtime of the hand-over it held, and every litter pass (this version's,
    earlier versions') deletes a temporary whose mtime is over an hour old as a killed writer's: a hand-over that
    waited that long before a merge applied it would be deleted under its writer, whose publish would then fail.
    One older than SPENT_STALE_SECONDS is left to the litter pass."""
    return time.time() - found.st_mtime <= SPENT_STALE_SECONDS


def _take(directory: fs.Directory, handover_id: str, temporary: str) -> tuple[int, int] | None:
    """Rename the spent hand-over ``handover_id`` to ``temporary``, open it and check that it is still what this
    process wrote: its descriptor and size, or None and the entry put back under its name."""
    name = handover_id + SUFFIX
    try:
        directory.rename(name, temporary)
    except OSError:
        return None  # taken by another process since (a forked sibling), or the directory fails: a new file
    taken = _open_own(directory, temporary, header(handover_id))
    if taken is not None:
        return taken
    # Not what this process wrote (a writer of the directory swapped it): back under its name, untouched.
    try:
        directory.rename(temporary, name)
    except OSError:
        pass
    return None


def _open_own(directory: fs.Directory, temporary: str, expected: bytes) -> tuple[int, int] | None:
    """``temporary`` opened for writing and its size, if it is a spent hand-over of this process's (a regular file
    of this user's with one link, mode FILE_MODE, beginning with ``expected``); None without opening anything else.
    A writer of the directory may have put anything under that name between the look and the rename: looked at
    first through an O_PATH descriptor, which opens nothing (a FIFO, another user's file), then opened through it
    (its /proc/self/fd link: that same inode, no name resolved again)."""
    try:
        probe = os.open(temporary, _LOOKED_AT, dir_fd=directory.descriptor)
    except OSError:
        return None
    try:
        status = os.fstat(probe)
        if not (
            stat.S_ISREG(status.st_mode) and status.st_uid == os.geteuid() and status.st_nlink == 1
            and stat.S_IMODE(status.st_mode) == fs.FILE_MODE
        ):
            return None
        descriptor = os.open(f"/proc/self/fd/{probe}", _TAKEN)  # no /proc (a bare chroot): a new file instead
    except OSError:
        return None
    finally:
        os.close(probe)
    try:
        if os.pread(descriptor, len(expected), 0) == expected:
            return descriptor, status.st_size
    except OSError:
        pass
    os.close(descriptor)
    return None


def retire(directory: fs.Directory, handover_ids: list[str], room: int) -> list[str]:
    """Rename up to ``room`` of the applied hand-overs ``handover_ids`` whose writer is alive (the newest: their
    writers are the likeliest to hand over again) to spent files; return the ids left to delete."""
    left = []
    for handover_id in reversed(handover_ids):
        if room <= 0 or not _writer_alive(handover_id):
            left.append(handover_id)
            continue
        try:
            directory.rename(handover_id + HANDOVER_SUFFIX, handover_id + SUFFIX)
        except FileNotFoundError:
            continue  # another merger that listed it too retired or deleted it
        except OSError:
            left.append(handover_id)
            continue
        room -= 1
    return left


def room(names: Iterable[str]) -> int:
    """How many more spent files the directory listed as ``names`` may keep."""
    return max(0, SPENT_LIMIT - sum(1 for name in names if name.endswith(SUFFIX)))


def remove_stale(directory: fs.Directory, names: Iterable[str]) -> None:
    """Delete the spent files among ``names`` whose writer is gone or that waited past SPENT_STALE_SECONDS (the
    litter pass). A file of another user's that this process may not delete is left for its owner."""
    now = time.time()
    for name in names:
        if not name.endswith(SUFFIX):
            continue
        try:
            status = directory.lstat(name)
            if status is None:
                continue
            if now - status.st_ctime <= SPENT_STALE_SECONDS and _writer_alive(name[: -len(SUFFIX)]):
                continue
            directory.unlink(name)
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.EACCES):
                log.debug("cannot remove the spent hand-over %s: %s", directory.path_of(name), error.strerror)


def _writer_alive(handover_id: str) -> bool:
    """Whether the process that wrote the hand-over ``handover_id`` may still take it back (handover_order.writer_of).
    A pid reused by another process keeps a spent file until SPENT_STALE_SECONDS; one of another pid namespace (a
    container sharing the directory) reads as gone, or as that namespace's other process: the file is then
    deleted, or kept until SPENT_STALE_SECONDS."""
    from fraisier_textfile.store.handover_order import writer_of

    pid = writer_of(handover_id)
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: alive, another user's
    return True
