"""The ``fraisier`` console script: this package's commands beside Fraisier's, under one name.

Fraisier (``pip install fraisier``) installs a ``fraisier`` script too; whichever distribution is installed
last owns it. When ours does, it dispatches on the command word, read from argv before anything is imported:

- ``record``, ``exec``, ``textfile``, ``metrics``: this package's CLI (``fraisier metrics`` serves the merged
  textfile, with Fraisier's ``-p``/``-a`` flags). Nothing of Fraisier is imported on this path, so
  ``fraisier record`` starts as fast as ever. Fraisier's group options before one of these commands are
  honoured or refused, never silently dropped: ``--json`` goes to a command that has it (``textfile
  summary``) and is refused before one that has not; ``-v``/``--verbose`` means ``--log-level debug``;
  ``--no-color`` turns colour off; ``--config PATH`` and ``--no-tee`` configure Fraisier only, so that
  ``fraisier --config PATH metrics`` (as Fraisier's units start it) serves the textfile too.
- ``fraisier``, ``fraisier --help``, ``fraisier -h``: with Fraisier installed, its help with our commands and
  options listed among its own.
- anything else (Fraisier's commands, its options, ``--version``): with Fraisier installed, its own CLI with
  the same arguments, output and exit status, after the bridge has pointed ``fraisier.metrics`` at the
  textfile (see ``bridge``). Our group options before such a command (``--textfile-dir``,
  ``--lock-timeout``) are passed on through their environment variables. A command word neither CLI has gets
  click's error from the help's group, which suggests the closest of both CLIs' commands.

Argv is read as click reads it: ``--`` ends the group options (the command follows it), and a group option takes
the next word as its value whatever it is. A line our CLI would refuse (one of our options without its value, or
that swallowed one of our command words as its value) goes to our CLI, so that ``fraisier`` answers exactly as
``fraisier-textfile`` does.

Without Fraisier, ``fraisier`` is exactly this package's CLI, and names Fraisier's commands as such
(``fraisier list``: "It is one of Fraisier's: pip install fraisier"). ``fraisier-textfile`` and
``python -m fraisier_textfile`` are always exactly this package's CLI, whichever ``fraisier`` script won.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from fraisier_textfile.cli import LastingImports, run_to_the_end

OUR_COMMANDS = frozenset({"record", "exec", "textfile", "metrics", "systemd", "install-dispatcher"})
# Our group options that take a value, and the environment variable each stands for (see cli/group.py's main).
OUR_GROUP_OPTIONS = {
    "--textfile-dir": "FRAISIER_TEXTFILE_DIR",
    "--lock-timeout": "FRAISIER_LOCK_TIMEOUT",
    "--log-level": "FRAISIER_LOG_LEVEL",
    "--log-format": "FRAISIER_LOG_FORMAT",
}
# Fraisier 0.84.2's group options that take a value: their value is not a command word.
FRAISIER_GROUP_OPTIONS_WITH_VALUE = frozenset({"-c", "--config"})
# Its group options that are flags (-v counts: -vv, -vvv).
FRAISIER_GROUP_FLAGS = frozenset({"--no-color", "--verbose", "--json", "--no-tee", "-v", "-vv", "-vvv"})
HELP_OPTIONS = frozenset({"-h", "--help"})
VERBOSE_FLAGS = frozenset({"--verbose", "-v", "-vv", "-vvv"})
# Fraisier 0.84.2's own commands (tests/test_dispatch.py compares them with the installed Fraisier's): named as
# Fraisier's when this package's CLI is asked for one.
FRAISIER_COMMANDS = frozenset({
    "backup", "bootstrap", "bootstrap-preflight", "db", "db-check", "deploy-daemon", "deployment-status", "diagnose",
    "doctor", "env-check", "health", "history", "init", "list", "logs", "metrics", "provider-info", "provider-test",
    "providers", "repair-remote", "rollback", "scaffold", "scaffold-diff", "scaffold-install", "scheduled-install",
    "setup", "ship", "stats", "status", "status-all", "sync", "test-database", "test-db", "test-git", "test-health",
    "test-install", "test-wrapper", "trigger-deploy", "validate", "validate-deployment", "validate-remote",
    "validate-setup", "version", "webhooks",
})


class Route:
    """Where one command line goes, read from its arguments alone."""

    OURS = "ours"
    HELP = "help"
    FRAISIER = "fraisier"

    def __init__(self, destination: str, fraisier_arguments: list[str], environment: dict[str, str],
                 our_arguments: list[str] | None = None, fraisier_options: list[str] | None = None,
                 command: str | None = None) -> None:
        self.destination = destination
        self.command = command
        """The command word, as click reads it (None: none given)."""
        self.fraisier_arguments = fraisier_arguments
        """The arguments for Fraisier's CLI: ours taken out (they travel in ``environment``)."""
        self.environment = environment
        self.our_arguments = [] if our_arguments is None else our_arguments
        """The arguments for our CLI: Fraisier's group options taken out (``fraisier_options`` holds them)."""
        self.fraisier_options = [] if fraisier_options is None else fraisier_options
        """Fraisier's group options given before the command, each with its value if it takes one."""


