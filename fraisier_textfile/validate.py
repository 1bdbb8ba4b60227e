"""Checks of values that become label values or sample values, with their messages: each refusal names the
value and what to give instead. Generic: Fraisier's closed sets of values are the catalogue's."""

from __future__ import annotations

import enum
import math

from fraisier_textfile.errors import InvalidValueError

MAX_LABEL_VALUE_LENGTH = 128


_checked_label_values: set[str] = set()


def shown(value: object) -> str:
    """``repr(value)`` for an error message, also when that repr raises (a caller's broken object must give
    a bad-value error, not a crash of the check)."""
    try:
        return repr(value)
    except Exception:
        return f"<a {type(value).__name__} whose repr fails>"


def _as_float(what: str, value: object, give: str) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except Exception:  # OverflowError (10**400), or whatever a caller's __float__ raises
        raise InvalidValueError(f"{what}={shown(value)} cannot be read as a number: give {give}") from None


def plain_value(value: object) -> object:
    """An enum member's value (Fraisier passes its ``DeploymentStatus`` members), anything else as it is."""
    if isinstance(value, enum.Enum):
        return value.value
    return value


def check_label_value(label: str, value: object) -> str:
    """Return ``value`` if it may be a label value: a non-empty printable string of at most 128 characters.
    An enum member whose value is such a string gives that string."""
    if value.__class__ is str and value in _checked_label_values:
        return value
    value = plain_value(value)
    if not isinstance(value, str):
        raise InvalidValueError(f"{label}={shown(value)} is not a string: pass the {label} as text")
    if not value:
        raise InvalidValueError(f"{label} is empty: give a non-empty {label}")
    if len(value) > MAX_LABEL_VALUE_LENGTH:
        raise InvalidValueError(
            f"{label}={value[:20]!r}... is {len(value)} characters long: "
            f"shorten it to at most {MAX_LABEL_VALUE_LENGTH}"
        )
    if not value.isprintable():
        raise InvalidValueError(
            f"{label}={shown(value)} holds a non-printable character: remove control characters and newlines"
        )
    value = str(value)  # a str subclass (a str-valued enum) is stored as the plain string
    if len(_checked_label_values) < 10_000:  # a bounded memo; label values repeat in practice
        _checked_label_values.add(value)
    return value


def check_choice(label: str, value: object, allowed: tuple[str, ...]) -> str:
    value = plain_value(value)
    if value not in allowed:
        raise InvalidValueError(f"{label}={shown(value)} is not known: use one of {', '.join(allowed)}")
    return str(value)


def check_seconds(what: str, value: object) -> float:
    """Return ``value`` (a number or its text, as from the command line or the environment) as a float if it is
    a finite, non-negative number of seconds. Text is read strictly (ASCII digits, ``settings.seconds_text``):
    ``float`` would take ``1_000`` or ``٣``."""
    if isinstance(value, str):
        from fraisier_textfile.settings import seconds_text

        return seconds_text(what, value)
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except Exception:  # TypeError, ValueError, OverflowError (10**400), or whatever a caller's __float__ raises
        raise InvalidValueError(f"{what}={shown(value)} is not a number: give seconds, e.g. 12.5") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidValueError(f"{what}={shown(value)} is not a finite number of seconds >= 0: give e.g. 12.5")
    return seconds


_LARGEST_FLOAT = 1.7976931348623157e308


def _is_number(value: object) -> bool:
    """int and float, and other numbers (Decimal, Fraction, numpy's scalars: whatever has ``__float__``), but
    not bool (True seconds is a caller's mistake, not 1 s) and not text (the Python API takes numbers)."""
    kind = value.__class__
    if kind is float or kind is int:
        return True
    if isinstance(value, (bool, str, bytes, bytearray)):
        return False
    return hasattr(kind, "__float__")


def check_duration(what: str, value: object) -> float:
    """Return ``value`` as a float if it is a number (not text, not a bool), finite and >= 0: the durations
    that the event functions accept."""
    if value.__class__ is float and 0.0 <= value <= _LARGEST_FLOAT:  # the common case, NaN and inf excluded
        return value
    if not _is_number(value):
        raise InvalidValueError(f"{what}={shown(value)} is not a number: give seconds as a number, e.g. 12.5")
    return check_seconds(what, value)


def check_count(what: str, value: object) -> float:
    """Return ``value`` as a float if it is a number (not text, not a bool), finite and >= 0."""
    if not _is_number(value):
        raise InvalidValueError(f"{what}={shown(value)} is not a number: give a count, e.g. 3")
    number = _as_float(what, value, "a count, e.g. 3")
    if not math.isfinite(number) or number < 0:
        raise InvalidValueError(f"{what}={shown(value)} is not a finite number >= 0: give a count, e.g. 3")
    return number


def check_gauge_value(what: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite number (not text, not a bool)."""
    if not _is_number(value):
        raise InvalidValueError(f"{what}={shown(value)} is not a number: give a number, e.g. 3")
    number = _as_float(what, value, "a number, e.g. 3")
    if not math.isfinite(number):
        raise InvalidValueError(f"{what}={shown(value)} is not a finite number: give a number, e.g. 3")
    return number


TRUE_WORDS = frozenset({"true", "yes", "on", "up", "1"})
FALSE_WORDS = frozenset({"false", "no", "off", "down", "0"})


def check_flag(what: str, value: object) -> bool:
    """A yes/no value. ``True``/``False``, the numbers 1 and 0, and the words in TRUE_WORDS and FALSE_WORDS
    (any case, surrounding spaces ignored) are understood; anything else is refused rather than guessed:
    ``bool("false")`` is True, and recording a provider as up because it said "false" is the worst answer."""
    value = plain_value(value)
    if value is True or value is False:
        return value
    if _is_number(value):
        try:
            if value in (0, 1):
                return bool(value)
        except Exception:  # a number-like whose comparison raises (numpy's arrays): not a yes or no
            pass
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise InvalidValueError(
        f"{what}={shown(value)} is not a yes or no: pass True or False "
        f"(also understood: 1, 0, {', '.join(sorted(TRUE_WORDS - {'1'}))}, {', '.join(sorted(FALSE_WORDS - {'0'}))})"
    )
