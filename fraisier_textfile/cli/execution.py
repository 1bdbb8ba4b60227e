"""``fraisier exec``: run a deployment command as a tracked deployment.

Two promises, in this order: the command runs, whatever is wrong with the metrics (a corrupt marker, a bad
setting, a full disk, a held lock, a bug of ours: one log line says what, and the exit status is the
command's); and the wrapper is invisible to signals, as tini and dumb-init are (see :func:`_supervise`).
"""

from __future__ import annotations

import errno
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from fraisier_textfile import changes, preload, validate
from fraisier_textfile.changes import Changes
from fraisier_textfile.errors import FraisierTextfileError, InvalidValueError
from fraisier_textfile.store.deployments import Deployment
from fraisier_textfile.store.textfile import TextfileStore

LOADED_AHEAD = ("fraisier_textfile.format", "fraisier_textfile.store")
"""What `fraisier exec` loads before it starts the command (preload.py): every module the deployment's end may
import, such as a hand-over's codec."""

log = logging.getLogger(__name__)

FORWARDED_SIGNALS = tuple(
    getattr(signal, name) for name in (
        "SIGHUP", "SIGINT", "SIGQUIT", "SIGTERM", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGPIPE", "SIGWINCH",
        "SIGCONT", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGURG", "SIGVTALRM", "SIGPROF", "SIGXCPU", "SIGXFSZ",
        "SIGIO", "SIGPWR",
    ) if hasattr(signal, name)
)
"""Every signal a command may handle, as tini forwards them: all but SIGKILL and SIGSTOP (which cannot be
caught), SIGCHLD (the wrapper's own) and the synchronous faults (SIGSEGV, SIGFPE, SIGILL, SIGBUS, SIGABRT,
SIGTRAP, SIGSYS), which describe the wrapper's own state, not a request to the deployment."""
LOCK_WAIT_BUDGET = 1.0
"""At most how long ``fraisier exec`` waits for the textfile's lock in all, before the command starts and after it
ends (``$FRAISIER_LOCK_WAIT_BUDGET``, as for the API): past that, the start or the end is handed over (the next
merge by any process writes it exactly once), so a stuck lock holder never holds up a deployment or the
pipeline waiting for its wrapper."""

CHILD_LOOK_INTERVAL = 1.0
"""Seconds between looks at the command while no signal comes. Its end is a SIGCHLD, but the kernel gives a signal
sent to the process to any thread that does not block it: a thread started before this process blocked SIGCHLD
(an agent's, started by a sitecustomize: an APM, a profiler) takes it when the command ends while this thread is not
inside its wait, and drops it (SIGCHLD is ignored by default). Without a look the wait would never end."""

# si_code values of Linux's siginfo (<asm-generic/siginfo.h>): who sent a signal.
_SI_USER = 0  # kill(2), to a process or to a process group
_SI_KERNEL = 0x80  # the kernel itself: a terminal's ^C, ^\, ^Z go to its foreground process group this way


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


