"""The layout line: how a file this package wrote vouches for itself, so that the next reader can take it as
written instead of checking every line.

Every file the store writes carries one meta line, ``# fraisier_textfile layout: <fingerprint> <block>...``,
that lists, in file order, each family block after the meta lines and the CRC-32 of its bytes::

    fraisier_deployments_total/58.1c2d3e4f/32768.0a1b2c3d/1204.99aabbcc    a family of ours: header, then body
    node_cpu_seconds/r/412.5e6f7a8b                                          another family, kept as its text

A family of ours is its header (stray comments, HELP, TYPE) and its body (sample lines) cut into segments of
about :data:`SEGMENT` bytes at line ends. The fingerprint names the schema the file was written with (families, labels,
bucket bounds) and the format: a file written by a version with other bounds is not vouched for, and is read
and checked line by line (and migrated, migration.migrate_histogram).

Why segments: a merge that changes three series rewrites only the checksums of the segments they fall in
(tens of microseconds), not of the whole family (the deployment histogram is most of a big file). Why CRC-32
and not a hash: zlib computes it at several GB/s, and what it guards against is a file changed by someone else
(an editor, a script, a half-copied file), not a forger: whoever can write the file can already write any
value into it. A file whose layout does not match to the byte is simply read the slow way, never refused for
it: the layout is an accelerator, not a format rule (node_exporter and Go's parser see only a comment).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from itertools import repeat

from fraisier_textfile.format import bookkeeping

KEY = bookkeeping.reserve("layout")
SEGMENT = 1 << 15
"""The body is cut at the first line end past this many bytes: small enough that re-checksumming the segment
an edit falls in is cheap, large enough that a 100,000-series file lists a few hundred segments."""
RAW = "r"

Segment = tuple[int, int]  # (length in bytes, CRC-32)


def segments_of(data: bytes, start: int = 0, end: int | None = None) -> list[Segment]:
    """``data[start:end]`` (whole lines) cut into segments at the first line end past SEGMENT bytes."""
    view = memoryview(data)
    end = len(data) if end is None else end
    found: list[Segment] = []
    while start < end:
        cut = data.find(b"\n", start + SEGMENT, end) + 1 if end - start > SEGMENT else end
        cut = cut or end
        found.append((cut - start, zlib.crc32(view[start:cut])))
        start = cut
    return found


def crc_of(parts: Iterable[bytes | memoryview]) -> Segment:
    """The segment of the concatenation of ``parts``, checksummed piece by piece (no joined copy)."""
    crc = 0
    length = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
        length += len(part)
    return length, crc


def matches(data: bytes, start: int, segments: Sequence[Segment]) -> int:
    """The end of the segments if ``data`` from ``start`` holds exactly them; -1 if not."""
    view = memoryview(data)
    position = start
    for length, crc in segments:
        end = position + length
        if length <= 0 or end > len(data) or zlib.crc32(view[position:end]) != crc:
            return -1
        position = end
    return position


class Claims:
    """What a layout line claims of a file's bytes, its segments at their places, for a reader that takes the file
    as laid out before it checks the checksums (:meth:`hold`): a merge checks them while the disk writes
    (store/vouching.py). Nothing read under claims may be trusted, nor written, until they hold."""

    __slots__ = ("_runs", "_texts", "data", "line", "size")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.line = ""
        """The layout line's value, whose :func:`seal_of` a file as the store wrote it shows in its mtime."""
        self._runs: list[tuple[int, Sequence[Segment]]] = []
        self._texts: list[tuple[int, int]] = []
        self.size = 0
        """The bytes claimed: what checking the claims reads."""

    def claim(self, start: int, segments: Sequence[Segment]) -> int:
        """The end of ``segments`` laid from ``start`` in the data, their checksums claimed (not checked yet);
        -1 if they do not fit in it."""
        end = start
        for length, _ in segments:
            if length <= 0:
                return -1
            end += length
        if end > len(self.data):
            return -1
        self._runs.append((start, segments))
        self.size += end - start
        return end

    def claim_text(self, start: int, end: int) -> None:
        """Claim that ``data[start:end]``, taken as bytes without being decoded (a bookkeeping line held as bytes),
        is UTF-8 text, as the line-by-line reading requires."""
        self._texts.append((start, end))
        self.size += end - start

    def hold(self) -> bool:
        """Whether every segment claimed has its checksum (zlib lets other threads run meanwhile), and every text
        claimed is UTF-8."""
        data = self.data
        if not all(matches(data, start, segments) >= 0 for start, segments in self._runs):
            return False
        view = memoryview(data)
        try:
            for start, end in self._texts:
                _check_utf8(view, start, end)
        except UnicodeDecodeError:
            return False
        return True


