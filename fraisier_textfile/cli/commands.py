"""The ``fraisier`` command: click commands only. Each parses its options, makes one library call, and
turns a library error into one ``Error: ...`` line and a non-zero exit.

Nothing here imports prometheus_client at start-up: a ``fraisier record`` run from cron must not pay for it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from fraisier_textfile import __version__, settings
from fraisier_textfile import catalogue as c
from fraisier_textfile import changes as events
from fraisier_textfile.cli import logs
from fraisier_textfile.cli.dispatch import HintingGroup
from fraisier_textfile.errors import FraisierTextfileError, InvalidValueError, UnexpectedFileError
from fraisier_textfile.store import handovers
from fraisier_textfile.store.files import DIRECTORY_ENVIRONMENT, default_textfile_directory
from fraisier_textfile.store.lock import DEFAULT_LOCK_TIMEOUT, LOCK_TIMEOUT_ENVIRONMENT
from fraisier_textfile.store.textfile import TextfileStore

log = logging.getLogger(__name__)


class InvalidInput(click.ClickException):
    """A bad value: one line, exit 2 like any other misuse."""

    exit_code = 2


@contextmanager
def library_errors() -> Iterator[None]:
    try:
        yield
    except InvalidValueError as error:
        raise InvalidInput(str(error)) from None
    except FraisierTextfileError as error:
        raise click.ClickException(str(error)) from None


class Settings:
    """The group's settings: the options, else their environment variables, else the defaults.

    A typo in a setting from the environment is reported in one line and replaced by its default (it must not
    stop a deployment). A typo in an option given on the command line is a usage error (exit 2), except for
    ``fraisier exec`` (``lenient``): there it is reported, its default used, and the deployment runs."""

    def __init__(self, textfile_dir: Path, lock_timeout: str | None = None, log_level: str | None = None,
                 log_format: str | None = None, *, lenient: bool = False,
                 lock_timeout_source: str = "--lock-timeout") -> None:
        self.lenient = lenient
        self.problems: list[str] = []
        """What was wrong with the settings (each reported once, as a warning): for exec's one line."""
        self.textfile_dir = textfile_dir
        deferred: list[tuple[InvalidValueError, object]] = []
        self.log_level = self._setting("--log-level", log_level, logs.LEVEL_ENVIRONMENT, _level,
                                       logs.DEFAULT_LEVEL, deferred)
        self.log_format = self._setting("--log-format", log_format, logs.FORMAT_ENVIRONMENT, _format,
                                        logs.DEFAULT_FORMAT, deferred)
        # Logging is set up before the other settings are read, so that their problems are logged in its format.
        logs.configure(self.log_level, self.log_format)
        self.lock_timeout = self._setting(lock_timeout_source, lock_timeout, LOCK_TIMEOUT_ENVIRONMENT,
                                          c.check_seconds, DEFAULT_LOCK_TIMEOUT, deferred)
        for error, default in deferred:
            self._report(error, default)

    def _setting(self, option: str, given: str | None, variable: str, parse: Callable[[str, str], Any],
                 default: Any, deferred: list[tuple[InvalidValueError, object]]) -> Any:
        if given is not None:
            try:
                return parse(option, given)
            except InvalidValueError as error:
                if not self.lenient:
                    raise InvalidInput(str(error)) from None
                deferred.append((error, default))
                return default
        text = os.environ.get(variable)
        if not text:
            return default
        try:
            return parse(variable, text)
        except InvalidValueError as error:
            deferred.append((error, default))
            return default

    def _report(self, error: InvalidValueError, default: object) -> None:
        self.problems.append(str(error))
        settings.report(error, default)

    def apply(self, option: str, value: object) -> None:
        """An option given after the command, over the group's value."""
        deferred: list[tuple[InvalidValueError, object]] = []
        if option == "textfile-dir":
            self.textfile_dir = Path(str(value))
        elif option == "lock-timeout":
            self.lock_timeout = self._setting("--lock-timeout", str(value), "", c.check_seconds, self.lock_timeout,
                                              deferred)
        elif option == "log-level":
            self.log_level = self._setting("--log-level", str(value), "", _level, self.log_level, deferred)
            logs.configure(self.log_level, self.log_format)
        elif option == "log-format":
            self.log_format = self._setting("--log-format", str(value), "", _format, self.log_format, deferred)
            logs.configure(self.log_level, self.log_format)
        for error, default in deferred:
            self._report(error, default)

    def store(self, *, fraisier_state: bool = False, since: float | None = None) -> TextfileStore:
        """``fraisier_state``: with Fraisier's state database read in each merge (sources/fraisier_state.py);
        ``since``: what it counts of a database seen for the first time."""
        with library_errors():
            participants: list[Any] = []
            if fraisier_state:
                from fraisier_textfile.sources.fraisier_state import participants as state_participants

                participants = list(state_participants(since=since))
            return TextfileStore(self.textfile_dir, self.lock_timeout, participants=participants)