class _Metrics:
    """The metrics side of one ``fraisier exec``. Nothing here raises or waits past the budget: the first
    problem is logged as one warning line (later ones at debug level), and the deployment goes on."""

    def __init__(self, store: TextfileStore | None, provider: str, fraise_type: str, budget: float,
                 problem: str | None = None) -> None:
        self.store = store
        self.provider = provider
        self.fraise_type = fraise_type
        self.deployment: Deployment | None = None
        self.budget = budget if store is None else min(store.lock_timeout, budget)
        self._spent = 0.0
        self._told = False
        if problem is not None:
            self._problem(problem)

    def _problem(self, message: str, exc_info: bool = False) -> None:
        if self._told:
            log.debug("the deployment goes on; also: %s", message, exc_info=exc_info)
            return
        self._told = True
        log.warning("%s", message)
        if exc_info:  # one line in the deployment's log; the traceback, for a bug report, at debug level
            log.debug("where that came from:", exc_info=True)

    def start(self) -> None:
        if self.store is None:
            return
        try:
            self.provider = validate.check_label_value("provider", self.provider)
            self.fraise_type = validate.check_label_value("fraise_type", self.fraise_type)
        except InvalidValueError as error:
            self._problem(f"the deployment runs, but its metrics are not recorded: {error}")
            self.store = None
            return
        self.deployment = self.store.start_deployment(self.provider, self.fraise_type, self._unmarked)
        start = Changes()
        changes.deployment_started(start, self.provider, self.fraise_type)
        # The command must not wait for metrics: a lock busy for more than the budget gets the start handed over.
        self._record(start, "runs", "its start")

    def end(self, error_type: str | None, duration: float) -> None:
        if self.store is None:
            return
        end = Changes()
        try:
            status = "success" if error_type is None else "failed"
            changes.deployment_complete(end, self.provider, self.fraise_type, status, duration)
            if error_type is not None:
                changes.deployment_error(end, self.provider, error_type)
            changes.deployment_ended(end, self.provider, self.deployment)
        except Exception as error:  # an error type that is no label value, say: the end is still recorded
            self._problem(f"the deployment ended, but its outcome was not recorded: {error!r}")
        self._record(end, "ended", "its end")

    def _unmarked(self, error: BaseException, where: str) -> None:
        if isinstance(error, FraisierTextfileError):  # says where, and the fix
            self._problem(f"the deployment runs, but other processes do not see it as active: {error}")
        else:  # a bug of ours must not stop the deployment
            self._problem(f"the deployment runs, but other processes do not see it as active: {error!r} "
                          "(please report this as a bug of fraisier_textfile)", exc_info=True)

    def _record(self, events: Changes, state: str, what: str) -> None:
        """Merge ``events``, or hand them over: when the lock stays busy, and also when the file cannot be merged
        now (a file it refuses, a rename refused, a bug of ours): the next merge once it is fixed applies them.
        Dropped, they would leave the marker to be counted crashed. The start and the end share the budget: a
        stuck lock holder delays the wrapper's exit no more than it delayed the command's start."""
        assert self.store is not None
        started = time.monotonic()
        try:
            try:
                self.store.merge_or_hand_over(events, max(0.0, self.budget - self._spent))
                return
            except Exception as error:  # whatever it is, the deployment goes on
                problem = error
            try:
                self.store.hand_over(events)
            except Exception:
                self._problem(f"the deployment {state}, but {what} was not recorded: {_described(problem)}",
                              exc_info=not isinstance(problem, (OSError, FraisierTextfileError)))
                return
            self._problem(f"the deployment {state}; {what} was handed over for the next merge, which cannot happen "
                          f"now: {_described(problem)}",
                          exc_info=not isinstance(problem, (OSError, FraisierTextfileError)))
        finally:
            self._spent += time.monotonic() - started


def _described(error: BaseException) -> str:
    if isinstance(error, (OSError, FraisierTextfileError)):
        return str(error)
    return f"{error!r} (please report this as a bug of fraisier_textfile)"


FRAISIER_SCRIPTS = frozenset({"fraisier", "fraisier-webhook"})
OUR_COMMANDS = frozenset({"record", "exec", "textfile", "metrics"})


def counted_from_fraisier_state(command: Sequence[str]) -> bool:
    """Whether ``command`` is one of Fraisier's own (``fraisier deploy-daemon ...``, ``fraisier-webhook``) and
    Fraisier's state database is read (sources/fraisier_state/): then its deployments are counted there."""
    if not command or os.path.basename(command[0]) not in FRAISIER_SCRIPTS:
        return False
    if len(command) > 1 and command[1] in OUR_COMMANDS:
        return False
    from fraisier_textfile.sources.fraisier_state import participants

    return bool(participants())


def block_forwarded_signals() -> set[int]:
    """Hold back every signal to forward, and SIGCHLD, until :func:`run_deployment` waits for them; returns
    the mask to restore. Done first: a signal that arrives while the metrics are written or the command is
    being started is kept and passed on once it runs, rather than killing this process and orphaning the
    deployment. Threads started from now on inherit the mask, so none of them can take a signal meant for
    the command."""
    global _mask_before
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {*FORWARDED_SIGNALS, signal.SIGCHLD})
    if _mask_before is None:  # called again (the CLI, then run_deployment): the command gets the first one
        _mask_before = mask
    return _mask_before


_mask_before: set[int] | None = None


