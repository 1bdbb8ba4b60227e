"""``fraisier exec``: run a deployment command as a tracked deployment."""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Sequence

from fraisier_textfile import catalogue, changes, liveness
from fraisier_textfile.changes import Changes
from fraisier_textfile.errors import FraisierTextfileError
from fraisier_textfile.textfile import TextfileStore

log = logging.getLogger(__name__)

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def error_type_of_exit(returncode: int) -> str:
    """``exit_code_3`` for an exit status, ``signal_SIGKILL`` for a death by signal."""
    if returncode < 0:
        try:
            return f"signal_{signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal_{-returncode}"
    return f"exit_code_{returncode}"


def run_deployment(store: TextfileStore, provider: str, fraise_type: str, command: Sequence[str]) -> int:
    """Run ``command`` as a deployment of ``fraise_type`` on ``provider`` and return the exit status to exit
    with (128 + N for a death by signal N, 127 when the command is not found, 126 when it cannot run).

    The deployment is active while the command runs; its duration and status (``success`` on exit 0,
    ``failed`` otherwise, with an error type from the exit code or signal) are recorded when it ends.
    Metrics never stop the deployment: if the textfile cannot be written, that is logged and the command
    runs all the same.
    """
    provider = catalogue.check_label_value("provider", provider)
    fraise_type = catalogue.check_label_value("fraise_type", fraise_type)
    start = Changes()
    changes.deployment_started(start, provider, fraise_type)
    marker: liveness.Marker | None = None
    try:
        marker = liveness.create_marker(store.directory, provider, fraise_type)
        store.merge(start)
    except (OSError, FraisierTextfileError) as error:
        log.warning("the deployment runs, but its start was not recorded: %s", error)

    # The handlers go in before the child starts: a signal that arrives while it is being started is kept
    # and passed on once it runs, rather than killing this process and orphaning the deployment.
    child: subprocess.Popen[bytes] | None = None
    early: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if child is None:
            early.append(signum)
        else:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    started = time.monotonic()
    error_type: str | None
    try:
        try:
            child = subprocess.Popen(list(command))
        except FileNotFoundError:
            returncode, error_type = 127, "command_not_found"
        except PermissionError:
            returncode, error_type = 126, "command_not_executable"
        else:
            for signum in early:
                child.send_signal(signum)
            returncode = child.wait()
            error_type = None if returncode == 0 else error_type_of_exit(returncode)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    duration = time.monotonic() - started

    end = Changes()
    changes.deployment_complete(end, provider, fraise_type, "success" if error_type is None else "failed", duration)
    if error_type is not None:
        changes.deployment_error(end, provider, error_type)
    changes.deployment_ended(end, provider, None if marker is None else marker.id)
    try:
        # The lock may be held by a stuck process: after the lock timeout the end is handed over to the next
        # writer rather than lost with this process.
        store.merge_or_hand_over(end, store.lock_timeout)
    except (OSError, FraisierTextfileError) as error:
        log.warning("the deployment ended, but it was not recorded: %s", error)
    if marker is not None:
        # After its end is written (merged or handed over). If that failed, this process exits now anyway.
        marker.release()
    return 128 - returncode if returncode < 0 else returncode
