"""``fraisier record ...`` and ``fraisier exec``: the commands that record, one event or one deployment run.

Each event is merged into the textfile, or handed over as the API does when another process holds the lock;
``exec`` runs its command whatever is wrong with the metrics (``execution``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import click

from fraisier_textfile import catalogue as c
from fraisier_textfile import changes as events
from fraisier_textfile.cli.group import (
    Command,
    Group,
    InvalidInput,
    Settings,
    choices,
    library_errors,
    pass_settings,
    seconds,
)
from fraisier_textfile.errors import FraisierTextfileError, UnexpectedFileError
from fraisier_textfile.fraisier_store import FraisierStore
from fraisier_textfile.store.textfile import TextfileStore


@click.group(cls=Group)
def record() -> None:
    """Record one event into the textfile (for cron jobs and deploy hooks).

    The event is in TEXTFILE_DIR/fraisier.prom when the command exits 0, or, if another process held the lock
    for longer than the lock-wait budget (FRAISIER_LOCK_WAIT_BUDGET, 1 s; at most --lock-timeout), handed
    over as the API does: written in .fraisier-handover/ for that process, or the next merge by any fraisier
    process, to merge exactly once. A bad value exits 2 with one line saying what to fix, and nothing is
    written. A problem with the file or directory exits 1 with one line; the event is then handed over all the
    same, if the directory takes it, and the next merge once the problem is fixed writes it.
    """


def _record(settings: Settings, event: Callable[..., None], *arguments: object) -> None:
    """Merge one event, or hand it over as the API does: when another process holds the lock past the lock-wait
    budget (``$FRAISIER_LOCK_WAIT_BUDGET``, at most --lock-timeout), silently (exit 0); when the merge fails (a
    file it refuses, a bug of ours), with the problem in one line and exit 1. Either way the next merge by any
    process writes it: the event is lost only when it cannot be written anywhere (an unwritable directory)."""
    from fraisier_textfile.settings import default_lock_wait_budget

    changes = events.Changes()
    with library_errors():
        event(changes, *arguments)
        store = settings.store()
    wait = min(store.lock_timeout, default_lock_wait_budget())
    problem: Exception
    try:
        store.merge_or_hand_over(changes, wait)
        return
    except KeyboardInterrupt:
        # Ctrl-C while the merge waited for a busy lock (a user who sees the command wait): do not wait, but keep the
        # event, as the API's exit does (recorder/process.py). Only the merge's commit empties ``changes``: an
        # interrupt held back until after it finds them empty, and nothing is handed over twice.
        if changes:
            try:
                store.hand_over(changes)
            except Exception as error:
                click.echo(f"interrupted: the event was not recorded: {_described(error, store.path)}", err=True)
            else:
                click.echo(f"interrupted: the event was handed over to the next merge of {store.path} instead of "
                           "waiting for its lock", err=True)
        raise
    except UnexpectedFileError as error:
        if error.path in (store.path, store.lock_path):
            # Something else where the file or its lock should be (a symlink into node_exporter's directory, say):
            # this is not the directory to keep the event in; the line says where to point instead.
            raise click.ClickException(str(error)) from None
        problem = error  # something planted among the markers or hand-overs: the event is kept all the same
    except Exception as error:  # whatever else (a file it refuses, a probe's exception), the event is not lost
        problem = error
    try:
        store.hand_over(changes)
    except Exception as error:
        also = "" if str(error) in str(problem) else f"; handing it over failed too: {_described(error, store.path)}"
        raise click.ClickException(_described(problem, store.path) + also + " (the event was not recorded)") from None
    raise click.ClickException(_described(problem, store.path) + " (the event was handed over: the next merge, once "
                               "that is fixed, writes it)")


def _described(error: BaseException, path: object) -> str:
    if isinstance(error, FraisierTextfileError):
        return str(error)
    if isinstance(error, OSError):
        return f"cannot write {path}: {error}; check the textfile directory"
    return f"recording into {path} failed unexpectedly: {error!r}; please report this as a bug of fraisier_textfile"



PROVIDER = click.option("--provider", required=True, help="Provider, e.g. bare_metal or docker_compose.")
DURATION_HELP = "Duration in seconds (a finite number >= 0)."


@record.command()
@PROVIDER
@click.option("--fraise-type", required=True, help="Fraise type, e.g. api, etl, scheduled, backup.")
@click.option("--status", required=True,
              help=f"One of: {', '.join(c.DEPLOYMENT_STATUSES)} (Fraisier's interrupted is recorded as crashed).",
              shell_complete=choices(c.DEPLOYMENT_STATUSES))
@click.option("--duration", required=True, metavar="SECONDS", help=DURATION_HELP)
@pass_settings
def deployment(settings: Settings, provider: str, fraise_type: str, status: str, duration: str) -> None:
    """A finished deployment: counted by status, its duration observed, its time kept as the last one."""
    _record(settings, events.deployment_complete, provider, fraise_type, status, seconds("--duration", duration))


@record.command()
@PROVIDER
@click.option("--error-type", required=True, help="What went wrong, e.g. timeout, build_failed.")
@pass_settings
def error(settings: Settings, provider: str, error_type: str) -> None:
    """A deployment error, counted by provider and error type."""
    _record(settings, events.deployment_error, provider, error_type)


@record.command()
@PROVIDER
@click.option("--reason", required=True, help="Why, e.g. timeout, health_check, manual.")
@click.option("--duration", required=True, metavar="SECONDS", help=DURATION_HELP)
@pass_settings
def rollback(settings: Settings, provider: str, reason: str, duration: str) -> None:
    """A rollback and how long it took."""
    _record(settings, events.rollback, provider, reason, seconds("--duration", duration))


@record.command("health-check")
@PROVIDER
@click.option("--check-type", required=True, help="e.g. http, tcp, exec, systemd.")
@click.option("--status", required=True, help=f"One of: {', '.join(c.HEALTH_CHECK_STATUSES)}.",
              shell_complete=choices(c.HEALTH_CHECK_STATUSES))
@click.option("--duration", required=True, metavar="SECONDS", help=DURATION_HELP)
@pass_settings
def health_check(settings: Settings, provider: str, check_type: str, status: str, duration: str) -> None:
    """A health check: counted by status (pass or fail), its duration observed."""
    _record(settings, events.health_check, provider, check_type, status, seconds("--duration", duration))


@record.command()
@PROVIDER
@click.option("--up", is_flag=True, help="The provider is available (give --up or --down).")
@click.option("--down", is_flag=True, help="The provider is not available.")
@pass_settings
def availability(settings: Settings, provider: str, up: bool, down: bool) -> None:
    """Whether a provider is available now (the latest report wins)."""
    if up and down:
        raise click.UsageError("--up and --down contradict each other: give one of them")
    if not (up or down):
        raise InvalidInput("say whether the provider is available: add --up or --down")
    _record(settings, events.provider_availability, provider, up)


@record.command("lock-wait")
@click.option("--service", required=True, help="The service whose deployment lock was awaited.")
@PROVIDER
@click.option("--seconds", "wait_time", required=True, metavar="SECONDS", help="How long it waited.")
@pass_settings
def lock_wait(settings: Settings, service: str, provider: str, wait_time: str) -> None:
    """How long a deployment waited for its lock (the latest report wins)."""
    _record(settings, events.lock_wait, service, provider, seconds("--seconds", wait_time))


@click.command(
    "exec", cls=Command, context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@PROVIDER
@click.option("--fraise-type", required=True, help="Fraise type, e.g. api, etl, scheduled, backup.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_settings
def exec_(settings: Settings, provider: str, fraise_type: str, command: tuple[str, ...]) -> None:
    """Run COMMAND as a tracked deployment and exit with its exit status.

    The deployment counts as active while COMMAND runs. When it ends, its duration is observed and it is
    counted as success (exit 0) or failed, with an error of type exit_code_N or signal_NAME; killed by signal
    N, this exits 128+N. If this process is killed, the deployment is counted as crashed by the next writer.

    COMMAND always runs, whatever is wrong with the metrics (a bad --provider or setting, a corrupt file, a
    full disk, a lock another process holds): one warning line says what, and the exit status is COMMAND's.
    A bad setting is replaced by its default; a --provider or --fraise-type that cannot be a label value
    means the deployment is not recorded. A command that cannot start is named in one error line: exit 127
    when it is not found (error type command_not_found), 126 when it cannot be executed
    (command_not_executable).

    Signals are passed on as tini and dumb-init do: each signal sent to this process (all that a command may
    handle: HUP, INT, QUIT, TERM, USR1, USR2, ALRM, PIPE, WINCH, CONT, TSTP, TTIN, TTOU, ...) reaches COMMAND
    once, and one that already reached it does not again: a Ctrl-C at a terminal goes to COMMAND once, a
    Ctrl-Z stops the job and fg continues it. Started as a process group leader (a shell's job, a systemd
    service), or inside another process's group away from the terminal (timeout, cron, CI), COMMAND runs in a
    process group of its own (and gets the terminal if this process had it); inside a script's group in the
    terminal's foreground, it stays in that group, so that Ctrl-C reaches the script too. Under systemd use
    KillMode=mixed (systemd then signals only this process, which passes the signal on once). If this process
    is killed outright (SIGKILL), the kernel kills COMMAND too (Linux's parent-death signal), so a deployment
    counted crashed has really stopped (processes that COMMAND starts are its own to stop).

    \b
    Example:
      fraisier exec --provider bare_metal --fraise-type api -- ./deploy.sh --env prod
    """
    from fraisier_textfile.cli.execution import block_forwarded_signals, run_deployment
    from fraisier_textfile.settings import default_lock_wait_budget

    block_forwarded_signals()  # before anything else: a signal now is kept for the command, not lost
    store: TextfileStore | None = None
    problem: str | None = None
    try:
        store = FraisierStore(settings.textfile_dir, settings.lock_timeout)
    except Exception as error:  # the deployment runs all the same
        problem = f"the deployment runs, but its metrics cannot be recorded: {error}"
    status = run_deployment(store, provider, fraise_type, command, lock_wait_budget=default_lock_wait_budget(),
                            problem=problem)
    sys.exit(status)
