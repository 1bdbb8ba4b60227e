from __future__ import annotations

import pytest

from fraisier_textfile import catalogue as c
from fraisier_textfile.catalogue import SCHEMA
from fraisier_textfile.format.check import check_text
from fraisier_textfile.format.model import check_buckets
from fraisier_textfile.format.reader import parse
from fraisier_textfile.format.syntax import ParseError, escape_label_value, parse_series_key, series_key
from fraisier_textfile.store.inflight import RETIRED_MARKERS

LAYOUT_LINE = "# fraisier_textfile layout: "


def without_layout(text: str) -> str:
    """The text without its layout line (see layout.py; tested in test_layout.py), for tests about the rest."""
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith(LAYOUT_LINE))


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
other_metric { y = "2" ,x="2",}\t4
"""


def test_families_we_do_not_own_are_written_back_exactly() -> None:
    ours = "# HELP fraisier_rollbacks_total Old help.\n# TYPE fraisier_rollbacks_total counter\n"
    ours += 'fraisier_rollbacks_total{provider="p",reason="r"} 2.0\n'
    document = parse(ours + FOREIGN, SCHEMA)
    rendered = document.render()
    assert rendered.endswith(FOREIGN)
    assert f"# HELP fraisier_rollbacks_total {c.ROLLBACKS.help}\n" in rendered
    assert 'fraisier_rollbacks_total{provider="p",reason="r"} 2.0\n' in rendered


ROLLBACK = 'fraisier_rollbacks_total{provider="p",reason="r"}'
SPELLINGS = {
    "ours": f"{ROLLBACK} 2.0\n",
    "reversed labels": 'fraisier_rollbacks_total{reason="r",provider="p"} 2\n',
    "spaces": 'fraisier_rollbacks_total { provider = "p" , reason="r" , }  2e0\n',
    "tabs": 'fraisier_rollbacks_total{provider="p",\treason="r"}\t2\n',
    "leading blanks": '  \tfraisier_rollbacks_total{reason="r",provider="p"} +2.0\n',
    "no blank before the value": 'fraisier_rollbacks_total{reason="r",provider="p"}2\n',
}


@pytest.mark.parametrize("text", SPELLINGS.values(), ids=SPELLINGS.keys())
def test_series_of_ours_are_found_whatever_their_spelling(text: str) -> None:
    block = parse(text, SCHEMA).blocks[c.ROLLBACKS.name]
    assert block.value(ROLLBACK) == 2.0
    block.set(ROLLBACK, 3.0)
    assert block.render().endswith(f"{ROLLBACK} 3.0\n")
    assert block.render().count("\n") == 3  # HELP, TYPE, the one series: no second copy


def _histogram_text(bounds: list[str], le_first: bool = False) -> str:
    family = c.ROLLBACK_DURATION
    lines = [f"# TYPE {family.name} histogram"]
    for bound in bounds:
        labels = f'le="{bound}",provider="p"' if le_first else f'provider="p",le="{bound}"'
        lines.append(f"{family.name}_bucket{{{labels}}} 1.0")
    lines += [f'{family.name}_sum{{provider="p"}} 1.0', f'{family.name}_count{{provider="p"}} 1.0']
    return "\n".join(lines) + "\n"


def test_le_is_read_in_any_spelling_and_position() -> None:
    go_style = ["1", "5", "10", "30", "60", "120", "300", "600", "+Inf"]
    exponents = ["1e0", "5e0", "1e1", "3e1", "6e1", "1.2e2", "3e2", "6e2", "+inf"]
    canonical = parse(_histogram_text(list(c.ROLLBACK_DURATION.bucket_bounds)), SCHEMA).render()
    for bounds in (go_style, exponents):
        assert parse(_histogram_text(bounds), SCHEMA).render() == canonical
    assert parse(_histogram_text(list(c.ROLLBACK_DURATION.bucket_bounds), le_first=True), SCHEMA).render() == canonical


def test_histogram_buckets_must_be_the_catalogues() -> None:
    parse(_histogram_text(list(c.ROLLBACK_DURATION.bucket_bounds)), SCHEMA)
    with pytest.raises(ParseError, match="buckets le=1.0,2.0,\\+Inf but the catalogue's"):
        parse(_histogram_text(["1.0", "2.0", "+Inf"]), SCHEMA)


def test_a_merge_checks_only_the_histograms_it_asks_for() -> None:
    document = parse(_histogram_text(["1.0", "2.0", "+Inf"]), SCHEMA, check_histograms=False)
    block = document.blocks[c.ROLLBACK_DURATION.name]
    with pytest.raises(ParseError, match="but the catalogue's are"):
        check_buckets(block, c.ROLLBACK_DURATION)


# Go's parser (node_exporter 1.5, promtool 2.42) decides; each message is the one promtool prints for the input.
REFUSED = {
    "truncated": (f"{ROLLBACK} 2", "the file does not end with a newline (it was cut short): unexpected end of input"),
    "timestamp": (f"{ROLLBACK} 2 1700000000\n", "node_exporter does not support client-side timestamps"),
    "bare timestamp": ("some_metric 2 1700000000\n", "node_exporter does not support client-side timestamps"),
    "trailing blank": (f"{ROLLBACK} 2 \n", 'expected integer as timestamp, got ""'),
    "exemplar": (f'{ROLLBACK} 2 # {{trace_id="abc"}} 1\n', 'expected integer as timestamp, got "#"'),
    "carriage return": (f"{ROLLBACK} 2\r\n", 'expected float as value, got "2\\r"'),
    "missing }": ('fraisier_rollbacks_total{provider="x" 1\n', 'unexpected end of label value "x"'),
    "unclosed quote": ('a{x="1} 1\n', 'label value "1} 1" contains unescaped new-line'),
    "bad escape": ('a{x="\\q"} 1\n', "invalid escape sequence '\\q'"),
    "not a number": (f"{ROLLBACK} two\n", 'expected float as value, got "two"'),
    "underscores": (f"{ROLLBACK} 1_000\n", 'expected float as value, got "1_000"'),
    "arabic digits": (f"{ROLLBACK} \u0661\n", 'expected float as value, got "\u0661"'),
    "signed NaN": ("a +nan\n", 'expected float as value, got "+nan"'),
    "out of range": ("a 1e400\n", 'expected float as value, got "1e400"'),
    "hex": ("a 0x1p3\n", 'expected float as value, got "0x1p3"'),
    "no value": ("lonely\n", 'expected float as value, got ""'),
    "repeated label": ('a{x="1",x="2"} 1\n', 'duplicate label names for metric "a"'),
    "reserved label": ('a{__name__="b"} 1\n', 'label name "__name__" is reserved'),
    "label without value": ("a{x} 1\n", "expected '=' after label name, found '}'"),
    "empty label": ("a{,} 1\n", 'invalid label name for metric "a"'),
    "brace first": ('{a="1"} 1\n', "invalid metric name"),
    "bad le": ('# TYPE h histogram\nh_bucket{le="x"} 1\n', "expected float as value for 'le' label, got \"x\""),
    "second help": ("# HELP a x\n# HELP a y\n", 'second HELP line for metric name "a"'),
    "help escape": ('# HELP a say \\"hi\\"\n', "invalid escape sequence '\\\"'"),
    "type after samples": ("a 1\n# TYPE a gauge\n", 'second TYPE line for metric name "a", or TYPE reported after'),
    "bad type": ("# TYPE a thing\n", 'unknown metric type "thing"'),
    "blank after type": ("# TYPE a gauge \n", 'unknown metric type "gauge "'),
    "bad name": ("# TYPE 9lives gauge\n", "invalid metric name in comment"),
    "wrong type": ("# TYPE fraisier_rollbacks_total gauge\n", "is a gauge in the file but a counter here"),
}


@pytest.mark.parametrize("text, problem", REFUSED.values(), ids=REFUSED.keys())
def test_what_node_exporter_refuses_is_refused_in_its_words(text: str, problem: str) -> None:
    with pytest.raises(ParseError) as raised:
        parse(text, SCHEMA)
    assert problem in raised.value.problem
    assert [error.problem for error in check_text(text, SCHEMA)] == [raised.value.problem]


ACCEPTED = {
    "tabs and double blanks": 'a{x="1"}\t 1\n\tb  2\n',
    "blank and comment lines": "\n# a comment\n   \n#\n# HELP\na 1\n",
    "help after type, with escapes": "# TYPE a gauge\n# HELP a back\\\\slash\\nnew line\na 1\n",
    "comment keywords without a blank": "#HELP a x\n#\tTYPE a gauge\na 1\n",
    "upper-case type": "# TYPE a GAUGE\na 1\n",
    "samples only": 'a{x="1"} 1\na{x="2"} 2\n',
    "specials": "a NaN\nb -Inf\nc +inf\nd Infinity\ne nan\n",
    "number forms": "a 1.\nb .5\nc +1e+3\nd 1E3\ne -0\nf 00012\ng 1e-400\n",
    "a family in two places": 'a{x="1"} 1\nb 2\na{x="2"} 3\n',
    "summary": '# TYPE s summary\ns{quantile="0.5"} 1\ns_sum 1\ns_count 1\n',
    "empty label set": "a{} 1\n",
    "trailing blanks after the last newline": "a 1\n  ",
}


@pytest.mark.parametrize("text", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_what_node_exporter_accepts_is_read(text: str) -> None:
    document = parse(text, SCHEMA)
    assert check_text(text, SCHEMA) == []
    assert document.blocks
    assert parse(document.render(), SCHEMA).render() == document.render()


def test_a_family_in_two_places_is_kept_whole() -> None:
    document = parse('a{x="1"} 1\nb 2\na{x="2"} 3\n', SCHEMA)
    assert document.render() == 'a{x="1"} 1\na{x="2"} 3\nb 2\n'


def test_check_lists_every_problem_with_its_line() -> None:
    text = (
        "# HELP a x\n"
        'a{x="1" 1\n'  # line 2
        "a 2\n"
        "a 2 17\n"  # line 4
        "# HELP a again\n"  # line 5
        'fraisier_rollbacks_total{provider="p",reason="r"} -1\n'  # line 6
        'other{b="2",a="1"} 1\n'
        'other{a="1",b="2"} 1\n'  # line 8
    )
    problems = [(error.line_number, error.problem) for error in check_text(text, SCHEMA)]
    assert problems == [
        (2, 'unexpected end of label value "1"'),
        (4, "sample line 'a 2 17' has a timestamp: node_exporter does not support client-side timestamps "
            "and skips the entire file; remove it"),
        (5, 'second HELP line for metric name "a"'),
        (6, 'counter fraisier_rollbacks_total{provider="p",reason="r"} is -1.0'),
        (8, 'the series other{a="1",b="2"} appears twice (first on line 7): node_exporter serves only one of them'),
    ]


def test_check_finds_buckets_that_are_not_cumulative_and_counts_that_differ() -> None:
    text = _histogram_text(list(c.ROLLBACK_DURATION.bucket_bounds)).replace('le="5.0"} 1.0', 'le="5.0"} 0.0')
    series = 'fraisier_rollback_duration_seconds{provider="p"}'
    assert [error.problem for error in check_text(text, SCHEMA)] == [f"the buckets of {series} are not cumulative"]
    text = text.replace('_count{provider="p"} 1.0', '_count{provider="p"} 2.0')
    assert f"the +Inf bucket of {series} is 1.0 but its count is 2.0" in [e.problem for e in check_text(text, SCHEMA)]


def test_empty_and_comment_only_files_parse_and_keep_their_comments() -> None:
    assert parse("", SCHEMA).blocks == {}
    document = parse("# just a comment\n\n", SCHEMA)
    assert document.blocks == {}
    assert document.render() == "# just a comment\n\n"


def test_comments_in_our_families_are_kept_before_their_header() -> None:
    text = f"# written by hand\n# TYPE fraisier_rollbacks_total counter\n{ROLLBACK} 1.0\n# a note\n"
    rendered = parse(text, SCHEMA).render()
    assert without_layout(rendered) == (
        f"# written by hand\n# a note\n# HELP fraisier_rollbacks_total {c.ROLLBACKS.help}\n"
        f"# TYPE fraisier_rollbacks_total counter\n{ROLLBACK} 1.0\n"
    )
    assert parse(rendered, SCHEMA).render() == rendered


def test_a_comment_in_a_family_of_ours_without_samples_stays_with_it() -> None:
    # Found by the differential test: written after TYPE, the comment moved to the next family on re-read.
    text = (
        "# HELP fraisier_rollbacks_total x\n# a comment\n# TYPE fraisier_rollbacks_total counter\n"
        "# TYPE fraisier_deployment_lock_wait_seconds gauge\n"
    )
    document = parse(text, SCHEMA)
    again = parse(document.render(), SCHEMA)
    assert again.blocks["fraisier_rollbacks_total"].comments == ["# a comment"]
    assert again.blocks["fraisier_deployment_lock_wait_seconds"].comments == []


def test_meta_comments_are_read_wherever_they_are_and_written_on_top_sorted() -> None:
    text = f"# fraisier_textfile retired-markers: m2 m1\n{ROLLBACK} 1.0\nother 1\n"
    text += "# fraisier_textfile a-key: some value\n"
    document = parse(text, SCHEMA)
    assert document.meta == {"retired-markers": "m2 m1", "a-key": "some value"}
    assert RETIRED_MARKERS.get(document) == {"m1", "m2"}
    RETIRED_MARKERS.add(document, ["m3"])
    document.meta["lifecycle"] = "x"
    rendered = without_layout(document.render())
    assert rendered.startswith(
        "# fraisier_textfile a-key: some value\n# fraisier_textfile lifecycle: x\n"
        "# fraisier_textfile retired-markers: m1 m2 m3\n# HELP fraisier_rollbacks_total"
    )
    assert rendered.endswith("other 1\n")
    RETIRED_MARKERS.put(document, frozenset())
    assert "retired-markers" not in document.render()


def test_our_writes_are_unchanged_by_the_lazy_reading() -> None:
    text = _histogram_text(list(c.ROLLBACK_DURATION.bucket_bounds))
    canonical = parse(text, SCHEMA).render()
    assert parse(canonical, SCHEMA).render() == canonical
    assert without_layout(canonical).startswith(f"# HELP {c.ROLLBACK_DURATION.name} {c.ROLLBACK_DURATION.help}\n# TYPE")


def test_the_line_of_a_problem_after_lines_read_fast_is_right() -> None:
    ours = "".join(f'fraisier_rollbacks_total{{provider="p{n}",reason="r"}} 1.0\n' for n in range(50))
    text = f"# TYPE fraisier_rollbacks_total counter\n{ours}\nother 1\n{ours.replace('p', 'q')}other 2 3 4\n"
    with pytest.raises(ParseError) as raised:
        parse(text, SCHEMA)
    assert raised.value.line_number == 104
    assert [error.line_number for error in check_text(text, SCHEMA)] == [104]
