"""The ``fraisier-textfile`` command group: its options (also accepted after any command), the settings they
make (``Settings``), the translation of library errors into click's, and where each command lives.

The commands are loaded when they run (``LazyCommands``): ``fraisier record`` loads the recording commands and
nothing of the server, the web config, the summary or the systemd units. Nothing here imports
prometheus_client: a ``fraisier record`` run from cron must not pay for it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click

from fraisier_textfile import __version__, settings, validate
from fraisier_textfile.cli import LastingImports, logs
from fraisier_textfile.cli.combined import HintingGroup
from fraisier_textfile.errors import FraisierTextfileError, InvalidValueError
from fraisier_textfile.fraisier_store import FraisierStore
from fraisier_textfile.store.files import DIRECTORY_ENVIRONMENT, default_directory_name
from fraisier_textfile.store.lock import DEFAULT_LOCK_TIMEOUT, LOCK_TIMEOUT_ENVIRONMENT
from fraisier_textfile.store.textfile import TextfileStore

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem


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

    def __init__(self, textfile_dir: str, lock_timeout: str | None = None, log_level: str | None = None,
                 log_format: str | None = None, *, lenient: bool = False,
                 lock_timeout_source: str = "--lock-timeout", logs_at_first_record: bool = False) -> None:
        self.lenient = lenient
        self._configure_logs = logs.configure_at_first_record if logs_at_first_record else logs.configure
        self.problems: list[str] = []
        """What was wrong with the settings (each reported once, as a warning): for exec's one line."""
        self.textfile_dir = textfile_dir
        deferred: list[tuple[InvalidValueError, object]] = []
        self.log_level = self._setting("--log-level", log_level, logs.LEVEL_ENVIRONMENT, _level,
                                       logs.DEFAULT_LEVEL, deferred)
        self.log_format = self._setting("--log-format", log_format, logs.FORMAT_ENVIRONMENT, _format,
                                        logs.DEFAULT_FORMAT, deferred)
        # Logging is set up before the other settings are read, so that their problems are logged in its format.
        self._configure_logs(self.log_level, self.log_format)
        self.lock_timeout = self._setting(lock_timeout_source, lock_timeout, LOCK_TIMEOUT_ENVIRONMENT,
                                          validate.check_seconds, DEFAULT_LOCK_TIMEOUT, deferred)
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
        try:
            value = settings.environment_value(variable, parse)
        except InvalidValueError as error:
            deferred.append((error, default))
            return default
        return default if value is None else value

    def _report(self, error: InvalidValueError, default: object) -> None:
        self.problems.append(str(error))
        settings.report(error, default)

    def apply(self, option: str, value: object) -> None:
        """An option given after the command, over the group's value."""
        deferred: list[tuple[InvalidValueError, object]] = []
        if option == "textfile-dir":
            self.textfile_dir = str(value)
        elif option == "lock-timeout":
            self.lock_timeout = self._setting("--lock-timeout", str(value), "", validate.check_seconds,
                                              self.lock_timeout, deferred)
        elif option == "log-level":
            self.log_level = self._setting("--log-level", str(value), "", _level, self.log_level, deferred)
            self._configure_logs(self.log_level, self.log_format)
        elif option == "log-format":
            self.log_format = self._setting("--log-format", str(value), "", _format, self.log_format, deferred)
            self._configure_logs(self.log_level, self.log_format)
        for error, default in deferred:
            self._report(error, default)

    def store(self, *, fraisier_state: bool = False, since: float | None = None) -> TextfileStore:
        """``fraisier_state``: with Fraisier's state database read in each merge (sources/fraisier_state/);
        ``since``: what it counts of a database seen for the first time."""
        with library_errors():
            participants: list[Any] = []
            if fraisier_state:
                from fraisier_textfile.sources.fraisier_state import participants as state_participants

                participants = list(state_participants(since=since))
            return FraisierStore(self.textfile_dir, self.lock_timeout, participants=participants)


def _level(what: str, text: str) -> str:
    return settings.choice_text(what, text, list(logs.LEVELS))


def _format(what: str, text: str) -> str:
    return settings.choice_text(what, text, logs.FORMATS)


def choices(values: tuple[str, ...] | list[str]) -> Callable[..., list[str]]:
    """An option's shell completion: the ``values`` that begin with what was typed."""
    return lambda context, parameter, incomplete: [value for value in values if value.startswith(incomplete)]


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
        return validate.check_seconds(name, value)


COMMANDS = {
    "record": "fraisier_textfile.cli.record:record",
    "exec": "fraisier_textfile.cli.record:exec_",
    "textfile": "fraisier_textfile.cli.textfile:textfile",
    "metrics": "fraisier_textfile.cli.serve:metrics",
    "systemd": "fraisier_textfile.cli.install:systemd",
    "install-dispatcher": "fraisier_textfile.cli.install:install_dispatcher",
}
"""Each command of the group, as ``module:attribute``: imported when the command is first looked up."""


