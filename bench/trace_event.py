"""How far one event travels through the package: the modules it crosses and the switches between them.

Not a timing: a count of the package's shape, read as a newcomer follows one event (the README's "How one event
travels"). Every call event of a function of ``fraisier_textfile`` is recorded with ``sys.settrace`` (module-level
code, that is imports, left out); a *switch* is a call whose module is not the previous call's.

    python bench/trace_event.py [--json]

Two paths, each into a fresh textfile directory, with their imports done beforehand and one event of the same
kind written before the traced one (the second event of a process, the path every later event takes):

- ``api``: ``MetricsRecorder.record_deployment_complete`` of a deployment it started, until the call returns
  (the file renamed, the deployment's marker released);
- ``cli``: the ``fraisier`` console script's ``main`` running ``fraisier record deployment ...``, in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from types import FrameType
from typing import Any

PACKAGE = "fraisier_textfile"
RECORD = ["record", "deployment", "--provider", "bare_metal", "--fraise-type", "api", "--status", "success",
          "--duration", "42"]


def traced_modules(run: Callable[[], None]) -> list[str]:
    """The module of every package function called while ``run`` runs, in call order."""
    modules: list[str] = []

    def tracer(frame: FrameType, event: str, argument: Any) -> None:
        if event == "call" and frame.f_code.co_name != "<module>":
            name = frame.f_globals.get("__name__", "")
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                modules.append(name)

    sys.settrace(tracer)
    try:
        run()
    finally:
        sys.settrace(None)
    return modules


def api_path(directory: str) -> Callable[[], None]:
    from fraisier_textfile import MetricsRecorder

    recorder = MetricsRecorder(textfile_dir=directory)
    recorder.record_deployment_start("bare_metal", "api")
    recorder.record_deployment_complete("bare_metal", "api", "success", 41.0)
    recorder.record_deployment_start("bare_metal", "api")
    return lambda: recorder.record_deployment_complete("bare_metal", "api", "success", 42.0)


def cli_path(directory: str) -> Callable[[], None]:
    from fraisier_textfile.cli.dispatch import main

    def run() -> None:
        saved = sys.argv
        sys.argv = ["fraisier", "--textfile-dir", directory, *RECORD]
        try:
            main()
        except SystemExit as exit_:
            if exit_.code:
                raise
        finally:
            sys.argv = saved

    run()  # the imports and the first event
    return run


def counted(path: Callable[[str], Callable[[], None]]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        modules = traced_modules(path(directory))
        if "fraisier.prom" not in os.listdir(directory):
            raise SystemExit("the event was not written: nothing to count")
    order = list(dict.fromkeys(modules))
    return {"modules": len(order), "switches": sum(1 for a, b in zip(modules, modules[1:]) if a != b),
            "calls": len(modules), "order": order}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    arguments = parser.parse_args()
    report = {"api": counted(api_path), "cli": counted(cli_path)}
    if arguments.json:
        print(json.dumps(report, indent=2))
        return
    for name, figures in report.items():
        print(f"{name}: {figures['modules']} modules, {figures['switches']} module switches, "
              f"{figures['calls']} calls")
        for module in figures["order"]:
            print(f"    {module}")


if __name__ == "__main__":
    main()
