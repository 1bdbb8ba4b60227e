"""The command line: the ``fraisier-textfile`` group and its settings (``group``), its commands (``record``,
``textfile``, ``serve``, ``install``; each loaded when it runs), ``fraisier exec``'s run of a deployment
(``execution``), the units and the script ``install`` writes (``systemd``, ``scripts``), the ``fraisier``
dispatcher beside Fraisier's own commands (``dispatch``), and the log lines (``logs``, ``log_lines``)."""

from __future__ import annotations


def main() -> None:
    """``fraisier-textfile``: imported on call, so that the dispatcher loads no command it does not run."""
    from fraisier_textfile.cli.group import main as run

    run()
