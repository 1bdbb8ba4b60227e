"""Processes that hold in-flight markers, run as other users for the marker tests:
``python marker_workers.py NAME ARGS``.

Only the standard library and fraisier_textfile (with filelock) are imported, so that a copy of them on
PYTHONPATH is enough for a system Python that another user may run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from fraisier_textfile import TextfileStore
from fraisier_textfile.changes import Changes
from fraisier_textfile.cli.execution import run_deployment
from fraisier_textfile.store import fs, markers, process_identity


def deploy(directory: str) -> None:
    """``fraisier exec`` of a command that says ``deploying <its pid>`` and ends at the next line on stdin."""
    command = ["sh", "-c", "echo deploying $$; read line"]
    sys.exit(run_deployment(TextfileStore(directory), "bare_metal", "api", command))


def deploy_with_children(directory: str) -> None:
    """Start a deployment, then fork a Python child and spawn a program that may inherit descriptors
    (``close_fds=False``); both outlive this process, which hangs until killed."""
    marker = markers.create_marker(Path(directory), "bare_metal", "api")
    ready_to_read, ready = os.pipe()
    forked = os.fork()
    if forked == 0:
        os.write(ready, b"x")  # its fork hooks have run: the test may probe the lock they release
        sys.stdin.readline()
        os._exit(0)
    os.read(ready_to_read, 1)
    spawned = subprocess.Popen(["sh", "-c", "read line"], close_fds=False)
    print("deploying", marker.id, forked, spawned.pid, flush=True)
    time.sleep(600)


def deploy_like_an_older_version(directory: str) -> None:
    """Write a marker as versions without the lock did, and hang until killed."""
    pid = os.getpid()
    start_time = process_identity.process_start_time(pid)
    boot, namespace = process_identity.own_context()
    marker_id = f"{pid}-{start_time}-0ld0ld00"
    directory_of_markers = Path(markers.marker_directory(directory))
    directory_of_markers.mkdir(mode=0o775, exist_ok=True)
    content = {"provider": "bare_metal", "fraise_type": "api", "boot": boot, "pid_namespace": namespace}
    (directory_of_markers / f".{marker_id}").write_text(json.dumps(content))
    os.chmod(directory_of_markers / f".{marker_id}", 0o644)
    os.rename(directory_of_markers / f".{marker_id}", directory_of_markers / marker_id)
    print("deploying", marker_id, flush=True)
    time.sleep(600)


def deploy_then_release(directory: str) -> None:
    """Start a deployment; at a line on stdin release it, say ``released``, and stay alive until EOF."""
    marker = markers.create_marker(Path(directory), "bare_metal", "api")
    print("deploying", marker.id, flush=True)
    sys.stdin.readline()
    marker.release()
    print("released", flush=True)
    sys.stdin.readline()


def sees(pid: str) -> None:
    """What /proc tells this process about ``pid``, as JSON."""
    start_time = process_identity.process_start_time(int(pid))
    print(json.dumps({"listed": os.path.exists(f"/proc/{pid}"), "start_time": start_time}))


def merge(directory: str) -> None:
    """A merge with nothing to add: it accounts for the in-flight markers."""
    TextfileStore(directory).merge(Changes())


def alive(directory: str) -> None:
    """Every marker's id and whether it is alive, as JSON."""
    textfile = fs.open_directory(Path(directory))
    found: list[markers.Marker] = []
    if textfile is not None:
        with textfile:
            found, marker_directory = markers.list_markers(textfile)
        if marker_directory is not None:
            marker_directory.close()
    print(json.dumps({m.id: markers.is_alive(m) for m in found}))


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
