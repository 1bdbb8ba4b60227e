"""A block's sample lines as a span of the file's bytes, changed without being split into lines.

A family of ours read from a file in our own canonical format is one span of the file's bytes. A merge changes
a few of its series: this finds them in the span when asked (a search from the last hit, since the lines of one
series are next to each other), keeps the changed and new lines apart, and splices them in when the block is
written, so that the unchanged bytes are handed to the writer as slices of the file read, never copied, parsed
or checksummed again. Only the segments (layout.py) an edit falls in are checksummed again.

The block (model.py) owns the span and turns it into a list of lines the first time anything else is asked of
it (:meth:`BodySpan.lines`)."""

from __future__ import annotations

from fraisier_textfile.format.layout import Segment, check_claimed, crc_of, segments_of


class BodySpan:
    """``data[start:end]``: sample lines of ours as we write them, each ending in a newline, and the edits made
    to them since they were read."""

    __slots__ = (
        "_added", "_added_written", "_claimed", "_edited_segments", "_edits", "_hint", "_line_count", "_positions",
        "data", "end", "segments", "start",
    )

    def __init__(self, data: bytes, start: int, end: int, segments: list[Segment] | None = None) -> None:
        self.data = data
        self.start = start
        self.end = end
        self.segments = segments
        """The checksums of data[start:end] as read (see layout.py); None: not known yet."""
        self._claimed = segments is not None
        """The segments are the layout line's claims, perhaps never checked (a file taken at its seal): each is
        checked before an edit has it checksummed anew (see :meth:`pieces`)."""
        self._edits: dict[str, str] = {}  # key -> line replacing its line in the span ("" removes it)
        self._added: dict[str, str] = {}  # key -> line of a series not in the span
        self._positions: dict[str, int] = {}  # where a key's line starts in data, -1 if it is not there
        # Segment number -> the edits in it (position, line) and its checksum with them: a warm merge checksums
        # again only the segments whose edits changed.
        self._edited_segments: dict[int, tuple[tuple[tuple[int, str], ...], Segment]] = {}
        self._added_written: tuple[bytes, list[Segment]] | None = None
        self._hint = start
        self._line_count: int | None = None  # of the span as read

    @property
    def edited(self) -> bool:
        """Whether a line was changed, removed or added since the span was read."""
        return bool(self._edits or self._added)

    def lines(self) -> list[str]:
        """The sample lines as edited, in file order (added ones last)."""
        lines = self.data[self.start : self.end].decode("utf-8").split("\n")
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
        return lines

    def head(self, count: int) -> list[str]:
        """The first ``count`` lines as read (fewer if the span has fewer), without splitting the rest."""
        data = self.data
        end = self.start
        for _ in range(count):
            newline = data.find(b"\n", end, self.end)
            if newline < 0:
                break
            end = newline + 1
        return data[self.start : end].decode("utf-8").split("\n")[:-1]

    def line_count(self) -> int:
        # The span never changes once read (edits are kept apart): counted once, not at every merge.
        if self._line_count is None:
            self._line_count = self.data.count(b"\n", self.start, self.end)
        removed = sum(1 for line in self._edits.values() if not line)
        return self._line_count - removed + sum(1 for line in self._added.values() if line)

    def size(self) -> int:
        """The bytes of the lines, or a bound on them once edited (a replaced line still counts)."""
        size = self.end - self.start
        if self._edits or self._added:
            size += sum(len(line) + 1 for line in self._added.values() if line)
            size += sum(len(line) for line in self._edits.values())
        return size

    # Series

    def _position(self, key: str) -> int:
        """Where the line of ``key`` starts in data: a search from the last hit, lines of one series being next
        to each other, so the few series a merge touches are found without reading the rest."""
        position = self._positions.get(key)
        if position is not None:
            return position
        data = self.data
        start, end = self.start, self.end
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
        line = self._added.get(key)
        if line is None:
            line = self._edits.get(key)
        if line is not None:
            return float(line[len(key) + 1 :]) if line else None
        position = self._position(key)
        if position < 0:
            return None
        data = self.data
        value_start = position + (len(key) if key.isascii() else len(key.encode("utf-8"))) + 1
        return float(data[value_start : data.index(b"\n", value_start)])

    def set(self, key: str, line: str) -> None:
        """Make ``line`` the series ``key``'s: in its place if the span has it, else added at the end."""
        if key in self._added or self._position(key) < 0:
            self._added[key] = line
            self._added_written = None
        elif key in self._edits or not self._reads(self._positions[key], line):
            self._edit(key, line)
        # else the line is as read (a series created at 0 beside the one recorded, 0 added): nothing to splice

    def _reads(self, position: int, line: str) -> bool:
        """Whether the line at ``position`` in data is ``line``."""
        encoded = line.encode("utf-8")
        end = position + len(encoded)
        return end < self.end and self.data[end] == 0x0A and self.data.startswith(encoded, position)

    def remove(self, key: str) -> bool:
        """Drop the series ``key``; False if there was no such series."""
        if self._added.pop(key, None) is not None:
            self._added_written = None
            return True
        if self._position(key) < 0 or self._edits.get(key) == "":
            return False
        self._edit(key, "")
        return True

    def _edit(self, key: str, line: str) -> None:
        self._edits[key] = line

    # Writing

    def pieces(self, checksums: bool) -> tuple[list[bytes | memoryview], list[Segment]]:
        """The lines as edited, in pieces (the unchanged runs are slices of the file read), and their segments
        for the layout line (empty without ``checksums``: then no segment is checksummed)."""
        data = self.data
        view = memoryview(data)
        if checksums and self.segments is None:
            self.segments = segments_of(data, self.start, self.end)
        # Without checksums, an unknown cut is one span: the pieces are the same, only no segment is summed.
        spans = self.segments if self.segments is not None else [(self.end - self.start, 0)]
        if not self._edits and not self._added:  # as read: one piece, its segments as they were
            return ([view[self.start : self.end]] if self.end > self.start else []), list(spans)
        pieces: list[bytes | memoryview] = []
        segments: list[Segment] = []
        edits = sorted((self._positions[key], key) for key in self._edits)
        unchanged_from = self.start  # the start of the run of unchanged segments not yet added to pieces
        position = self.start
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
            its_edits: list[tuple[int, str]] = []
            cursor = position
            while next_edit < len(edits) and edits[next_edit][0] < end:
                at, key = edits[next_edit]
                edited.append(view[cursor:at])
                line = self._edits[key]
                its_edits.append((at, line))
                if line:
                    edited.append(f"{line}\n".encode())
                cursor = data.index(b"\n", at) + 1
                next_edit += 1
            edited.append(view[cursor:end])
            if checksums:
                known = self._edited_segments.get(number)
                if known is None and self._claimed:
                    check_claimed(data, position, [(length, crc)], "a segment edited")
                if known is None or known[0] != tuple(its_edits):
                    known = self._edited_segments[number] = (tuple(its_edits), crc_of(edited))
                segment = known[1]
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
        return pieces, segments


def _find_line(data: bytes, needle: bytes, start: int, end: int, body_start: int) -> int:
    """The first line of ``data`` (whose lines begin at ``body_start``) starting with ``needle`` at or after
    ``start``, within ``end``; -1 if none."""
    position = data.find(needle, start, end)
    while position > body_start and data[position - 1] != 0x0A:
        position = data.find(needle, position + 1, end)
    return position
