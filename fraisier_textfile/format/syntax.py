"""The lexical layer of the Prometheus text format (0.0.4), as Go's parser reads it and as this package writes it.

Names, label values and their escapes, Go's float syntax and ours, series keys, and the readers of one sample
line and one comment line, in the words of Go's parser (``expfmt.TextParser``: node_exporter, promtool) where
it has them. Patterns are compiled on first use: a command that never reads a line compiles none."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from fraisier_textfile.format.schema import Family, Kind, format_float

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
META_PREFIX = "# fraisier_textfile "
TYPES = ("counter", "gauge", "histogram", "summary", "untyped", "gauge_histogram")
TIMESTAMP_PROBLEM = (
    "has a timestamp: node_exporter does not support client-side timestamps and skips the entire file; remove it"
)

# Patterns as strings, compiled on first use: compiling them at import would cost every `fraisier record` run
# milliseconds for parsing it rarely does.
_METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
_LABEL_VALUE = r'"[^"\\\n]*+(?:\\[\\"n][^"\\\n]*+)*+"'
_PAIR = rf"(?!__name__[ \t]*=){_LABEL_NAME}[ \t]*=[ \t]*{_LABEL_VALUE}[ \t]*"
# Go's strconv.ParseFloat without hex floats and underscores (the parser refuses p, P and _), ASCII digits only.
_GO_FLOAT = (
    r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?)"
    r"|[nN][aA][nN]"
)
# The same, bounded so that it cannot overflow to infinity (Go refuses 1e400; Python reads it as inf): a longer
# number goes the slow way, which checks.
_BOUNDED_FLOAT = (
    r"[+-]?(?:(?:[0-9]{1,200}(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,2})?|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?)"
    r"|[nN][aA][nN]"
)
# What format_float writes (repr of a float, or a special), exponent small enough to be finite.
_CANONICAL_FLOAT = r"(?:-?[0-9]+\.[0-9]+|-?[0-9](?:\.[0-9]+)?e(?:\+|-)(?:[0-2]?[0-9]{1,2}|30[0-7])|[+-]Inf|NaN)"
_FAST_SAMPLE = (
    rf"[ \t]*({_METRIC_NAME})(?:[ \t]*(\{{[ \t]*(?:{_PAIR},[ \t]*)*(?:{_PAIR})?\}})[ \t]*|[ \t]+)(?:{_BOUNDED_FLOAT})"
)
# In a run of histogram lines (each ends in "} value\n"), a value not as we write it. A label value holding "} "
# is found too: that only sends the line the slow way.
_UNCANONICAL_VALUE = rf"\}} (?!{_CANONICAL_FLOAT}\n)"
_LABEL_NAMES_IN_SET = rf'[{{,][ \t]*({_LABEL_NAME})[ \t]*=[ \t]*"(?:[^"\\\n]|\\.)*"'
_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
_compiled: dict[str, re.Pattern[str]] = {}


def _has_blank(text: str) -> bool:
    """Whether ``text`` holds a character that ``\\s`` matches (no pattern: compiling one cost a fresh merge)."""
    # str.split() splits on exactly the characters str.isspace() names: one call, not a loop over the text.
    return text.split() != [text] if text else False


def _re(pattern: str) -> re.Pattern[str]:
    compiled = _compiled.get(pattern)
    if compiled is None:
        compiled = _compiled[pattern] = re.compile(pattern)
    return compiled


class ParseError(ValueError):
    """A line that is not valid text format. The store turns it into CorruptTextfileError with the path."""

    def __init__(self, problem: str, line_number: int | None = None) -> None:
        self.problem = problem
        self.line_number = line_number
        super().__init__(problem if line_number is None else f"line {line_number}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (ParseError, (self.problem, self.line_number))


def escape_label_value(value: str) -> str:
    if "\\" not in value and '"' not in value and "\n" not in value:
        return value
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")




def label_text(labels: Iterable[str], values: Iterable[str]) -> str:
    """``a="x",b="y"``: labels in the order given, values escaped."""
    if not isinstance(values, (tuple, list)):
        values = tuple(values)
    joined = "".join(values)
    if "\\" in joined or '"' in joined or "\n" in joined:
        values = [escape_label_value(value) for value in values]
    # map() over the pairs: no Python call a label (a merge builds a key for every series it touches).
    return ",".join(map(_LABEL_PAIR.format, labels, values))


_LABEL_PAIR = '{}="{}"'


def series_key(name: str, labels: Iterable[str], values: Iterable[str]) -> str:
    """``name{a="x",b="y"}``: the text a sample line starts with, labels in the order given."""
    pairs = label_text(labels, values)
    return f"{name}{{{pairs}}}" if pairs else name


def parse_series_key(key: str) -> tuple[str, dict[str, str]]:
    """The metric name and the labels of a series key (``name{a="x"}``), read as Go reads them."""
    name, pairs, _ = _read_sample(key + " 0")
    labels: dict[str, str] = {}
    for label, value in pairs:
        if label in labels:  # only le in a histogram gets here: Go keeps the last one
            raise ParseError(f"duplicate label names for metric {_go_quote(name)}")
        labels[label] = value
    return name, labels


def go_float(text: str) -> float | None:
    """``text`` as Go's parser reads a sample value or an ``le``, None where it refuses it (``1_000``, ``0x1p3``,
    ``+nan``, digits of other scripts, ``1e400``)."""
    if not _re(_GO_FLOAT).fullmatch(text):
        return None
    value = float(text)
    if math.isinf(value) and text.lstrip("+-")[:1] not in ("i", "I"):
        return None  # out of range: Go refuses it where Python reads infinity
    return value


def canonical_float(text: str) -> str:
    """An ``le`` or a value as we write it: ``1``, ``1e0`` and ``1.0`` are all ``1.0``."""
    value = go_float(text)
    if value is None:
        raise ParseError(f"expected float as value, got {_go_quote(text)}")
    return format_float(value)


def _go_quote(text: str) -> str:
    """``text`` as Go's ``%q`` prints a string, so that our messages are promtool's."""
    out = ['"']
    for character in text:
        if character in '"\\':
            out.append("\\" + character)
        elif character in _GO_ESCAPES:
            out.append(_GO_ESCAPES[character])
        elif character.isprintable():
            out.append(character)
        elif ord(character) < 0x80:
            out.append(f"\\x{ord(character):02x}")
        elif ord(character) < 0x10000:
            out.append(f"\\u{ord(character):04x}")
        else:
            out.append(f"\\U{ord(character):08x}")
    return "".join(out) + '"'


def _go_char(character: str) -> str:
    """A byte as Go's ``%q`` prints it: ``'}'``, ``'\\n'``. Go reads bytes: a character beyond ASCII shows as
    its first UTF-8 byte."""
    if ord(character) >= 0x80:
        character = chr(character.encode("utf-8")[0])
    if character == "'":
        return "'\\''"
    if character in _GO_ESCAPES:
        return f"'{_GO_ESCAPES[character]}'"
    if not character.isprintable():
        return f"'\\x{ord(character):02x}'"
    return f"'{character}'"


# Reading one line the way Go's parser does, for its exact words


def _skip_blanks(line: str, position: int) -> int:
    while position < len(line) and line[position] in " \t":
        position += 1
    return position


def _at(line: str, position: int) -> str:
    return line[position] if position < len(line) else "\n"


def _read_sample(line: str, family_name: str = "", go_type: str = "untyped") -> tuple[str, list[tuple[str, str]], str]:
    """``(name, [(label, value)...], value text)`` of one sample line (without its newline), checked as Go's
    parser checks it. ``family_name`` and ``go_type`` are those of the family the line belongs to (they decide
    whether ``le`` or ``quantile`` must be a number, and Go names the family in its messages)."""
    position = _skip_blanks(line, 0)
    match = _re(_METRIC_NAME).match(line, position)
    if match is None:
        if line.startswith("\ufeff"):  # invisible in an editor: say what it is
            raise ParseError(
                "invalid metric name: the file starts with a byte-order mark (U+FEFF), which node_exporter refuses "
                "too; save it as UTF-8 without a BOM"
            )
        raise ParseError("invalid metric name")
    name = match.group()
    family_name = family_name or name
    position = _skip_blanks(line, match.end())
    pairs: list[tuple[str, str]] = []
    if _at(line, position) == "{":
        position += 1
        seen: set[str] = set()
        while True:
            position = _skip_blanks(line, position)
            if _at(line, position) == "}":
                position += 1
                break
            match = _re(_LABEL_NAME).match(line, position)
            if match is None:
                raise ParseError(f"invalid label name for metric {_go_quote(family_name)}")
            label = match.group()
            position = _skip_blanks(line, match.end())
            if _at(line, position) != "=":
                raise ParseError(f"expected '=' after label name, found {_go_char(_at(line, position))}")
            position += 1
            if label == "__name__":
                raise ParseError('label name "__name__" is reserved')
            special = (go_type == "histogram" and label == "le") or (go_type == "summary" and label == "quantile")
            if not special:
                if label in seen:
                    raise ParseError(f"duplicate label names for metric {_go_quote(family_name)}")
                seen.add(label)
            position = _skip_blanks(line, position)
            if _at(line, position) != '"':
                raise ParseError(f"expected '\"' at start of label value, found {_go_char(_at(line, position))}")
            position, value = _read_label_value(line, position + 1)
            if special and go_float(value) is None:
                raise ParseError(f"expected float as value for '{label}' label, got {_go_quote(value)}")
            pairs.append((label, value))
            position = _skip_blanks(line, position)
            separator = _at(line, position)
            position += 1
            if separator == "}":
                break
            if separator != ",":
                raise ParseError(f"unexpected end of label value {_go_quote(value)}")
        position = _skip_blanks(line, position)
    end = position
    while end < len(line) and line[end] not in " \t":
        end += 1
    value_text = line[position:end]
    if go_float(value_text) is None:
        raise ParseError(f"expected float as value, got {_go_quote(value_text)}")
    if end < len(line):
        start = _skip_blanks(line, end)
        stop = start
        while stop < len(line) and line[stop] not in " \t":
            stop += 1
        timestamp = line[start:stop]
        if not _re(r"[+-]?[0-9]+").fullmatch(timestamp) or not -(2**63) <= int(timestamp) < 2**63:
            raise ParseError(f"expected integer as timestamp, got {_go_quote(timestamp)}")
        if line[stop:]:
            raise ParseError(f"spurious string after timestamp: {_go_quote(line[stop:])}")
        raise ParseError(f"sample line {line[:60]!r} {TIMESTAMP_PROBLEM}")
    return name, pairs, value_text


def _read_label_value(line: str, position: int) -> tuple[int, str]:
    token: list[str] = []
    while True:
        if position >= len(line):
            raise ParseError(f"label value {_go_quote(''.join(token))} contains unescaped new-line")
        character = line[position]
        position += 1
        if character == '"':
            return position, "".join(token)
        if character == "\\":
            escaped = _at(line, position)
            position += 1
            if escaped not in ('"', "\\", "n"):
                raise ParseError(_bad_escape(escaped))
            token.append("\n" if escaped == "n" else escaped)
        else:
            token.append(character)


def _read_comment(line: str) -> tuple[str, str, str | None] | None:
    """A HELP or TYPE line as ``(keyword, metric name, rest)``, ``rest`` None if the line names the metric and
    ends there; None for any other comment (Go ignores those). The line starts with ``#`` after blanks."""
    position = _skip_blanks(line, line.index("#") + 1)
    end = position
    while end < len(line) and line[end] not in " \t":
        end += 1
    if end == len(line) or line[position:end] not in ("HELP", "TYPE"):
        return None
    keyword = line[position:end]
    position = _skip_blanks(line, end)
    match = _re(_METRIC_NAME).match(line, position)
    name = match.group() if match else ""
    position = match.end() if match else position
    if position == len(line):
        return None if not name else (keyword, name, None)
    if line[position] not in " \t":
        raise ParseError("invalid metric name in comment")
    return keyword, name, line[_skip_blanks(line, position) :]


