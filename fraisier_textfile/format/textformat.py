"""The Prometheus text format (0.0.4), as node_exporter's textfile collector reads it and as this package writes it.

Reading follows Go's parser (``expfmt.TextParser``, node_exporter 1.5 and promtool), and a file it refuses is
refused with its words: any label order, blanks and tabs between tokens, a trailing comma, the escapes ``\\\\``
``\\"`` ``\\n`` in label values and ``\\\\`` ``\\n`` in HELP, HELP and TYPE in either order, families split in
two places, and no timestamps (node_exporter drops a file that has one).

A document is a list of family blocks. A family we do not own is kept as the exact text it came in (its
comments and the comments just before it included). A family we own is ours to rewrite: its HELP and TYPE are
the catalogue's, its series keys canonical (catalogue label order, ``le`` last in our float format), its stray
comments kept just before its HELP and TYPE lines. Reading is lazy: a block of our own canonical format is one
string, found by a C-speed pattern over the file; a merge finds the few series it changes in that string and
splices the new lines in when rendering, so the bytes it does not change are copied, never parsed.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from typing import Any

from fraisier_textfile.catalogue import FAMILIES, FAMILIES_BY_NAME, Family, Kind, format_float
from fraisier_textfile.format import layout
from fraisier_textfile.format.layout import Segment, crc_of, segments_of

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
META_PREFIX = "# fraisier_textfile "
RETIRED_MARKERS_KEY = "retired-markers"
RETIRED_MARKERS_COMMENT = f"{META_PREFIX}{RETIRED_MARKERS_KEY}:"
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
_UNESCAPE = r"\\(.)"
_UNESCAPED = {"n": "\n", "\\": "\\", '"': '"'}
_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
_compiled: dict[str, re.Pattern[str]] = {}


def _has_blank(text: str) -> bool:
    """Whether ``text`` holds a character that ``\\s`` matches (no pattern: compiling one cost a fresh merge)."""
    return any(character.isspace() for character in text)


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


def unescape_label_value(text: str) -> str:
    return _re(_UNESCAPE).sub(lambda m: _UNESCAPED.get(m.group(1), "\\" + m.group(1)), text)


def label_text(labels: Iterable[str], values: Iterable[str]) -> str:
    """``a="x",b="y"``: labels in the order given, values escaped."""
    return ",".join(f'{label}="{escape_label_value(value)}"' for label, value in zip(labels, values))


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
    them, in one pass over the run (spelling the float out for each of its 14 lines made compiling the
    pattern cost a fresh process 4 ms per histogram family)."""
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


