"""The command line: ``fraisier-textfile`` (``commands``), ``fraisier exec`` (``execution``), the ``fraisier``
dispatcher beside Fraisier's own commands (``dispatch``), and the log lines (``logs``)."""

from __future__ import annotations


def main() -> None:
    """``fraisier-textfile``: imported on call, so that the dispatcher loads no command it does not run."""
    from fraisier_textfile.cli.commands import main as run

    run()
