"""store/process_identity.py: a process is its PID with its start time, in one boot and one PID namespace."""

from __future__ import annotations

import os
import subprocess
import sys

from fraisier_textfile.store.process_identity import own_context, own_identity, process_start_time, process_state


def test_a_live_process_is_running_under_its_start_time_and_gone_once_reaped() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        started = process_start_time(child.pid)
        assert started is not None and started.isdigit()
        assert process_state(child.pid, started) is True
        assert process_state(child.pid, str(int(started) + 1)) is False  # its PID, another process: reused
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)
    assert process_start_time(child.pid) is None or process_state(child.pid, started) is False


def test_a_zombie_has_no_start_time_left() -> None:
    """A child that exited but is not reaped yet still has a /proc entry: it has finished its work."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        for _ in range(100_000):  # until the kernel shows it as a zombie (bounded)
            with open(f"/proc/{pid}/stat", "rb") as stat_file:
                if b") Z " in stat_file.read():
                    break
        assert process_start_time(pid) is None
    finally:
        os.waitpid(pid, 0)


def test_a_pid_no_kernel_hands_out_is_not_running_and_never_raises() -> None:
    for pid in (0, -1, (1 << 22) + 1, 10**30):
        assert process_state(pid, "1") is False


def test_this_process_is_named_by_its_pid_start_time_boot_and_namespace() -> None:
    pid, started = own_identity()
    assert pid == os.getpid() and process_state(pid, started) is True
    boot, namespace = own_context()
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as file:
        assert boot == file.read().strip()
    assert namespace == os.readlink("/proc/self/ns/pid")


def test_a_forked_child_is_named_by_its_own_identity() -> None:
    parent = own_identity()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        child_pid, child_started = own_identity()
        os.write(write, f"{child_pid} {child_started}".encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        said_pid, said_started = pipe.read().decode().split()
    os.waitpid(pid, 0)
    assert int(said_pid) == pid and (int(said_pid), said_started) != parent