def run_deployment(store: TextfileStore | None, provider: str, fraise_type: str, command: Sequence[str], *,
                   lock_wait_budget: float = LOCK_WAIT_BUDGET, problem: str | None = None) -> int:
    """Run ``command`` as a deployment of ``fraise_type`` on ``provider`` and return the exit status to exit
    with (128 + N for a death by signal N, 127 when the command is not found, 126 when it cannot run).

    The deployment is active while the command runs; its duration and status (``success`` on exit 0,
    ``failed`` otherwise, with an error type from the exit code or signal) are recorded when it ends.
    Metrics never stop the deployment: whatever goes wrong with them (``store`` None: they cannot be written
    at all, ``problem`` says why), one line is logged and the command runs all the same.
    """
    original_mask = block_forwarded_signals()
    try:
        fraisiers_own = counted_from_fraisier_state(command)
    except Exception as error:  # reading Fraisier's settings must not stop the deployment either
        log.debug("cannot tell whether %s is Fraisier's own command: %r", shlex.join(command), error)
        fraisiers_own = False
    if fraisiers_own:
        # Fraisier writes the deployment in its state database, which the state source counts: recorded here
        # too, it would count twice. The command becomes this process (same exit status, same signals).
        log.info("%s is Fraisier's own command: its deployments are counted from Fraisier's state database, "
                 "not by fraisier exec", shlex.join(command))
        signal.pthread_sigmask(signal.SIG_SETMASK, original_mask)  # as this process got them
        try:
            os.execvp(command[0], list(command))
        except OSError:
            block_forwarded_signals()  # not found or not executable: run and reported below as any command
    metrics = _Metrics(store, provider, fraise_type, lock_wait_budget, problem)
    try:
        metrics.start()
    except Exception as error:  # _Metrics catches what it expects; this is the last line of defence
        metrics._problem(f"the deployment runs, but its start was not recorded: {error!r}", exc_info=True)
    started = time.monotonic()
    error_type: str | None
    returncode, error_type = _supervise(command, original_mask)
    duration = time.monotonic() - started
    try:
        metrics.end(error_type, duration)
    except Exception as error:
        metrics._problem(f"the deployment ended, but its end was not recorded: {error!r}", exc_info=True)
    return 128 - returncode if returncode < 0 else returncode


def _controlling_terminal() -> int | None:
    """A descriptor of this process's controlling terminal, or None."""
    try:
        return os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None