class Block:
    """One metric family: its header and its samples.

    A block of ours read from a file in our own format holds its sample lines as a span of the file's bytes
    and finds a series in it only when asked; changed and new lines are kept apart and spliced in by
    :meth:`parts`, which hands the unchanged spans to the writer without copying them. Any other access to its
    lines (``lines``, ``samples()``, ``index()``) turns it into a list of lines, once. A family we do not own
    keeps its exact text in ``raw``."""

    def __init__(
        self, name: str, help: str | None = None, type: str | None = None, owned: Family | None = None
    ) -> None:
        self.name = name
        self.help = help
        self.type = type
        self.owned = owned
        self.raw: str | None = None  # the exact text of a family we do not own, written back unchanged
        self.comments: list[str] = []  # stray comment lines of a family of ours, kept before its header
        self._lines: list[str] | None = []
        self._index: dict[str, int] | None = None
        self._rendered: bytes | None = None  # the lines' bytes
        self._rendered_segments: tuple[list[Segment] | None] | None = None  # theirs, once asked for (see written)
        self._raw_written: tuple[str, bytes] | None = None
        # The body as read: our canonical sample lines, each ending in a newline, in data[start:end].
        self._data: bytes | None = None
        self._start = 0
        self._end = 0
        self._segments: list[Segment] | None = None  # of data[start:end] (see layout.py); None: not known yet
        self._starts: list[int] = []  # where each of those segments starts in data
        self._edits: dict[str, str] = {}  # key -> line replacing its line in the body ("" removes it)
        self._added: dict[str, str] = {}  # key -> line of a series not in the body
        self._positions: dict[str, int] = {}  # where a key's line starts in data, -1 if it is not there
        self._edited_segments: dict[int, Segment] = {}  # segment number -> its checksum as edited
        self._added_written: tuple[bytes, list[Segment]] | None = None
        self._hint = 0
        self._line_count: int | None = None  # of the body as read

    def set_body(self, data: bytes, start: int, end: int, segments: list[Segment] | None = None) -> None:
        """Make ``data[start:end]`` (sample lines of ours as we write them) the block's body; ``segments``: its
        checksums, if known (see layout.py)."""
        self._lines = None
        self._index = None
        self._rendered = self._rendered_segments = None
        self._data, self._start, self._end = data, start, end
        self._segments = segments
        self._starts = []
        self._edits, self._added, self._positions, self._edited_segments = {}, {}, {}, {}
        self._added_written = None
        self._hint = start
        self._line_count = None

    # Lines, materialised on demand

    @property
    def lines(self) -> list[str]:
        """The sample lines, ``key value``, in file order (for a family we do not own: as they are written)."""
        if self.raw is not None:
            return [
                line.lstrip(" \t")
                for line in self.raw.split("\n")
                if line.strip(" \t") and not line.lstrip(" \t").startswith("#")
            ]
        if self._lines is None:
            self._materialise()
        assert self._lines is not None
        return self._lines

    @lines.setter
    def lines(self, lines: list[str]) -> None:
        self._lines = lines
        self._data = None
        self._segments = None
        self._edits, self._added, self._positions, self._edited_segments = {}, {}, {}, {}
        self._added_written = None
        self._index = None
        self._rendered = self._rendered_segments = None

    def _materialise(self) -> None:
        data = self._data
        lines = data[self._start : self._end].decode("utf-8").split("\n") if data is not None else [""]
        lines.pop()
        if self._edits:
            kept = []
            for line in lines:
                edited = self._edits.get(line[: line.rindex(" ")])
                if edited is None:
                    kept.append(line)
                elif edited:
                    kept.append(edited)
            lines = kept
        lines.extend(line for line in self._added.values() if line)
        self.lines = lines

    def head(self, count: int) -> list[str]:
        """The first ``count`` sample lines (fewer if the block has fewer), without splitting the whole block
        when it is read lazily and unchanged."""
        data = self._data
        if data is None or self._edits or self._added:
            return self.lines[:count]
        end = self._start
        for _ in range(count):
            newline = data.find(b"\n", end, self._end)
            if newline < 0:
                break
            end = newline + 1
        return data[self._start : end].decode("utf-8").split("\n")[:-1]

    def index(self) -> dict[str, int]:
        """Series key -> position in :attr:`lines`."""
        lines = self.lines
        if self._index is None:
            self._index = {line[: line.rindex(" ")]: number for number, line in enumerate(lines)}
        return self._index

    def line_count(self) -> int:
        """How many samples, without materialising the lines."""
        data = self._data
        if data is not None:
            # The body never changes once read (edits are kept apart): counted once, not at every merge.
            if self._line_count is None:
                self._line_count = data.count(b"\n", self._start, self._end)
            removed = sum(1 for line in self._edits.values() if not line)
            return self._line_count - removed + sum(1 for line in self._added.values() if line)
        return len(self.lines)

    def body_size(self) -> int | None:
        """The bytes of the sample lines, without materialising them; None for a block held as lines."""
        if self._data is None:
            return None
        size = self._end - self._start
        if self._edits or self._added:
            size += sum(len(line) + 1 for line in self._added.values() if line)
            size += sum(len(line) for line in self._edits.values())  # a bound: the replaced lines still count
        return size

    # Series

    def _position(self, key: str) -> int:
        """Where the line of ``key`` starts in the body's data: a search from the last hit, lines of one series
        being next to each other, so the few series a merge touches are found without reading the rest."""
        position = self._positions.get(key)
        if position is not None:
            return position
        data = self._data
        assert data is not None
        start, end = self._start, self._end
        # A series new to the file: the search for its first bucket answers for all of its buckets.
        stem = key[: key.rindex('le="')] if key.endswith('"}') and 'le="' in key else None
        if stem is not None and self._positions.get(stem) == -1:
            return -1
        needle = (key + " ").encode("utf-8")
        position = _find_line(data, needle, self._hint, end, start)
        if position < 0 and self._hint > start:
            position = _find_line(data, needle, start, min(self._hint + len(needle), end), start)
        self._positions[key] = position
        if position >= 0:
            self._hint = position
        elif stem is not None and _find_line(data, stem.encode("utf-8"), start, end, start) < 0:
            self._positions[stem] = -1
        return position

    def value(self, key: str) -> float | None:
        data = self._data
        if data is None:
            if self.raw is not None:
                return dict(self.samples()).get(key)
            number = self.index().get(key)
            if number is None:
                return None
            return float(self.lines[number][len(key) + 1 :])
        line = self._added.get(key)
        if line is None:
            line = self._edits.get(key)
        if line is not None:
            return float(line[len(key) + 1 :]) if line else None
        position = self._position(key)
        if position < 0:
            return None
        value_start = position + (len(key) if key.isascii() else len(key.encode("utf-8"))) + 1
        return float(data[value_start : data.index(b"\n", value_start)])

    def set(self, key: str, value: float) -> None:
        if self.raw is not None:
            raise ValueError(f"{self.name} is not a family of ours: its text is kept as it is")
        line = f"{key} {format_float(value)}"
        if self._data is not None:
            if key in self._added or self._position(key) < 0:
                self._added[key] = line
                self._added_written = None
            else:
                self._edit(key, line)
            return
        lines = self.lines
        index = self.index()
        number = index.get(key)
        if number is None:
            index[key] = len(lines)
            lines.append(line)
        else:
            lines[number] = line
        self._rendered = self._rendered_segments = None

    def _edit(self, key: str, line: str) -> None:
        self._edits[key] = line
        if self._segments is not None:  # the checksum of the segment it falls in is computed again
            self._edited_segments.pop(bisect_right(self._segment_starts(), self._positions[key]) - 1, None)

    def remove(self, key: str) -> bool:
        """Drop the series ``key``; False if the block had no such series."""
        if self.raw is not None:
            raise ValueError(f"{self.name} is not a family of ours: its text is kept as it is")
        if self._data is not None:
            if self._added.pop(key, None) is not None:
                self._added_written = None
                return True
            if self._position(key) < 0 or self._edits.get(key) == "":
                return False
            self._edit(key, "")
            return True
        number = self.index().get(key)
        if number is None:
            return False
        lines = self.lines
        del lines[number]
        self.lines = lines
        return True

    def samples(self) -> Iterator[tuple[str, float]]:
        """``(series key, value)`` of every sample. Keys of a family we do not own are normalised (the
        labels in their order, no blanks)."""
        if self.raw is not None:
            for line in self.lines:
                name, pairs, value = _read_sample(line)
                yield series_key(name, [p[0] for p in pairs], [p[1] for p in pairs]), float(value)
            return
        for line in self.lines:
            key, _, value = line.rpartition(" ")
            yield key, float(value)

    # Rendering

    def _header(self) -> str:
        # Stray comments go before HELP: a comment is read as belonging to the family whose first line follows
        # it, so written after TYPE in a family without samples it would move to the next family on re-read.
        header = "".join(comment + "\n" for comment in self.comments)
        if self.help is not None:
            header += f"# HELP {self.name} {self.help}\n"
        if self.type is not None:
            header += f"# TYPE {self.name} {self.type}\n"
        return header

    def _segment_starts(self) -> list[int]:
        if not self._starts and self._segments:
            position = self._start
            for length, _ in self._segments:
                self._starts.append(position)
                position += length
        return self._starts

    def written(self, checksums: bool = True) -> tuple[bytes, list[bytes | memoryview], list[Segment] | None]:
        """What a writer writes of the block: its header, its body in pieces (unchanged spans of the file
        read are not copied), and the body's segments for the layout line (None: the block cannot be vouched
        for, so the file gets no layout line and its next reader checks every line). ``checksums=False``, for
        a reader that only serves the text (:meth:`parts`): no segment is checksummed, and None is returned
        for them."""
        if self.raw is not None:
            if self._raw_written is None or self._raw_written[0] is not self.raw:
                self._raw_written = (self.raw, self.raw.encode("utf-8"))
            raw = self._raw_written[1]
            return b"", [raw], ([crc_of([raw])] if raw else []) if checksums else None
        header = self._header().encode("utf-8")
        data = self._data
        if data is None:
            if self._rendered is None:
                lines = self.lines
                self._rendered = ("\n".join(lines) + "\n").encode("utf-8") if lines else b""
            if not checksums:
                return header, [self._rendered], None
            if self._rendered_segments is None:
                self._rendered_segments = (segments_of(self._rendered) if self._vouchable() else None,)
            return header, [self._rendered], self._rendered_segments[0]
        view = memoryview(data)
        if checksums and self._segments is None:
            self._segments = segments_of(data, self._start, self._end)
        # Without checksums, an unknown cut is one span: the pieces are the same, only no segment is summed.
        spans = self._segments if self._segments is not None else [(self._end - self._start, 0)]
        pieces: list[bytes | memoryview] = []
        segments: list[Segment] = []
        edits = sorted((self._positions[key], key) for key in self._edits)
        unchanged_from = self._start  # the start of the run of unchanged segments not yet added to pieces
        position = self._start
        next_edit = 0
        for number, (length, crc) in enumerate(spans):
            end = position + length
            if next_edit == len(edits) or edits[next_edit][0] >= end:
                segments.append((length, crc))
                position = end
                continue
            if unchanged_from < position:
                pieces.append(view[unchanged_from:position])
            edited: list[bytes | memoryview] = []
            cursor = position
            while next_edit < len(edits) and edits[next_edit][0] < end:
                at, key = edits[next_edit]
                edited.append(view[cursor:at])
                line = self._edits[key]
                if line:
                    edited.append(f"{line}\n".encode())
                cursor = data.index(b"\n", at) + 1
                next_edit += 1
            edited.append(view[cursor:end])
            if checksums:
                segment = self._edited_segments.get(number)
                if segment is None:
                    segment = self._edited_segments[number] = crc_of(edited)
                if segment[0]:
                    segments.append(segment)
            pieces.extend(edited)
            position = unchanged_from = end
        if unchanged_from < position:
            pieces.append(view[unchanged_from:position])
        if self._added:
            if self._added_written is None:
                added = "".join(f"{line}\n" for line in self._added.values() if line).encode("utf-8")
                self._added_written = (added, segments_of(added))
            pieces.append(self._added_written[0])
            segments.extend(self._added_written[1])
        if not checksums or not self._of_the_catalogue():
            return header, pieces, None
        return header, pieces, segments

    def _vouchable(self) -> bool:
        """A body built line by line can be vouched for unless it is a histogram without whole series of the
        catalogue's buckets (a reader that trusts the layout takes a histogram's runs as whole series)."""
        if not self._of_the_catalogue():
            return False
        if self.owned is None or self.owned.kind is not Kind.HISTOGRAM:
            return True
        try:
            check_buckets(self, self.owned)
        except ParseError:
            return False
        return True

    def _of_the_catalogue(self) -> bool:
        """Not a family given other bounds than the catalogue's (lifecycle.migrate_histograms), which a reader
        trusting the layout line would take with the catalogue's."""
        return self.owned is FAMILIES_BY_NAME.get(self.name)

    def parts(self) -> list[bytes | memoryview]:
        """The block's text in pieces whose concatenation is :meth:`render`, encoded: unchanged text is not
        copied, and no checksum is computed (the server serves blocks this way)."""
        header, pieces, _ = self.written(checksums=False)
        return [header, *pieces] if header else pieces

    def render(self) -> str:
        return b"".join(self.parts()).decode("utf-8")


