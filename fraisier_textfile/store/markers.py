"""The marker files of deployments in flight: writing one, reading them, removing them, and whether the
deployment that wrote one is still alive.

A deployment in progress is a small file in ``<textfile dir>/.fraisier-inflight/`` named
``<pid>-<start time>-<random>``. The active-deployments gauge counts the markers of live deployments; a
marker whose deployment died is a crashed deployment.

Liveness is a lock the dead cannot hold: the process that starts a deployment keeps an exclusive flock(2)
on its marker's open file for as long as the deployment runs, and the kernel drops it when that process
dies, however it dies (SIGKILL, the OOM killer). A reader probes it with a non-blocking shared lock on a
read-only descriptor, so it needs no access to the writer's /proc entry: it works across users under
``hidepid=2`` or systemd's ``ProtectProc=invisible``, and across PID namespaces on one kernel. flock, not
fcntl's record locks: those belong to a process, so a probe from the writer's own process would succeed and,
on closing, drop the writer's lock.

flock is local to one kernel. The textfile directory is meant to be local (node_exporter reads it); over NFS
Linux emulates flock with the server's byte-range locks, which can be lost when the server restarts and do
not conflict within one process. So a process never probes markers it holds itself, and a marker written
under another boot id (another boot, or another host sharing the directory) is dead whatever its lock says.

Markers written by earlier versions hold no lock. For those the PID and its start time are checked in /proc
(PIDs are reused: a new process with an old PID has another start time). Where /proc does not show the
process (another user's under hidepid, another PID namespace), the marker counts as alive: a deployment is
never counted crashed by guesswork. /proc is also consulted for locked markers, but only ever to prove a
death the lock cannot see (a descendant that inherited the descriptor outside Python's fork hooks).

What a fork means: a forked child does not carry its parent's deployments (the recorder empties its
in-flight list in the child too), so the child closes its copies of the lock descriptors at once (process.py): a child
that outlives its parent never keeps the parent's deployment alive. The descriptors are also close-on-exec,
so no program started by the deployment (``fraisier exec``'s command included) inherits them: the
deployment lives exactly as long as the process that will record its end. If that process dies while the
command runs, nothing will ever record the outcome: the deployment has crashed, even if the command (a
daemon it started, say) runs on.
"""

from __future__ import annotations

import errno
import fcntl
import os

from fraisier_textfile.errors import FraisierTextfileError, InvalidValueError, UnexpectedFileError, write_error
from fraisier_textfile.logger import get_logger
from fraisier_textfile.store import fs, process
from fraisier_textfile.store.files import write_parts
from fraisier_textfile.validate import check_label_value

MARKER_DIRECTORY = ".fraisier-inflight"
LIVENESS_LOCK = "flock"
"""The marker's ``liveness`` field when its writer holds a lock on it while the deployment runs."""

log = get_logger(__name__)


class Marker:
    """One in-flight deployment."""

    __slots__ = ("_descriptor", "boot", "directory", "fraise_type", "id", "locked", "path", "pid_namespace", "provider")

    def __init__(
        self,
        id: str,
        provider: str,
        fraise_type: str,
        boot: str = "",
        pid_namespace: str = "",
        *,
        path: str | None = None,
        locked: bool = False,
        directory: fs.Directory | None = None,
    ) -> None:
        self.id = id
        self.provider = provider
        self.fraise_type = fraise_type
        self.boot = boot
        """The kernel's boot id when the marker was written: PIDs and start times restart at each boot."""
        self.pid_namespace = pid_namespace
        """The writer's PID namespace: a PID means nothing in another one (containers)."""
        self.path = path
        """Where the marker is, for a marker written or read here (None for one built by hand)."""
        self.locked = locked
        """Whether the writer holds a lock on the marker while the deployment runs (False: an older version)."""
        self.directory = directory
        """The marker directory it was read from, held open: its lock is probed through it, never by path."""
        self._descriptor: int | None = None

    @property
    def pid(self) -> int:
        return int(self.id.split("-", 1)[0])

    @property
    def start_time(self) -> str:
        return self.id.split("-", 2)[1]

    @property
    def held(self) -> bool:
        """Whether this process holds the marker's lock: the deployment is alive until :meth:`release`."""
        return self._descriptor is not None

    def release(self) -> None:
        """End this process's hold on the marker: from now on, its deployment is not alive.

        Call it once the deployment's end is accounted for in the textfile (the marker's id merged or handed
        over in ``Changes.retired_markers``), never before: a marker released while unaccounted is a crashed
        deployment to the next merger, and the end recorded later would count it a second time. Removing
        the marker (``remove_marker``, which a merge does) releases it. Calling it again does nothing.
        """
        with process.releasing:
            descriptor, self._descriptor = self._descriptor, None
            if process.held_markers.get(self.id) is self:
                del process.held_markers[self.id]
        if descriptor is None:
            return
        # Unlock explicitly rather than only close: should a child have inherited the descriptor without our
        # fork hook (a fork in C code), closing our copy alone would leave the lock held by it.
        try:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
        finally:
            os.close(descriptor)

    def forget_in_child(self) -> None:
        """In a forked child (process.py's fork hook): close this copy of the lock's descriptor, and only close it
        (unlocking would release the lock the parent holds through the same open file description)."""
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is not None:
            try:
                os.close(descriptor)
            except OSError:
                pass