def _bad_escape(escaped: str) -> str:
    if escaped == "\n":  # Go prints the newline itself; we keep every message on one line
        return "invalid escape sequence '\\' (a backslash ends the line)"
    return f"invalid escape sequence '\\{escaped}'"


def _read_help(text: str) -> str:
    out = []
    position = 0
    while position < len(text):
        character = text[position]
        if character == "\\":
            escaped = _at(text, position + 1)
            if escaped not in ("\\", "n"):
                raise ParseError(_bad_escape(escaped))
            out.append("\n" if escaped == "n" else "\\")
            position += 2
        else:
            out.append(character)
            position += 1
    return "".join(out)


# Canonical series keys of the families we own


def canonical_key(family: Family, name: str, pairs: Iterable[tuple[str, str]]) -> str:
    """The series key we write for a sample of ``family``: the catalogue's labels in its order, any other label
    after them sorted, ``le`` last in our float format."""
    labels = dict(pairs)
    le = labels.pop("le", None) if family.kind is Kind.HISTOGRAM and name.endswith("_bucket") else None
    order = [label for label in family.labels if label in labels]
    order += sorted(set(labels) - set(family.labels))
    values = [labels[label] for label in order]
    if le is not None:
        order.append("le")
        values.append(canonical_float(le))
    return series_key(name, order, values)


