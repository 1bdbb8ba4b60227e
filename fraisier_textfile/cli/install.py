"""Commands that install this package's pieces on a host: ``systemd`` (the units, ``cli/systemd.py``) and
``install-dispatcher`` (the ``fraisier`` script, ``cli/scripts.py``)."""

from __future__ import annotations

from pathlib import Path

import click

from fraisier_textfile.cli.group import Command, Settings, library_errors, pass_settings, uses_group_options


@uses_group_options("textfile-dir")  # the units' directory; the rest would be ignored
@click.command(cls=Command, short_help="Write the systemd units (server, socket, refresh timer) for this installation.")
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
        written = units.generate(user, Path(settings.textfile_dir), output, address, port, force)
    for path in written:
        click.echo(f"wrote {path}")
    click.echo("then: systemctl daemon-reload; systemctl enable --now fraisier-textfile-refresh.timer "
               "(every host); systemctl enable --now fraisier-metrics.socket (hosts without node_exporter)")


@uses_group_options()  # writes a script: no metrics, nothing logged
@click.command("install-dispatcher", cls=Command,
               short_help="Put the `fraisier` dispatcher back after an upgrade of Fraisier.")
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
