"""format/span.py: a block of ours read from a file is a span of its bytes; a merge finds, changes, removes and
adds series in it without splitting it into lines, and the spliced text is what the lines would give."""

from __future__ import annotations

from fraisier_textfile import catalogue as c
from fraisier_textfile.catalogue import SCHEMA
from fraisier_textfile.format.layout import segments_of
from fraisier_textfile.format.reader import parse
from fraisier_textfile.format.span import BodySpan


def test_an_untouched_block_of_ours_is_copied_not_parsed() -> None:
    lines = [f'fraisier_rollbacks_total{{provider="p{n}",reason="r"}} {n}.0' for n in range(1000)]
    text = "# HELP fraisier_rollbacks_total x\n# TYPE fraisier_rollbacks_total counter\n" + "\n".join(lines) + "\n"
    document = parse(text, SCHEMA)
    block = document.blocks[c.ROLLBACKS.name]
    assert block._lines is None  # nothing split into lines yet
    key = 'fraisier_rollbacks_total{provider="p500",reason="r"}'
    assert block.value(key) == 500.0
    block.set(key, 501.0)
    block.set('fraisier_rollbacks_total{provider="new",reason="r"}', 1.0)
    assert block.remove('fraisier_rollbacks_total{provider="p3",reason="r"}')
    assert block._lines is None
    rendered = document.render()
    assert f"{key} 501.0\n" in rendered and 'p3"' not in rendered
    assert rendered.endswith('fraisier_rollbacks_total{provider="new",reason="r"} 1.0\n')
    assert block.line_count() == 1000 == len(block.lines)
    assert parse(rendered, SCHEMA).blocks[c.ROLLBACKS.name].value(key) == 501.0


def test_the_spliced_pieces_are_the_edited_lines_and_their_segments_the_checksums_of_those_bytes() -> None:
    lines = [f'fraisier_rollbacks_total{{provider="p{n}",reason="r"}} {n}.0' for n in range(3000)]
    data = ("\n".join(lines) + "\n").encode()
    span = BodySpan(data, 0, len(data))
    assert span.value('fraisier_rollbacks_total{provider="p2999",reason="r"}') == 2999.0
    for number in (0, 1, 1500, 2999):  # the first and last lines, two in a row, one mid-segment
        key = f'fraisier_rollbacks_total{{provider="p{number}",reason="r"}}'
        span.set(key, f"{key} 7.0")
    assert span.remove('fraisier_rollbacks_total{provider="p700",reason="r"}')
    new = 'fraisier_rollbacks_total{provider="new",reason="r"}'
    span.set(new, f"{new} 1.0")
    pieces, segments = span.pieces(checksums=True)
    written = b"".join(pieces)
    assert written == ("\n".join(span.lines()) + "\n").encode()
    assert len(span.lines()) == span.line_count() == 3000
    # Each segment listed is the checksum of the bytes it covers, cut at line ends.
    position = 0
    for length, crc in segments:
        assert segments_of(written, position, position + length) == [(length, crc)]
        position += length
    assert position == len(written)


def test_a_series_set_to_the_line_it_has_is_not_an_edit() -> None:
    """A merge adds 0 to the series created at 0 beside the one recorded (a deployment's other statuses): their
    lines stay as read, spliced around nothing and checksummed again nowhere."""
    lines = [f'fraisier_rollbacks_total{{provider="p{n}",reason="r"}} {n}.0' for n in range(100)]
    data = ("\n".join(lines) + "\n").encode()
    span = BodySpan(data, 0, len(data), segments_of(data))
    span.set('fraisier_rollbacks_total{provider="p7",reason="r"}', lines[7])
    assert not span.edited
    pieces, segments = span.pieces(checksums=True)
    assert b"".join(pieces) == data and segments == segments_of(data)
    key = 'fraisier_rollbacks_total{provider="p7",reason="r"}'
    span.set(key, f"{key} 8.0")
    span.set(key, lines[7])  # back to what the file has
    assert b"".join(span.pieces(checksums=True)[0]) == data
