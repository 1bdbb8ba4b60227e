"""A long-lived process loads, once, every module of ours it may still need, while the installation on disk is
still the one it started from.

The package imports many modules only when first needed (a hand-over's codec at the first hand-over, a marker's
probe at the first deployment tracked), so that a short process (``fraisier record``) pays for none it does not
use. But ``pip install -U`` (or a downgrade) replaces the package's files under the processes still running from
them: a Fraisier deploy daemon recording for days, ``fraisier metrics``, a ``fraisier exec`` around a long
deployment. A module such a process imports after that is the other version's, mixed with its own: an
ImportError at each merge, or worse, and its events lost. So a process that lives on loads the rest ahead:

- a recorder, :data:`DELAY` seconds after its first write, in the thread that closes what that write's merge
  replaced (:func:`ask`), or a second after Fraisier's metrics module is pointed at the textfile (bridge.py,
  :func:`soon`): a process that ends sooner (a cron job's) never pays for it, and neither the record call nor the
  exit waits for it;
- ``fraisier metrics`` and ``fraisier exec``, which live on by design, at their start (:func:`load`): before the
  server listens, before the command runs (a few milliseconds, once).

Stdlib modules are not at stake (the interpreter is not replaced under a process), nor the CLI's (a command's are
loaded when it starts).
"""

from __future__ import annotations

import _thread
import sys
from collections.abc import Iterable

from fraisier_textfile import imports

DELAY = 1.0
"""Seconds a process waits, once loading ahead is asked for, before it loads (see :func:`ask`, :func:`soon`)."""
EXIT_WAIT = 1.0
"""Seconds the exit waits at most for a load under way (a thread importing as the interpreter finalizes can
crash the process); one not begun is called off at once."""

requested: tuple[str, ...] | None = None
"""The packages to load ahead, once asked for (:func:`ask`); the record path checks it before asking."""
_begun = False
_loaded = False
_soon = False
"""Whether loading ahead was asked for by :func:`soon` (a process that may not write for long): a child forked
before the load asks again for itself (:func:`forget`)."""
_call_off = _thread.allocate_lock()
"""Held until the exit: the loading thread waits :data:`DELAY` on it, and the exit's release calls the load off."""
_call_off.acquire()
_running = _thread.allocate_lock()
"""Held by the thread that loads until it is done, so that the exit can wait for it."""
def load(packages: Iterable[str]) -> None:
    """Import every module of ``packages`` (dotted names; their subpackages included) that is not loaded yet. A
    module that cannot be imported (an optional dependency missing) is left out: the code that needs it says
    so when it runs, as it would have."""
    import importlib
    import pkgutil

    for name in packages:
        try:
            # One module at a time under the package's threads' import lock (imports.py), which a fork waits for: a
            # child forked in the middle of an import would wait for ever at its first use of that module.
            with imports.guarded():  # walk_packages imports the subpackages it walks into
                package = importlib.import_module(name)
                modules = list(pkgutil.walk_packages(getattr(package, "__path__", []), f"{name}.",
                                                     onerror=lambda _: None))
        except Exception:
            continue
        for module in modules:
            if module.name not in sys.modules and not module.name.endswith(".__main__"):
                try:
                    with imports.guarded():
                        importlib.import_module(module.name)
                except Exception:
                    continue


def ask(packages: Iterable[str]) -> None:
    """Have ``packages`` loaded (see :func:`load`) :data:`DELAY` seconds from now, by a thread of ours that would
    end then anyway (:func:`take_over`: the one that closes the file a merge replaced, store/files.py), so that no
    call pays for a thread's start. Costs the caller nothing more than noting them; once per process."""
    global requested
    if requested is None:
        requested = tuple(packages)


def soon(packages: Iterable[str]) -> None:
    """As :func:`ask`, in a thread started now for it: for a process that may not merge for long (one that
    imports Fraisier's metrics module at its start, and records hours later). Never raises, never waits."""
    global _soon
    ask(packages)
    _soon = True
    try:
        _thread.start_new_thread(take_over, ())
    except RuntimeError:  # no thread to be had (a task limit): the modules load when needed, as before
        pass


def take_over() -> None:
    """Run by a thread of ours about to end: if loading ahead was asked for and no thread has taken it yet, this
    one waits :data:`DELAY` (called off by the exit), then loads. Never raises."""
    global _begun, _loaded
    if requested is None or _begun or not _running.acquire(blocking=False):
        return
    _begun = True
    try:
        if not _call_off.acquire(timeout=DELAY):
            load(requested)
            _loaded = True
    except BaseException:  # never into the program: at worst the modules load when needed, as before
        pass
    finally:
        _running.release()


def call_off() -> None:
    """At the exit (store/process.py, which holds every exit hook of the store's threads): a load not begun is
    called off at once, one under way is waited for at most :data:`EXIT_WAIT`."""
    if _call_off.locked():
        _call_off.release()
    if _running.acquire(timeout=EXIT_WAIT):
        _running.release()


def forget() -> None:
    """In a forked child (store/process.py's fork hook), which has no thread of its parent's: it starts afresh, and
    loads ahead if it records on, or, if its parent was to load soon (:func:`soon`) and had not yet, soon too: the
    child may be the one that lives on without writing (a pre-forking server's worker)."""
    global requested, _begun, _call_off, _running, _soon
    again = requested if _soon and not _loaded else None
    requested = None
    _begun = False
    _soon = False
    _call_off = _thread.allocate_lock()
    _call_off.acquire()
    _running = _thread.allocate_lock()
    if again is not None:
        soon(again)
