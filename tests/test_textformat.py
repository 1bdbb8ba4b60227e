from __future__ import annotations

import pytest

from fraisier_textfile import catalogue as c
from fraisier_textfile.textformat import (
    ParseError,
    check_document,
    escape_label_value,
    parse,
    parse_series_key,
    series_key,
)

ODD_VALUES = [
    'say "hi"',
    "back\\slash",
    "trailing\\",
    "çà et là — 日本語",
    "spaces  and } braces {",
    'a="b",c="d"',
    "x" * 128,
]


@pytest.mark.parametrize("value", ODD_VALUES, ids=range(len(ODD_VALUES)))
def test_label_values_round_trip_through_a_series_key(value: str) -> None:
    key = series_key("fraisier_rollbacks_total", ("provider", "reason"), ("p", value))
    assert parse_series_key(key) == ("fraisier_rollbacks_total", {"provider": "p", "reason": value})


def test_escaping_follows_the_text_format() -> None:
    assert escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


FOREIGN = """# HELP other_metric Something another writer owns.
# TYPE other_metric gauge
# an ordinary comment, kept
other_metric{x="1"} 3
other_metric{x="2"} 4
"""


def test_families_we_do_not_own_are_written_back_exactly() -> None:
    ours = "# HELP fraisier_rollbacks_total Old help.\n# TYPE fraisier_rollbacks_total counter\n"
    ours += 'fraisier_rollbacks_total{provider="p",reason="r"} 2.0\n'
    document = parse(ours + FOREIGN)
    rendered = document.render()
    assert rendered.endswith(FOREIGN)
    assert f"# HELP fraisier_rollbacks_total {c.ROLLBACKS.help}\n" in rendered
    assert 'fraisier_rollbacks_total{provider="p",reason="r"} 2.0\n' in rendered


BAD_FILES = {
    "truncated": ('fraisier_rollbacks_total{provider="p",reason="r"} 2', "does not end with a newline"),
    "timestamp": ('fraisier_rollbacks_total{provider="p",reason="r"} 2 1700000000\n', "timestamp"),
    "bare timestamp": ("some_metric 2 1700000000\n", "timestamp"),
    "unclosed labels": ('fraisier_rollbacks_total{provider="x" 1\n', "stray text"),
    "not a number": ('fraisier_rollbacks_total{provider="p",reason="r"} two\n', "not a number"),
    "no value": ("lonely\n", "no value"),
    "second help": ("# HELP a x\n# HELP a y\n", "second HELP"),
    "type after samples": ("a 1\n# TYPE a gauge\n", "after its samples"),
    "split family": ("a 1\nb 2\na 3\n", "two places"),
    "bad type": ("# TYPE a thing\n", "unknown type"),
    "wrong type": ("# TYPE fraisier_rollbacks_total gauge\n", "is a gauge in the file but a counter"),
    "bad name": ("# TYPE 9lives gauge\n", "not a metric name"),
}


@pytest.mark.parametrize("text, problem", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_bad_file_is_refused_naming_the_problem(text: str, problem: str) -> None:
    with pytest.raises(ParseError, match=problem):
        parse(text)


def _histogram_text(bounds: list[str]) -> str:
    family = c.ROLLBACK_DURATION
    lines = [f"# TYPE {family.name} histogram"]
    lines += [f'{family.name}_bucket{{provider="p",le="{bound}"}} 1.0' for bound in bounds]
    lines += [f'{family.name}_sum{{provider="p"}} 1.0', f'{family.name}_count{{provider="p"}} 1.0']
    return "\n".join(lines) + "\n"


def test_histogram_buckets_must_be_the_catalogues() -> None:
    parse(_histogram_text(list(c.ROLLBACK_DURATION.bucket_bounds)))
    with pytest.raises(ParseError, match="buckets le=1.0,2.0,\\+Inf but the catalogue's"):
        parse(_histogram_text(["1.0", "2.0", "+Inf"]))


def test_check_finds_buckets_that_are_not_cumulative() -> None:
    text = _histogram_text(list(c.ROLLBACK_DURATION.bucket_bounds)).replace('le="5.0"} 1.0', 'le="5.0"} 0.0')
    problems = check_document(parse(text))
    assert problems == ['the buckets of fraisier_rollback_duration_seconds{provider="p"} are not cumulative']


def test_empty_and_comment_only_files_parse() -> None:
    assert parse("").blocks == {}
    assert parse("# just a comment\n\n").blocks == {}


NOT_SOUND = {
    "unclosed quote": ('fraisier_rollbacks_total{provider="a} 1\n', "cannot read the labels"),
    "bad escape": ('other{x="a\\q"} 1\n', "cannot read the labels"),
    "repeated label": ('other{x="a",x="b"} 1\n', "the label x appears twice"),
    "same series twice": ('other{a="1",b="2"} 1\nother{b="2",a="1"} 2\n', "appears twice"),
}


@pytest.mark.parametrize("text, problem", NOT_SOUND.values(), ids=NOT_SOUND.keys())
def test_check_finds_what_the_fast_parse_lets_through(text: str, problem: str) -> None:
    assert any(problem in found for found in check_document(parse(text)))


def test_check_accepts_a_trailing_comma_and_escapes() -> None:
    assert check_document(parse('other{x="a\\\\b\\"c\\nd",} 1\n')) == []


def test_go_does_not_read_underscores_in_numbers() -> None:
    with pytest.raises(ParseError, match="not a number"):
        parse('fraisier_rollbacks_total{provider="a",reason="b"} 1_000\n')