def route(arguments: list[str]) -> Route:
    """Decide from the arguments (without the program name) which CLI handles them."""
    environment: dict[str, str] = {}
    passed_on: list[str] = []
    ours: list[str] = []
    fraisier_options: list[str] = []
    foreign_option = help_requested = refused_by_ours = False
    command: str | None = None
    position = 0
    while position < len(arguments):
        argument = arguments[position]
        name, equals, _ = argument.partition("=")
        if name in OUR_GROUP_OPTIONS:
            ours.append(argument)
            if equals:
                environment[OUR_GROUP_OPTIONS[name]] = argument.partition("=")[2]
            elif position + 1 < len(arguments):
                position += 1
                environment[OUR_GROUP_OPTIONS[name]] = arguments[position]
                ours.append(arguments[position])
                # As click reads it, the value is that word, whatever it is: `--lock-timeout record error`
                # was meant as `record error`. Our CLI says so, for `fraisier` as for `fraisier-textfile`.
                refused_by_ours = refused_by_ours or arguments[position] in OUR_COMMANDS
            else:
                refused_by_ours = True  # the option's value is missing: our CLI names the option
        elif argument in HELP_OPTIONS:
            help_requested = True
            passed_on.append(argument)
            ours.append(argument)
        elif argument == "--" or not argument.startswith("-"):
            # `--` ends the group options; the command is the word after it, as click reads it.
            words = arguments[position + 1 :] if argument == "--" else arguments[position:]
            command = words[0] if words else None
            passed_on.extend(arguments[position:])
            ours.extend(arguments[position:])
            break
        else:
            passed_on.append(argument)
            if _attached_short_value(argument):
                fraisier_options.append(argument)  # -cPATH: click's -c PATH, its value attached
            elif name in FRAISIER_GROUP_OPTIONS_WITH_VALUE and not equals and position + 1 < len(arguments):
                position += 1
                passed_on.append(arguments[position])
                fraisier_options.extend(passed_on[-2:])
            elif name in FRAISIER_GROUP_OPTIONS_WITH_VALUE or argument in FRAISIER_GROUP_FLAGS:
                # Fraisier's own group options (--config, -v, ...) say nothing about whose command follows:
                # Fraisier's units always start `fraisier --config PATH`, also before `metrics`.
                fraisier_options.append(argument)
            else:
                # Any other option does: it is Fraisier's to accept or refuse.
                foreign_option = foreign_option or argument != "--version"
                ours.append(argument)
        position += 1
    if refused_by_ours and not help_requested:
        return Route(Route.OURS, passed_on, environment, ours, fraisier_options, command)
    if help_requested or not passed_on:
        return Route(Route.HELP, passed_on, environment, ours, fraisier_options, command)
    if command in OUR_COMMANDS and not foreign_option:
        return Route(Route.OURS, passed_on, environment, ours, fraisier_options, command)
    return Route(Route.FRAISIER, passed_on, environment, ours, fraisier_options, command)


def _attached_short_value(argument: str) -> bool:
    """``-cPATH``: one of Fraisier's short group options with its value attached, as click reads it."""
    return any(
        len(option) == 2 and argument.startswith(option) and len(argument) > 2
        for option in FRAISIER_GROUP_OPTIONS_WITH_VALUE
    )


def fraisier_installed() -> bool:
    """Whether Fraisier's package can be imported, found without importing it."""
    from importlib.util import find_spec

    # A top-level name: find_spec searches sys.path and imports nothing (for "fraisier.cli" it would import
    # Fraisier's package to find its submodule).
    return find_spec("fraisier") is not None


def script() -> None:
    """The ``fraisier`` console script: :func:`main`, and once one of our commands is done the process ends at once
    (cli.run_to_the_end); Fraisier's commands end as the interpreter ends them (their objects may hold what only
    their finalizers write)."""
    main(end_process=True)