def _find_line(data: bytes, needle: bytes, start: int, end: int, body_start: int) -> int:
    """The first line of ``data`` (whose lines begin at ``body_start``) starting with ``needle`` at or after
    ``start``, within ``end``; -1 if none."""
    position = data.find(needle, start, end)
    while position > body_start and data[position - 1] != 0x0A:
        position = data.find(needle, position + 1, end)
    return position


class _MetaWords(set[str]):
    """The words of one value of ``Document.meta`` (space-separated) as a set: every change is written back."""

    def __init__(self, meta: dict[str, str], key: str) -> None:
        super().__init__(meta.get(key, "").split())
        self._meta = meta
        self._key = key

    def _write_back(self) -> None:
        if self:
            self._meta[self._key] = " ".join(sorted(self))
        else:
            self._meta.pop(self._key, None)


def _writing_back(name: str) -> Any:
    method = getattr(set, name)

    def changed(self: _MetaWords, *arguments: Any) -> Any:
        result = method(self, *arguments)
        self._write_back()
        return self if name.startswith("__i") else result

    changed.__name__ = name
    return changed


for _name in (
    "add", "discard", "remove", "pop", "clear", "update", "difference_update", "intersection_update",
    "symmetric_difference_update", "__ior__", "__iand__", "__isub__", "__ixor__",
):
    setattr(_MetaWords, _name, _writing_back(_name))


