"""In-flight deployment markers, and whether the process that wrote one is still alive.

A deployment in progress is a small file in ``<textfile dir>/.fraisier-inflight/`` named
``<pid>-<start time>-<random>``. The active-deployments gauge counts the markers of live processes; a
marker whose process died is a crashed deployment. The process start time (from /proc) is part of the
name because PIDs are reused: a new process with an old PID has another start time, so it cannot keep a
dead deployment looking alive.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

MARKER_DIRECTORY = ".fraisier-inflight"

log = logging.getLogger(__name__)


class Marker:
    """One in-flight deployment."""

    __slots__ = ("boot", "fraise_type", "id", "pid_namespace", "provider")

    def __init__(self, id: str, provider: str, fraise_type: str, boot: str = "", pid_namespace: str = "") -> None:
        self.id = id
        self.provider = provider
        self.fraise_type = fraise_type
        self.boot = boot
        """The kernel's boot id when the marker was written: PIDs and start times restart at each boot."""
        self.pid_namespace = pid_namespace
        """The writer's PID namespace: a PID means nothing in another one (containers)."""

    @property
    def pid(self) -> int:
        return int(self.id.split("-", 1)[0])

    @property
    def start_time(self) -> str:
        return self.id.split("-", 2)[1]


def process_start_time(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot, or None if there is no such process.

    Where /proc is missing (not Linux) the start time is "0" for any live process: PID reuse then goes
    unnoticed, which is the best that can be done portably.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "0"
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after its last ")".
    fields = data[data.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):  # a zombie has finished its work; only its exit status is left
        return None
    return fields[19].decode()


_own_identity: tuple[int, str] | None = None
_own_context: tuple[str, str] | None = None


def _context() -> tuple[str, str]:
    """This machine's boot id and this process's PID namespace ("" where /proc does not tell)."""
    global _own_context
    if _own_context is None:
        try:
            with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as file:
                boot = file.read().strip()
        except OSError:
            boot = ""
        try:
            namespace = os.readlink("/proc/self/ns/pid")
        except OSError:
            namespace = ""
        _own_context = (boot, namespace)
    return _own_context


def _identity() -> tuple[int, str]:
    global _own_identity
    pid = os.getpid()
    if _own_identity is None or _own_identity[0] != pid:  # recomputed in a forked child
        _own_identity = (pid, process_start_time(pid) or "0")
    return _own_identity


def marker_directory(textfile_directory: Path) -> Path:
    return textfile_directory / MARKER_DIRECTORY


def create_marker(textfile_directory: Path, provider: str, fraise_type: str) -> Marker:
    """Write the marker of a deployment that starts now in this process."""
    pid, start = _identity()
    boot, namespace = _context()
    marker = Marker(f"{pid}-{start}-{os.urandom(4).hex()}", provider, fraise_type, boot, namespace)
    directory = marker_directory(textfile_directory)
    if not directory.is_dir():
        directory.mkdir(parents=True, exist_ok=True)
        # Group-writable like the lock file, so that the users of one group can retire each other's markers.
        os.chmod(directory, 0o775)
    # Written under a dot name and renamed, so that a reader never sees half a marker.
    temporary = directory / f".{marker.id}"
    import json  # here, not at the top: `fraisier record` never needs it

    content = {"provider": provider, "fraise_type": fraise_type, "boot": boot, "pid_namespace": namespace}
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        os.fchmod(descriptor, 0o644)  # readable by a `fraisier metrics` of another user whatever the umask
        json.dump(content, file)
    os.replace(temporary, directory / marker.id)
    return marker


def read_markers(textfile_directory: Path) -> list[Marker]:
    """Every complete marker, in no particular order. Markers that cannot be read are skipped."""
    directory = marker_directory(textfile_directory)
    markers = []
    try:
        entries = [entry for entry in os.scandir(directory) if not entry.name.startswith(".")]
    except FileNotFoundError:
        return []
    if not entries:
        return []
    import json  # here, not at the top: `fraisier record` never needs it

    for entry in entries:
        try:
            with open(entry.path, encoding="utf-8") as file:
                content = json.load(file)
            markers.append(
                Marker(
                    entry.name,
                    str(content["provider"]),
                    str(content["fraise_type"]),
                    str(content.get("boot", "")),
                    str(content.get("pid_namespace", "")),
                )
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return markers


def is_alive(marker: Marker) -> bool:
    """Whether the process that wrote ``marker`` still runs. A marker from another boot is dead; one from
    another PID namespace cannot be checked from here and counts as alive (a reader in its own namespace
    settles it), so that a deployment is never counted crashed while it may still run."""
    boot, namespace = _context()
    if marker.boot and boot and marker.boot != boot:
        return False
    if marker.pid_namespace and namespace and marker.pid_namespace != namespace:
        return True
    try:
        pid = marker.pid
    except ValueError:
        return False
    return process_start_time(pid) == marker.start_time


def remove_marker(textfile_directory: Path, marker_id: str) -> None:
    """Remove a marker the textfile already accounts for. A failure is only logged: the marker stays listed
    as retired in the file, so it is not counted again, and a later merger may remove it."""
    path = marker_directory(textfile_directory) / marker_id
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        log.warning("cannot remove the finished deployment's marker %s: %s", path, error.strerror)


def remove_stale_temporaries(textfile_directory: Path) -> None:
    """Dot files in the marker directory are half-written markers; those of dead processes are litter."""
    directory = marker_directory(textfile_directory)
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.startswith(".") and not is_alive(Marker(entry.name[1:], "", "")):
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass
