"""Fraisier's own metrics into the textfile, without editing Fraisier's files.

Fraisier records through its module ``fraisier.metrics``: the methods of its ``MetricsRecorder`` (reached with
``get_metrics_recorder()``) and, in its restore strategy, ``DeploymentMetrics.<family>.labels(...).observe(x)``
on the class itself. All of that lands in prometheus_client's in-memory default registry, which dies with the
process. :func:`install` points that module at ``fraisier_textfile.metrics`` (Fraisier's API on top of our
recorder), in the running process only:

- ``MetricsRecorder`` and ``get_metrics_recorder`` become ours, so that Fraisier's health checks and database
  observability, which ask ``get_metrics_recorder()`` for a recorder, record into the textfile;
- each family on Fraisier's ``DeploymentMetrics`` class becomes ours, so that direct uses on the class (and
  on instances made before) write raw events too: counter increments and single observations, merged by our
  families' rules and bucketed by our bounds (Fraisier's histograms have other buckets: nothing of its
  bucket counts is copied). A family of a later Fraisier that we do not know stays Fraisier's own.

Who calls it: the start-up hook (``_fraisier_textfile_hook``, run by the .pth file this package installs) calls
:func:`install_into` in every process of the environment, right after ``fraisier.metrics`` has run; the
``fraisier`` script of this package calls :func:`install` before Fraisier's CLI is imported. Where the hook is
off (``FRAISIER_TEXTFILE_HOOK=0``, ``python -S``, an editable install), a program that imports Fraisier calls
:func:`install` first, or is started through ``python -m fraisier_textfile.bridge SCRIPT [ARGUMENTS...]``.
"""

from __future__ import annotations

import importlib
import sys
from importlib.util import find_spec
from types import ModuleType

INSTALLED_MARK = "_fraisier_textfile_bridge"


def install() -> bool:
    """Point ``fraisier.metrics`` at this package's textfile, in this process. Returns False (and does
    nothing) when Fraisier is not installed. Installing twice is installing once. Where this package is
    installed, its start-up hook has done it already at the import of ``fraisier.metrics``."""
    if find_spec("fraisier") is None:
        return False
    install_into(importlib.import_module("fraisier.metrics"))
    return True


def install_into(theirs: ModuleType) -> None:
    """Point Fraisier's module ``theirs`` (``fraisier.metrics``, just run) at the textfile. The start-up hook
    calls it on the module it has just run, before any other module took names from it."""
    if getattr(theirs, INSTALLED_MARK, False):
        return
    from fraisier_textfile import metrics as ours

    vars(theirs).update(MetricsRecorder=ours.MetricsRecorder, get_metrics_recorder=ours.get_metrics_recorder)
    # A Fraisier without the class (a later one may rename it) still has its recorder pointed at the textfile.
    their_families = getattr(theirs, "DeploymentMetrics", None)
    if isinstance(their_families, type):
        for attribute, original in list(vars(their_families).items()):
            # On our class, each family is a descriptor whose class-level value writes to get_metrics_recorder().
            replacement = getattr(ours.DeploymentMetrics, attribute, None)
            if not attribute.startswith("_") and hasattr(original, "labels") and replacement is not None:
                setattr(their_families, attribute, replacement)
    setattr(theirs, INSTALLED_MARK, True)
    # Fraisier's daemon imports its metrics module at its start and may first record hours later, after an
    # upgrade replaced our files under it: what a write needs is loaded a second from now (preload.py).
    from fraisier_textfile import preload
    from fraisier_textfile.recorder.writer import LOADED_AHEAD

    preload.soon(LOADED_AHEAD)


# python -m fraisier_textfile.bridge SCRIPT [ARGUMENTS...]


def run_console_script(name: str, arguments: list[str]) -> int:
    """Run another distribution's console script ``name`` with the bridge installed. Returns the exit status
    when the script cannot be found; otherwise the script's own exit ends the process."""
    from importlib.metadata import entry_points

    candidates = [
        entry for entry in entry_points(group="console_scripts", name=name)
        if entry.dist is None or entry.dist.name.replace("_", "-").lower() != "fraisier-textfile"
    ]
    if not candidates:
        print(f"fraisier_textfile.bridge: no console script {name!r} is installed: give one of Fraisier's "
              "(fraisier, fraisier-webhook, ...) after installing it", file=sys.stderr)
        return 2
    install()
    function = candidates[0].load()
    sys.argv = [name, *arguments]
    result = function()
    return result if isinstance(result, int) else 0


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if not arguments or arguments[0] in ("-h", "--help"):
        print("usage: python -m fraisier_textfile.bridge SCRIPT [ARGUMENTS...]\n\n"
              "Run Fraisier's console script SCRIPT (fraisier-webhook, say) with what it records through\n"
              "fraisier.metrics merged into the textfile (FRAISIER_TEXTFILE_DIR, or the default directory).")
        return 0 if arguments else 2
    return run_console_script(arguments[0], arguments[1:])


if __name__ == "__main__":
    sys.exit(main())