class Document:
    """A parsed textfile.

    ``meta`` holds every ``# fraisier_textfile <key>: <value>`` line of the file, wherever it was; they are
    written at the top of the file, keys sorted. ``retired_markers`` is the key ``retired-markers`` seen as a
    set of marker ids."""

    def __init__(self) -> None:
        self.blocks: dict[str, Block] = {}
        self.meta: dict[str, str] = {}
        self.preamble = ""  # the comments of a file that has no family at all
        # The meta lines as read (see read_vouched): key -> (its value then, the line's bytes). A value still
        # the same object is written back from those bytes, not encoded again: the series' update times are
        # ~30 bytes a series, a fifth of a big file.
        self.meta_read: dict[str, tuple[str, memoryview]] = {}

    @property
    def retired_markers(self) -> set[str]:
        return _MetaWords(self.meta, RETIRED_MARKERS_KEY)

    @retired_markers.setter
    def retired_markers(self, markers: set[str]) -> None:
        words = _MetaWords(self.meta, RETIRED_MARKERS_KEY)
        words.clear()
        words.update(markers)

    def block(self, family: Family) -> Block:
        """The block of an owned family, created (in catalogue order) if the file had none."""
        block = self.blocks.get(family.name)
        if block is None:
            block = Block(family.name, help=family.help, type=family.kind.value, owned=family)
            self.blocks[family.name] = block
            order = {f.name: position for position, f in enumerate(FAMILIES)}
            owned_first = sorted(
                (b for b in self.blocks.values() if b.owned is not None), key=lambda b: order[b.name]
            )
            others = [b for b in self.blocks.values() if b.owned is None]
            self.blocks = {b.name: b for b in owned_first + others}
        return block

    def render(self) -> str:
        return b"".join(self.parts()).decode("utf-8")

    def parts(self) -> list[bytes | memoryview]:
        """The file's bytes in pieces whose concatenation is :meth:`render`, encoded: the spans of unchanged
        families are not copied. The meta lines come first, the layout line among them (see layout.py) when
        the file holds a family of ours and every block can be vouched for."""
        body: list[bytes | memoryview] = [self.preamble.encode("utf-8")] if self.preamble else []
        entries: list[tuple[str, Segment | None, list[Segment]]] = []
        vouched = not self.preamble and any(block.owned is not None for block in self.blocks.values())
        loose = False  # the block written last ends in lines the line-by-line reading gives to the next block
        for block in self.blocks.values():
            header, pieces, segments = block.written()
            if header:
                body.append(header)
            body.extend(pieces)
            if segments is None or (block.raw is None and not header) or loose:
                vouched = False
            elif vouched:
                entries.append((block.name, None if block.raw is not None else crc_of([header]), segments))
            loose = block.raw is not None and _ends_loose(block.raw)
        meta = {key: value for key, value in self.meta.items() if key != layout.KEY}
        if vouched:
            meta[layout.KEY] = layout.render(entries)
        lines: list[bytes | memoryview] = []
        for key in sorted(meta):
            value = meta[key]
            read = self.meta_read.get(key)
            if read is not None and read[0] is value:
                lines.append(read[1])
                continue
            if not key or ":" in key or _has_blank(key) or "\n" in value:
                raise ValueError(f"meta key {key!r} or its value {value!r} cannot be written on one comment line")
            lines.append((f"{META_PREFIX}{key}: {value}\n" if value else f"{META_PREFIX}{key}:\n").encode())
        return [*lines, *body]


