"""The command line: the ``fraisier-textfile`` group and its settings (``group``), its commands (``record``,
``textfile``, ``serve``, ``install``; each loaded when it runs), ``fraisier exec``'s run of a deployment
(``execution``), the units and the script ``install`` writes (``systemd``, ``scripts``), the ``fraisier``
dispatcher beside Fraisier's own commands (``dispatch``) and our group among Fraisier's (``combined``), and the log
lines (``logs``, ``log_lines``). Here, the CLI's life in its process: :class:`LastingImports`, how it imports what
it keeps, and :func:`end_now`, how it ends (the CLI's one exit hook's place, as store/process.py is the store's)."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
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


def end_now(stop: SystemExit) -> None:
    """End the process with ``stop``'s status, as the interpreter would but without tearing itself down: the exit
    hooks run, stdout and stderr are flushed, and the process exits. Tearing down frees, one by one, what every
    import made, in a process about to end (bench/README.md). Returns, for the caller to raise ``stop``, where the
    interpreter's own end is needed: a status that is not a number, a thread it must wait for (not a daemon), an
    interpreter without ``atexit._run_exitfuncs``, output that cannot be flushed (the interpreter reports it)."""
    import atexit
    import os
    import threading

    status = 0 if stop.code is None else stop.code
    run_exit_hooks: Callable[[], None] | None = getattr(atexit, "_run_exitfuncs", None)
    if (not isinstance(status, int) or not 0 <= status <= 255 or run_exit_hooks is None or sys.flags.inspect
            or threading.current_thread() is not threading.main_thread()
            or any(not thread.daemon for thread in threading.enumerate() if thread is not threading.current_thread())):
        return
    run_exit_hooks()  # each once: the interpreter's end, if it follows, finds none left
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except Exception:
        return
    os._exit(status)


def run_to_the_end(command: Callable[[], object]) -> None:
    """Run one of the CLI's command lines as the program (a console script, ``python -m``), then end the process
    (:func:`end_now`). Only the programs do: ``main()`` called from Python ends with SystemExit as click's
    commands do, and the caller goes on."""
    try:
        command()
    except SystemExit as stop:
        end_now(stop)
        raise
    end_now(SystemExit(0))


def main() -> None:
    """``fraisier-textfile``'s command line, in this process: imported on call, so that the dispatcher loads no
    command it does not run."""
    with LastingImports():
        from fraisier_textfile.cli.group import main as run

    run()


def script() -> None:
    """The ``fraisier-textfile`` console script: :func:`main`, then the process ends (:func:`run_to_the_end`)."""
    run_to_the_end(main)