def _level(what: str, text: str) -> str:
    return settings.choice_text(what, text, list(logs.LEVELS))


def _format(what: str, text: str) -> str:
    return settings.choice_text(what, text, logs.FORMATS)


def _choices(values: tuple[str, ...] | list[str]) -> Callable[..., list[str]]:
    return lambda context, parameter, incomplete: complete(values, incomplete)


def _not_a_command(context: click.Context, parameter: click.Parameter, value: str | None) -> str | None:
    """A group option whose value is one of our commands was given no value (``--log-level record error``):
    a usage error naming the option, not "No such command 'error'" two words later. Other bad values are
    judged once the command is known (exec runs its command all the same)."""
    group = context.command
    if value is not None and isinstance(group, click.Group) and value in group.commands:
        raise click.BadParameter(f"{value!r} is a command: give the option a value before it", context, parameter)
    return value


def seconds(name: str, value: str) -> float:
    with library_errors():
        return c.check_seconds(name, value)


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(cls=HintingGroup, context_settings=CONTEXT)
@click.option(
    "--textfile-dir",
    envvar=DIRECTORY_ENVIRONMENT,
    type=click.Path(file_okay=False, path_type=Path),
    default=default_textfile_directory,
    show_default=str(default_textfile_directory()),
    help=f"Directory of fraisier.prom; created if missing. Point node_exporter's "
    f"--collector.textfile.directory at it (Debian: /var/lib/prometheus/node-exporter). "
    f"Env: {DIRECTORY_ENVIRONMENT}.",
)
@click.option(
    "--lock-timeout",
    default=None,
    callback=_not_a_command,
    show_default=str(DEFAULT_LOCK_TIMEOUT),
    metavar="SECONDS",
    help=f"How long to wait for another fraisier process to finish writing the file. "
    f"Env: {LOCK_TIMEOUT_ENVIRONMENT}.",
)
@click.option("--log-level", metavar="[" + "|".join(logs.LEVELS) + "]", default=None, callback=_not_a_command,
              show_default=logs.DEFAULT_LEVEL, shell_complete=_choices(list(logs.LEVELS)),
              help=f"Log records at this level and above, to stderr (request logs are debug). "
              f"Env: {logs.LEVEL_ENVIRONMENT}.")
@click.option("--log-format", metavar="[" + "|".join(logs.FORMATS) + "]", default=None, callback=_not_a_command,
              show_default=logs.DEFAULT_FORMAT, shell_complete=_choices(logs.FORMATS),
              help=f"logfmt (time=... level=... msg=...) or json (one object a line), as node_exporter's. "
              f"Env: {logs.FORMAT_ENVIRONMENT}.")
# Named for this package whatever script started it: `fraisier, version 0.1.0` read as an old Fraisier.
@click.version_option(__version__, prog_name="fraisier-textfile", message="%(prog)s, version %(version)s")
@click.pass_context
def main(context: click.Context, textfile_dir: Path, lock_timeout: str | None, log_level: str | None,
         log_format: str | None) -> None:
    """Fraisier's deployment metrics for Prometheus, from short-lived processes.

    Every command merges what it records into one file, TEXTFILE_DIR/fraisier.prom, under a lock and with
    an atomic replace, so the file always holds the totals over every process that ever ran. Serve it with
    node_exporter's textfile collector or with `fraisier metrics`.

    \b
    Examples:
      fraisier record deployment --provider bare_metal --fraise-type api --status success --duration 42
      fraisier exec --provider bare_metal --fraise-type api -- ./deploy.sh
      fraisier textfile show

    The options above may also follow the command: fraisier textfile check --textfile-dir DIR.

    The settings other than the directory only tune the metrics: a typo in one of them in the environment is
    reported in one line and its default used; given on the command line, it is a usage error (exit 2), except
    for exec, which reports it and runs the deployment all the same.
    """
    context.obj = Settings(textfile_dir, lock_timeout, log_level, log_format,
                           lenient=context.invoked_subcommand == "exec")