def _ends_loose(raw: str) -> bool:
    """Whether the last line of a foreign family's text is a blank line or a comment that is not its HELP or
    TYPE. The reading gives such lines to the family read next, or, at the end of the file, to the one read
    last: so a family split in two places keeps them at the end of its text, and written back before another
    family, they would belong to that one when read line by line, but to this one when read from the layout
    line. Such a file is not vouched for; read line by line, it is written back with them in their place."""
    line = raw[raw.rfind("\n", 0, len(raw) - 1) + 1 :]
    if not line.strip(" \t\n"):
        return True
    if not line.lstrip(" \t").startswith("#"):
        return False
    try:
        header = _read_comment(line.rstrip("\n"))
    except ParseError:
        return True
    return header is None or header[2] is None


def read_vouched(data: bytes) -> Document | None:
    """The document of a file whose layout line vouches for every byte after the meta lines (see layout.py),
    read from its checksums and headers without looking at a sample line; None if it does not (the caller
    then reads it the slow way, :func:`parse`, which checks every line)."""
    prefix = META_PREFIX.encode("ascii")
    position = 0
    while data.startswith(prefix, position):
        position = data.find(b"\n", position) + 1
        if not position:
            return None
    view = memoryview(data)
    meta: dict[str, str] = {}
    meta_read: dict[str, tuple[str, memoryview]] = {}
    try:
        # Decoded once, and each value sliced once (a value the merge does not change is written back from
        # the bytes read: see Document.meta_read).
        text = data[:position].decode("utf-8")
        ascii_only = len(text) == position  # then a character's index is its byte's
        start = 0
        while start < len(text):
            newline = text.index("\n", start)
            colon = text.find(":", start + len(META_PREFIX), newline)
            key = text[start + len(META_PREFIX) : colon]
            if colon < 0 or not key or _has_blank(key):
                return None
            value = text[colon + (2 if text.startswith(" ", colon + 1) else 1) : newline].strip(" \t")
            meta[key] = value
            if ascii_only:
                meta_read[key] = (value, view[start : newline + 1])
            start = newline + 1
        entries = layout.parse(meta.pop(layout.KEY, ""))
        if not entries:
            return None
        document = Document()
        document.meta = meta
        document.meta_read = meta_read
        for name, header, body in entries:
            owned = FAMILIES_BY_NAME.get(name)
            if name in document.blocks or (owned is None) != (header is None):
                return None
            if header is None:
                end = layout.matches(data, position, body)
                if end < 0:
                    return None
                document.blocks[name] = _raw_block(name, data[position:end].decode("utf-8"))
                position = end
                continue
            assert owned is not None
            header_end = layout.matches(data, position, [header])
            if header_end < 0:
                return None
            comments = data[position:header_end].decode("utf-8").split("\n")
            if comments.pop() or comments[-2:] != [f"# HELP {name} {owned.help}", f"# TYPE {name} {owned.kind.value}"]:
                return None
            end = layout.matches(data, header_end, body)
            if end < 0:
                return None
            block = Block(name, help=owned.help, type=owned.kind.value, owned=owned)
            block.comments = comments[:-2]
            block.set_body(data, header_end, end, body)
            document.blocks[name] = block
            position = end
    except UnicodeDecodeError:
        return None
    return document if position == len(data) else None


def _raw_block(name: str, text: str) -> Block:
    """A block of a family we do not own, kept as ``text``, with the HELP and TYPE that text gives it."""
    block = Block(name)
    block.raw = text
    block._lines = None
    for match in _re(r"(?m)^[ \t]*#.*$").finditer(text):
        try:
            header = _read_comment(match.group())
        except ParseError:
            continue
        if header is not None and header[1] == name and header[2]:
            if header[0] == "HELP":
                block.help = header[2]
            else:
                block.type = header[2].lower()
    return block


# Parsing a whole file


class _GoFamily:
    """What Go's parser knows of a family while it reads: whether it had HELP, and its type."""

    __slots__ = ("help", "type")

    def __init__(self) -> None:
        self.help = False
        self.type: str | None = None


