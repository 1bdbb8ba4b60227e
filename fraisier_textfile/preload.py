"""A long-lived process loads, once, every module of ours it may still need, while the installation on disk is
still the one it started from.

The package imports many modules only when first needed (a hand-over's codec at the first hand-over, a marker's
probe at the first deployment tracked), so that a short process (``fraisier record``) pays for none it does not
use. But ``pip install -U`` (or a downgrade) replaces the package's files under the processes still running from
them: a Fraisier deploy daemon recording for days, ``fraisier metrics``, a ``fraisier exec`` around a long
deployment. A module such a process imports after that is the other version's, mixed with its own: an
ImportError at each merge, or worse, and its events lost. So a process that lives on loads the rest ahead:

- a recorder, :data:`DELAY` seconds after its first write, in a thread of its own (:func:`soon`): a process that
  ends sooner (a cron job's) never pays for it, and neither the record call nor the exit waits for it;
- ``fraisier metrics`` and ``fraisier exec``, which live on by design, at once (:func:`load`), off any request's
  path (once listening; once the command runs).

Stdlib modules are not at stake (the interpreter is not replaced under a process), nor the CLI's (a command's are
loaded when it starts).
"""

from __future__ import annotations

import _thread
import atexit
import os
import sys
from collections.abc import Iterable

DELAY = 1.0
"""Seconds after a recorder's first write that its process loads the rest (see :func:`soon`)."""
EXIT_WAIT = 1.0
"""Seconds the exit waits at most for a load under way (a thread importing as the interpreter finalizes can
crash the process); one not begun is called off at once."""

asked = False
"""Whether :func:`soon` was called in this process: the record path checks it before calling."""
_call_off = _thread.allocate_lock()
"""Held until the exit: the thread waits :data:`DELAY` on it, and the exit's release calls the load off."""
_call_off.acquire()
_running = _thread.allocate_lock()
"""Held by the thread until it is done, so that the exit can wait for it."""


def load(packages: Iterable[str]) -> None:
    """Import every module of ``packages`` (dotted names; their subpackages included) that is not loaded yet. A
    module that cannot be imported (an optional dependency missing) is left out: the code that needs it says
    so when it runs, as it would have."""
    import importlib
    import pkgutil

    for name in packages:
        try:
            package = importlib.import_module(name)
        except Exception:
            continue
        for module in pkgutil.walk_packages(getattr(package, "__path__", []), f"{name}.", onerror=lambda _: None):
            if module.name not in sys.modules and not module.name.endswith(".__main__"):
                try:
                    importlib.import_module(module.name)
                except Exception:
                    continue


def soon(packages: Iterable[str]) -> None:
    """Load ``packages`` (see :func:`load`) :data:`DELAY` seconds from now in a thread of its own, once per
    process; called off if the process exits first. Never raises, never waits."""
    global asked
    if asked:
        return
    asked = True
    listed = tuple(packages)
    if not _running.acquire(blocking=False):
        return
    try:
        _thread.start_new_thread(_load_later, (listed,))
    except RuntimeError:  # no thread to be had (a task limit): the modules load when needed, as before
        _running.release()
        return
    atexit.register(_at_exit)


def _load_later(packages: tuple[str, ...]) -> None:
    try:
        if not _call_off.acquire(timeout=DELAY):
            load(packages)
    except BaseException:  # never into the program: at worst the modules load when needed, as before
        pass
    finally:
        _running.release()


def _at_exit() -> None:
    if _call_off.locked():
        _call_off.release()
    if _running.acquire(timeout=EXIT_WAIT):
        _running.release()


def _in_child() -> None:
    """A forked child has no thread of its parent's: it starts afresh, and loads the rest if it records on."""
    global asked, _call_off, _running
    asked = False
    _call_off = _thread.allocate_lock()
    _call_off.acquire()
    _running = _thread.allocate_lock()


os.register_at_fork(after_in_child=_in_child)
