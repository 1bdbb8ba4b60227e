"""Reading a textfile: Go's parser's rules, and the fast path for a file this package wrote.

Reading follows Go's parser (``expfmt.TextParser``, node_exporter 1.5 and promtool), and a file it refuses is
refused with its words: any label order, blanks and tabs between tokens, a trailing comma, the escapes ``\\\\``
``\\"`` ``\\n`` in label values and ``\\\\`` ``\\n`` in HELP, HELP and TYPE in either order, families split in
two places, and no timestamps (node_exporter drops a file that has one). A file whose layout line vouches for
it (see layout.py) is taken as written, without checking a line (:func:`read_vouched`)."""

from __future__ import annotations

from fraisier_textfile.format import layout
from fraisier_textfile.format.bookkeeping import MetaValue, RawValue, held_as_bytes
from fraisier_textfile.format.model import Block, Document, check_buckets
from fraisier_textfile.format.schema import Kind, Schema
from fraisier_textfile.format.syntax import (
    _FAST_SAMPLE,
    _LABEL_NAMES_IN_SET,
    _METRIC_NAME,
    _UNCANONICAL_VALUE,
    HISTOGRAM_SUFFIXES,
    META_PREFIX,
    TYPES,
    ParseError,
    _canonical_run,
    _go_quote,
    _has_blank,
    _re,
    _read_comment,
    _read_help,
    _read_sample,
    canonical_float,
    canonical_key,
)


def read_vouched(data: bytes, schema: Schema) -> Document | None:
    """The document of a file whose layout line vouches for every byte after the meta lines (see layout.py),
    read from its checksums and headers without looking at a sample line; None if it does not (the caller
    then reads it the slow way, :func:`parse`, which checks every line)."""
    claimed = read_claimed(data, schema)
    if claimed is None or not claimed[1].hold():
        return None
    return claimed[0]


def read_claimed(data: bytes, schema: Schema) -> tuple[Document, layout.Claims] | None:
    """:func:`read_vouched` but for the checksums: the document as the file's layout line lays it out, and the
    claims of that line, not checked yet. None if the file is not laid out as its layout line says (then it is
    read the slow way). The caller must see the claims hold before it trusts or writes anything of the document:
    until then its values may be anything, and reading them may raise anything."""
    prefix = META_PREFIX.encode("ascii")
    position = 0
    while data.startswith(prefix, position):
        position = data.find(b"\n", position) + 1
        if not position:
            return None
    view = memoryview(data)
    meta: dict[str, MetaValue] = {}
    meta_read: dict[str, tuple[str, memoryview]] = {}
    ascii_only = True  # then every line is written back from its bytes while its value is unchanged
    claims = layout.Claims(data)
    try:
        # Each key and value is decoded straight from the file's bytes, once: no decoded copy of all the meta
        # lines to slice them from. A value the merge does not change is written back from the bytes read: see
        # Document.meta_read. The lines held as bytes (the series' update times, a fifth of a big file, which
        # in a new process would be fresh memory to fault in) are not decoded at all: that they are UTF-8 is
        # one more claim to check.
        start = 0
        while start < position:
            newline = data.index(b"\n", start)
            colon = data.find(b":", start + len(prefix), newline)
            if colon < 0:
                return None
            key = str(view[start + len(prefix) : colon], "utf-8")
            if not key or _has_blank(key):
                return None
            value_start = colon + (2 if data.startswith(b" ", colon + 1) else 1)
            if held_as_bytes(key):
                value_end = newline
                while value_start < value_end and data[value_start] in _BLANKS:
                    value_start += 1
                while value_end > value_start and data[value_end - 1] in _BLANKS:
                    value_end -= 1
                meta[key] = RawValue([(data, value_start, value_end)])
                claims.claim_text(value_start, value_end)
                start = newline + 1
                continue
            value = str(view[value_start:newline], "utf-8").strip(" \t")
            meta[key] = value
            ascii_only = ascii_only and key.isascii() and value.isascii()
            meta_read[key] = (value, view[start : newline + 1])
            start = newline + 1
        if not ascii_only:
            meta_read = {}
        line = meta.pop(layout.KEY, "")
        if not isinstance(line, str):
            return None
        entries = layout.parse(line, schema.fingerprint)
        if not entries:
            return None
        claims.line = line
        document = Document(schema)
        document.meta = meta
        document.meta_read = meta_read
        owned_families = schema.by_name
        for name, header, body in entries:
            owned = owned_families.get(name)
            if name in document.blocks or (owned is None) != (header is None):
                return None
            if header is None:
                end = claims.claim(position, body)
                if end < 0:
                    return None
                block = document.blocks[name] = _raw_block(name, data[position:end].decode("utf-8"))
                block.claimed = (data, position, body)
                position = end
                continue
            assert owned is not None
            header_end = claims.claim(position, [header])
            if header_end < 0:
                return None
            comments = data[position:header_end].decode("utf-8").split("\n")
            if comments.pop() or comments[-2:] != [f"# HELP {name} {owned.help}", f"# TYPE {name} {owned.kind.value}"]:
                return None
            end = claims.claim(header_end, body)
            if end < 0:
                return None
            block = Block(name, help=owned.help, type=owned.kind.value, owned=owned)
            block.comments = comments[:-2]
            block.claimed = (data, position, [header])
            block.set_body(data, header_end, end, body)
            document.blocks[name] = block
            position = end
    except UnicodeDecodeError:
        return None
    return (document, claims) if position == len(data) else None