class _Scan:
    """One reading of a file. ``problems`` None: stop at the first problem (raise); a list: collect every
    problem, skip the line, read on (``samples`` then receives every sample, for the checks of ``check_text``)."""

    def __init__(self, text: str, problems: list[ParseError] | None) -> None:
        self.text = text
        self.problems = problems
        self.document = Document()
        self.go: dict[str, _GoFamily] = {}
        self.pieces: dict[str, list[str]] = {}  # block name -> its text pieces (raw, or canonical runs)
        self.canonical: dict[str, bool] = {}  # block name -> all its sample lines are in our format
        self.current: Block | None = None
        self.pending: list[str] = []  # comment and blank lines not yet given to a block
        self.samples: list[tuple[int, Block, str, list[tuple[str, str]], float]] = []
        self.file_types: dict[str, tuple[str, int]] = {}  # a family's TYPE and where it is (see fail)

    def fail(self, problem: str, where: int) -> None:
        """``where`` is the line number when every problem is collected; when reading fast (stop at the first
        problem), the position of the line's start: the fast read does not count the lines of the runs it
        skips over, so a line number is counted only for the error."""
        line_number = where if self.problems is not None else self.text.count("\n", 0, where) + 1
        error = ParseError(problem, line_number)
        if self.problems is None:
            raise error
        self.problems.append(error)

    def go_family(self, name: str) -> tuple[str, _GoFamily]:
        """The family Go's parser puts ``name`` in (``x_sum`` in the summary or histogram ``x`` if it knows
        one), created if new."""
        family = self.go.get(name)
        if family is not None:
            return name, family
        for suffixes, kind in ((("_count", "_sum"), "summary"), (HISTOGRAM_SUFFIXES, "histogram")):
            for suffix in suffixes:
                if name.endswith(suffix) and len(name) > len(suffix):
                    family = self.go.get(name[: -len(suffix)])
                    if family is not None and family.type == kind:
                        return name[: -len(suffix)], family
        family = self.go[name] = _GoFamily()
        return name, family

    @staticmethod
    def block_name(name: str, go_name: str) -> str:
        """Our families are grouped by the catalogue (a histogram's three series names are one block, whatever
        the file declared); the others as Go's parser groups them."""
        if name in FAMILIES_BY_NAME:
            return name
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix):
                family = FAMILIES_BY_NAME.get(name[: -len(suffix)])
                if family is not None and family.kind is Kind.HISTOGRAM:
                    return family.name
        return go_name

    def enter(self, name: str) -> Block:
        """Make ``name``'s block the current one; comments waiting go to it."""
        block = self.document.blocks.get(name)
        if block is None:
            block = Block(name, owned=FAMILIES_BY_NAME.get(name))
            self.document.blocks[name] = block
            self.pieces[name] = []
            self.canonical[name] = True
        self.current = block
        if self.pending:
            if block.owned is None:
                self.pieces[name].extend(self.pending)
            else:
                block.comments.extend(line.rstrip("\n") for line in self.pending if line.strip(" \t\n"))
            self.pending = []
        return block

    def run(self) -> Document:
        text = self.text
        length = len(text)
        position = 0
        number = 0
        fast = self.problems is None
        while position < length:
            number += 1
            newline = text.find("\n", position)
            if newline < 0:
                if text[position:].strip(" \t"):
                    self.fail(
                        "the file does not end with a newline (it was cut short): unexpected end of input stream",
                        number if not fast else position,
                    )
                break
            line = text[position:newline]
            first = line.lstrip(" \t")[:1]
            if not first:
                self.pending.append(line + "\n")
            elif first == "#":
                self.comment(line, number if not fast else position)
            else:
                if fast:
                    end = self.fast_samples(position, line)
                    if end > position:
                        position = end
                        continue
                self.sample(line, number if not fast else position)
            position = newline + 1
        if self.pending:
            if self.current is None:
                self.document.preamble = "".join(self.pending)
            else:
                self.enter(self.current.name)
        return self.finish()

    def comment(self, line: str, number: int) -> None:
        if line.startswith(META_PREFIX):
            key, separator, value = line[len(META_PREFIX) :].partition(":")
            if separator and key and not _has_blank(key):
                self.document.meta[key] = value.strip(" \t")
                return
        try:
            header = _read_comment(line)
        except ParseError as error:
            self.fail(error.problem, number)
            return
        if header is None or (header[2] is None and not header[1]):
            self.pending.append(line + "\n")
            return
        keyword, name, rest = header
        if rest is None:  # "# HELP name" and nothing more: Go makes no family of it
            self.pending.append(line + "\n")
            return
        go_name, family = self.go_family(name)
        try:
            if rest and keyword == "HELP":
                if family.help:
                    raise ParseError(f"second HELP line for metric name {_go_quote(go_name)}")
                _read_help(rest)
                family.help = True
            elif rest:
                if family.type is not None:
                    raise ParseError(
                        f"second TYPE line for metric name {_go_quote(go_name)}, or TYPE reported after samples"
                    )
                if rest.lower() not in TYPES:
                    raise ParseError(f"unknown metric type {_go_quote(rest)}")
                family.type = rest.lower()
                if name == go_name:
                    self.file_types[name] = (family.type, number)
        except ParseError as error:
            self.fail(error.problem, number)
            return
        block = self.enter(self.block_name(name, go_name))
        if block.owned is None:
            self.pieces[block.name].append(line + "\n")
            if name == block.name and rest:
                if keyword == "HELP":
                    block.help = rest
                else:
                    block.type = rest.lower()

    def fast_samples(self, position: int, line: str) -> int:
        """The end of the run of sample lines from ``position`` that are checked at C speed: lines of one of
        our families in exactly our format, or one plain line of another family. ``position`` if none."""
        match = _re(_METRIC_NAME).match(line, len(line) - len(line.lstrip(" \t")))
        if match is None:
            return position
        name = match.group()
        go_name, family = self.go_family(name)
        block_name = self.block_name(name, go_name)
        owned = FAMILIES_BY_NAME.get(block_name)
        if owned is not None:
            # Go must see our lines in our family as we declare it, else the slow way decides.
            if family.type is None and owned.kind is not Kind.HISTOGRAM:
                family.type = "untyped"
            if go_name != owned.name or (owned.kind is Kind.HISTOGRAM and family.type != "histogram"):
                return position
            run = _canonical_run(owned).match(self.text, position)
            end = run.end() if run else position
            if end > position and owned.kind is Kind.HISTOGRAM:
                odd = _re(_UNCANONICAL_VALUE).search(self.text, position, end)
                if odd is not None:  # the run stops before that line, which goes the slow way
                    end = self.text.rfind("\n", position, odd.start()) + 1 or position
            if end > position:
                block = self.enter(owned.name)
                self.pieces[block.name].append(self.text[position:end])
            return end
        if family.type in ("histogram", "summary"):
            return position  # le and quantile must be numbers: the slow way checks them
        match = _re(_FAST_SAMPLE).fullmatch(line)
        if match is None:
            return position
        labels = match.group(2)
        if labels and labels.count("=") > 1:
            names = _re(_LABEL_NAMES_IN_SET).findall(labels)
            if len(set(names)) != len(names):
                return position
        if family.type is None:
            family.type = "untyped"
        block = self.enter(self.block_name(name, go_name))
        self.pieces[block.name].append(line + "\n")
        return position + len(line) + 1

    def sample(self, line: str, number: int) -> None:
        match = _re(_METRIC_NAME).match(line, len(line) - len(line.lstrip(" \t")))
        go_name, family = self.go_family(match.group()) if match else ("", _GoFamily())
        try:
            name, pairs, value = _read_sample(line, go_name, family.type or "untyped")
        except ParseError as error:
            self.fail(error.problem, number)
            return
        if family.type is None:
            family.type = "untyped"
        block = self.enter(self.block_name(name, go_name))
        if self.problems is not None:
            self.samples.append((number, block, name, pairs, float(value)))
        if block.owned is None:
            self.pieces[block.name].append(line + "\n")
            return
        try:
            key = canonical_key(block.owned, name, pairs)
        except ParseError as error:
            self.fail(f"{error.problem} (the le label of {name})", number)
            return
        self.pieces[block.name].append(f"{key} {canonical_float(value)}\n")
        self.canonical[block.name] = False

    def finish(self) -> Document:
        for block in self.document.blocks.values():
            pieces = self.pieces[block.name]
            family = block.owned
            if family is None:
                block.raw = "".join(pieces)
                block._lines = None
                continue
            declared, number = self.file_types.get(family.name, (family.kind.value, 0))
            # "untyped" is what the Pushgateway writes for a series pushed without a TYPE, and what a family
            # without any TYPE line is: node_exporter serves it, so we read it and give it our type. A
            # histogram declared untyped is not one (its _bucket lines would be families of their own).
            if declared != family.kind.value and not (declared == "untyped" and family.kind is not Kind.HISTOGRAM):
                article = "an" if declared[0] in "aeiou" else "a"
                self.fail(f"{family.name} is {article} {declared} in the file but a {family.kind.value} here", number)
            block.type = family.kind.value
            block.help = family.help  # ours replaces the HELP an earlier version wrote
            body = "".join(pieces)
            if self.canonical[block.name]:
                encoded = body.encode("utf-8")
                block.set_body(encoded, 0, len(encoded))
            else:
                block.lines = body.split("\n")[:-1]
        return self.document


