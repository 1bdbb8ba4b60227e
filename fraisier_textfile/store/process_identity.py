"""A process's identity, as a marker names it: is the process that wrote it still the one running under its PID?
(process.py is another matter: what the store keeps per process, and its fork and exit hooks.)

A PID alone is not a process: PIDs are reused, and a deployment must never be counted crashed while it runs,
nor alive once its process died and another took its PID. A process is its PID with its start time (clock
ticks since boot, from /proc), in one boot and one PID namespace.
"""

from __future__ import annotations

import os


def process_start_time(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot, or None if there is no such process.

    Where /proc is missing (not Linux) the start time is "0" for any live process: PID reuse then goes
    unnoticed, which is the best that can be done portably.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            data = stat_file.read()
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
    return _start_time_in_stat(data)


def _start_time_in_stat(data: bytes) -> str | None:
    # The command name (field 2) may hold spaces and parentheses: count fields after its last ")".
    fields = data[data.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):  # a zombie has finished its work; only its exit status is left
        return None
    return fields[19].decode()


def process_state(pid: int, start_time: str) -> bool | None:
    """Whether the process ``pid`` that started at ``start_time`` (in this PID namespace) still runs: True,
    False, or None where nothing here can tell."""
    if not 0 < pid <= _PID_MAX:
        # Past any PID the kernel hands out (a hand-made marker): kill(2) would raise OverflowError for it,
        # which must not escape a probe run on a deployment's path.
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            data = stat_file.read()
    except OSError:
        data = None
    if data is not None:
        return _start_time_in_stat(data) == start_time
    # /proc does not show it: no procfs (not Linux), another user's process under hidepid (missing entry) or
    # hidepid=1 (unreadable entry), or a /proc mounted for another PID namespace. kill(pid, 0) still tells
    # whether the PID exists, whoever owns it; whether it is the same process, nothing here can say.
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass
    return None


_PID_MAX = 1 << 22
"""Linux's PID_MAX_LIMIT: no process has a larger PID."""
_own_identity: tuple[int, str] | None = None
_own_context: tuple[str, str] | None = None


def own_context() -> tuple[str, str]:
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


def own_identity() -> tuple[int, str]:
    global _own_identity
    pid = os.getpid()
    if _own_identity is None or _own_identity[0] != pid:  # recomputed in a forked child
        _own_identity = (pid, process_start_time(pid) or "0")
    return _own_identity