def marker_directory(textfile_directory: fs.PathName) -> str:
    return os.path.join(textfile_directory, MARKER_DIRECTORY)


def create_marker(textfile_directory: fs.PathName, provider: str, fraise_type: str) -> Marker:
    """Write the marker of a deployment that starts now in this process, and hold its lock until
    :meth:`Marker.release` (or ``remove_marker``) or the end of the process."""
    from fraisier_textfile.store.process_identity import own_context, own_identity

    pid, start = own_identity()
    boot, namespace = own_context()
    directory = marker_directory(textfile_directory)
    marker = Marker(f"{pid}-{start}-{os.urandom(4).hex()}", provider, fraise_type, boot, namespace, locked=True)
    marker.path = os.path.join(directory, marker.id)
    import json  # here, not at the top: `fraisier record` never needs it

    content = {
        "provider": provider,
        "fraise_type": fraise_type,
        "boot": boot,
        "pid_namespace": namespace,
        "liveness": LIVENESS_LOCK,
    }
    data = json.dumps(content).encode("utf-8")
    # A tmp cleaner may remove the directory at any moment: made again, a few times, before giving up.
    for attempt in range(1, _MARKER_ATTEMPTS + 1):
        markers = _open_marker_directory(textfile_directory)
        try:
            # No fork meanwhile: its child would inherit the lock before it is noted as held (see process.py).
            with process.creating:
                marker._descriptor = _write_marker(markers.descriptor, marker.id, data)
                process.held_markers[marker.id] = marker
            return marker
        except FileNotFoundError as error:
            if attempt == _MARKER_ATTEMPTS:
                raise write_error(directory, "write a marker in", error) from None
        except OSError as error:
            raise write_error(directory, "write a marker in", error) from None
        finally:
            markers.close()
    raise AssertionError("unreachable")


_MARKER_ATTEMPTS = 5


def open_directory(textfile: fs.Directory, create: bool = False) -> fs.Directory | None:
    """The marker directory of the textfile directory held by ``textfile``, checked (None if there is none and
    ``create`` is false). Raises UnexpectedFileError for anything else in its place."""
    return textfile.subdirectory(MARKER_DIRECTORY, create=create)


def _open_marker_directory(textfile_directory: fs.PathName) -> fs.Directory:
    """The marker directory, created if missing (and the textfile directory with it, with their documented
    modes whatever the umask: a deployment may be the first to use the directory). Everything in it is made
    relative to its descriptor: a symlink put in the directory's place is never followed, and a directory
    removed meanwhile is not silently recreated elsewhere."""
    textfile = fs.open_directory(textfile_directory, create=True, wanted=marker_directory(textfile_directory))
    assert textfile is not None
    with textfile:
        markers = open_directory(textfile, create=True)
    assert markers is not None
    return markers


