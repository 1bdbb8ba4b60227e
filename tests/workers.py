"""Worker processes for the race and crash tests: ``python tests/workers.py NAME TEXTFILE_DIR [ARGS]``."""

from __future__ import annotations

import sys
import time

from fraisier_textfile import MetricsRecorder


def flush_many(directory: str, events: str, identity: str) -> None:
    """Record ``events`` deployments, each flushed, with a health check every other one."""
    recorder = MetricsRecorder(directory, lock_timeout=60)
    print("ready", flush=True)
    sys.stdin.readline()  # every worker starts at once
    for number in range(int(events)):
        recorder.record_deployment_complete("bare_metal", "api", "success", 1.5)
        if number % 2:
            recorder.record_health_check("bare_metal", "http", "pass", 0.1)
    recorder.record_deployment_error("bare_metal", f"worker_{identity}")


def hot_loop(directory: str, events: str) -> None:
    """Record without auto-flush; normal exit writes everything."""
    recorder = MetricsRecorder(directory, auto_flush=False)
    for _ in range(int(events)):
        recorder.record_deployment_complete("bare_metal", "etl", "failed", 2.0)


def write_forever(directory: str) -> None:
    """Flush in a loop until killed."""
    recorder = MetricsRecorder(directory)
    print("ready", flush=True)
    while True:
        recorder.record_rollback("bare_metal", "timeout", 3.0)


def deploy_forever(directory: str) -> None:
    """Start a tracked deployment and hang inside it until killed."""
    recorder = MetricsRecorder(directory)
    with recorder.track_deployment("docker_compose", "backup"):
        print("deploying", flush=True)
        time.sleep(600)


def fork_with_pending(directory: str) -> None:
    """Events pending in a recorder when the process forks belong to the parent: written once, not twice."""
    import os

    recorder = MetricsRecorder(directory, auto_flush=False)
    recorder.record_deployment_error("bare_metal", "before_fork")
    child = os.fork()
    if child == 0:
        recorder.record_deployment_error("bare_metal", "in_child")
        with recorder.track_deployment("bare_metal", "api"):
            pass
        sys.exit(0)  # a normal exit: the child's atexit flush runs
    os.waitpid(child, 0)


def fail_then_exit(directory: str) -> None:
    """A record call while the lock is held elsewhere returns without raising; its event is kept (or handed
    over), and nothing is lost when the process then exits normally."""
    recorder = MetricsRecorder(directory, lock_timeout=0.2)
    recorder.record_deployment_error("bare_metal", "while_locked")
    print("failed" if recorder.get_metrics_summary()["last_error"] else "written", flush=True)
    sys.stdin.readline()


# Writers for the races between versions (tests/test_upgrade.py): each runs under any version of the package (its
# public API only) until SIGKILLed, and writes one byte on stdout each time a record call has returned.


def acknowledge_errors(directory: str, name: str) -> None:
    """Deployment errors of type ``name``, each a record call."""
    import os

    recorder = MetricsRecorder(directory)
    while True:
        recorder.record_deployment_error("bare_metal", name)
        os.write(1, b".")


def acknowledge_deployments(directory: str, name: str) -> None:
    """Tracked deployments of fraise type ``name``: a marker each, made and released (killed in one: crashed)."""
    import os

    recorder = MetricsRecorder(directory)
    while True:
        with recorder.track_deployment("bare_metal", name):
            pass
        os.write(1, b".")


def acknowledge_commands(directory: str, name: str, *command: str) -> None:
    """``command record deployment`` (the CLI of some version) of fraise type ``name``, one process after the
    other; one byte for each that exited 0. Killed with its process group, so that at most one is under way."""
    import os
    import subprocess

    while True:
        recorded = subprocess.run([*command, "--textfile-dir", directory, "record", "deployment", "--provider",
                                   "bare_metal", "--fraise-type", name, "--status", "success", "--duration", "1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if recorded.returncode == 0:
            os.write(1, b".")


def recorder_outliving_its_installation(directory: str, through: str = "our API") -> None:
    """A long-lived program recording (Fraisier's deploy daemon): then one event for each line read (a tracked
    deployment for a line starting with "deployment", else an error of that type), each answered with what its
    summary says last went wrong; "lived on" is answered once it has loaded every module of the store's and
    recorder's layers, as a process that lives on does (within a minute, or says it has not). ``through`` "our
    API": it records one event at its start; "Fraisier": it imports Fraisier's metrics module at its start (the
    start-up hook points it at the textfile) and records nothing before the first line."""
    if through == "Fraisier":
        from fraisier import metrics

        recorder = metrics.get_metrics_recorder()
    else:
        recorder = MetricsRecorder(directory)
        recorder.record_deployment_error("bare_metal", "before")
    print("recorded", flush=True)
    for line in sys.stdin:
        name = line.strip()
        if name == "lived on":
            print(lived_on(), flush=True)
            continue
        if name.startswith("deployment"):
            with recorder.track_deployment("bare_metal", name):
                pass
        else:
            recorder.record_deployment_error("bare_metal", name)
        print(recorder.get_metrics_summary()["last_error"], flush=True)


def lived_on() -> str:
    import importlib
    import pkgutil

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        missing = [
            module.name for layer in ("format", "store", "recorder")
            for module in pkgutil.walk_packages(importlib.import_module(f"fraisier_textfile.{layer}").__path__,
                                                f"fraisier_textfile.{layer}.")
            if module.name not in sys.modules
        ]
        if not missing:
            return "lived on"
        time.sleep(0.05)
    return f"not loaded: {missing}"


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