def main(*, end_process: bool = False) -> None:
    """The ``fraisier`` command line, in this process (``end_process``: see :func:`script`)."""
    run = run_to_the_end if end_process else _call
    decision = route(sys.argv[1:])
    if decision.destination == Route.OURS and decision.fraisier_options and fraisier_installed():
        # Fraisier's group options before our command (without Fraisier, our CLI refuses them as it always has).
        with LastingImports():
            import click

            from fraisier_textfile.cli.combined import honour_fraisier_options
            from fraisier_textfile.cli.group import main as our_main

        try:
            arguments, settings = honour_fraisier_options(our_main, decision)
        except click.UsageError as error:
            error.show()
            sys.exit(error.exit_code)
        run(lambda: our_main(args=arguments, **settings))
        return
    if decision.destination == Route.OURS or not fraisier_installed():
        with LastingImports():
            from fraisier_textfile.cli.group import main as our_main

        run(our_main)
        return
    if decision.destination == Route.HELP:
        from fraisier_textfile.cli.combined import combined_group

        combined_group().main(args=decision.fraisier_arguments, prog_name="fraisier")
        return
    from fraisier.cli import main as fraisier_main

    if decision.command is not None and decision.command not in fraisier_main.commands:
        # Neither CLI's command: click's error names the closest of both CLIs' commands, as the help lists them
        # (Fraisier's own would suggest only its own: `fraisier recrod`, no 'record').
        from fraisier_textfile.cli.combined import combined_group

        combined_group().main(args=decision.fraisier_arguments, prog_name="fraisier")
        return
    os.environ.update(decision.environment)
    install_bridge()
    try:
        status = fraisier_main(args=decision.fraisier_arguments)
    finally:
        take_fraisier_state()  # click exits with SystemExit: this runs after every command, however it ended
    sys.exit(status)


def _call(command: Callable[[], object]) -> None:
    command()


STATE_WAIT = 2.0
"""How long the dispatcher waits for the textfile's lock after a Fraisier command (then the next refresh or
scrape takes what is new)."""


def take_fraisier_state() -> None:
    """After a Fraisier command: what it wrote in its state database (a deployment, a rollback) reaches the
    textfile now. Never fails the command, never adds to its output: a problem is for ``fraisier textfile
    refresh`` and ``fraisier metrics`` to report, which read the same database."""
    import logging

    ours = logging.getLogger("fraisier_textfile")
    level = ours.level
    ours.setLevel(logging.CRITICAL)
    try:
        from fraisier_textfile.changes import Changes
        from fraisier_textfile.fraisier_store import FraisierStore
        from fraisier_textfile.sources.fraisier_state import participants
        from fraisier_textfile.store.files import DIRECTORY_ENVIRONMENT, default_textfile_directory

        sources = participants()
        if sources:
            directory = os.environ.get(DIRECTORY_ENVIRONMENT) or default_textfile_directory()
            if leaves_the_directory_to_its_writers(directory):
                FraisierStore(directory, participants=sources).merge(Changes(), timeout=STATE_WAIT)
    except Exception:  # the metrics path never changes how a Fraisier command ends
        pass
    finally:
        ours.setLevel(level)


def leaves_the_directory_to_its_writers(directory: str | os.PathLike[str]) -> bool:
    """Whether what this process's merge may create in ``directory`` (the lock file, the store's
    subdirectories) stays usable by the directory's writers: it is this user's, or a group's shared directory
    (group-writable and setgid, so that what is created belongs to that group), or not there yet (created as
    every writer creates it). Not so for ``sudo fraisier status`` in the deploying user's own directory: taking
    Fraisier's news is the job of the refresh timer and ``fraisier metrics`` run as that user, and a Fraisier
    command as root leaves no file of root's there (the store would give what it makes to that user, but not
    the textfile it renames into place)."""
    import stat

    try:
        status = os.stat(directory)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    if status.st_uid == os.geteuid():
        return True
    shared = stat.S_ISGID | stat.S_IWGRP
    return stat.S_ISDIR(status.st_mode) and status.st_mode & shared == shared


def install_bridge() -> None:
    """Route Fraisier's metrics into the textfile; if that fails, Fraisier's command runs all the same."""
    try:
        from fraisier_textfile.bridge import install

        install()
    except Exception as error:
        print(f"fraisier: warning: Fraisier's metrics will not reach the textfile: {error!r}", file=sys.stderr)