def _write_marker(directory_descriptor: int, name: str, data: bytes) -> int:
    """Write and lock the marker ``name`` in the directory; return the descriptor holding its lock."""
    # Written under a dot name and renamed, so that a reader never sees half a marker. The lock is taken
    # before the rename and stays with the inode: the marker is locked from the moment it has its name.
    # O_CLOEXEC: no program this process runs inherits the lock (see the module's note on fork and exec).
    temporary = f".{name}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    descriptor = os.open(temporary, flags, 0o644, dir_fd=directory_descriptor)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file nobody else has opened: never waits
        os.fchmod(descriptor, 0o644)  # readable by a `fraisier metrics` of another user whatever the umask
        write_parts(descriptor, (data,))
        os.replace(temporary, name, src_dir_fd=directory_descriptor, dst_dir_fd=directory_descriptor)
    except BaseException:
        os.close(descriptor)
        try:
            os.unlink(temporary, dir_fd=directory_descriptor)
        except OSError:
            pass
        raise
    return descriptor


def _open_marker(directory: fs.Directory, name: str) -> int:
    """A read-only descriptor on the regular file ``name`` in ``directory``; OSError for anything else. Never
    follows a symlink, never blocks on a FIFO someone put there, never resolves the directory's name again."""
    try:
        return directory.open_regular(name)
    except UnexpectedFileError:
        raise OSError(errno.EINVAL, "not a regular file", directory.path_of(name)) from None


def _string(value: object) -> str:
    if value.__class__ is not str:
        raise InvalidValueError(f"{value!r} is not a string")
    return str(value)