def _supervise(command: Sequence[str], original_mask: set[int]) -> tuple[int, str | None]:
    """Start ``command``, pass signals on to it until it ends, and return its return code (negative: killed by
    that signal) and its error type (None for success).

    As tini and dumb-init: every signal sent to this process is forwarded to the command once, nothing the
    kernel already delivered to the command is sent again, and job control goes on working. How depends on
    who started us:

    - As a process group leader (a job of an interactive shell, a systemd service, a container's first
      process): the command gets a process group of its own, and the terminal's foreground if this process had
      it. A Ctrl-C at the terminal then reaches the command's group once, from the kernel, and not us; a kill of
      our group (``kill %1``, ``kill -TERM -- -PGID``) or of this process reaches only us, and we forward it to
      the command's group once. A command stopped by Ctrl-Z stops this process too (the shell sees the job
      stopped), and ``fg`` gives it the terminal back and continues it.
    - Inside another process's group in the terminal's foreground (a deploy script run from a prompt): the
      command stays in that group, so that Ctrl-C still stops the script as well. A signal the kernel sent to
      the whole group (a terminal's Ctrl-C: si_code SI_KERNEL) reached the command already and is not
      forwarded; one a process sent (kill: SI_USER) is forwarded to the command alone (a kill of the script's
      whole group then reaches it twice: the one case left).
    - Inside another process's group elsewhere (timeout(1), cron, a CI runner): the command gets a group of its
      own, as for a leader, so a kill of that group reaches it once, through us.

    Under systemd, give the unit ``KillMode=mixed``: systemd then stops the main process (this one), which
    forwards SIGTERM once; with the default ``control-group``, systemd signals every process of the unit itself,
    and the command gets SIGTERM from systemd and again from us.
    """
    leader = os.getpgrp() == os.getpid()
    terminal = _controlling_terminal()
    foreground = False
    if terminal is not None:
        try:
            foreground = os.tcgetpgrp(terminal) == os.getpgrp()
        except OSError:
            foreground = False
    # Inside another process's group, the command stays there only where that matters: in the terminal's
    # foreground, so that Ctrl-C reaches the whole script. Elsewhere (timeout(1), cron, a CI runner) a kill of
    # that group must reach the command once, through us.
    own_group = leader or not foreground
    take_terminal = leader and foreground
    if not leader and terminal is not None:
        os.close(terminal)  # job control is the group leader's: we never stop ourselves for the script
        terminal = None
    die_with_parent = _die_with_parent()

    def prepare_child() -> None:
        if own_group:
            os.setpgid(0, 0)
            if take_terminal and terminal is not None:
                os.tcsetpgrp(terminal, os.getpid())  # SIGTTOU is still blocked here: allowed from the background
        if die_with_parent is not None:
            die_with_parent()
        signal.pthread_sigmask(signal.SIG_SETMASK, original_mask)

    # The deployment may outlast the installation (an upgrade while it runs): what its end needs is loaded now.
    preload.load(LOADED_AHEAD)
    # Signals that arrived before the command exists were not delivered to it, whoever sent them: passed on.
    early: list[int] = []
    while True:
        info = signal.sigtimedwait(FORWARDED_SIGNALS, 0)
        if info is None:
            break
        early.append(info.si_signo)
    try:
        child = subprocess.Popen(list(command), preexec_fn=prepare_child)
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
        if terminal is not None:
            os.close(terminal)
        for signum in early:  # nobody to pass them on to: the deployment did not start
            log.debug("signal %d arrived before the command could start", signum)
        return returncode, error_type
    if own_group:
        # Also here, not only in the child: whichever runs first, the group exists before a signal is forwarded.
        try:
            os.setpgid(child.pid, child.pid)
        except OSError:  # EACCES: the child has already run exec (after its own setpgid)
            pass
        if take_terminal and terminal is not None:
            _give_terminal(terminal, child.pid)

    def forward(signum: int) -> None:
        try:
            if own_group:
                os.killpg(child.pid, signum)
            else:
                os.kill(child.pid, signum)
        except OSError as error:  # ESRCH: it has just ended (its status comes with the next SIGCHLD)
            if error.errno != errno.ESRCH:
                log.debug("cannot pass signal %d on to the command: %s", signum, error)

    for signum in early:
        forward(signum)
    waited = {*FORWARDED_SIGNALS, signal.SIGCHLD}
    status = None
    try:
        while status is None:
            info = signal.sigtimedwait(waited, CHILD_LOOK_INTERVAL)
            if info is None:  # its SIGCHLD may have gone to a thread that does not block it: looked at
                status = _child_status(child.pid, terminal)
                continue
            signum = info.si_signo
            if signum == signal.SIGCHLD:
                status = _child_status(child.pid, terminal)
                continue
            if info.si_code == _SI_USER and info.si_pid == os.getpid():
                continue  # our own (a SIGPIPE from writing a log line to a closed pipe, say)
            if not own_group and info.si_code == _SI_KERNEL:
                continue  # the terminal sent it to the foreground group, the command included
            if signum == signal.SIGCONT and terminal is not None:
                # `fg` after a Ctrl-Z: the shell gave us the terminal; the command gets it back with SIGCONT
                # (`bg` gives us none, and the command gets none).
                _give_terminal(terminal, child.pid)
            forward(signum)
    finally:
        if terminal is not None:
            _give_terminal(terminal, os.getpgrp(), only_from=child.pid)
            os.close(terminal)
    returncode = os.waitstatus_to_exitcode(status)
    child.returncode = returncode  # reaped here: Popen must not wait for it again
    return returncode, None if returncode == 0 else error_type_of_exit(returncode)


def _give_terminal(terminal: int, group: int, only_from: int | None = None) -> None:
    """Make ``group`` the terminal's foreground group, if the terminal is ours or the command's (SIGTTOU is
    blocked, so a background process may do it): never taken from the shell (after ``bg``, say)."""
    try:
        if os.tcgetpgrp(terminal) in ((only_from,) if only_from is not None else (os.getpgrp(), group)):
            os.tcsetpgrp(terminal, group)
    except OSError as error:
        log.debug("cannot give the terminal to process group %d: %s", group, error)


def _child_status(pid: int, terminal: int | None) -> int | None:
    """The command's wait status once it has ended; None while it runs. A command in its own group stopped
    (Ctrl-Z, SIGTTIN) on a terminal stops this process too, after taking the terminal back, so that the shell,
    which only sees our group, sees the job stopped; SIGCONT (``fg``, ``bg``) continues us, and is forwarded to
    the command. Without a terminal (a service) nobody would continue us: we go on waiting."""
    while True:
        try:
            found, status = os.waitpid(pid, os.WNOHANG | os.WUNTRACED)
        except ChildProcessError:
            return 0
        if found == 0:
            return None
        if os.WIFSTOPPED(status):
            if terminal is not None:
                _give_terminal(terminal, os.getpgrp(), only_from=pid)
                os.kill(os.getpid(), signal.SIGSTOP)
            continue
        return status