class NotAsClaimed(ValueError):
    """Bytes read under a layout line's claims, not checked yet (a file taken at its seal, store/vouching.py), that
    a writer was about to checksum anew do not hold them: the file is read again, line by line."""


def check_claimed(data: bytes, start: int, segments: Sequence[Segment], what: str) -> None:
    """Raise :class:`NotAsClaimed` unless ``data`` from ``start`` holds ``segments``. For a writer about to checksum
    anew bytes it read under claims (a segment it edits, a header, another writer's family): its checksum would
    vouch for bytes nobody checked, and a broken line there would be taken on trust by every reader after it."""
    if matches(data, start, segments) < 0:
        raise NotAsClaimed(f"{what} is not as the layout line claims")


def seal_of(line: str) -> int:
    """The seal of a file whose layout line's value is ``line``: the nanoseconds within its second that the store
    sets the mtime of each file it writes to (store/vouching.py), 1 to 999,999,999. Never 0, which every mtime of a
    filesystem that keeps whole seconds shows."""
    return zlib.crc32(line.encode("utf-8")) % 999_999_999 + 1


_UTF8_PIECE = 1 << 14


def _check_utf8(view: memoryview, start: int, end: int) -> None:
    """Raise UnicodeDecodeError unless ``view[start:end]`` is UTF-8, decoded a piece at a time: one str of a whole
    line held as bytes (a family's update times, hundreds of kilobytes) would be fresh memory for a new process to
    fault in, where pieces reuse the memory of the one before. A piece never ends inside a character: it is
    stretched over the continuation bytes (10xxxxxx) that follow it, so the pieces are valid if and only if the
    whole is."""
    while start < end:
        stop = min(start + _UTF8_PIECE, end)
        while stop < end and view[stop] & 0xC0 == 0x80:
            stop += 1
        str(view[start:stop], "utf-8")
        start = stop


def word(name: str, header: Segment | None, body: Sequence[Segment]) -> str:
    """One block's word of the line (see :meth:`Words.render`)."""
    texts = _segment_texts
    if len(texts) > _SEGMENT_TEXTS:
        texts.clear()
    known = texts.get
    # A merge changes a few of a family's segments: the texts of the others are the same strings again.
    fields = [known(segment) or texts.setdefault(segment, _segment_text(segment)) for segment in body]
    head = f"{name}/{RAW if header is None else _segment_text(header)}"
    return f"{head}/{'/'.join(fields)}" if fields else head


_segment_texts: dict[Segment, str] = {}
"""The text of each segment written lately (see :func:`word`), forgotten past :data:`_SEGMENT_TEXTS` of them."""
_SEGMENT_TEXTS = 4096


class Words:
    """The words of the blocks written last, by name: a merge changes a few segments of a few blocks, and the
    words of the others are the same text again."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[str, tuple[Segment | None, tuple[Segment, ...], str]] = {}

    def render(self, blocks: Iterable[tuple[str, Segment | None, Sequence[Segment]]], fingerprint: str) -> str:
        """The line's value: the schema's fingerprint, then a word per block. Each block: its name, its header's
        segment (None: a family we do not own, whose whole text is in its segments) and its body's segments. Each
        block's word is made again only if its segments changed."""
        last = self._last
        current: dict[str, tuple[Segment | None, tuple[Segment, ...], str]] = {}
        words = [fingerprint]
        for name, header, body in blocks:
            segments = tuple(body)
            known = last.get(name)
            if known is None or known[0] != header or known[1] != segments:
                known = (header, segments, word(name, header, segments))
            current[name] = known
            words.append(known[2])
        self._last = current
        return " ".join(words)


def parse(value: str, fingerprint: str) -> list[tuple[str, Segment | None, list[Segment]]] | None:
    """The blocks of a layout line written with the schema of ``fingerprint``; None if it is not one (another schema, or
    anything else: the file is then read the slow way)."""
    words = value.split(" ")
    if words[0] != fingerprint:
        return None
    blocks: list[tuple[str, Segment | None, list[Segment]]] = []
    try:
        for word in words[1:]:
            name, header, *body = word.split("/")
            # Read leniently (int() takes a sign or blanks): a segment read wrong does not fit the bytes, and the
            # file is then read the slow way. A file is never taken on a layout line alone, only on its checksums.
            segments = [(int(length), int(crc, 16)) for length, _, crc in map(str.partition, body, repeat("."))]
            blocks.append((name, None if header == RAW else _segment(header), segments))
    except ValueError:
        return None
    return blocks


def _segment_text(segment: Segment) -> str:
    return f"{segment[0]}.{segment[1]:08x}"


def _segment(text: str) -> Segment:
    length, _, crc = text.partition(".")
    if not length.isdigit() or len(crc) != 8:
        raise ValueError(text)
    return int(length), int(crc, 16)
