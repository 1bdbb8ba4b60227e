"""The document model of a textfile: family blocks, and the bookkeeping lines at its top.

A document is a list of family blocks. A family we do not own is kept as the exact text it came in (its
comments and the comments just before it included). A family we own is ours to rewrite: its HELP and TYPE are
the catalogue's, its series keys canonical (catalogue label order, ``le`` last in our float format), its stray
comments kept just before its HELP and TYPE lines. A block of our own canonical format read from a file is one
span of the file's bytes: a merge finds the few series it changes in that span and splices the new lines in when
rendering, so the bytes it does not change are copied, never parsed."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator

from fraisier_textfile.format import layout
from fraisier_textfile.format.layout import Segment, crc_of, segments_of
from fraisier_textfile.format.schema import Family, Kind, Schema, default, format_float
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

    def written(
        self, checksums: bool = True, schema: Schema | None = None
    ) -> tuple[bytes, list[bytes | memoryview], list[Segment] | None]:
        """What a writer writes of the block: its header, its body in pieces (unchanged spans of the file
        read are not copied), and the body's segments for the layout line (None: the block cannot be vouched
        for, so the file gets no layout line and its next reader checks every line). ``checksums=False``, for
        a reader that only serves the text (:meth:`parts`): no segment is checksummed, and None is returned
        for them. ``schema``: the document's (the default one if None), whose families a layout vouches for."""
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
                self._rendered_segments = (segments_of(self._rendered) if self._vouchable(schema) else None,)
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
        if not checksums or not self._of_the_schema(schema):
            return header, pieces, None
        return header, pieces, segments

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
        return self.owned is (schema or default()).by_name.get(self.name)

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


class Document:
    """A parsed textfile.

    ``meta`` holds every ``# fraisier_textfile <key>: <value>`` line of the file, wherever it was; they are
    written at the top of the file, keys sorted. Each key is read and written only through the
    :class:`~fraisier_textfile.format.bookkeeping.Bookkeeping` its protocol declares."""

    def __init__(self, schema: Schema | None = None) -> None:
        self.schema = schema or default()
        """The families this document owns (rewrites in canonical form, in this order)."""
        self.blocks: dict[str, Block] = {}
        self.meta: dict[str, str] = {}
        self.preamble = ""  # the comments of a file that has no family at all
        # The meta lines as read (see read_vouched): key -> (its value then, the line's bytes). A value still
        # the same object is written back from those bytes, not encoded again: the series' update times are
        # ~30 bytes a series, a fifth of a big file.
        self.meta_read: dict[str, tuple[str, memoryview]] = {}

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
                entries.append((block.name, None if block.raw is not None else crc_of([header]), segments))
            loose = block.raw is not None and _ends_loose(block.raw)
        meta = {key: value for key, value in self.meta.items() if key != layout.KEY}
        if vouched:
            meta[layout.KEY] = layout.render(entries, self.schema.fingerprint)
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