pass_settings = click.pass_obj


@main.group()
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
    except UnexpectedFileError as error:
        if Path(error.path) in (store.path, store.lock_path):
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


def _described(error: BaseException, path: Path) -> str:
    if isinstance(error, FraisierTextfileError):
        return str(error)
    if isinstance(error, OSError):
        return f"cannot write {path}: {error}; check the textfile directory"
    return f"recording into {path} failed unexpectedly: {error!r}; please report this as a bug of fraisier_textfile"


def complete(values: tuple[str, ...] | list[str], incomplete: str) -> list[str]:
    """Shell completion of a value among ``values``."""
    return [value for value in values if value.startswith(incomplete)]


PROVIDER = click.option("--provider", required=True, help="Provider, e.g. bare_metal or docker_compose.")
DURATION_HELP = "Duration in seconds (a finite number >= 0)."


@record.command()
@PROVIDER
@click.option("--fraise-type", required=True, help="Fraise type, e.g. api, etl, scheduled, backup.")
@click.option("--status", required=True,
              help=f"One of: {', '.join(c.DEPLOYMENT_STATUSES)} (Fraisier's interrupted is recorded as crashed).",
              shell_complete=lambda context, parameter, incomplete: complete(c.DEPLOYMENT_STATUSES, incomplete))
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
              shell_complete=lambda context, parameter, incomplete: complete(c.HEALTH_CHECK_STATUSES, incomplete))
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


