"""format/syntax.py: the text format's lexical rules (floats, label values, series keys) as Go reads them."""

from __future__ import annotations

import subprocess

import pytest

from fraisier_textfile.format.syntax import ParseError, canonical_float, go_float, parse_series_key, series_key

from .processes import binary

# Texts at the edges of Go's float syntax: other scripts' digits, underscores, hex, out of range, signs of NaN.
FLOATS = [
    "0", "-0", "1", "1.", ".5", "1e3", "1E-3", "+1", "-1.5e+10", "1e308", "1e309", "1e400", "-1e400", "4.9e-324",
    "NaN", "nan", "+nan", "-NaN", "Inf", "+Inf", "-inf", "infinity", "+Infinity", "1_000", "0x1p3", "0x10",
    "1e", "e1", "١", "１", "1.5.5", "", " 1", "0b1", "1e+", "--1",
]


def promtool_accepts(value: str) -> bool:
    text = f"# HELP x_total h\n# TYPE x_total counter\nx_total {value}\n"
    checked = subprocess.run([binary("promtool"), "check", "metrics"], input=text, capture_output=True, text=True,
                             timeout=60)
    return checked.returncode == 0


def test_a_sample_value_is_read_where_and_only_where_promtool_reads_it() -> None:
    """Differential against Go's own parser (promtool): a value we read that Go refuses would make
    node_exporter drop the whole file; one Go reads that we refuse would fail a merge for nothing."""
    ours = {value: go_float(value) is not None for value in FLOATS if value.strip() == value and value}
    gos = {value: promtool_accepts(value) for value in ours}
    assert ours == gos


@pytest.mark.parametrize("text, canonical", [("1", "1.0"), ("1e0", "1.0"), ("1.0", "1.0"), ("+Inf", "+Inf"),
                                             ("-inf", "-Inf"), ("NaN", "NaN"), ("2.5e1", "25.0")])
def test_equal_bounds_are_written_the_same_whatever_their_spelling(text: str, canonical: str) -> None:
    assert canonical_float(text) == canonical


def test_a_bound_go_refuses_is_refused_in_promtools_words() -> None:
    with pytest.raises(ParseError, match='^expected float as value, got "1_000"$'):
        canonical_float("1_000")


@pytest.mark.parametrize("value", ['"', "\\", "\n", '\\"\n', "é", "a,b=c", "}", "{", "\\n"])
def test_a_label_value_written_in_a_key_reads_back_as_it_was(value: str) -> None:
    key = series_key("fraisier_deployment_errors_total", ["provider", "error_type"], ["bare_metal", value])
    assert "\n" not in key
    assert parse_series_key(key) == ("fraisier_deployment_errors_total", {"provider": "bare_metal",
                                                                           "error_type": value})
