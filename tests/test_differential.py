"""Our reading agrees with prometheus_client's parser, an independent reader, on generated valid expositions:
any label order, blanks and tabs, trailing commas, escapes, comments and blank lines, HELP and TYPE in their
forms, ``le`` spelled ``1``, ``1.0`` or ``1e0`` and anywhere in the label set."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from fraisier_textfile import catalogue as c
from fraisier_textfile.catalogue import SCHEMA
from fraisier_textfile.format.model import Document
from fraisier_textfile.format.reader import parse
from fraisier_textfile.format.schema import format_float
from fraisier_textfile.format.syntax import canonical_key, parse_series_key

LABEL_VALUES = st.text(alphabet='ab "\\\n{},=é日 \t', min_size=0, max_size=6)
BLANKS = st.sampled_from(["", "", " ", "  ", "\t"])

Sample = tuple[str, frozenset[tuple[str, str]], str]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(draw: st.DrawFn, value: float) -> str:
    """A spelling Go accepts for ``value``."""
    value = float(value)
    if math.isinf(value):
        return draw(st.sampled_from(["+Inf", "+inf", "Inf", "+Infinity"]))
    if value.is_integer():
        whole = int(value)
        return draw(st.sampled_from([str(whole), f"{whole}.0", f"{whole}e0", f"{whole}.", f"+{whole}"]))
    return draw(st.sampled_from([repr(value), f"{value:e}"]))


@st.composite
def sample_line(draw: st.DrawFn, name: str, labels: list[tuple[str, str]], value: str) -> str:
    order = draw(st.permutations(labels))
    if not order and draw(st.booleans()):
        return f"{draw(BLANKS)}{name} {draw(BLANKS)}{value}"
    pairs = []
    for label, label_value in order:
        pairs.append(f'{draw(BLANKS)}{label}{draw(BLANKS)}={draw(BLANKS)}"{_escape(label_value)}"{draw(BLANKS)}')
    # hypothesis types a composite's draw by its first use: a second strategy type needs the ignore.
    wants_comma: bool = draw(st.booleans())  # type: ignore[arg-type,unused-ignore]
    trailing = "," if pairs and wants_comma else ""
    return f"{draw(BLANKS)}{name}{draw(BLANKS)}{{{','.join(pairs)}{trailing}{draw(BLANKS)}}}{draw(BLANKS)} {value}"


@st.composite
def family_text(draw: st.DrawFn, name: str, kind: str, labels: tuple[str, ...], bounds: tuple[float, ...]) -> str:
    lines = []
    help_line = f"# HELP {name} " + draw(st.sampled_from(["Some help.", "back\\\\slash\\nnew line", "çà"]))
    type_line = f"# TYPE {name} {kind}"
    header = draw(st.sampled_from([[help_line, type_line], [type_line, help_line], [type_line]]))
    if kind in ("gauge", "untyped") and draw(st.booleans()):
        header = [help_line] if draw(st.booleans()) else []
    lines += header
    for number in range(draw(st.integers(0, 3))):
        values = [(label, f"v{number}" if n == 0 else draw(LABEL_VALUES)) for n, label in enumerate(labels)]
        if kind == "histogram":
            counts = sorted(draw(st.lists(st.integers(0, 50), min_size=len(bounds), max_size=len(bounds))))
            for bound, count in zip((*bounds, math.inf), (*counts, counts[-1] if counts else 0)):
                le = _number(draw, bound)
                lines.append(draw(sample_line(f"{name}_bucket", [*values, ("le", le)], _number(draw, count))))
            lines.append(draw(sample_line(f"{name}_sum", values, _number(draw, float(draw(st.integers(0, 999)))))))
            lines.append(draw(sample_line(f"{name}_count", values, _number(draw, counts[-1] if counts else 0))))
        else:
            value = float(draw(st.integers(0, 10**6)))
            if kind == "gauge":
                value = draw(st.sampled_from([value, -value, 0.25, math.inf, -math.inf, math.nan]))
            spelled = "NaN" if math.isnan(value) else "-Inf" if value == -math.inf else _number(draw, value)
            if value < 0 and not math.isinf(value):
                spelled = repr(value)
            lines.append(draw(sample_line(name, values, spelled)))
    return "\n".join(lines)


FAMILIES = {
    "ours counter": (c.ROLLBACKS.name, "counter", c.ROLLBACKS.labels, ()),
    "ours gauge": (c.LOCK_WAIT.name, "gauge", c.LOCK_WAIT.labels, ()),
    "ours histogram": (c.ROLLBACK_DURATION.name, "histogram", c.ROLLBACK_DURATION.labels, c.ROLLBACK_DURATION.buckets),
    "other counter": ("job_runs_total", "counter", ("job", "zone"), ()),
    "other gauge": ("queue_depth", "gauge", ("queue",), ()),
    "other untyped": ("mystery", "untyped", (), ()),
    "other histogram": ("request_seconds", "histogram", ("path",), (0.5, 2.0)),
}


@st.composite
def exposition(draw: st.DrawFn) -> str:
    chosen = draw(st.lists(st.sampled_from(sorted(FAMILIES)), min_size=1, max_size=4, unique=True))
    lines: list[str] = []
    for key in chosen:
        lines += draw(family_text(*FAMILIES[key])).split("\n")
    out = []
    for line in lines:
        if draw(st.integers(0, 9)) == 0:
            out.append(draw(st.sampled_from(["", "# a comment", "#", "  # indented comment", "\t"])))
        out.append(line)
    return "\n".join(line for line in out) + "\n"


def _normal(name: str, labels: dict[str, str], value: float) -> Sample:
    if "le" in labels:
        labels = {**labels, "le": format_float(float(labels["le"]))}
    return name, frozenset(labels.items()), repr(float(value))


def ours(document: Document) -> list[Sample]:
    samples = []
    for block in document.blocks.values():
        for key, value in block.samples():
            name, labels = parse_series_key(key)
            samples.append(_normal(name, labels, value))
    return sorted(samples)


def theirs(text: str) -> list[Sample]:
    samples = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if family.type == "counter" and name == family.name + "_total" and not text.count(name):
                name = family.name  # prometheus_client names the counter foo foo_total
            samples.append(_normal(name, dict(sample.labels), sample.value))
    return sorted(samples)


EXAMPLES = settings(
    max_examples=100, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@EXAMPLES
@given(exposition())
def test_we_read_the_samples_prometheus_client_reads(text: str) -> None:
    assert ours(parse(text, SCHEMA)) == theirs(text)


@EXAMPLES
@given(exposition())
def test_a_rendered_document_reads_the_same_and_ours_come_out_canonical(text: str) -> None:
    document = parse(text, SCHEMA)
    rendered = document.render()
    again = parse(rendered, SCHEMA)
    assert ours(again) == ours(document)
    assert again.render() == rendered
    for block in again.blocks.values():
        if block.owned is None:
            continue
        assert block.help == block.owned.help and block.type == block.owned.kind.value
        for line in block.lines:
            key, _, value = line.rpartition(" ")
            name, labels = parse_series_key(key)
            assert canonical_key(block.owned, name, labels.items()) == key
            assert format_float(float(value)) == value
