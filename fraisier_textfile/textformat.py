"""The Prometheus text format, as this package reads and writes it.

A fast path for our own files: a document is a list of family blocks; each block keeps its sample lines as
text with an index from series key to line, so a merge rewrites only the lines it changes and a render joins
strings. Families the catalogue does not own are kept as the exact text they came in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from fraisier_textfile.catalogue import FAMILIES, FAMILIES_BY_NAME, Family, Kind, format_float

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
RETIRED_MARKERS_COMMENT = "# fraisier_textfile retired-markers:"
META_COMMENT = "# fraisier_textfile "  # then "<key>: <value>": the store's bookkeeping, read into Document.meta
# Patterns as strings, compiled (and cached by re) on first use: compiling them at import would cost every
# `fraisier record` run milliseconds for parsing it rarely does.
_METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z"
_LABEL_PAIR = r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\\n]|\\[\\"n])*)"\s*(,|\})'
_UNESCAPE = r"\\(.)"
_UNESCAPED = {"n": "\n", "\\": "\\", '"': '"'}


class ParseError(ValueError):
    """A line that is not valid text format. The store turns it into CorruptTextfileError with the path."""

    def __init__(self, problem: str, line_number: int | None = None) -> None:
        self.problem = problem
        self.line_number = line_number
        super().__init__(problem if line_number is None else f"line {line_number}: {problem}")


def escape_label_value(value: str) -> str:
    if "\\" not in value and '"' not in value and "\n" not in value:
        return value
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def unescape_label_value(text: str) -> str:
    return re.sub(_UNESCAPE, lambda m: _UNESCAPED.get(m.group(1), "\\" + m.group(1)), text)


def label_text(labels: Iterable[str], values: Iterable[str]) -> str:
    """``a="x",b="y"``: labels in the order given, values escaped."""
    return ",".join(f'{label}="{escape_label_value(value)}"' for label, value in zip(labels, values))


def series_key(name: str, labels: Iterable[str], values: Iterable[str]) -> str:
    """``name{a="x",b="y"}``: the text a sample line starts with, labels in the order given."""
    pairs = label_text(labels, values)
    return f"{name}{{{pairs}}}" if pairs else name


def parse_series_key(key: str) -> tuple[str, dict[str, str]]:
    """The metric name and the labels of a series key (``name{a="x"}``)."""
    brace = key.find("{")
    if brace < 0:
        return key, {}
    labels: dict[str, str] = {}
    position = brace + 1
    if key[position:].strip() == "}":
        return key[:brace], labels
    while True:
        match = re.compile(_LABEL_PAIR).match(key, position)
        if match is None:
            raise ParseError(f"cannot read the labels of {key!r}")
        if match.group(1) in labels:
            raise ParseError(f"the label {match.group(1)} appears twice in {key!r}")
        labels[match.group(1)] = unescape_label_value(match.group(2))
        position = match.end()
        if match.group(3) == "}":
            break
        if key[position:].strip() == "}":  # a trailing comma is allowed
            position = len(key)
            break
    if key[position:].strip():
        raise ParseError(f"unexpected text after the labels of {key!r}")
    return key[:brace], labels


class Block:
    """One metric family: its header and its sample lines, in file order."""

    def __init__(
        self, name: str, help: str | None = None, type: str | None = None, owned: Family | None = None
    ) -> None:
        self.name = name
        self.help = help
        self.type = type
        self.owned = owned
        self.lines: list[str] = []
        self.raw: str | None = None  # the exact text of a family we do not own, written back unchanged
        self._index: dict[str, int] | None = None
        self._rendered: str | None = None

    def index(self) -> dict[str, int]:
        if self._index is None:
            self._index = {line[: line.rindex(" ")]: number for number, line in enumerate(self.lines)}
        return self._index

    def value(self, key: str) -> float | None:
        number = self.index().get(key)
        if number is None:
            return None
        return float(self.lines[number][len(key) + 1 :])

    def set(self, key: str, value: float) -> None:
        line = f"{key} {format_float(value)}"
        index = self.index()
        number = index.get(key)
        if number is None:
            index[key] = len(self.lines)
            self.lines.append(line)
        else:
            self.lines[number] = line
        self._rendered = None

    def samples(self) -> Iterator[tuple[str, float]]:
        for line in self.lines:
            key, _, value = line.rpartition(" ")
            yield key, float(value)

    def render(self) -> str:
        if self.raw is not None:
            return self.raw
        if self._rendered is None:
            header = ""
            if self.help is not None:
                header += f"# HELP {self.name} {self.help}\n"
            if self.type is not None:
                header += f"# TYPE {self.name} {self.type}\n"
            body = "\n".join(self.lines)
            self._rendered = header + body + "\n" if body else header
        return self._rendered


class Document:
    """A parsed textfile."""

    def __init__(self) -> None:
        self.blocks: dict[str, Block] = {}
        self.retired_markers: set[str] = set()
        self.meta: dict[str, str] = {}

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
        parts = [f"{META_COMMENT}{key}: {self.meta[key]}\n" for key in sorted(self.meta)]
        if self.retired_markers:
            parts.append(f"{RETIRED_MARKERS_COMMENT} {' '.join(sorted(self.retired_markers))}\n")
        parts.extend(block.render() for block in self.blocks.values())
        return "".join(parts)


def _header_name(line: str, line_number: int) -> tuple[str, str, str] | None:
    """``(keyword, name, rest)`` of a HELP or TYPE line, None for any other comment."""
    parts = line[1:].lstrip().split(None, 2)
    if len(parts) < 2 or parts[0] not in ("HELP", "TYPE"):
        return None
    keyword, name = parts[0], parts[1]
    if not re.match(_METRIC_NAME, name):
        raise ParseError(f"{keyword} names {name!r}, which is not a metric name", line_number)
    return keyword, name, parts[2] if len(parts) > 2 else ""


def parse(text: str, check_histograms: bool = True) -> Document:
    """Parse a whole textfile. Raises ParseError naming the first bad line.

    ``check_histograms=False`` leaves the bucket check of histograms to the caller (a merge checks only
    the histograms it changes: the others are written back as they were)."""
    document = Document()
    if not text:
        return document
    if not text.endswith("\n"):
        raise ParseError("the file does not end with a newline (it was truncated)", text.count("\n") + 1)
    lines = text.split("\n")
    lines.pop()
    blocks = document.blocks
    block: Block | None = None
    suffix_of: dict[str, str] = {}
    labelled: tuple[str, ...] = ()
    starts: list[tuple[Block, int]] = []
    for number, line in enumerate(lines):
        if not line:
            continue
        if line[0] == "#":
            if line.startswith(RETIRED_MARKERS_COMMENT):
                document.retired_markers.update(line[len(RETIRED_MARKERS_COMMENT) :].split())
                continue
            if line.startswith(META_COMMENT):
                key, colon, value = line[len(META_COMMENT) :].partition(":")
                if colon and key and " " not in key:
                    document.meta[key] = value.strip()
                    continue
            header = _header_name(line, number + 1)
            if header is None:
                continue  # an ordinary comment; readers ignore it
            keyword, name, rest = header
            if block is None or name != block.name:
                if name in blocks:
                    raise ParseError(f"family {name} appears twice in the file", number + 1)
                block = _open_block(blocks, name, number, starts)
            if keyword == "HELP":
                if block.help is not None:
                    raise ParseError(f"a second HELP line for {name}", number + 1)
                block.help = rest
            else:
                if block.type is not None:
                    raise ParseError(f"a second TYPE line for {name}", number + 1)
                if block.lines:
                    raise ParseError(f"the TYPE line of {name} comes after its samples", number + 1)
                if rest not in ("counter", "gauge", "histogram", "summary", "untyped"):
                    raise ParseError(f"unknown type {rest!r} for {name}", number + 1)
                block.type = rest
                if rest in ("histogram", "summary"):
                    suffix_of = {name + suffix: name for suffix in HISTOGRAM_SUFFIXES + ("",)}
                else:
                    suffix_of = {name: name}
                labelled = tuple(sample_name + "{" for sample_name in suffix_of)
            continue
        # The fast path, for nearly every line of our own files: a labelled sample of the current family.
        if block is not None and line.startswith(labelled):
            cut = line.rfind(" ")
            if line[cut - 1] == "}":
                value = line[cut + 1 :]
                if "_" not in value:  # Python reads 1_000; Go's parser, node_exporter's, does not
                    try:
                        float(value)
                    except ValueError:
                        pass  # the slow path below names the problem
                    else:
                        block.lines.append(line)
                        continue
        key, space, value = line.rpartition(" ")
        if not space:
            raise ParseError(f"sample line {line[:60]!r} has no value", number + 1)
        if key[-1:] != "}" and (" " in key or "{" in key or not key):
            raise ParseError(
                f"sample line {line[:60]!r} has a timestamp or stray text (readers drop the whole file)",
                number + 1,
            )
        try:
            if "_" in value:
                raise ValueError(value)
            float(value)
        except ValueError:
            raise ParseError(f"sample value {value!r} is not a number", number + 1) from None
        brace = key.find("{")
        name = key if brace < 0 else key[:brace]
        if block is None or suffix_of.get(name) != block.name:
            if not re.match(_METRIC_NAME, name):
                raise ParseError(f"{name!r} is not a metric name", number + 1)
            if name in blocks:
                raise ParseError(f"samples of {name} appear in two places", number + 1)
            block = _open_block(blocks, name, number, starts)
            suffix_of = {name: name}
            labelled = (name + "{",)
        block.lines.append(line)
    _finish(document, lines, starts, check_histograms)
    return document


def _open_block(blocks: dict[str, Block], name: str, line_index: int, starts: list[tuple[Block, int]]) -> Block:
    block = Block(name, owned=FAMILIES_BY_NAME.get(name))
    blocks[name] = block
    starts.append((block, line_index))
    return block


def _finish(
    document: Document, lines: list[str], starts: list[tuple[Block, int]], check_histograms: bool
) -> None:
    """Check owned families against the catalogue; freeze the exact text of the others."""
    ends = [start for _, start in starts[1:]] + [len(lines)]
    for (block, start), end in zip(starts, ends):
        family = block.owned
        if family is None:
            kept = [line for line in lines[start:end] if not line.startswith(META_COMMENT)]
            block.raw = "\n".join(kept) + "\n"
            block.lines = []
            continue
        if block.type is not None and block.type != family.kind.value:
            raise ParseError(f"{family.name} is a {block.type} in the file but a {family.kind.value} here")
        block.type = family.kind.value
        block.help = family.help  # ours replaces the HELP an earlier version wrote
        if family.kind is Kind.HISTOGRAM and check_histograms:
            check_buckets(block, family)


def check_buckets(block: Block, family: Family) -> None:
    """Every series of a histogram has exactly the catalogue's buckets."""
    bounds = family.bucket_bounds
    bucket_prefix = family.name + "_bucket"
    seen: dict[str, list[str]] = {}
    counts = 0
    for line in block.lines:
        if line.startswith(bucket_prefix):
            key = line[: line.rindex(" ")]
            marker = key.rfind('le="')
            if marker < 0:
                raise ParseError(f"a bucket of {family.name} has no le label: {key[:80]}")
            series = key[len(bucket_prefix) : marker]
            seen.setdefault(series, []).append(key[marker + 4 : -2])
        elif line.startswith(family.name + "_count"):
            counts += 1
    for les in seen.values():
        if tuple(les) != bounds:
            raise ParseError(
                f"{family.name} has buckets le={','.join(les)} but the catalogue's are le={','.join(bounds)}"
            )
    if counts != len(seen):
        raise ParseError(f"{family.name} has {counts} _count samples for {len(seen)} series")


