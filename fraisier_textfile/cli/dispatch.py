"""The ``fraisier`` console script: this package's commands beside Fraisier's, under one name.

Fraisier (``pip install fraisier``) installs a ``fraisier`` script too; whichever distribution is installed
last owns it. When ours does, it dispatches on the command word, read from argv before anything is imported:

- ``record``, ``exec``, ``textfile``, ``metrics``: this package's CLI (``fraisier metrics`` serves the merged
  textfile, with Fraisier's ``-p``/``-a`` flags). Nothing of Fraisier is looked for or imported on this path,
  so ``fraisier record`` starts as fast as ever. Fraisier's group options before one of these commands
  (``--config PATH``, ``-v``, ``--json``, ``--no-color``, ``--no-tee``) configure Fraisier only: they are
  accepted and left out, so that ``fraisier --config PATH metrics`` (as Fraisier's units start it) serves
  the textfile too.
- ``fraisier``, ``fraisier --help``, ``fraisier -h``: with Fraisier installed, its help with our commands and
  options listed among its own.
- anything else (Fraisier's commands, its options, ``--version``): with Fraisier installed, its own CLI with
  the same arguments, output and exit status, after the bridge has pointed ``fraisier.metrics`` at the
  textfile (see ``bridge``). Our group options before such a command (``--textfile-dir``,
  ``--lock-timeout``) are passed on through their environment variables.

Without Fraisier, ``fraisier`` is exactly this package's CLI. ``fraisier-textfile`` and
``python -m fraisier_textfile`` are always exactly this package's CLI, whichever ``fraisier`` script won.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import click

OUR_COMMANDS = frozenset({"record", "exec", "textfile", "metrics"})
# Our group options that take a value, and the environment variable each stands for (see cli.main). The log
# options are the ops branch's: listed ahead of its merge, they are simply refused by a CLI without them.
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


class Route:
    """Where one command line goes, read from its arguments alone."""

    OURS = "ours"
    HELP = "help"
    FRAISIER = "fraisier"

    def __init__(self, destination: str, fraisier_arguments: list[str], environment: dict[str, str],
                 our_arguments: list[str] | None = None) -> None:
        self.destination = destination
        self.fraisier_arguments = fraisier_arguments
        """The arguments for Fraisier's CLI: ours taken out (they travel in ``environment``)."""
        self.environment = environment
        self.our_arguments = [] if our_arguments is None else our_arguments
        """The arguments for our CLI: Fraisier's group options taken out (they configure Fraisier only)."""


def route(arguments: list[str]) -> Route:
    """Decide from the arguments (without the program name) which CLI handles them."""
    environment: dict[str, str] = {}
    passed_on: list[str] = []
    ours: list[str] = []
    foreign_option = help_requested = False
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
        elif argument in HELP_OPTIONS:
            help_requested = True
            passed_on.append(argument)
            ours.append(argument)
        elif argument == "--" or not argument.startswith("-"):
            command = None if argument == "--" else argument
            passed_on.extend(arguments[position:])
            ours.extend(arguments[position:])
            break
        else:
            passed_on.append(argument)
            if name in FRAISIER_GROUP_OPTIONS_WITH_VALUE and not equals and position + 1 < len(arguments):
                position += 1
                passed_on.append(arguments[position])
            elif name not in FRAISIER_GROUP_OPTIONS_WITH_VALUE and argument not in FRAISIER_GROUP_FLAGS:
                # Fraisier's own group options (--config, -v, ...) say nothing about whose command follows:
                # Fraisier's units always start `fraisier --config PATH`, also before `metrics`. Any other
                # option does: it is Fraisier's to accept or refuse.
                foreign_option = foreign_option or argument != "--version"
                ours.append(argument)
        position += 1
    if help_requested or not passed_on:
        return Route(Route.HELP, passed_on, environment, ours)
    if command in OUR_COMMANDS and not foreign_option:
        return Route(Route.OURS, passed_on, environment, ours)
    return Route(Route.FRAISIER, passed_on, environment, ours)


def fraisier_installed() -> bool:
    """Whether Fraisier's package can be imported, found without importing it."""
    from importlib.util import find_spec

    # A top-level name: find_spec searches sys.path and imports nothing (for "fraisier.cli" it would import
    # Fraisier's package to find its submodule).
    return find_spec("fraisier") is not None


def main() -> None:
    """The ``fraisier`` console script."""
    decision = route(sys.argv[1:])
    if decision.destination == Route.OURS and decision.our_arguments != sys.argv[1:] and fraisier_installed():
        # Fraisier's group options were left out (without Fraisier, our CLI refuses them as it always has).
        from fraisier_textfile.cli.commands import main as our_main

        our_main(args=decision.our_arguments)
        return
    if decision.destination == Route.OURS or not fraisier_installed():
        from fraisier_textfile.cli.commands import main as our_main

        our_main()
        return
    if decision.destination == Route.HELP:
        combined_group().main(args=decision.fraisier_arguments, prog_name="fraisier")
        return
    os.environ.update(decision.environment)
    install_bridge()
    from fraisier.cli import main as fraisier_main

    sys.exit(fraisier_main(args=decision.fraisier_arguments))


def install_bridge() -> None:
    """Route Fraisier's metrics into the textfile; if that fails, Fraisier's command runs all the same."""
    try:
        from fraisier_textfile.bridge import install

        install()
    except Exception as error:
        print(f"fraisier: warning: Fraisier's metrics will not reach the textfile: {error!r}", file=sys.stderr)


def combined_group() -> click.Group:
    """Fraisier's command group with ours among its commands and options, for its help only (never invoked
    with a command: those go to one CLI or the other). Fraisier's own group is left untouched."""
    import click
    from fraisier.cli import main as fraisier_main

    from fraisier_textfile.cli.commands import main as our_main

    commands = dict(fraisier_main.commands)
    commands.update({name: our_main.commands[name] for name in sorted(OUR_COMMANDS)})
    our_options = [
        parameter for parameter in our_main.params if set(parameter.opts) & set(OUR_GROUP_OPTIONS)
    ]
    return click.Group(
        name="fraisier",
        commands=commands,
        params=[*fraisier_main.params, *our_options],
        help=fraisier_main.help,
        epilog=(
            "exec, metrics, record and textfile are fraisier-textfile's: Fraisier's metrics from short-lived "
            "processes, merged into TEXTFILE_DIR/fraisier.prom (`fraisier metrics` serves that file, and what "
            "Fraisier's own commands record is merged into it too). --textfile-dir and --lock-timeout are "
            "theirs. The same commands alone: fraisier-textfile --help."
        ),
        context_settings={**fraisier_main.context_settings, "help_option_names": sorted(HELP_OPTIONS)},
        no_args_is_help=True,
    )
