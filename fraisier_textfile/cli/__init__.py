"""The command line: the ``fraisier-textfile`` group and its settings (``group``), its commands (``record``,
``textfile``, ``serve``, ``install``; each loaded when it runs), ``fraisier exec``'s run of a deployment
(``execution``), the units and the script ``install`` writes (``systemd``, ``scripts``), the ``fraisier``
dispatcher beside Fraisier's own commands (``dispatch``) and our group among Fraisier's (``combined``), and the log
lines (``logs``, ``log_lines``). Here: :class:`LastingImports`, how the CLI imports what it keeps."""

from __future__ import annotations

import gc
from types import TracebackType


class LastingImports:
    """A block that imports what the process keeps until it exits (the CLI's modules, a command's): the cyclic
    garbage collector is paused while it runs, and what exists at its end is moved out of the collector's later
    passes (``gc.freeze``), the one at exit among them. Modules, functions and classes are never garbage: the
    passes over them that their allocations trigger free nothing, and for a record run they cost as much CPU as
    importing a few of our modules (bench/README.md). The collector is on again after the block if it was before
    (``fraisier metrics`` runs for months and needs it); the frozen objects are only those made by then."""

    def __enter__(self) -> None:
        self._enabled = gc.isenabled()
        gc.disable()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        gc.freeze()
        if self._enabled:
            gc.enable()


def main() -> None:
    """``fraisier-textfile``: imported on call, so that the dispatcher loads no command it does not run."""
    with LastingImports():
        from fraisier_textfile.cli.group import main as run

    run()