class LazyCommands(MutableMapping[str, click.Command]):
    """A group's commands, each made ready when first looked up: imported from its module if it is given as
    ``module:attribute`` (click's lazy-loading group, as a mapping), and given the group options of the
    command line (``_give_group_options``). A mapping rather than overriding ``get_command`` and
    ``list_commands``: click also reads ``Group.commands`` itself (the "Did you mean" of an unknown command), and
    so do the dispatcher's combined help and the tests; each gets every name, and readies only the commands it
    looks at."""

    def __init__(self, commands: Mapping[str, str | click.Command]) -> None:
        self._commands: dict[str, str | click.Command] = dict(commands)
        self._ready: set[str] = set()

    def __getitem__(self, name: str) -> click.Command:
        command = self._commands[name]
        if name not in self._ready:
            if isinstance(command, str):
                module, _, attribute = command.partition(":")
                # __import__, not importlib.import_module: only the import statement's machinery reports to
                # `python -X importtime`, which bench/bench_cli.py reads to account for the record path.
                with LastingImports():
                    command = getattr(__import__(module, fromlist=[attribute]), attribute)
                if not isinstance(command, click.Command):
                    raise TypeError(f"{self._commands[name]} is not a click command")
            _give_group_options(command)
            self._commands[name] = command
            self._ready.add(name)
        assert isinstance(command, click.Command)
        return command

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._commands[name] = command
        self._ready.add(name)

    def __delitem__(self, name: str) -> None:
        del self._commands[name]
        self._ready.discard(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._commands)

    def __len__(self) -> int:
        return len(self._commands)

    def __contains__(self, name: object) -> bool:
        return name in self._commands  # a name known is enough: Mapping's default would load the command


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# click's own help and version options and its path type look their words up through gettext when they are built,
# and gettext's first lookup imports locale (its table of aliases; bench/README.md). Ours say the same words and
# build nothing that looks one up: a record run asks gettext for nothing (click still translates the words of its
# errors, where the time does not matter).


class Directory(click.ParamType):  # type: ignore[type-arg, unused-ignore]  # generic in newer click only
    """``click.Path(file_okay=False)``: a directory's name, kept as the string given (the store works with
    strings), refused if it names a file or one this user may not read; completed as directories."""

    name = "directory"

    def convert(self, value: Any, parameter: click.Parameter | None, context: click.Context | None) -> Any:
        try:
            status = os.stat(value)
        except OSError:
            return value  # made by the store, which says what is wrong if it cannot
        if stat.S_ISREG(status.st_mode):
            self.fail(f"Directory {click.format_filename(value)!r} is a file.", parameter, context)
        if not os.access(value, os.R_OK):
            self.fail(f"Directory {click.format_filename(value)!r} is not readable.", parameter, context)
        return value

    def shell_complete(self, context: click.Context, parameter: click.Parameter,
                       incomplete: str) -> list[CompletionItem]:
        from click.shell_completion import CompletionItem

        return [CompletionItem(incomplete, type="dir")]


def _show_help(context: click.Context, parameter: click.Parameter, value: bool) -> None:
    if value and not context.resilient_parsing:
        click.echo(context.get_help(), color=context.color)
        context.exit()


def own_help_option(command: click.Command, context: click.Context) -> click.Option | None:
    """What click's ``Command.get_help_option`` gives, in the same words, built once per command (click tells its
    options apart by identity) and looking no word up. click asks for it to parse, to list the options and to say
    "Try '... --help' for help." after a usage error."""
    names = command.get_help_option_names(context)
    if not names or not command.add_help_option:
        return None
    option: click.Option | None = getattr(command, "_own_help_option", None)
    if option is None:
        option = click.Option(names, is_flag=True, expose_value=False, is_eager=True, callback=_show_help,
                              help="Show this message and exit.")
        command._own_help_option = option  # type: ignore[attr-defined]
    return option


class _OwnHelp:
    """Gives a click command :func:`own_help_option` in place of click's."""

    def get_help_option(self, ctx: click.Context) -> click.Option | None:
        assert isinstance(self, click.Command)
        return own_help_option(self, ctx)


class Command(_OwnHelp, click.Command):
    """Our commands: click's, with :func:`own_help_option`."""


class Group(_OwnHelp, click.Group):
    """Our command groups: click's, with :func:`own_help_option`; their commands and subgroups are ours too."""

    command_class = Command
    group_class = type  # click's convention: a subgroup of this same class


class MainGroup(_OwnHelp, HintingGroup):
    """The ``fraisier-textfile`` group (combined.HintingGroup's hints), with :func:`own_help_option`."""

    command_class = Command
    group_class = Group


def _show_version(context: click.Context, parameter: click.Parameter, value: bool) -> None:
    # Named for this package whatever script started it: `fraisier, version 0.1.0` read as an old Fraisier.
    if value and not context.resilient_parsing:
        click.echo(f"fraisier-textfile, version {__version__}", color=context.color)
        context.exit()