def read_markers_in(directory: fs.Directory, listed: list[os.DirEntry[str]] | None = None) -> list[Marker]:
    """Every complete marker in the marker directory held by ``directory`` (each keeps a hold of its own on
    it, through which its lock is probed and it is removed). ``listed``: its entries, when the caller has just
    listed it."""
    markers: list[Marker] = []
    entries = [entry for entry in (directory.entries() if listed is None else listed) if not entry.name.startswith(".")]
    if not entries:
        return []
    import json  # here, not at the top: `fraisier record` never needs it

    held = directory.copy()
    for entry in entries:
        path = directory.path_of(entry.name)
        if not entry.name.isprintable() or " " in entry.name:
            # Not a name create_marker makes (a copy, a hand-made file): the file lists retired markers by id,
            # space-separated on one line, so a newline would fail every merge and a blank would read back as two
            # ids (its crash counted again).
            if process.first_time("unusable marker", entry.name):
                log.warning("the in-flight marker %r is not named as fraisier names them: ignored", str(path))
            continue
        try:
            descriptor = _open_marker(directory, entry.name)
            with os.fdopen(descriptor, "rb") as file:
                content = json.loads(file.read(65536))
            # Checked as the recorder checks them: a lone surrogate would make every merge fail, an empty or
            # non-string value would be counted under a label value no deployment has.
            provider = check_label_value("provider", _string(content["provider"]))
            fraise_type = check_label_value("fraise_type", _string(content["fraise_type"]))
        except InvalidValueError as error:
            if process.first_time("unusable marker", entry.name):
                log.warning("the in-flight marker %s is not one this version can use (%s): ignored", path, error)
            continue
        # RecursionError: json's decoder recurses into arrays; a marker of nested brackets is unusable, not a
        # crash of the deployment that reads it.
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            continue
        try:
            markers.append(
                Marker(
                    entry.name,
                    provider,
                    fraise_type,
                    str(content.get("boot", "")),
                    str(content.get("pid_namespace", "")),
                    path=path,
                    locked=content.get("liveness") == LIVENESS_LOCK,
                    directory=held,
                )
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            continue
    return markers


def _lock_held(marker: Marker) -> bool | None:
    """Whether some process holds the lock on the marker: True, False, or None if it cannot be told (the
    marker cannot be opened, or its filesystem has no locks). A marker that is gone holds none."""
    if marker.directory is None:
        return None
    try:
        descriptor = _open_marker(marker.directory, marker.id)
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return None
    try:
        # Shared, so that two readers probing at once do not take each other's probe for a live writer.
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(descriptor)  # also drops the probe's own lock
    return False


def is_alive(marker: Marker) -> bool:
    """Whether the deployment of ``marker`` still runs.

    A marker from another boot is dead. A marker whose writer holds its lock is alive, one whose lock is free
    is dead (unless it comes from an older version that took no lock). Beyond that, /proc decides where it
    can see the writer's PID (gone, or reused by a process with another start time: dead); where it cannot
    (another user's process under hidepid, another PID namespace), the marker counts as alive, so that a
    deployment is never counted crashed while it may still run.
    """
    # Loaded by the first marker probed: a merge into a directory without markers has no process to tell alive.
    from fraisier_textfile.store.process_identity import own_context, process_state

    boot, namespace = own_context()
    if marker.boot and boot and marker.boot != boot:
        return False
    own = process.held_markers.get(marker.id)
    if own is not None and own.held:
        return True
    try:
        pid, start_time = marker.pid, marker.start_time
    except (ValueError, IndexError):
        return False
    state = None
    if not (marker.pid_namespace and namespace and marker.pid_namespace != namespace):
        state = process_state(pid, start_time)
    if state is False:
        return False
    if marker.locked and marker.directory is not None:
        held = _lock_held(marker)
        if held is not None:
            return held
    return True


def _marker_directory_of(where: fs.PathName | fs.Directory) -> fs.Directory | None:
    """The marker directory held open: ``where`` itself (a merge's, held since it listed the markers), or that
    of the textfile directory at the path ``where`` (None if there is none)."""
    if isinstance(where, fs.Directory):
        return where.copy()
    textfile = fs.open_directory(where)
    if textfile is None:
        return None
    with textfile:
        return open_directory(textfile)


def remove_marker(where: fs.PathName | fs.Directory, marker_id: str) -> None:
    """Remove a marker the textfile already accounts for, releasing it if this process holds it. ``where``: the
    marker directory held open (by the merge that listed the marker: it is never resolved by name again), or
    the textfile directory's path. A failure is only logged: the marker stays listed as retired in the file, so
    it is not counted again, and a later merger may remove it."""
    try:
        directory = _marker_directory_of(where)
    except FraisierTextfileError as error:
        log.warning("cannot remove the finished deployment's marker %s: %s", marker_id, error)
        directory = None
    if directory is not None:
        with directory:
            try:
                directory.unlink(marker_id)
            except (OSError, ValueError) as error:
                log.warning("cannot remove the finished deployment's marker %s: %s", directory.path_of(marker_id),
                            getattr(error, "strerror", error))
    own = process.held_markers.get(marker_id)
    if own is not None:
        own.release()


def remove_stale_temporaries(where: fs.PathName | fs.Directory) -> None:
    """Dot files in the marker directory are half-written markers; those of dead processes are litter.
    A free lock does not prove a temporary dead (its writer takes the lock just after creating it): only
    /proc's word that the writer's PID is gone or reused does. ``where``: as for :func:`remove_marker`."""
    directory = _marker_directory_of(where)
    if directory is None:
        return
    with directory:
        _remove_stale_temporaries(directory)


def _remove_stale_temporaries(directory: fs.Directory) -> None:
    for entry in list(directory.entries()):
        if not entry.name.startswith("."):
            continue
        marker = Marker(entry.name[1:], "", "", directory=directory)
        try:
            pid, start_time = marker.pid, marker.start_time
        except (ValueError, IndexError, OverflowError):
            continue  # not one of ours
        probe = Marker(entry.name, "", "", directory=directory)
        from fraisier_textfile.store.process_identity import process_state

        if _lock_held(probe) is not True and process_state(pid, start_time) is False:
            try:
                directory.unlink(entry.name)
            except OSError:
                pass


def list_markers(textfile: fs.Directory) -> tuple[list[Marker], fs.Directory | None]:
    """The in-flight markers and their directory held open (None if there is none). Only regular files are
    markers: the directory is shared by the deploying users' group, and one entry a member left there (a FIFO, a
    directory, a symlink to anything, a device, a socket) must not stop every merge of every process. Such an
    entry is left where it is, never opened, followed or waited on, and said once per process: what no merge
    reads is no deployment in flight."""
    directory = open_directory(textfile)
    if directory is None:
        return [], None
    try:
        listed = []
        for entry in directory.entries():
            if entry.is_file(follow_symlinks=False):
                listed.append(entry)
            elif entry.name.startswith("."):
                continue  # dot names are half-written markers, whose litter _remove_stale_temporaries handles
            elif process.first_time("marker not a regular file", directory.path_of(entry.name)):
                log.warning("%s; it is no in-flight marker and is left alone", directory.unexpected(entry.name))
        return read_markers_in(directory, listed), directory
    except OSError as error:
        directory.close()
        raise write_error(directory.path, "read the marker directory", error) from None
    except BaseException:
        directory.close()
        raise