@main.command(
    "exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
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
        store = TextfileStore(settings.textfile_dir, settings.lock_timeout)
    except Exception as error:  # the deployment runs all the same
        problem = f"the deployment runs, but its metrics cannot be recorded: {error}"
    status = run_deployment(store, provider, fraise_type, command, lock_wait_budget=default_lock_wait_budget(),
                            problem=problem)
    sys.exit(status)


@main.group()
def textfile() -> None:
    """Inspect the textfile: where it is, what it holds, whether it is valid."""


@textfile.command()
@pass_settings
def path(settings: Settings) -> None:
    """Print the textfile's path."""
    click.echo(settings.store().path)


EXPIRE_AFTER = click.option(
    "--expire-after", metavar="DURATION", default=None,
    help="Also drop series not updated for DURATION (30d, 12h, 90m, 3600s). Env for every writer: "
    "FRAISIER_EXPIRE_AFTER.",
)


def _since(text: str | None) -> float | None:
    """--since: now, an ISO time (local time unless it has an offset), or Unix seconds."""
    import time
    from datetime import datetime

    if text is None:
        return None
    from fraisier_textfile.sources.fraisier_state import checked_since

    if text.strip().lower() == "now":
        return time.time()
    try:
        # nan, inf and 1e20 are floats, but no time: refused here, not at the merge that would read them.
        return checked_since(float(text))
    except ValueError:
        pass
    try:
        return checked_since(datetime.fromisoformat(text.strip()).timestamp())
    except (ValueError, OverflowError):
        raise InvalidInput(f"--since={text!r} is not a time: give now, an ISO time such as 2026-12-01T00:00, or "
                           "Unix seconds") from None


def _duration(option: str, text: str | None) -> float | None:
    from fraisier_textfile.store.lifecycle import parse_duration

    if text is None:
        return None
    with library_errors():
        return parse_duration(option, text)


@textfile.command()
@EXPIRE_AFTER
@click.option("--since", metavar="TIME", default=None,
              help="Where Fraisier's state database is read for the first time (no cursor in the textfile yet): "
              "count only the deployments started from TIME on (now, an ISO time 2026-12-01T00:00, or Unix "
              "seconds). Without it, its whole history is counted, so that the counters start at the truth.")
@pass_settings
def refresh(settings: Settings, expire_after: str | None, since: str | None) -> None:
    """Rewrite the textfile with nothing new: deployments whose process died are counted as crashed, the
    active deployments are recounted, histograms written with other buckets are migrated, and the file's
    modification time becomes now.

    \b
    Run it from a timer (every minute, say) on hosts served by node_exporter: the active-deployments gauge
    then drops within a minute of a crash, and the file stays fresh for the stale-file alert on quiet hosts:
      * * * * *  FRAISIER_TEXTFILE_DIR=/var/lib/fraisier/textfile fraisier textfile refresh

    Where Fraisier is installed (or FRAISIER_DB_PATH is set), each refresh also takes the deployments Fraisier
    wrote in its state database and status files since the last one, exactly once
    (FRAISIER_TEXTFILE_FRAISIER_STATE=off turns that off).
    """
    retention = _duration("--expire-after", expire_after)
    store = settings.store(fraisier_state=True, since=_since(since))
    if retention is not None:
        store.lifecycle.expire_after = retention
    with library_errors():
        store.merge_backlog()  # every hand-over waiting, however many: a record call applies only so many
    handovers.wait_for_removals()  # a tidy directory after a refresh: the applied hand-overs are gone
    for series in store.lifecycle.forgotten:
        click.echo(f"expired {series}")


@textfile.command()
@click.option("--provider", default=None, help="Forget the series of this provider (--match provider=...).")
@click.option("--fraise-type", default=None, help="Forget the series of this fraise type (--match fraise_type=...).")
@click.option("--match", "matches", multiple=True, metavar="LABEL=VALUE",
              help="Forget the series with this label value. Repeatable: a series goes if it matches them all.")
@click.option("--family", "families", multiple=True, metavar="NAME",
              help="Only in this family (repeatable; default: every family of fraisier's).")
@EXPIRE_AFTER
@click.option("--dry-run", is_flag=True, help="List what would be forgotten; write nothing.")
@pass_settings
def forget(
    settings: Settings,
    provider: str | None,
    fraise_type: str | None,
    matches: tuple[str, ...],
    families: tuple[str, ...],
    expire_after: str | None,
    dry_run: bool,
) -> None:
    """Remove series from the textfile: a typo'd provider, a retired fraise type, a one-off label value.

    Every series whose labels match all the matchers goes (a histogram with all its buckets); with
    --expire-after, only those of them not updated for that long. It asks nothing: it prints one line per
    series removed. Families without a matched label keep their series (forgetting a fraise type keeps
    the duration histograms, which have no fraise_type label). A deployment in flight is counted when it
    ends, which brings its series back.

    \b
    Examples:
      fraisier textfile forget --provider bare_metl --dry-run
      fraisier textfile forget --fraise-type old_etl
      fraisier textfile forget --match error_type=exit_code_137 --family fraisier_deployment_errors_total
      fraisier textfile forget --expire-after 90d
    """
    from fraisier_textfile.store import lifecycle

    with library_errors():
        matchers = [lifecycle.parse_matcher(text) for text in matches]
        if provider is not None:
            matchers.insert(0, lifecycle.parse_matcher(f"provider={provider}"))
        if fraise_type is not None:
            matchers.insert(1 if provider is not None else 0, lifecycle.parse_matcher(f"fraise_type={fraise_type}"))
        selection = lifecycle.Selection(matchers, families, _duration("--expire-after", expire_after))
        store = settings.store()
        if not store.path.exists():  # nothing to forget; a mistyped --textfile-dir must not create a file
            raise click.ClickException(f"{store.path} does not exist: check --textfile-dir")
        if dry_run:
            _, document = store.read_version(check_histograms=False)
            gone = lifecycle.sweep(document, selection, store.lifecycle.clock(), remove=False)
        else:
            gone = lifecycle.forget(store, selection)
    verb = "would forget" if dry_run else "forgot"
    for series in gone:
        click.echo(f"{verb} {series}")
    click.echo(f"{store.path}: {verb} {len(gone)} series" + (" (dry run: nothing written)" if dry_run else ""))


@textfile.command()
@pass_settings
def show(settings: Settings) -> None:
    """Print each family of the textfile with its samples."""
    from fraisier_textfile.format.check import describe

    store = settings.store()
    with library_errors():
        document = store.read()
    if not document.blocks:
        click.echo(f"{store.path}: no metrics yet")
        return
    for line in describe(document):
        click.echo(line)


@textfile.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object (every number, timestamps as Unix time).")
@click.option("--wide", is_flag=True,
              help="Every column (deployments by status, p50, rollbacks, health checks), names never shortened.")
@pass_settings
def summary(settings: Settings, as_json: bool, wide: bool) -> None:
    """How deployments are going, per provider and its fraise types (indented below it): whether the provider
    is available (DOWN stands out), deployments, success rate, failures (crashes included), p95 duration, time
    since the last success and failure, deployments active now. Fits 100 columns; --wide adds the rest."""
    from fraisier_textfile.serve.summary import as_json_text, summarize, table_lines

    store = settings.store()
    with library_errors():
        document = store.read()
    result = summarize(document)
    if as_json:
        click.echo(as_json_text(result))
    elif not result.rows:
        click.echo(f"{store.path}: no deployments recorded yet")
    else:
        for line in table_lines(result, wide=wide, emphasize=lambda text: click.style(text, fg="red", bold=True)):
            click.echo(line)  # click drops the colour where the output is not a terminal


@textfile.command()
@pass_settings
def check(settings: Settings) -> None:
    """Validate the textfile as node_exporter reads it (Go's parser: promtool's words), and what it lets through
    that breaks the file: timestamps, series that appear twice, negative counters, histograms that are not
    cumulative. Prints every problem, one per line with its line number, and exits 1; exits 0 when the file is
    sound. Histograms written with other buckets than ours are noted, not refused: the next merge migrates
    them, keeping their totals. Warns (exit status unchanged) when node_exporter's user could not read the file:
    a directory on the way it cannot enter, the directory it cannot list, the file it cannot read, with the fix."""
    from fraisier_textfile.format.check import check_text
    from fraisier_textfile.format.reader import parse
    from fraisier_textfile.format.syntax import ParseError
    from fraisier_textfile.store.lifecycle import migration_notes

    store = settings.store()
    if not store.path.exists():
        raise click.ClickException(f"{store.path} does not exist yet: record an event first, or check --textfile-dir")
    with library_errors():
        version, text = store.read_text()
    if version is not None:
        version.close()
    problems = check_text(text, other_bounds=True)
    notes: list[str] = []
    document = None
    try:
        document = parse(text, check_histograms=False)
        notes = migration_notes(document)
    except ParseError as error:
        if not problems:  # a histogram that cannot be migrated; a file that does not parse is listed already
            problems.append(error)
    for note in notes:
        click.echo(f"{store.path}: note: {note}: the next merge migrates it, keeping its totals")
    # After the verdict: whether the file is sound comes first, whether node_exporter can read it second.
    readable = unreadable_by_node_exporter(store.path)
    if problems or document is None:
        for problem in problems:
            where = f"{store.path}:{problem.line_number}" if problem.line_number else str(store.path)
            click.echo(f"Error: {where}: {problem.problem}", err=True)
        for warning in readable:
            click.echo(f"warning: {warning}", err=True)
        raise SystemExit(1)
    samples = sum(block.line_count() for block in document.blocks.values())
    click.echo(f"{store.path}: OK, {len(document.blocks)} families, {samples} samples")
    for warning in readable:
        click.echo(f"warning: {warning}", err=True)


NODE_EXPORTER_USER = "prometheus"
"""The user Debian's prometheus-node-exporter runs as; where there is none, any other user stands for it."""


class _Reader:
    """Who reads the file: node_exporter's user if this host has it, else any user but the file's owner."""

    def __init__(self) -> None:
        import grp
        import pwd

        try:
            entry = pwd.getpwnam(NODE_EXPORTER_USER)
        except KeyError:
            self.name, self.uid, self.groups = "other users", None, set()
            return
        self.name, self.uid = NODE_EXPORTER_USER, entry.pw_uid
        self.groups = {entry.pw_gid} | {group.gr_gid for group in grp.getgrall() if entry.pw_name in group.gr_mem}

    def may(self, path: Path, permission: int) -> bool:
        """Whether the mode bits give ``permission`` (4 read, 1 enter/search) on ``path`` to this reader."""
        if self.uid == 0:
            return True
        status = path.stat()
        if self.uid is not None and status.st_uid == self.uid:
            bits = status.st_mode >> 6
        elif self.uid is not None and status.st_gid in self.groups:
            bits = status.st_mode >> 3
        else:
            bits = status.st_mode
        return bits & permission == permission


def unreadable_by_node_exporter(textfile: Path) -> list[str]:
    """Why node_exporter's user could not read ``textfile``, with the fix; empty when it can (or when this
    cannot be told: a path that vanished). The first obstacle only: the next shows once it is fixed."""
    try:
        reader = _Reader()
        directory = textfile.parent.resolve()
        try:
            home: Path | None = Path.home().resolve()
        except (RuntimeError, KeyError):  # no HOME and no passwd entry (a container's arbitrary uid)
            home = None
        for ancestor in reversed(directory.parents):
            if not reader.may(ancestor, 1):
                mode = f"{ancestor.stat().st_mode & 0o7777:04o}"
                if home is not None and directory.is_relative_to(home):  # the default directory, or one like it
                    return [
                        f"{textfile}: {reader.name} cannot enter {ancestor} (mode {mode}), so node_exporter cannot "
                        f"read the file: the default directory is under your home, which other users cannot "
                        f"enter. Use a directory of its own that node_exporter reads (--textfile-dir or "
                        f"FRAISIER_TEXTFILE_DIR, e.g. /var/lib/prometheus/node-exporter on Debian), or let "
                        f"others through: chmod o+x {ancestor}"
                    ]
                return [
                    f"{textfile}: {reader.name} cannot enter {ancestor} (mode {mode}), so node_exporter cannot read "
                    f"the file: chmod o+x {ancestor}, or use a directory outside it (--textfile-dir)"
                ]
        if not reader.may(directory, 4 | 1):
            mode = f"{directory.stat().st_mode & 0o7777:04o}"
            return [
                f"{directory}: {reader.name} cannot list {directory} (mode {mode}), so node_exporter cannot read "
                f"fraisier.prom: chmod 755 {directory} (a umask of 077 when it was made leaves it so: writers "
                f"should run with umask 022, or 002 with a shared group)"
            ]
        if not reader.may(textfile, 4):
            mode = f"{textfile.stat().st_mode & 0o7777:04o}"
            return [f"{textfile}: {reader.name} cannot read {textfile} (mode {mode}): chmod 644 {textfile}"]
    except OSError:
        return []
    return []


@main.command()
@click.option("--port", "-p", type=click.IntRange(0, 65535), default=8001, show_default=True,
              help="TCP port to listen on.")
@click.option("--address", "-a", default="localhost", show_default=True,
              help="Address to listen on: localhost (the default) keeps the metrics on this machine; "
              "0.0.0.0 or a host's address exposes them (use --web-config-file then).")
@click.option("--web-config-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Web config (TLS, basic auth) in the format of Prometheus exporters; see above.")
@click.option("--max-requests", type=click.IntRange(min=0), default=0, show_default=True,
              help="Scrapes served at once; more get 503 at once, as with node_exporter's --web.max-requests "
              "(say 40, on a host exposed to many clients). 0: no limit.")
@click.option("--max-connections", type=click.IntRange(min=0), default=512, show_default=True,
              help="Connections held at once, as Prometheus's --web.max-connections (never more than half the "
              "open-file limit allows). At the limit a new connection closes the one that has waited longest "
              "for its request. 0: as many as the open-file limit allows.")
@pass_settings
def metrics(settings: Settings, port: int, address: str, web_config_file: Path | None, max_requests: int,
            max_connections: int) -> None:
    """Serve TEXTFILE_DIR/fraisier.prom over HTTP at /metrics, for Prometheus to scrape.

    For hosts without node_exporter (with it, point its textfile collector at TEXTFILE_DIR instead). A scrape
    shows what the file holds, with the deployments in progress counted live; the file is re-read only when
    it changed. Until a fraisier process writes the file, every family is served without samples. There is a
    landing page at / with a summary of the deployments (as `fraisier textfile summary`). SIGTERM or SIGINT
    stop it (exit 0); SIGHUP re-reads the web config (systemd's ExecReload) and it goes on serving.

    Started by a systemd .socket unit (LISTEN_FDS, LISTEN_PID), it serves the socket it is handed, TCP or Unix
    (ListenStream=/run/fraisier-metrics.sock, or @name), and ignores --address and --port; contrib/systemd/ has
    the units. Otherwise it listens with the system's backlog (/proc/sys/net/core/somaxconn), as node_exporter
    does.

    Against clients that hold connections and send nothing: it raises its soft open-file limit to the hard
    one at start (as Go programs do), holds at most --max-connections, and closes a connection whose TLS
    handshake and request have not arrived in full 10 s after it connected (30 s after the last response on
    a kept-alive connection), however slowly the bytes trickle in.

    --web-config-file takes the web config file of Prometheus exporters (exporter-toolkit): TLS, client
    certificates, basic auth. Paths in it are relative to its directory; it is re-read when it changes. A new
    config that would turn authentication off (an empty or half-written file, every user removed), turn TLS on
    or off, or change its client_auth_type, client_ca_file, min_version or max_version is refused and logged
    at error level: the last good config stays in force until a restart.

    \b
    Example web config:
      tls_server_config:
        cert_file: server.crt
        key_file: server.key
        min_version: TLS12                            # optional
        client_auth_type: RequireAndVerifyClientCert  # optional: client certificates ...
        client_ca_file: clients-ca.crt                # ... signed by this CA
      basic_auth_users:                               # optional: user name: bcrypt hash of the password
        prometheus: $2b$12$...                        # the whole hash made as below

    \b
    A hash for a password:
      python3 -c 'import bcrypt; print(bcrypt.hashpw(b"PASSWORD", bcrypt.gensalt()).decode())'

    \b
    Examples:
      fraisier metrics
      fraisier metrics --address 0.0.0.0 --port 9101 --web-config-file /etc/fraisier/web.yml
      fraisier metrics -p 8001 -a localhost          # Fraisier's own flags work too
    """
    import signal
    import threading

    from fraisier_textfile.serve.server import (
        notify_systemd,
        raise_descriptor_limit,
        serve_textfile,
        systemd_listening_socket,
    )

    if not address.strip():
        raise InvalidInput("--address is empty: give localhost, a host's address, or 0.0.0.0 for every interface")
    stop = threading.Event()
    wake = threading.Event()
    reloads: list[int] = []

    def request_stop(signal_number: int, frame: object) -> None:
        stop.set()
        wake.set()

    def request_reload(signal_number: int, frame: object) -> None:
        reloads.append(signal_number)
        wake.set()

    # Before the server starts: a SIGTERM during start-up is a clean stop too, and a SIGHUP (systemd's
    # ExecReload) never kills it.
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, request_reload)
    store = settings.store(fraisier_state=True)  # each scrape takes what Fraisier's state holds that is new
    before, after = raise_descriptor_limit()
    if after != before:
        log.debug(f"raised the soft limit on open files from {before} to {after}, the hard limit")
    with library_errors():
        listening_socket = systemd_listening_socket()
        server = serve_textfile(
            store, port=port, address=address, web_config_file=web_config_file, max_requests=max_requests,
            listening_socket=listening_socket, max_connections=max_connections,
        )
    details = ", ".join(
        part for part in (
            "socket from systemd" if listening_socket is not None else "",
            "TLS" if server.tls else "",
            "basic auth" if server.web_config is not None and server.web_config.current().basic_auth_users else "",
            "" if store.path.exists() else "the file does not exist yet: families are served without samples",
        ) if part
    )
    log.info(f"fraisier metrics: serving {store.path} on {server.location}" + (f" ({details})" if details else ""))
    if max_connections and server.connection_limit < max_connections:
        log.warning(f"--max-connections {max_connections} lowered to {server.connection_limit}: the open-file "
                    f"limit ({after}) allows no more; raise LimitNOFILE= in the unit")
    # Type=notify: systemd counts the service started, and lets a reload (SIGHUP) through, only from here.
    notify_systemd("READY=1")
    while True:
        wake.wait()
        wake.clear()
        if stop.is_set():
            break
        while reloads:
            reloads.pop()
            log.info("SIGHUP: reloading the web config")
            server.reload_web_config()
    server.shutdown()
    log.info("fraisier metrics: stopped")