def parse(text: str, check_histograms: bool = True) -> Document:
    """Parse a whole textfile. Raises ParseError naming the first problem and its line, in the words of
    Go's parser (promtool's, node_exporter's) where it has them.

    ``check_histograms=False`` leaves the bucket check of histograms to the caller (a merge checks only
    the histograms it changes: the others are written back as they were).

    What the merge's read does not look for: a series that appears twice, negative counters, buckets that
    are not cumulative (node_exporter serves such files); ``check_text`` finds them."""
    document = _Scan(text, None).run()
    claimed = layout.parse(document.meta.pop(layout.KEY, ""))  # written anew with every file
    if claimed:
        # A family's body that still matches the segments the file lists keeps them: cut where an earlier
        # writer cut it, so that writing the document back gives the same bytes.
        bodies = {name: body for name, header, body in claimed if header is not None}
        for block in document.blocks.values():
            segments = bodies.get(block.name)
            data = block._data
            if segments is not None and data is not None and layout.matches(data, 0, segments) == len(data):
                block._segments = list(segments)
    if check_histograms:
        for block in document.blocks.values():
            if block.owned is not None and block.owned.kind is Kind.HISTOGRAM:
                check_buckets(block, block.owned)
    return document


def parse_bytes(data: bytes, check_histograms: bool = True) -> Document:
    """:func:`parse` of a file's bytes: a file whose layout line vouches for it (one this package wrote, not
    changed since) is taken as written, without a look at its sample lines; any other is decoded and checked
    line by line. Raises ParseError as :func:`parse` does, and for bytes that are not UTF-8."""
    document = read_vouched(data)
    if document is not None:
        return document
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ParseError(f"not UTF-8 text (byte {error.start})") from None
    return parse(text, check_histograms)


