"""The document model of a textfile: family blocks, and the bookkeeping lines at its top.

A document is a list of family blocks. A family we do not own is kept as the exact text it came in (its
comments and the comments just before it included). A family we own is ours to rewrite: its HELP and TYPE are
the catalogue's, its series keys canonical (catalogue label order, ``le`` last in our float format), its stray
comments kept just before its HELP and TYPE lines. A block of our own canonical format read from a file is one
span of the file's bytes: a merge finds the few series it changes in that span and splices the new lines in when
rendering, so the bytes it does not change are copied, never parsed."""

from __future__ import annotations

from collections.abc import Iterator

from fraisier_textfile.format import layout
from fraisier_textfile.format.bookkeeping import MetaValue, RawValue
from fraisier_textfile.format.layout import Segment, check_claimed, crc_of, segments_of
from fraisier_textfile.format.schema import Family, Kind, Schema, format_float
from fraisier_textfile.format.span import BodySpan
from fraisier_textfile.format.syntax import (
    META_PREFIX,
    ParseError,
    _has_blank,
    _read_comment,
    _read_sample,
    series_key,
)


class Block:
    """One metric family: its header and its samples.

    A block of ours read from a file in our own format holds its sample lines as a span of the file's bytes
    (span.py), which finds a series only when asked and splices changed and new lines in when written. Any other
    access to its lines (``lines``, ``samples()``, ``index()``) turns it into a list of lines, once. A family we
    do not own keeps its exact text in ``raw``."""

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
        # The header's bytes and their segment, and what they were made of: a merge writes every block's header,
        # unchanged but for a block it creates.
        self._header_written: tuple[tuple[str, str | None, str | None, tuple[str, ...]], bytes, Segment] | None = None
        self.span: BodySpan | None = None
        """The body as read, while it is held as a span of the file's bytes (None: held as lines, or raw)."""
        self.claimed: tuple[bytes, int, list[Segment]] | None = None
        """Bytes of the file read that :meth:`written` checksums anew (the header; the text of another writer's
        family), where they start and the segments the layout line claims for them, not checked yet: checked
        before, as an edited segment of the body is (span.py)."""

    def set_body(self, data: bytes, start: int, end: int, segments: list[Segment] | None = None) -> None:
        """Make ``data[start:end]`` (sample lines of ours as we write them) the block's body; ``segments``: its
        checksums, if known (see layout.py)."""
        self._lines = None
        self._index = None
        self._rendered = self._rendered_segments = None
        self.span = BodySpan(data, start, end, segments)

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
            self.lines = self.span.lines() if self.span is not None else []
        assert self._lines is not None
        return self._lines

    @lines.setter
    def lines(self, lines: list[str]) -> None:
        self._lines = lines
        self.span = None
        self._index = None
        self._rendered = self._rendered_segments = None

    def head(self, count: int) -> list[str]:
        """The first ``count`` sample lines (fewer if the block has fewer), without splitting the whole block
        when it is read lazily and unchanged."""
        span = self.span
        if span is None or span.edited:
            return self.lines[:count]
        return span.head(count)

    def index(self) -> dict[str, int]:
        """Series key -> position in :attr:`lines`."""
        lines = self.lines
        if self._index is None:
            self._index = {line[: line.rindex(" ")]: number for number, line in enumerate(lines)}
        return self._index

    def line_count(self) -> int:
        """How many samples, without materialising the lines."""
        if self.span is not None:
            return self.span.line_count()
        return len(self.lines)

    def body_size(self) -> int | None:
        """The bytes of the sample lines (a bound once edited), without materialising them; None for a block
        held as lines."""
        return None if self.span is None else self.span.size()

    # Series

    def value(self, key: str) -> float | None:
        if self.span is not None:
            return self.span.value(key)
        if self.raw is not None:
            return dict(self.samples()).get(key)
        number = self.index().get(key)
        if number is None:
            return None
        return float(self.lines[number][len(key) + 1 :])

    def set(self, key: str, value: float) -> None:
        if self.raw is not None:
            raise ValueError(f"{self.name} is not a family of ours: its text is kept as it is")
        line = f"{key} {format_float(value)}"
        if self.span is not None:
            self.span.set(key, line)
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

    def remove(self, key: str) -> bool:
        """Drop the series ``key``; False if the block had no such series."""
        if self.raw is not None:
            raise ValueError(f"{self.name} is not a family of ours: its text is kept as it is")
        if self.span is not None:
            return self.span.remove(key)
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

    def _header_bytes(self) -> bytes:
        made_of = (self.name, self.help, self.type, tuple(self.comments))
        written = self._header_written
        if written is None or written[0] != made_of:
            header = self._header().encode("utf-8")
            written = self._header_written = (made_of, header, crc_of([header]))
        return written[1]

    def header_segment(self, header: bytes) -> Segment:
        """The segment of ``header``, the header :meth:`written` returned."""
        written = self._header_written
        return written[2] if written is not None and written[1] is header else crc_of([header])

    def written(
        self, checksums: bool = True, schema: Schema | None = None
    ) -> tuple[bytes, list[bytes | memoryview], list[Segment] | None]:
        """What a writer writes of the block: its header, its body in pieces (unchanged spans of the file
        read are not copied), and the body's segments for the layout line (None: the block cannot be vouched
        for, so the file gets no layout line and its next reader checks every line). ``checksums=False``, for
        a reader that only serves the text (:meth:`parts`): no segment is checksummed, and None is returned
        for them. ``schema``: the document's, whose families a layout vouches for (None: no segments, as without
        checksums)."""
        if checksums and self.claimed is not None:
            check_claimed(*self.claimed, f"the block of {self.name}")
            self.claimed = None
        if self.raw is not None:
            if self._raw_written is None or self._raw_written[0] is not self.raw:
                self._raw_written = (self.raw, self.raw.encode("utf-8"))
            raw = self._raw_written[1]
            return b"", [raw], ([crc_of([raw])] if raw else []) if checksums else None
        header = self._header_bytes()
        if self.span is not None:
            pieces, segments = self.span.pieces(checksums)
            if not checksums or not self._of_the_schema(schema):
                return header, pieces, None
            return header, pieces, segments
        if self._rendered is None:
            lines = self.lines
            self._rendered = ("\n".join(lines) + "\n").encode("utf-8") if lines else b""
        if not checksums:
            return header, [self._rendered], None
        if self._rendered_segments is None:
            self._rendered_segments = (segments_of(self._rendered) if self._vouchable(schema) else None,)
        return header, [self._rendered], self._rendered_segments[0]

    def _vouchable(self, schema: Schema | None) -> bool:
        """A body built line by line can be vouched for unless it is a histogram without whole series of the
        catalogue's buckets (a reader that trusts the layout takes a histogram's runs as whole series)."""
        if not self._of_the_schema(schema):
            return False
        if self.owned is None or self.owned.kind is not Kind.HISTOGRAM:
            return True
        try:
            check_buckets(self, self.owned)
        except ParseError:
            return False
        return True

    def _of_the_schema(self, schema: Schema | None) -> bool:
        """Not a family given other bounds than the schema's (lifecycle.migrate_histograms), which a reader
        trusting the layout line would take with the schema's."""
        return schema is not None and self.owned is schema.by_name.get(self.name)

    def parts(self) -> list[bytes | memoryview]:
        """The block's text in pieces whose concatenation is :meth:`render`, encoded: unchanged text is not
        copied, and no checksum is computed (the server serves blocks this way)."""
        header, pieces, _ = self.written(checksums=False)
        return [header, *pieces] if header else pieces

    def render(self) -> str:
        return b"".join(self.parts()).decode("utf-8")


