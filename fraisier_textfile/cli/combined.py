"""Our command group among Fraisier's, for the ``fraisier`` script (dispatch.py): the hint in our group's errors
for a command that is Fraisier's or was taken as an option's value (:class:`HintingGroup`), Fraisier's group
options honoured before one of our commands, and the group that lists both CLIs' commands for the help and for the
error of a word neither has. Apart from dispatch.py, which routes a command line with the standard library alone:
click is imported once the line is known to need it."""

from __future__ import annotations

from typing import Any

import click

from fraisier_textfile.cli.dispatch import (
    FRAISIER_COMMANDS,
    HELP_OPTIONS,
    OUR_COMMANDS,
    OUR_GROUP_OPTIONS,
    VERBOSE_FLAGS,
    Route,
    fraisier_installed,
)


def honour_fraisier_options(group: click.Group, decision: Route) -> tuple[list[str], dict[str, Any]]:
    """Our CLI's arguments and context settings for a line with Fraisier's group options before our command:
    each is honoured as it can be, or refused (a ``click.UsageError``), never silently dropped."""
    arguments = list(decision.our_arguments)
    settings: dict[str, Any] = {}
    given = set(decision.fraisier_options)
    if given & VERBOSE_FLAGS and not any(argument.partition("=")[0] == "--log-level" for argument in arguments):
        arguments[:0] = ["--log-level", "debug"]
    if "--no-color" in given:
        settings["color"] = False
    if "--json" in given:
        path, end = _command_path(group, arguments)
        command = path[-1][1] if path else None
        has_json = command is not None and any(
            isinstance(parameter, click.Option) and "--json" in parameter.opts for parameter in command.params
        )
        if not has_json:
            words = " ".join(name for name, _ in path)
            context = click.Context(group, info_name="fraisier", **group.context_settings)
            raise click.UsageError(
                f"--json is an option of Fraisier's commands: `fraisier {words}` has no JSON output "
                f"(`fraisier textfile summary --json` has).", context)
        arguments.insert(end, "--json")
    # --config PATH and --no-tee configure Fraisier only: our commands read no Fraisier configuration and
    # write no failure log.
    return arguments, settings


def _command_path(group: click.Group, arguments: list[str]) -> tuple[list[tuple[str, click.Command]], int]:
    """The commands named in ``arguments`` (``textfile summary``: the group's, then the subgroup's), and the
    position just after the last of them. Only words are read: our group options before them take values."""
    path: list[tuple[str, click.Command]] = []
    current: click.Command = group
    position, end = 0, 0
    while position < len(arguments) and isinstance(current, click.Group):
        argument = arguments[position]
        if argument == "--":
            position += 1
            continue
        if argument.startswith("-"):
            takes_value = argument in OUR_GROUP_OPTIONS and not path
            position += 2 if takes_value else 1
            continue
        found = current.commands.get(argument)
        if found is None:
            break
        path.append((argument, found))
        current = found
        position += 1
        end = position
    return path, end


class HintingGroup(click.Group):
    """This package's command group: an unknown command that is Fraisier's, or that follows one of our options
    that took a command word as its value, says so in click's error."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as error:
            word = args[0] if args else ""
            hint = command_hint(ctx, word) if self.get_command(ctx, word) is None else None
            if hint:
                # A new error, not the message changed: newer click declares it final.
                raise click.UsageError(f"{error.message} {hint}", ctx=error.ctx) from None
            raise


def command_hint(ctx: click.Context, word: str) -> str | None:
    for parameter in ("textfile_dir", "lock_timeout"):
        value = ctx.params.get(parameter)
        if value is not None and str(value) in OUR_COMMANDS and (
            ctx.get_parameter_source(parameter) is click.core.ParameterSource.COMMANDLINE
        ):
            option = "--" + parameter.replace("_", "-")
            return (f"{option} took '{value}' as its value: give it one before the command "
                    f"({option} VALUE {value} {word} ...).")
    if word in FRAISIER_COMMANDS:
        if fraisier_installed():
            return f"It is one of Fraisier's: run it as fraisier {word}"
        return "It is one of Fraisier's: pip install fraisier"
    return None


def combined_group() -> click.Group:
    """Fraisier's command group with ours among its commands and options, for its help and for the error of a
    command word neither CLI has (never invoked with a command: those go to one CLI or the other). Fraisier's own
    group is left untouched."""
    from fraisier.cli import main as fraisier_main

    from fraisier_textfile.cli.group import main as our_main

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
            f"{', '.join(sorted(OUR_COMMANDS))} are fraisier-textfile's (`fraisier-textfile --help` lists them "
            "alone): Fraisier's metrics from short-lived processes, merged into TEXTFILE_DIR/fraisier.prom "
            "(`fraisier metrics` serves that file, and what Fraisier's own commands record is merged into it "
            f"too). {', '.join(OUR_GROUP_OPTIONS)} are their options."
        ),
        context_settings={**fraisier_main.context_settings, "help_option_names": sorted(HELP_OPTIONS)},
        no_args_is_help=True,
    )
