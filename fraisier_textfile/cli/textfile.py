"""``fraisier textfile ...``: the textfile inspected and maintained: its path, a refresh, forgetting series,
its contents, the deployments summary, and its check (with whether node_exporter's user can read it).
"""

from __future__ import annotations

from pathlib import Path

import click

from fraisier_textfile.cli.group import Group, InvalidInput, Settings, library_errors, pass_settings


@click.group(cls=Group)
def textfile() -> None:
    """Inspect and maintain the textfile: where it is, what it holds, whether it is valid; refresh it, forget series."""


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

    Run it from a timer (every minute, say) on hosts served by node_exporter: the active-deployments gauge
    then drops within a minute of a crash, and the file stays fresh for the stale-file alert on quiet hosts.
    As a cron line:

    \b
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
        store = settings.store()
        selection = lifecycle.Selection(matchers, families, _duration("--expire-after", expire_after),
                                        schema=store.schema)
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
    problems = check_text(text, store.schema, other_bounds=True)
    notes: list[str] = []
    document = None
    try:
        document = parse(text, store.schema, check_histograms=False)
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
