"""Settings from the environment and the command line, parsed strictly, and what a typo costs.

Every ``FRAISIER_*`` setting but the directory only tunes the metrics (a wait, a bound, a log format). A typo in
one of them must never stop a deployment: read from the environment, a bad value is reported in one line (the
variable, the value, the fix) and replaced by its default, for every entry point (the API, ``fraisier record``,
``fraisier exec``, ``fraisier metrics``). The same typo given explicitly on the command line is a usage error
(exit 2) for the commands that only do metrics, but ``fraisier exec`` reports it and runs the deployment.

Numbers are read strictly, as ASCII: ``str.isdigit`` accepts ``²`` (which ``int`` refuses) and ``float`` accepts
``1_000``, ``٣`` and blanks around the number, none of which an operator means as a setting.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import TypeVar

from fraisier_textfile.errors import InvalidValueError
from fraisier_textfile.logger import get_logger

log = get_logger(__name__)

_Value = TypeVar("_Value")

# What a plain decimal number is written with: of the texts float() reads, those made of these characters only are
# exactly [-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)? (no blank, underscore, inf, nan or other script's
# digit), told without compiling that pattern in every process that records a duration (bench/README.md).
_DECIMAL_CHARACTERS = frozenset("0123456789+-.eE")

DEFAULT_LOCK_WAIT_BUDGET = 1.0
LOCK_WAIT_BUDGET_ENVIRONMENT = "FRAISIER_LOCK_WAIT_BUDGET"

# Bad settings already reported in this process: each is one line, once, however many recorders read it.
_reported: set[tuple[str, str]] = set()

# Who says it, at the start of each report: in a program that records through the API (Fraisier's), the
# package's name as every recorder message gives it; in a command of ours, that command (report_as), whichever
# layer reads the setting: "fraisier metrics:" in a `fraisier record` run sent operators looking for a server.
_speaker = "fraisier metrics"


def seconds_text(what: str, text: str) -> float:
    """Seconds written as a plain decimal number (``10``, ``2.5``, ``.5``, ``1e3``), finite and not negative."""
    try:
        if not _DECIMAL_CHARACTERS.issuperset(text):
            raise ValueError(text)
        seconds = float(text)
    except ValueError:
        raise InvalidValueError(f"{what}={text!r} is not a number: give seconds in ASCII digits, e.g. 12.5") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidValueError(f"{what}={text!r} is not a finite number of seconds >= 0: give e.g. 12.5")
    return seconds


def whole_number_text(what: str, text: str, example: str) -> int:
    """A whole number written in ASCII digits only."""
    if not (text.isascii() and text.isdigit()):  # isdigit alone takes '²' and '١'; isascii alone, '+5' and ' 5'
        raise InvalidValueError(f"{what}={text!r} is not a whole number: give ASCII digits only, e.g. {example}")
    return int(text)


def choice_text(what: str, text: str, choices: tuple[str, ...] | list[str]) -> str:
    if text not in choices:
        raise InvalidValueError(f"{what}={text!r} is not one of {', '.join(choices)}: give one of them")
    return text


def from_environment(
    variable: str, parse: Callable[[str, str], _Value], default: _Value, *, strict: bool = False,
    default_shown: str | None = None,
) -> _Value:
    """``$variable`` parsed by ``parse(variable, text)``, or ``default`` when it is unset or empty. A bad value
    is logged once per process (a warning naming the variable, the value and the fix) and ``default`` is used;
    ``strict`` raises InvalidValueError instead (a strict recorder, for tests)."""
    try:
        value = environment_value(variable, parse)
    except InvalidValueError as error:
        if strict:
            raise
        report(error, default if default_shown is None else default_shown)
        return default
    return default if value is None else value


def environment_value(variable: str, parse: Callable[[str, str], _Value]) -> _Value | None:
    """``$variable`` parsed by ``parse(variable, text)``; None when it is unset or empty. Raises the parser's
    InvalidValueError for a bad value: the caller says what happens then (the default, logged or reported)."""
    text = os.environ.get(variable)
    return parse(variable, text) if text else None


def report_as(command: str) -> str:
    """Reports begin with ``command`` (``fraisier record``) while it runs; returns whom they named before, to be
    given back when the command ends (a program may run several, as the tests' CliRunner does)."""
    global _speaker
    previous, _speaker = _speaker, command
    return previous


def report(error: InvalidValueError, default: object) -> None:
    """One warning line for a bad setting replaced by its default, once per process."""
    key = (str(error), str(default))
    if key in _reported:
        return
    _reported.add(key)
    log.warning("%s: %s; using the default, %s", _speaker, error, default)


def default_lock_wait_budget(strict: bool = False) -> float:
    """``$FRAISIER_LOCK_WAIT_BUDGET``: how long a process may spend writing the textfile in a burst (it
    refills at that many seconds a minute)."""
    return from_environment(LOCK_WAIT_BUDGET_ENVIRONMENT, seconds_text, DEFAULT_LOCK_WAIT_BUDGET, strict=strict)