class Document:
    """A parsed textfile.

    ``meta`` holds every ``# fraisier_textfile <key>: <value>`` line of the file, wherever it was; they are
    written at the top of the file, keys sorted. Each key is read and written only through the
    :class:`~fraisier_textfile.format.bookkeeping.Bookkeeping` its protocol declares."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        """The families this document owns (rewrites in canonical form, in this order)."""
        self.blocks: dict[str, Block] = {}
        self.meta: dict[str, MetaValue] = {}
        self.preamble = ""  # the comments of a file that has no family at all
        # The meta lines as read (see read_vouched): key -> (its value then, the line's bytes). A value still
        # the same object is written back from those bytes, not encoded again: the series' update times are
        # ~30 bytes a series, a fifth of a big file.
        self.meta_read: dict[str, tuple[str, memoryview]] = {}
        self._layout_words = layout.Words()
        self.layout_line: str | None = None
        """The layout line's value that :meth:`parts` wrote last (None: the document was not vouched for), which the
        store seals the file with (layout.seal_of)."""

    def block(self, family: Family) -> Block:
        """The block of an owned family, created (in the schema's order) if the file had none."""
        block = self.blocks.get(family.name)
        if block is None:
            block = Block(family.name, help=family.help, type=family.kind.value, owned=family)
            self.blocks[family.name] = block
            order = self.schema.order
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
            header, pieces, segments = block.written(schema=self.schema)
            if header:
                body.append(header)
            body.extend(pieces)
            if segments is None or (block.raw is None and not header) or loose:
                vouched = False
            elif vouched:
                entries.append((block.name, None if block.raw is not None else block.header_segment(header), segments))
            loose = block.raw is not None and _ends_loose(block.raw)
        meta = {key: value for key, value in self.meta.items() if key != layout.KEY}
        self.layout_line = None
        if vouched:
            meta[layout.KEY] = self.layout_line = self._layout_words.render(entries, self.schema.fingerprint)
        lines: list[bytes | memoryview] = []
        for key in sorted(meta):
            value = meta[key]
            read = self.meta_read.get(key)
            if read is not None and read[0] is value:
                lines.append(read[1])
                continue
            if isinstance(value, RawValue):
                # Spans of the line read and the bytes edited between them (bookkeeping.RawValue), as they are.
                if not key or ":" in key or _has_blank(key):
                    raise ValueError(f"meta key {key!r} cannot be written on one comment line")
                if value:
                    lines += (f"{META_PREFIX}{key}: ".encode(), *value.views(), b"\n")
                else:
                    lines.append(f"{META_PREFIX}{key}:\n".encode())
                continue
            if not key or ":" in key or _has_blank(key) or "\n" in value:
                raise ValueError(f"meta key {key!r} or its value {value!r} cannot be written on one comment line")
            if value:
                # The value apart: a long one (a family's update times) is encoded once, not copied into the line
                # first.
                lines += (f"{META_PREFIX}{key}: ".encode(), value.encode(), b"\n")
            else:
                lines.append(f"{META_PREFIX}{key}:\n".encode())
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


def check_buckets(block: Block, family: Family) -> None:
    """Every series of a histogram has exactly the catalogue's buckets."""
    bounds = family.bucket_bounds
    if block.span is not None:
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
