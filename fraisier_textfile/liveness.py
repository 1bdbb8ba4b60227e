"""In-flight deployment markers, and whether the process that wrote one is still alive.

A deployment in progress is a small file in ``<textfile dir>/.fraisier-inflight/`` named
``<pid>-<start time>-<random>``. The active-deployments gauge counts the markers of live processes; a
marker whose process died is a crashed deployment. The process start time (from /proc) is part of the
name because PIDs are reused: a new process with an old PID has another start time, so it cannot keep a
dead deployment looking alive.
"""

from __future__ import annotations

import os
from pathlib import Path

MARKER_DIRECTORY = ".fraisier-inflight"


class Marker:
    """One in-flight deployment."""

    __slots__ = ("fraise_type", "id", "provider")

    def __init__(self, id: str, provider: str, fraise_type: str) -> None:
        self.id = id
        self.provider = provider
        self.fraise_type = fraise_type

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
    marker = Marker(f"{pid}-{start}-{os.urandom(4).hex()}", provider, fraise_type)
    directory = marker_directory(textfile_directory)
    if not directory.is_dir():
        directory.mkdir(parents=True, exist_ok=True)
        # Group-writable like the lock file, so that the users of one group can retire each other's markers.
        os.chmod(directory, 0o775)
    # Written under a dot name and renamed, so that a reader never sees half a marker.
    temporary = directory / f".{marker.id}"
    import json  # here, not at the top: `fraisier record` never needs it

    temporary.write_text(json.dumps({"provider": provider, "fraise_type": fraise_type}))
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
        if entry.name.startswith("."):
            continue
        try:
            with open(entry.path, encoding="utf-8") as file:
                content = json.load(file)
            markers.append(Marker(entry.name, str(content["provider"]), str(content["fraise_type"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return markers


def is_alive(marker: Marker) -> bool:
    try:
        pid = marker.pid
    except ValueError:
        return False
    return process_start_time(pid) == marker.start_time


def remove_marker(textfile_directory: Path, marker_id: str) -> None:
    try:
        os.unlink(marker_directory(textfile_directory) / marker_id)
    except FileNotFoundError:
        pass


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