@main.command(short_help="Write the systemd units (server, socket, refresh timer) for this installation.")
@click.option("--user", required=True,
              help="The deploying user, who owns the textfile directory (User= of the services).")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=Path("/etc/systemd/system"),
              show_default=True, help="Where to write the four units.")
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Where fraisier-metrics.socket listens (0.0.0.0: every address; give the service a web config).")
@click.option("--port", type=click.IntRange(1, 65535), default=8001, show_default=True,
              help="The port fraisier-metrics.socket listens on.")
@click.option("--force", is_flag=True, help="Replace units already there with other content.")
@pass_settings
def systemd(settings: Settings, user: str, output: Path, address: str, port: int, force: bool) -> None:
    """Write the systemd units for this installation: fraisier-metrics.service and .socket (hosts without
    node_exporter), fraisier-textfile-refresh.timer and .service (every host).

    Their ExecStart= is the fraisier-textfile script beside this command's interpreter, with TEXTFILE_DIR
    (give --textfile-dir). The units are hardened (no home directories, a private /tmp, /var/lib hidden but
    for the textfile directory): an installation there, which would not start, is refused with the fix. The
    recommended layout: a venv under /opt/fraisier-textfile made with Debian's python3-venv.

    \b
    Example (as root):
      install -d -o deploy -g deploy -m 0755 /var/lib/fraisier/textfile
      /opt/fraisier-textfile/bin/fraisier-textfile systemd --user deploy --textfile-dir /var/lib/fraisier/textfile
      systemctl daemon-reload && systemctl enable --now fraisier-textfile-refresh.timer
    """
    from fraisier_textfile.cli import systemd as units

    with library_errors():
        written = units.generate(user, settings.textfile_dir, output, address, port, force)
    for path in written:
        click.echo(f"wrote {path}")
    click.echo("then: systemctl daemon-reload; systemctl enable --now fraisier-textfile-refresh.timer "
               "(every host); systemctl enable --now fraisier-metrics.socket (hosts without node_exporter)")


