"""The start-up hook: Fraisier's own metrics into the textfile, in every process, with no step by anyone.

``fraisier_textfile_hook.pth`` (installed at the root of site-packages beside this module) imports this module
at every start of this environment's interpreter. All it does then is put one small finder first on
``sys.meta_path``. The finder answers for one module name only, ``fraisier.metrics``: it lets the other
finders find Fraisier's module as usual and arranges that, right after the module has run, it is pointed at the
textfile through :func:`fraisier_textfile.bridge.install_into`, before any other Fraisier module takes names
from it (``from .metrics import get_metrics_recorder``). So Fraisier's own ``fraisier`` script, its webhook
server, its deploy daemon and any program embedding Fraisier record into the textfile, in whichever order the
two distributions were installed or upgraded.

What this module must never do, since it runs in every Python program of the environment:

- import ``fraisier_textfile`` or Fraisier at start (that costs milliseconds; only ``os`` and ``sys``, which
  ``site`` has imported already, are used), nor anything when the process never imports ``fraisier.metrics``;
- raise, or print: a failure leaves Fraisier's metrics as they were (in its in-memory registry) and logs one
  warning through ``logging``;
- change anything of another module (the loader of ``fraisier.metrics`` alone is touched, on that instance).

``FRAISIER_TEXTFILE_HOOK=0`` (or ``false``, ``no``, ``off``) in the environment turns it off for a process and
its children. This is a top-level module, not part of the package, because importing any module of the package
imports the package itself, and the package's ``__init__`` is far from free.
"""

# No `from __future__ import annotations` and no `typing`: each is a module import at every start of every
# program (the annotations are strings instead).
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # for the annotations only
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

ENVIRONMENT_VARIABLE = "FRAISIER_TEXTFILE_HOOK"
TARGET = "fraisier.metrics"
_OFF = frozenset({"0", "false", "no", "off"})


def enabled() -> bool:
    return os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower() not in _OFF


class FraisierMetricsFinder:
    """First on ``sys.meta_path``: finds nothing itself, and for ``fraisier.metrics`` only, returns the spec the
    other finders return, its loader set to point the module at the textfile once it has run."""

    def find_spec(
        self, fullname: str, path: "Sequence[str] | None" = None, target: "ModuleType | None" = None
    ) -> "ModuleSpec | None":
        # Every import of the process passes here: nothing but this comparison for the others.
        if fullname != TARGET:
            return None
        try:
            return self._spec_with_bridge(fullname, path, target)
        except Exception:
            # Whatever went wrong, the import goes on as if we were not here.
            return None

    def _spec_with_bridge(
        self, fullname: str, path: "Sequence[str] | None", target: "ModuleType | None"
    ) -> "ModuleSpec | None":
        spec: ModuleSpec | None = None
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            if finder is self or isinstance(finder, FraisierMetricsFinder) or find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is not None:
                break
        if spec is None:
            return None
        loader = spec.loader
        run_module = getattr(loader, "exec_module", None)
        if loader is None or run_module is None:
            return spec

        def run_then_bridge(module: "ModuleType") -> None:
            if getattr(module, "__name__", None) != TARGET:  # a loader shared by several modules (zipimport)
                run_module(module)
                return
            try:
                # Back to the class's own method: nothing of ours stays on Fraisier's loader.
                del loader.exec_module
            except AttributeError:
                pass
            run_module(module)  # Fraisier's own errors are Fraisier's: they propagate as without us
            _bridge(module)

        # On this loader instance only: a file loader is made for one module (a zipimporter is shared, hence
        # the name check above); the class and every other module's loader stay as they are.
        loader.exec_module = run_then_bridge  # type: ignore[method-assign]
        return spec


def _bridge(module: "ModuleType") -> None:
    try:
        from fraisier_textfile.bridge import install_into

        install_into(module)
    except ModuleNotFoundError as error:
        if error.name is not None and error.name.split(".")[0] == "fraisier_textfile":
            return  # the package was removed and this module left behind: nothing to do
        _warn(error)
    except Exception as error:
        _warn(error)


def _warn(error: BaseException) -> None:
    try:
        import logging

        logging.getLogger("fraisier_textfile.hook").warning(
            "fraisier_textfile: Fraisier's metrics of this process stay in its memory, not in the textfile "
            "(the start-up hook failed: %r); reinstall fraisier-textfile, or set %s=0 to silence this",
            error, ENVIRONMENT_VARIABLE,
        )
    except Exception:
        pass


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once), unless the environment turns the hook off."""
    if not enabled():
        return
    if any(isinstance(finder, FraisierMetricsFinder) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, FraisierMetricsFinder())


try:
    install()
except Exception:
    pass
