"""fraisier_textfile/validate.py: what may become a label value or a sample value, and the message that names a
refused value and what to give instead. Each refusal is an InvalidValueError (a ValueError), never another
exception of the caller's value: the recorder turns it into a logged, dropped event."""

from __future__ import annotations

import enum
import math
from decimal import Decimal
from fractions import Fraction

import pytest

from fraisier_textfile.errors import InvalidValueError
from fraisier_textfile.validate import (
    MAX_LABEL_VALUE_LENGTH,
    check_choice,
    check_count,
    check_duration,
    check_flag,
    check_gauge_value,
    check_label_value,
    check_seconds,
    shown,
)


class Kind(str, enum.Enum):
    API = "api"


class Number(enum.Enum):
    ONE = 1


class BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class BrokenFloat:
    def __float__(self) -> float:
        raise RuntimeError("no float")


@pytest.mark.parametrize(("value", "expected"), [("api", "api"), (Kind.API, "api"), ("a" * 128, "a" * 128),
                                                 ("é ü", "é ü")], ids=["text", "str-enum", "longest", "unicode"])
def test_a_label_value_is_non_empty_printable_text(value: object, expected: str) -> None:
    checked = check_label_value("fraise_type", value)
    assert checked == expected and checked.__class__ is str  # an enum member is stored as its plain string


@pytest.mark.parametrize(("value", "says"), [
    ("", "fraise_type is empty"),
    ("a" * (MAX_LABEL_VALUE_LENGTH + 1), "is 129 characters long: shorten it to at most 128"),
    ("two\nlines", "non-printable character"),
    ("tab\there", "non-printable character"),
    (3, "is not a string: pass the fraise_type as text"),
    (Number.ONE, "fraise_type=1 is not a string"),
    (None, "fraise_type=None is not a string"),
    (BrokenRepr(), "<a BrokenRepr whose repr fails>"),
], ids=["empty", "too-long", "newline", "tab", "int", "int-enum", "none", "broken-repr"])
def test_a_label_value_that_cannot_be_one_is_refused_saying_what_to_give(value: object, says: str) -> None:
    with pytest.raises(InvalidValueError, match="fraise_type") as refused:
        check_label_value("fraise_type", value)
    assert says in str(refused.value)


def test_a_choice_is_one_of_the_allowed_values_named_in_the_refusal() -> None:
    assert check_choice("status", Kind.API, ("api", "etl")) == "api"
    with pytest.raises(InvalidValueError, match="status='web' is not known: use one of api, etl"):
        check_choice("status", "web", ("api", "etl"))


@pytest.mark.parametrize("value", [0, 0.0, 12.5, 3, Decimal("2.5"), Fraction(1, 4), 1e308],
                         ids=["zero", "zero-float", "float", "int", "decimal", "fraction", "huge"])
def test_a_duration_is_a_finite_number_of_seconds_at_least_zero(value: object) -> None:
    assert check_duration("duration", value) == float(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "says"), [
    (-1, "not a finite number of seconds >= 0"),
    (math.nan, "not a finite number of seconds >= 0"),
    (math.inf, "not a finite number of seconds >= 0"),
    (True, "is not a number"),  # True seconds is a caller's mistake, not 1 s
    ("12", "is not a number"),  # the Python API takes numbers; text is the command line's
    (None, "is not a number"),
    (10**400, "is not a number"),
    (BrokenFloat(), "is not a number"),
], ids=["negative", "nan", "inf", "bool", "text", "none", "overflow", "broken-float"])
def test_a_duration_that_is_not_one_is_refused(value: object, says: str) -> None:
    with pytest.raises(InvalidValueError, match="duration") as refused:
        check_duration("duration", value)
    assert says in str(refused.value)


def test_seconds_from_the_command_line_or_the_environment_are_read_strictly() -> None:
    assert check_seconds("--lock-timeout", "2.5") == 2.5
    assert check_seconds("--lock-timeout", 0) == 0.0
    for text in ("1_000", "٣", "-1", "nan", "inf", ""):  # float() would take the first two
        with pytest.raises(InvalidValueError, match="--lock-timeout"):
            check_seconds("--lock-timeout", text)


def test_a_count_is_a_finite_number_at_least_zero_and_a_gauge_value_any_finite_number() -> None:
    assert check_count("waiting_requests", 3) == 3.0
    assert check_gauge_value("value", -2.5) == -2.5
    for count in (-1, math.inf, True, "3"):
        with pytest.raises(InvalidValueError, match="waiting_requests"):
            check_count("waiting_requests", count)
    for value in (math.nan, -math.inf, False, "3", BrokenFloat()):
        with pytest.raises(InvalidValueError, match="value"):
            check_gauge_value("value", value)


@pytest.mark.parametrize(("value", "expected"), [
    (True, True), (False, False), (1, True), (0, False), (1.0, True), (Decimal(0), False),
    ("true", True), (" Yes ", True), ("UP", True), ("on", True), ("1", True),
    ("false", False), ("no", False), ("Down", False), ("off", False), ("0", False),
])
def test_a_flag_is_a_yes_or_no_in_any_usual_spelling(value: object, expected: bool) -> None:
    assert check_flag("available", value) is expected


@pytest.mark.parametrize("value", [2, -1, "maybe", "", None, "truthy", 0.5], ids=str)
def test_a_flag_that_is_neither_is_refused_rather_than_guessed(value: object) -> None:
    """``bool("false")`` is True: recording a provider as up because it said "false" is the worst answer."""
    with pytest.raises(InvalidValueError, match="is not a yes or no: pass True or False"):
        check_flag("available", value)


def test_a_value_is_shown_by_its_repr_even_when_that_repr_fails() -> None:
    assert shown("x") == "'x'"
    assert shown(BrokenRepr()) == "<a BrokenRepr whose repr fails>"
