"""Settings parsed strictly, and a typo in the environment reported once and replaced by its default."""

from __future__ import annotations

import logging

import pytest

from fraisier_textfile import settings
from fraisier_textfile.errors import InvalidValueError


@pytest.mark.parametrize("text, seconds", [("10", 10.0), ("2.5", 2.5), (".5", 0.5), ("1e3", 1000.0), ("0", 0.0)])
def test_seconds_in_ascii_digits_are_read(text: str, seconds: float) -> None:
    assert settings.seconds_text("FRAISIER_LOCK_TIMEOUT", text) == seconds


@pytest.mark.parametrize("text", ["10sec", "1_000", "10²", "١٢", " 10", "10 ", "", "inf", "nan", "-1", "1e999", "0x10"])
def test_anything_else_is_not_seconds(text: str) -> None:
    with pytest.raises(InvalidValueError, match="FRAISIER_LOCK_TIMEOUT="):
        settings.seconds_text("FRAISIER_LOCK_TIMEOUT", text)


@pytest.mark.parametrize("text, seconds", [("1.", 1.0), ("+.5e-3", 0.0005), ("1E5", 1e5), ("-0", 0.0), ("+1", 1.0),
                                           ("007", 7.0), ("1e+2", 100.0), ("0.0e0", 0.0)])
def test_seconds_are_a_plain_decimal_with_a_sign_a_point_or_an_exponent(text: str, seconds: float) -> None:
    assert settings.seconds_text("FRAISIER_LOCK_TIMEOUT", text) == seconds


@pytest.mark.parametrize("text", [".", "e5", "1e", "1e+", "+", "-", "1.5.2", "--1", "+-1", "1e5.5", "1\n", "\n1",
                                  "1..", "..5", "1e_5", "1_0.5", ".e1", "1.e", "Infinity", "1e5e5", "5-"])
def test_what_is_not_one_decimal_number_is_not_seconds(text: str) -> None:
    with pytest.raises(InvalidValueError, match="is not a number"):
        settings.seconds_text("FRAISIER_LOCK_TIMEOUT", text)


@pytest.mark.parametrize("text", ["1_000", "10²", "١٢", "+5", "-5", "5.0", " 5", "1e3", "", "5\n"])
def test_a_whole_number_is_ascii_digits_only(text: str) -> None:
    """str.isdigit accepts '²' and '١', which int refuses or reads: neither is what an operator typed for 10."""
    with pytest.raises(InvalidValueError, match="not a whole number"):
        settings.whole_number_text("FRAISIER_MAX_SERIES_PER_FAMILY", text, "10000")
    assert settings.whole_number_text("FRAISIER_MAX_SERIES_PER_FAMILY", "10000", "10000") == 10000


def test_a_typo_in_the_environment_is_one_warning_and_the_default(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FRAISIER_TEST_SECONDS", "10sec")
    caplog.set_level(logging.WARNING)
    for _ in range(3):  # read by several recorders: said once
        assert settings.from_environment("FRAISIER_TEST_SECONDS", settings.seconds_text, 7.0) == 7.0
    [record] = caplog.records
    assert record.getMessage() == (
        "fraisier metrics: FRAISIER_TEST_SECONDS='10sec' is not a number: give seconds in ASCII digits, e.g. 12.5; "
        "using the default, 7.0"
    )
    with pytest.raises(InvalidValueError):
        settings.from_environment("FRAISIER_TEST_SECONDS", settings.seconds_text, 7.0, strict=True)


def test_an_unset_or_empty_setting_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FRAISIER_TEST_SECONDS", raising=False)
    assert settings.from_environment("FRAISIER_TEST_SECONDS", settings.seconds_text, 7.0) == 7.0
    monkeypatch.setenv("FRAISIER_TEST_SECONDS", "")
    assert settings.from_environment("FRAISIER_TEST_SECONDS", settings.seconds_text, 7.0) == 7.0
    monkeypatch.setenv("FRAISIER_TEST_SECONDS", "3")
    assert settings.from_environment("FRAISIER_TEST_SECONDS", settings.seconds_text, 7.0) == 3.0
