"""Loggers that import ``logging`` at their first use.

A ``fraisier record`` run from cron, or a merge from a deploy hook, logs only when something is wrong, and
importing ``logging`` (with the ``traceback``, ``textwrap`` and ``string`` it imports) would cost every such run
about a tenth of what importing click does (bench/bench_cli.py). The modules on that path take their logger from
``get_logger``: it stands for ``logging.getLogger(name)`` and fetches that logger, importing ``logging``, when
one of its methods is first called. Records, levels, handlers and ``caplog`` are logging's own.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fraisier_textfile import imports

if TYPE_CHECKING:
    import logging

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
"""logging's levels (the same numbers), for callers that must not import it to name one."""

_setups: list[Callable[[], None]] = []
_setting_up = threading.RLock()  # reentrant: a setup may itself log


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)``, fetched at the first call of one of its methods."""
    return _DeferredLogger(name)  # type: ignore[return-value]  # it behaves as the Logger it fetches


def at_first_use(setup: Callable[[], None]) -> None:
    """Run ``setup`` (the command line's handler) just before the first use of a logger of ``get_logger``, or now
    when ``logging`` is imported already (other loggers may log at any time then)."""
    if "logging" in sys.modules:
        setup()
    else:
        _setups.append(setup)


def _run_setups() -> None:
    # Held while a setup runs: a record from another thread meanwhile waits for the handler being set up.
    with _setting_up:
        while _setups:
            setup = _setups.pop(0)
            try:
                setup()
            except Exception:  # logging is on the metrics path: the records go to logging's last resort instead
                pass


class _DeferredLogger:
    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, attribute: str) -> Any:
        # In a thread of ours, under the lock a fork waits for (imports.py): a child forked in the middle of this
        # import would wait for ever at its first log line.
        imports.import_modules(("logging",))
        import logging

        _run_setups()
        value = getattr(logging.getLogger(self.name), attribute)
        if callable(value):
            # A bound method of the one logger of that name: later calls find it here, without this lookup.
            setattr(self, attribute, value)
        return value

    def __repr__(self) -> str:
        return f"<deferred logger {self.name}>"