def check_document(document: Document) -> list[str]:
    """What the fast parse of a merge does not look at: the label syntax of every sample, series that
    appear twice (node_exporter then serves only one of them), negative counters, histograms whose
    buckets are not cumulative or whose +Inf bucket differs from their count. Empty: the file is sound."""
    problems = []
    seen: set[tuple[str, frozenset[tuple[str, str]]]] = set()
    for block in document.blocks.values():
        lines = block.lines if block.raw is None else [
            line for line in block.raw.splitlines() if line and not line.lstrip().startswith("#")
        ]
        for line in lines:
            key = line[: line.rindex(" ")]
            try:
                name, labels = parse_series_key(key)
            except ParseError as error:
                problems.append(error.problem)
                continue
            series = (name, frozenset(labels.items()))
            if series in seen:
                problems.append(f"the series {key} appears twice")
            seen.add(series)
        family = block.owned
        if family is None:
            continue
        if family.kind is Kind.COUNTER:
            for key, value in block.samples():
                if value < 0 or value != value:
                    problems.append(f"counter {key} is {value}")
        elif family.kind is Kind.HISTOGRAM:
            problems.extend(_histogram_problems(block, family))
    return problems


def _histogram_problems(block: Block, family: Family) -> Iterator[str]:
    buckets: dict[str, list[float]] = {}
    counts: dict[str, float] = {}
    for key, value in block.samples():
        name, labels = parse_series_key(key)
        labels.pop("le", None)
        series = series_key(family.name, family.labels, [labels.get(label, "") for label in family.labels])
        if name.endswith("_bucket"):
            buckets.setdefault(series, []).append(value)
        elif name.endswith("_count"):
            counts[series] = value
    for series, values in buckets.items():
        if any(later < earlier for earlier, later in zip(values, values[1:])):
            yield f"the buckets of {series} are not cumulative"
        if values and counts.get(series) != values[-1]:
            yield f"the +Inf bucket of {series} is {values[-1]} but its count is {counts.get(series)}"


def describe(document: Document) -> Iterator[str]:
    """A readable listing: one line per family (name, type, series, help), then its samples indented."""
    for block in document.blocks.values():
        if block.raw is not None:
            lines = [line for line in block.raw.splitlines() if line and not line.startswith("#")]
        else:
            lines = block.lines
        yield f"{block.name} ({block.type or 'untyped'}, {len(lines)} samples): {block.help or ''}".rstrip()
        for line in lines:
            yield f"  {line}"
