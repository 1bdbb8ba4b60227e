"""Fraisier's own metrics into the textfile, without editing Fraisier's files.

Fraisier records through its module ``fraisier.metrics``: the methods of its ``MetricsRecorder`` (reached with
``get_metrics_recorder()``) and, in its restore strategy, ``DeploymentMetrics.<family>.labels(...).observe(x)``
on the class itself. All of that lands in prometheus_client's in-memory default registry, which dies with the
process. :func:`install` points that module at this package, in the running process:

- ``MetricsRecorder`` and ``get_metrics_recorder`` become ours (``fraisier_textfile.metrics``, the module with
  Fraisier's whole API on top of our recorder), so that Fraisier's health checks and database observability,
  which ask ``get_metrics_recorder()`` for a recorder, record into the textfile;
- each family on Fraisier's ``DeploymentMetrics`` class becomes ours, so that direct uses merge too. A family
  our module does not (yet) provide is teed: Fraisier's own object still gets every change, and each raw event
  (a counter increment, one observation, a gauge's new value) also goes to our recorder, which merges it by
  its family's rule. Raw observations, never bucket counts: Fraisier's histograms have other buckets.

The ``fraisier`` script of this package installs the bridge before Fraisier's CLI is imported, for every
Fraisier command it runs. Other programs that import Fraisier (its webhook server, an embedding service) call
:func:`install` first, or are started through ``python -m fraisier_textfile.bridge SCRIPT [ARGUMENTS...]``.
"""

from __future__ import annotations

import enum
import importlib
import logging
import sys
from importlib.util import find_spec
from types import ModuleType
from typing import Any

from fraisier_textfile import catalogue as c
from fraisier_textfile.errors import FraisierTextfileError

log = logging.getLogger(__name__)

INSTALLED_MARK = "_fraisier_textfile_bridge"
COMPATIBLE_MODULE = "fraisier_textfile.metrics"


def install() -> bool:
    """Point ``fraisier.metrics`` at this package's textfile, in this process. Returns False (and does
    nothing) when Fraisier is not installed. Installing twice is installing once."""
    if find_spec("fraisier") is None:
        return False
    theirs = importlib.import_module("fraisier.metrics")
    if getattr(theirs, INSTALLED_MARK, False):
        return True
    ours = compatible_module()
    if ours is not None:
        theirs.MetricsRecorder = ours.MetricsRecorder  # type: ignore[attr-defined]
        theirs.get_metrics_recorder = ours.get_metrics_recorder  # type: ignore[attr-defined]
    their_families: type = theirs.DeploymentMetrics
    our_families = getattr(ours, "DeploymentMetrics", None)
    for attribute, original in list(vars(their_families).items()):
        if attribute.startswith("_") or not hasattr(original, "labels"):
            continue
        replacement = getattr(our_families, attribute, None) or teed(original)
        if replacement is not None:
            setattr(their_families, attribute, replacement)
    setattr(theirs, INSTALLED_MARK, True)
    return True


def compatible_module() -> ModuleType | None:
    """This package's module with Fraisier's metrics API, or None in a version without it."""
    if find_spec(COMPATIBLE_MODULE) is None:
        return None
    return importlib.import_module(COMPATIBLE_MODULE)


# The tee for families the compatible module does not provide


def teed(original: Any) -> TeedMetric | None:
    """Fraisier's metric object with its raw events also recorded into the textfile, or None if our catalogue
    has no family by its name and kind (or none with a rule for a raw gauge value)."""
    name = getattr(original, "_name", None)
    kind = getattr(original, "_type", None)
    family = c.FAMILIES_BY_NAME.get(f"{name}_total" if kind == "counter" else str(name))
    if family is None or family.kind.value != kind:
        return None
    # A raw gauge value can only replace the file's: the gauges with another rule (the live count of active
    # deployments, the largest last-deployment time) are owned by the recorder's deployment events.
    if family in (c.ACTIVE_DEPLOYMENTS, c.LAST_DEPLOYMENT):
        return None
    return TeedMetric(original, family)


class TeedMetric:
    """One of Fraisier's metric objects: everything still goes to it, and the raw events to our recorder."""

    def __init__(self, original: Any, family: c.Family) -> None:
        self._original = original
        self._family = family
        self._label_names: tuple[str, ...] = tuple(getattr(original, "_labelnames", family.labels))

    def labels(self, *values: object, **named: object) -> TeedChild:
        child = self._original.labels(*values, **named)
        by_name = dict(zip(self._label_names, values)) if values else named
        labels = tuple(label_text(by_name.get(label, "")) for label in self._family.labels)
        return TeedChild(child, self._family, labels)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


class TeedChild:
    """One labelled series of a :class:`TeedMetric`."""

    def __init__(self, original: Any, family: c.Family, labels: tuple[str, ...]) -> None:
        self._original = original
        self._family = family
        self._labels = labels

    def inc(self, amount: float = 1) -> None:
        self._original.inc(amount)
        if self._family.kind is c.Kind.COUNTER:
            record("add", self._family, self._labels, amount)

    def observe(self, value: float) -> None:
        self._original.observe(value)
        record("observe", self._family, self._labels, value)

    def set(self, value: float) -> None:
        self._original.set(value)
        record("set_latest", self._family, self._labels, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


def label_text(value: object) -> str:
    # Fraisier passes str-valued enum members (its DeploymentStatus): the label is the member's value.
    return str(value.value) if isinstance(value, enum.Enum) else str(value)


def record(change: str, family: c.Family, labels: tuple[str, ...], value: float) -> None:
    """One raw event into this process's recorder. A metrics problem is logged, never raised into Fraisier."""
    try:
        for label, label_value in zip(family.labels, labels):
            c.check_label_value(label, label_value)
        value = c.check_seconds(family.name, value) if family.kind is c.Kind.HISTOGRAM else float(value)
        from fraisier_textfile.recorder import get_metrics_recorder

        recorder = get_metrics_recorder()
        getattr(recorder, change)(family, labels, value)
        if recorder.auto_flush:
            recorder.flush()
    except FraisierTextfileError as error:
        # Once per problem: a health check retried in a loop must not flood the log with the same line.
        if str(error) not in _logged:
            _logged.add(str(error))
            log.error("a metric Fraisier recorded was not written to the textfile: %s", error)


_logged: set[str] = set()


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