@click.group(cls=MainGroup, context_settings=CONTEXT, commands=LazyCommands(COMMANDS))
@click.option(
    "--textfile-dir",
    envvar=DIRECTORY_ENVIRONMENT,
    type=Directory(),
    default=default_directory_name,
    show_default=default_directory_name(),
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
    help=f"How long to wait for another fraisier process to finish writing the file (record and exec wait at "
    f"most {settings.LOCK_WAIT_BUDGET_ENVIRONMENT}, {settings.DEFAULT_LOCK_WAIT_BUDGET:g} s, then hand what they "
    f"record over to the next writer). "
    f"Env: {LOCK_TIMEOUT_ENVIRONMENT}.",
)
@click.option("--log-level", metavar="[" + "|".join(logs.LEVELS) + "]", default=None, callback=_not_a_command,
              show_default=logs.DEFAULT_LEVEL, shell_complete=choices(list(logs.LEVELS)),
              help=f"Log records at this level and above, to stderr (request logs are debug). "
              f"Env: {logs.LEVEL_ENVIRONMENT}.")
@click.option("--log-format", metavar="[" + "|".join(logs.FORMATS) + "]", default=None, callback=_not_a_command,
              show_default=logs.DEFAULT_FORMAT, shell_complete=choices(logs.FORMATS),
              help=f"logfmt (time=... level=... msg=...) or json (one object a line), as node_exporter's. "
              f"Env: {logs.FORMAT_ENVIRONMENT}.")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_show_version,
              help="Show the version and exit.")
@click.pass_context
def main(context: click.Context, textfile_dir: str, lock_timeout: str | None, log_level: str | None,
         log_format: str | None) -> None:
    """Fraisier's deployment metrics for Prometheus, from short-lived processes.

    The commands that record (record, exec) merge what they record into one file, TEXTFILE_DIR/fraisier.prom,
    under a lock and with an atomic replace, so the file always holds the totals over every process that ever
    ran. Serve it with node_exporter's textfile collector or with `fraisier metrics`; the textfile commands
    inspect and maintain it.

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
    # record's modules all log through fraisier_textfile.logger: a run with nothing to say imports no logging.
    # The other commands load modules that log through logging itself: their handler is set up now.
    speaker = settings.report_as(f"fraisier {context.invoked_subcommand}")
    context.call_on_close(lambda: settings.report_as(speaker))
    context.obj = Settings(textfile_dir, lock_timeout, log_level, log_format,
                           lenient=context.invoked_subcommand == "exec",
                           logs_at_first_record=context.invoked_subcommand == "record")


pass_settings = click.pass_obj


def _shared_option(name: str, **attributes: Any) -> click.Option:
    def apply(context: click.Context, parameter: click.Parameter, value: object) -> object:
        if value is not None:
            settings = context.find_object(Settings)
            if settings is not None:
                settings.apply(name, value)
        return value

    return click.Option([f"--{name}"], default=None, expose_value=False, callback=apply,
                        help=f"As `fraisier --{name}`, given after the command.", **attributes)


C = TypeVar("C", bound=click.Command)

GROUP_OPTIONS = ("textfile-dir", "lock-timeout", "log-level", "log-format")

_USES = "fraisier_group_options"  # the attribute uses_group_options sets on a command


def uses_group_options(*names: str) -> Callable[[C], C]:
    """Decorate a command that uses only these of the group's options (GROUP_OPTIONS): only they may follow it,
    and its --help lists only them. Without it a command takes them all. An option that would be accepted and
    then ignored (``fraisier systemd --lock-timeout 5``: the units do not take it) misleads more than a usage
    error naming it."""
    unknown = set(names) - set(GROUP_OPTIONS)
    if unknown:
        raise ValueError(f"not group options: {sorted(unknown)}")

    def mark(command: C) -> C:
        setattr(command, _USES, names)
        return command

    return mark


def _give_group_options(command: click.Command) -> None:
    """``fraisier textfile check --textfile-dir X`` as well as ``fraisier --textfile-dir X textfile check``.
    A value given after the command wins over one given before it."""
    options = {
        "textfile-dir": lambda: _shared_option("textfile-dir", type=Directory()),
        "lock-timeout": lambda: _shared_option("lock-timeout", metavar="SECONDS"),
        "log-level": lambda: _shared_option("log-level", metavar="[" + "|".join(logs.LEVELS) + "]",
                                            shell_complete=choices(list(logs.LEVELS))),
        "log-format": lambda: _shared_option("log-format", metavar="[" + "|".join(logs.FORMATS) + "]",
                                             shell_complete=choices(logs.FORMATS)),
    }
    command.params.extend(options[name]() for name in getattr(command, _USES, GROUP_OPTIONS))
    if isinstance(command, click.Group):
        # Each subcommand gets them when first looked up: a run builds the options of the one it runs.
        command.commands = LazyCommands(command.commands)


