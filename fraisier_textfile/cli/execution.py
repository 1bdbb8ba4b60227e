"""``fraisier exec``: run a deployment command as a tracked deployment."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from fraisier_textfile import catalogue, changes
from fraisier_textfile.changes import Changes
from fraisier_textfile.errors import FraisierTextfileError, write_error
from fraisier_textfile.store import inflight
from fraisier_textfile.store.textfile import TextfileStore

log = logging.getLogger(__name__)

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
LOCK_WAIT_BUDGET = 1.0
"""At most how long ``fraisier exec`` waits for the textfile's lock in all, before the command starts and after it
ends: past that, the start or the end is handed over (the next merge by any process writes it exactly once), so
a stuck lock holder never holds up a deployment or the pipeline waiting for its wrapper."""


def _die_with_parent() -> Callable[[], None] | None:
    """What the child runs before the command, on Linux: ask the kernel to SIGKILL it when this process dies,
    so that a deployment counted ``crashed`` (its wrapper was killed) has really stopped. Only the command
    itself: processes it starts in turn are its own to stop. None where there is no such call."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child must not load anything
    parent = os.getpid()

    def set_parent_death_signal() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return set_parent_death_signal


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _exists(program: str) -> bool:
    """Whether ``program`` names a file, as exec(2) looks for it (PATH for a bare name)."""
    import shutil

    return os.path.exists(program) if os.sep in program else shutil.which(program) is not None


def error_type_of_exit(returncode: int) -> str:
    """``exit_code_3`` for an exit status, ``signal_SIGKILL`` for a death by signal."""
    if returncode < 0:
        try:
            return f"signal_{signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal_{-returncode}"
    return f"exit_code_{returncode}"


def _record(store: TextfileStore, events: Changes, wait: float, state: str, what: str) -> None:
    """Merge ``events``, or hand them over: when the lock stays busy, and also when the file cannot be merged
    now (a file it refuses, a rename refused): the next merge once it is fixed applies them. Dropped, they
    would leave the marker to be counted crashed."""
    try:
        store.merge_or_hand_over(events, wait)
        return
    except (OSError, FraisierTextfileError) as error:
        problem = error
    try:
        store.hand_over(events)
    except (OSError, FraisierTextfileError):
        log.warning("the deployment %s, but %s was not recorded: %s", state, what, problem)
        return
    log.warning("the deployment %s; %s was handed over for the next merge, which cannot happen now: %s",
                state, what, problem)


FRAISIER_SCRIPTS = frozenset({"fraisier", "fraisier-webhook"})
OUR_COMMANDS = frozenset({"record", "exec", "textfile", "metrics"})


def counted_from_fraisier_state(command: Sequence[str]) -> bool:
    """Whether ``command`` is one of Fraisier's own (``fraisier deploy-daemon ...``, ``fraisier-webhook``) and
    Fraisier's state database is read (sources/fraisier_state.py): then its deployments are counted there."""
    if not command or os.path.basename(command[0]) not in FRAISIER_SCRIPTS:
        return False
    if len(command) > 1 and command[1] in OUR_COMMANDS:
        return False
    from fraisier_textfile.sources.fraisier_state import participants

    return bool(participants())


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
    if counted_from_fraisier_state(command):
        # Fraisier writes the deployment in its state database, which the state source counts: recorded here
        # too, it would count twice. The command becomes this process (same exit status, same signals).
        log.info("%s is Fraisier's own command: its deployments are counted from Fraisier's state database, "
                 "not by fraisier exec", shlex.join(command))
        try:
            os.execvp(command[0], list(command))
        except OSError:
            pass  # not found or not executable: run and reported below as any command
    start = Changes()
    changes.deployment_started(start, provider, fraise_type)
    marker: inflight.Marker | None = None
    budget = min(store.lock_timeout, LOCK_WAIT_BUDGET)
    waited_from = time.monotonic()
    try:
        marker = inflight.create_marker(store.directory, provider, fraise_type)
    except (OSError, FraisierTextfileError) as error:
        if not isinstance(error, FraisierTextfileError):  # the marker: say where, and the fix
            error = write_error(inflight.marker_directory(store.directory), "write a marker in", error)
        log.warning("the deployment runs, but other processes do not see it as active: %s", error)
    # The command must not wait for metrics: a lock busy for more than the budget gets the start handed over.
    _record(store, start, budget, "runs", "its start")

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
            child = subprocess.Popen(list(command), preexec_fn=_die_with_parent())
        except OSError as error:
            # As a shell: 127 for a command that is not there, 126 for one that is there but cannot run.
            if isinstance(error, FileNotFoundError) and not _exists(command[0]):
                returncode, error_type, reason = 127, "command_not_found", "not found (check the path and PATH)"
            elif isinstance(error, FileNotFoundError):  # the file is there: what is missing is its interpreter
                returncode, error_type = 126, "command_not_executable"
                reason = "the interpreter named in its #! line was not found (check that line)"
            else:
                returncode, error_type = 126, "command_not_executable"
                reason = f"not executable: {error.strerror or error} (check its mode and its #! line)"
            log.error("cannot start %s: %s; exit %d", shlex.join(command), reason, returncode)
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
    # What the start did not use of the budget: a stuck lock holder delays the wrapper's exit no more than it
    # delayed the command's start; past it the end is handed over to the next writer rather than lost.
    _record(store, end, max(0.0, budget - (started - waited_from)), "ended", "its end")
    if marker is not None:
        # After its end is written (merged or handed over). If that failed, this process exits now anyway.
        marker.release()
    return 128 - returncode if returncode < 0 else returncode