@main.command("install-dispatcher", short_help="Put the `fraisier` dispatcher back after an upgrade of Fraisier.")
def install_dispatcher() -> None:
    """Put this package's `fraisier` script back beside fraisier-textfile, after an upgrade of Fraisier.

    Fraisier and this package both install a `fraisier` script, and the one installed last wins: every
    `pip install --upgrade fraisier` (or reinstall) puts Fraisier's own back, which knows none of record, exec,
    textfile, metrics. This writes ours again, for the same interpreter: `fraisier` then runs Fraisier's
    commands and these (`fraisier --help` lists both).
    """
    from fraisier_textfile.cli.scripts import install_dispatcher as write_script

    with library_errors():
        written = write_script()
    click.echo(f"wrote {written}: `fraisier` runs Fraisier's commands and fraisier-textfile's")


def _shared_option(name: str, **attributes: Any) -> click.Option:
    def apply(context: click.Context, parameter: click.Parameter, value: object) -> object:
        if value is not None:
            settings = context.find_object(Settings)
            if settings is not None:
                settings.apply(name, value)
        return value

    return click.Option([f"--{name}"], default=None, expose_value=False, callback=apply,
                        help=f"As `fraisier --{name}`, given after the command.", **attributes)


def _give_group_options_to_every_command(group: click.Group) -> None:
    """``fraisier textfile check --textfile-dir X`` as well as ``fraisier --textfile-dir X textfile check``.
    A value given after the command wins over one given before it."""
    for command in group.commands.values():
        command.params.extend([
            _shared_option("textfile-dir", type=click.Path(file_okay=False, path_type=Path)),
            _shared_option("lock-timeout", metavar="SECONDS"),
            _shared_option("log-level", metavar="[" + "|".join(logs.LEVELS) + "]",
                           shell_complete=_choices(list(logs.LEVELS))),
            _shared_option("log-format", metavar="[" + "|".join(logs.FORMATS) + "]",
                           shell_complete=_choices(logs.FORMATS)),
        ])
        if isinstance(command, click.Group):
            _give_group_options_to_every_command(command)


_give_group_options_to_every_command(main)