def _canonical_run(family: Family) -> re.Pattern[str]:
    """Lines exactly as we write them for ``family``, one after another: for a histogram, whole series (every
    bucket of the catalogue in order, then _sum and _count, one label set), so that a block read this way
    needs no bucket check. A histogram's values are only delimited here: :data:`_UNCANONICAL_VALUE` checks
    them, in one pass over the run (spelling the float out for each of its lines made the pattern many times
    longer, and compiling it a visible part of a fresh process's merge)."""
    labels = ",".join(f"{label}={_LABEL_VALUE}" for label in family.labels)
    name = re.escape(family.name)
    value = rf" {_CANONICAL_FLOAT}\n"
    if family.kind is Kind.HISTOGRAM:
        if not labels:
            return _re(r"(?!)")  # none of ours; such a family is read the slow way
        value = r" [^ \n]++\n"
        bounds = [re.escape(bound) for bound in family.bucket_bounds]
        series = rf'{name}_bucket\{{({labels}),le="{bounds[0]}"\}}{value}'
        series += "".join(rf'{name}_bucket\{{\1,le="{bound}"\}}{value}' for bound in bounds[1:])
        series += rf"{name}_sum\{{\1\}}{value}{name}_count\{{\1\}}{value}"
        return _re(rf"(?:{series})*+")
    braces = rf"\{{{labels}\}}" if labels else ""
    return _re(rf"(?:{name}{braces}{value})*+")