_BLANKS = b" \t"


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

    def __init__(self, text: str, problems: list[ParseError] | None, schema: Schema) -> None:
        self.text = text
        self.problems = problems
        self.document = Document(schema)
        self.owned = self.document.schema.by_name
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

    def block_name(self, name: str, go_name: str) -> str:
        """Our families are grouped by the schema (a histogram's three series names are one block, whatever
        the file declared); the others as Go's parser groups them."""
        if name in self.owned:
            return name
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix):
                family = self.owned.get(name[: -len(suffix)])
                if family is not None and family.kind is Kind.HISTOGRAM:
                    return family.name
        return go_name

    def enter(self, name: str) -> Block:
        """Make ``name``'s block the current one; comments waiting go to it."""
        block = self.document.blocks.get(name)
        if block is None:
            block = Block(name, owned=self.owned.get(name))
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
                value = value.strip(" \t")
                self.document.meta[key] = RawValue.of(value.encode("utf-8")) if held_as_bytes(key) else value
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
        owned = self.owned.get(block_name)
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


def parse(text: str, schema: Schema, check_histograms: bool = True) -> Document:
    """Parse a whole textfile. Raises ParseError naming the first problem and its line, in the words of
    Go's parser (promtool's, node_exporter's) where it has them.

    ``check_histograms=False`` leaves the bucket check of histograms to the caller (a merge checks only
    the histograms it changes: the others are written back as they were).

    What the merge's read does not look for: a series that appears twice, negative counters, buckets that
    are not cumulative (node_exporter serves such files); ``check_text`` finds them."""
    document = _Scan(text, None, schema).run()
    # The layout line is written anew with every file.
    line = document.meta.pop(layout.KEY, "")
    claimed = layout.parse(line, document.schema.fingerprint) if isinstance(line, str) else None
    if claimed:
        # A family's body that still matches the segments the file lists keeps them: cut where an earlier
        # writer cut it, so that writing the document back gives the same bytes.
        bodies = {name: body for name, header, body in claimed if header is not None}
        for block in document.blocks.values():
            segments = bodies.get(block.name)
            span = block.span
            if segments is not None and span is not None and layout.matches(span.data, 0, segments) == len(span.data):
                span.segments = list(segments)
    if check_histograms:
        for block in document.blocks.values():
            if block.owned is not None and block.owned.kind is Kind.HISTOGRAM:
                check_buckets(block, block.owned)
    return document


def parse_bytes(data: bytes, schema: Schema, check_histograms: bool = True) -> Document:
    """:func:`parse` of a file's bytes: a file whose layout line vouches for it (one this package wrote, not
    changed since) is taken as written, without a look at its sample lines; any other is decoded and checked
    line by line. Raises ParseError as :func:`parse` does, and for bytes that are not UTF-8."""
    document = read_vouched(data, schema)
    if document is not None:
        return document
    return parse_unvouched(data, schema, check_histograms)


def parse_unvouched(data: bytes, schema: Schema, check_histograms: bool = True) -> Document:
    """:func:`parse` of a file's bytes, its layout line not trusted: every line checked (only the segments
    of bodies that still match it are kept, so that the same document is written back as the same bytes)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ParseError(f"not UTF-8 text (byte {error.start})") from None
    return parse(text, schema, check_histograms)