def check_buckets(block: Block, family: Family) -> None:
    """Every series of a histogram has exactly the catalogue's buckets."""
    bounds = family.bucket_bounds
    if block._data is not None:
        return  # read as whole series of our format (see _canonical_run), changed only by whole series
    bucket_prefix = family.name + "_bucket"
    seen: dict[str, list[str]] = {}
    counts = 0
    for line in block.lines:
        if line.startswith(bucket_prefix):
            key = line[: line.rindex(" ")]
            marker = key.rfind('le="')
            if marker < 0:
                raise ParseError(f"a bucket of {family.name} has no le label: {key[:80]}")
            series_part = key[len(bucket_prefix) : marker]
            seen.setdefault(series_part, []).append(key[marker + 4 : -2])
        elif line.startswith(family.name + "_count"):
            counts += 1
    for les in seen.values():
        if tuple(les) != bounds:
            raise ParseError(
                f"{family.name} has buckets le={','.join(les)} but the catalogue's are le={','.join(bounds)}"
            )
    if counts != len(seen):
        raise ParseError(f"{family.name} has {counts} _count samples for {len(seen)} series")


# Checking


def check_text(text: str, other_bounds: bool = False) -> list[ParseError]:
    """Every problem of a file, each with its line number, in file order: what Go's parser refuses (in its
    words), timestamps, and what it lets through that breaks the file for its readers or for our merges:
    a series that appears twice (node_exporter then serves only one of them), a family of ours with another
    type, negative or NaN counters, histograms without the catalogue's buckets, not cumulative, or whose
    +Inf bucket differs from their count. Empty: the file is sound. ``other_bounds``: histograms whose bounds
    are not the catalogue's are not a problem (a merge migrates them: lifecycle.migrate_histogram)."""
    problems: list[ParseError] = []
    scan = _Scan(text, problems)
    scan.run()
    samples: list[_Sample] = [
        (number, block.owned, block.name, name, pairs, value) for number, block, name, pairs, value in scan.samples
    ]
    problems.extend(ParseError(problem, number) for number, problem in _sample_problems(samples, other_bounds))
    problems.sort(key=lambda error: error.line_number or 0)
    return problems


def check_document(document: Document) -> list[str]:
    """The problems :func:`check_text` finds beyond parsing, in a parsed document (without line numbers).
    Empty: the document is sound."""
    problems = []
    samples: list[_Sample] = []
    for block in document.blocks.values():
        for line in block.lines:
            try:
                name, pairs, value = _read_sample(line, block.name, block.type or "untyped")
            except ParseError as error:
                problems.append(error.problem)
                continue
            samples.append((None, block.owned, block.name, name, pairs, float(value)))
    return problems + [problem for _, problem in _sample_problems(samples)]


_Sample = tuple[int | None, Family | None, str, str, list[tuple[str, str]], float]


def _sample_problems(samples: list[_Sample], other_bounds: bool = False) -> Iterator[tuple[int | None, str]]:
    seen: dict[tuple[str, frozenset[tuple[str, str]]], int | None] = {}
    histograms: dict[tuple[Family, str], dict[str, Any]] = {}
    for number, family, _, name, pairs, value in samples:
        identity = (name, frozenset(pairs))
        if identity in seen:
            first = seen[identity]
            where = f" (first on line {first})" if first else ""
            yield number, f"the series {series_key(name, [p[0] for p in pairs], [p[1] for p in pairs])} appears " \
                f"twice{where}: node_exporter serves only one of them"
        else:
            seen[identity] = number
        if family is None:
            continue
        key = canonical_key(family, name, pairs)
        if family.kind is Kind.COUNTER and not value >= 0:
            yield number, f"counter {key} is {format_float(value)}"
        if family.kind is Kind.HISTOGRAM:
            labels = dict(pairs)
            le = labels.pop("le", None)
            series = canonical_key(family, family.name, labels.items())
            state = histograms.setdefault((family, series), {"line": number, "les": [], "values": []})
            if name == family.name + "_bucket" and le is not None:
                state["les"].append(canonical_float(le))
                state["values"].append(value)
            elif name == family.name + "_count":
                state["count"] = value
    for (family, series), state in histograms.items():
        number = state["line"]
        les, values = state["les"], state["values"]
        if tuple(les) != family.bucket_bounds and not other_bounds:
            yield number, (
                f"{series} has buckets le={','.join(les)} but the catalogue's are le={','.join(family.bucket_bounds)}"
            )
        if any(later < earlier for earlier, later in zip(values, values[1:])):
            yield number, f"the buckets of {series} are not cumulative"
        if "count" not in state:
            yield number, f"{series} has no _count sample"
        elif values and state["count"] != values[-1]:
            yield number, f"the +Inf bucket of {series} is {values[-1]} but its count is {state['count']}"


def describe(document: Document) -> Iterator[str]:
    """A readable listing: one line per family (name, type, series, help), then its samples indented."""
    for block in document.blocks.values():
        lines = block.lines
        yield f"{block.name} ({block.type or 'untyped'}, {len(lines)} samples): {block.help or ''}".rstrip()
        for line in lines:
            yield f"  {line}"
