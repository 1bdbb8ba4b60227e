"""The layout line (layout.py): a file the store wrote is read back from its checksums, and is then the same
document as the line-by-line reading gives; a file changed by anyone else, by even one byte, is read line by
line, so the layout never makes the store accept what it would refuse."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fraisier_textfile import MetricsRecorder, TextfileStore
from fraisier_textfile import catalogue as c
from fraisier_textfile.catalogue import SCHEMA
from fraisier_textfile.changes import Changes
from fraisier_textfile.errors import CorruptTextfileError
from fraisier_textfile.format import layout
from fraisier_textfile.format.model import Document
from fraisier_textfile.format.reader import parse, parse_bytes, read_vouched
from fraisier_textfile.format.syntax import ParseError

LAYOUT_PREFIX = b"# fraisier_textfile layout: "


def written_file(directory: Path, providers: int = 40) -> Path:
    """A file of several families, written by the store, big enough for several segments per family."""
    recorder = MetricsRecorder(directory, auto_flush=False)
    for number in range(providers):
        for status in ("success", "failed"):
            recorder.record_deployment_complete(f"provider_{number:03d}", "api", status, 1.5 + number)
        recorder.record_health_check(f"provider_{number:03d}", "http", "pass", 0.25)
    recorder.record_rollback("p", "health", 3.0)
    recorder.flush()
    return directory / "fraisier.prom"


def body_start(data: bytes) -> int:
    """Where the text after the meta lines starts."""
    position = 0
    while data.startswith(b"# fraisier_textfile ", position):
        position = data.index(b"\n", position) + 1
    return position


def slow(data: bytes) -> str:
    """The document the line-by-line reading gives, rendered."""
    return parse(data.decode("utf-8"), SCHEMA, check_histograms=False).render()


def test_a_file_the_store_wrote_is_vouched_for_and_read_as_the_slow_reading_reads_it(tmp_path: Path) -> None:
    data = written_file(tmp_path).read_bytes()
    assert data.count(LAYOUT_PREFIX) == 1
    document = read_vouched(data, SCHEMA)
    assert document is not None
    assert document.render() == slow(data) == data.decode()
    assert all(block._lines is None for block in document.blocks.values() if block.owned)  # nothing split
    # A big family is cut into segments, each listed.
    [value] = [line for line in data.decode().splitlines() if line.startswith(LAYOUT_PREFIX.decode())]
    entries = layout.parse(value[len(LAYOUT_PREFIX) :], SCHEMA.fingerprint)
    assert entries is not None
    assert max(len(body) for _, _, body in entries) > 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_file_changed_by_anyone_else_is_read_line_by_line(tmp_path: Path, data: st.DataObject) -> None:
    path = tmp_path / "fraisier.prom"
    if not path.exists():
        written_file(tmp_path, providers=8)
    original = path.read_bytes()
    start = body_start(original)
    position = data.draw(st.integers(start, len(original) - 1))
    replacement = data.draw(st.sampled_from([b"", b"x", b"1", b" ", b"\n", b"#", b'"', b"\xff", b"9 9"]))
    if original[position : position + 1] == replacement:
        return
    changed = original[:position] + replacement + original[position + 1 :]
    assert read_vouched(changed, SCHEMA) is None
    try:
        expected: str | ParseError = slow(changed)
    except (ParseError, UnicodeDecodeError) as error:
        expected = error if isinstance(error, ParseError) else ParseError("not UTF-8")
    if isinstance(expected, ParseError):
        with pytest.raises(ParseError):
            parse_bytes(changed, SCHEMA, check_histograms=False)
    else:
        assert parse_bytes(changed, SCHEMA, check_histograms=False).render() == expected


def test_a_garbled_line_is_refused_by_the_store_although_the_layout_line_is_intact(tmp_path: Path) -> None:
    path = written_file(tmp_path)
    original = path.read_bytes()
    garbled = original.replace(b"} 1.0\n", b"} 1.0 junk\n", 1)
    assert garbled != original and len(garbled) != len(original)
    path.write_bytes(garbled)
    with pytest.raises(CorruptTextfileError, match="line"):
        TextfileStore(tmp_path).merge(_one_event())
    assert path.read_bytes() == garbled  # refused, left as it was


def test_the_same_length_change_of_a_value_is_noticed(tmp_path: Path) -> None:
    path = written_file(tmp_path)
    original = path.read_bytes()
    key = 'fraisier_deployments_total{provider="provider_003",status="success",fraise_type="api"}'
    changed = original.replace(f"{key} 1.0\n".encode(), f"{key} 7.0\n".encode())
    assert changed != original and len(changed) == len(original)
    assert read_vouched(changed, SCHEMA) is None
    document = parse_bytes(changed, SCHEMA)
    assert document.blocks[c.DEPLOYMENTS.name].value(key) == 7.0


def test_another_versions_layout_is_not_trusted(tmp_path: Path) -> None:
    data = written_file(tmp_path).read_bytes()
    other = data.replace(LAYOUT_PREFIX + SCHEMA.fingerprint.encode(), LAYOUT_PREFIX + b"00000000", 1)
    assert read_vouched(other, SCHEMA) is None
    assert parse_bytes(other, SCHEMA).render() == data.decode()  # read the slow way, and vouched for again when written


def test_a_layout_line_that_does_not_fit_the_file_is_ignored(tmp_path: Path) -> None:
    data = written_file(tmp_path).read_bytes()
    for damaged in (
        data.replace(b"/", b"//", 1),  # an empty field
        data.replace(b"fraisier_deployments_total/1", b"fraisier_deployments_total/2", 1),  # a header length
        data + b"other_metric 1\n",  # text after the blocks it lists
        data.replace(b"fraisier_deployments_total/", b"fraisier_rollbacks_total/", 1),  # a name twice
    ):
        assert read_vouched(damaged, SCHEMA) is None
        parse_bytes(damaged, SCHEMA)  # still a valid file, read line by line


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), merges=st.integers(1, 12))
def test_after_any_merges_the_file_is_vouched_for_and_reads_as_the_slow_reading_does(
    tmp_path: Path, seed: int, merges: int
) -> None:
    """A warm recorder edits, adds and (through forget) removes series merge after merge, re-checksumming only
    the segments it changed: the file it leaves must still be vouched for, to the byte."""
    directory = tmp_path / f"case-{seed}-{merges}"
    written_file(directory, providers=30)
    chance = random.Random(seed)
    recorder = MetricsRecorder(directory, auto_flush=False)
    for _ in range(merges):
        for _ in range(chance.randint(1, 6)):
            provider = f"provider_{chance.randint(0, 45):03d}"  # some new, most existing
            chance.choice([  # type: ignore[no-untyped-call]
                lambda p=provider: recorder.record_deployment_complete(p, "api", "success", chance.random() * 100),
                lambda p=provider: recorder.record_health_check(p, "http", "fail", chance.random()),
                lambda p=provider: recorder.record_deployment_error(p, "TimeoutError"),
            ])()
        recorder.flush()
        if chance.random() < 0.2:
            store = TextfileStore(directory)
            from fraisier_textfile.store.lifecycle import Selection, forget

            forget(store, Selection(matchers=[("provider", f"provider_{chance.randint(0, 45):03d}")], schema=SCHEMA))
        data = (directory / "fraisier.prom").read_bytes()
        document = read_vouched(data, SCHEMA)
        assert document is not None
        assert document.render() == slow(data) == data.decode()


def test_one_document_written_again_after_each_change_is_vouched_for_each_time() -> None:
    """A warm merge writes the same document again and again: the words of the layout line and the headers kept
    from the last write must follow every change (a value, a new series, a block's header, a block added)."""
    document = Document(SCHEMA)
    errors = document.block(c.DEPLOYMENT_ERRORS)
    errors.set('fraisier_deployment_errors_total{provider="p",error_type="e"}', 1.0)
    saved, layout.SEGMENT = layout.SEGMENT, 60  # several segments to the block: one of them changes at a time
    try:
        for number in range(1, 40):
            errors.set(f'fraisier_deployment_errors_total{{provider="p{number % 7}",error_type="e"}}', number)
            if number % 10 == 0:
                errors.comments.append(f"# note {number}")
            if number == 20:
                document.block(c.ROLLBACKS).set('fraisier_rollbacks_total{provider="p",reason="r"}', 1.0)
            data = b"".join(document.parts())
            vouched = read_vouched(data, SCHEMA)
            assert vouched is not None, number
            assert b"".join(vouched.parts()) == data == parse(data.decode(), SCHEMA).render().encode()
            assert vouched.blocks[c.DEPLOYMENT_ERRORS.name].comments == errors.comments
    finally:
        layout.SEGMENT = saved


def test_a_histogram_with_other_bounds_is_not_vouched_for() -> None:
    from fraisier_textfile.store.lifecycle import migrate_histograms

    text = (
        f"# TYPE {c.ROLLBACK_DURATION.name} histogram\n"
        f'{c.ROLLBACK_DURATION.name}_bucket{{provider="p",le="1.0"}} 1\n'
        f'{c.ROLLBACK_DURATION.name}_bucket{{provider="p",le="+Inf"}} 1\n'
        f'{c.ROLLBACK_DURATION.name}_sum{{provider="p"}} 0.5\n{c.ROLLBACK_DURATION.name}_count{{provider="p"}} 1\n'
    )
    family = c.ROLLBACK_DURATION
    other = c.Family(family.name, family.kind, family.labels, family.help, buckets=(1.0,))
    document = parse(text, SCHEMA, check_histograms=False)
    migrate_histograms(document, targets=[other])
    assert LAYOUT_PREFIX not in document.render().encode()


def _one_event() -> Changes:

    changes = Changes()
    changes.add(c.ROLLBACKS, ("p", "health"), 1.0)
    return changes


def test_meta_lines_with_non_ascii_values_are_written_back_as_they_were(tmp_path: Path) -> None:
    recorder = MetricsRecorder(tmp_path)
    recorder.record_deployment_complete("çà-日本", "api", "success", 1.0)
    recorder.record_deployment_complete("plain", "api", "success", 1.0)
    path = tmp_path / "fraisier.prom"
    data = path.read_bytes()
    assert "çà-日本".encode() in data.split(b"\n# HELP")[0]  # in a meta line (the series' update times)
    document = read_vouched(data, SCHEMA)
    assert document is not None
    assert b"".join(document.parts()) == data
    MetricsRecorder(tmp_path).record_deployment_complete("plain", "api", "failed", 1.0)
    again = path.read_bytes()
    assert read_vouched(again, SCHEMA) is not None and again.decode() == slow(again)


def reading(document: Document) -> list[tuple[object, ...]]:
    """What a reader of the document sees: meta, then each block's name, header, comments, text and lines."""
    return [
        (dict(document.meta), document.preamble),
        *((b.name, b.help, b.type, b.owned, b.raw, list(b.comments), list(b.lines)) for b in document.blocks.values()),
    ]


@pytest.mark.parametrize(
    "text",
    [
        # The comments and blank lines at the end of a file go to the family last read, here a family split in
        # two places: written back, that family is no longer last, and read line by line they go to the next.
        'other 1\nfraisier_rollbacks_total{provider="p",reason="r"} 1.0\nother 2\n\n# trailing\n',
        '# TYPE other gauge\nfraisier_rollbacks_total{provider="p",reason="r"} 1\n# HELP other Some help\n# note\n',
        'other 1\nfraisier_rollbacks_total{provider="p",reason="r"} 1\nother 2\n# HELP other\n',
        'fraisier_rollbacks_total{provider="p",reason="r"} 1\na 1\nb 1\na 2\n  \t\n',
    ],
    ids=["blank-and-comment", "comment-after-help", "help-without-text", "blank-between-foreign-families"],
)
def test_a_family_written_before_comments_that_the_next_family_would_take_is_read_alike(text: str) -> None:
    data = b"".join(parse(text, SCHEMA).parts())
    vouched = read_vouched(data, SCHEMA)
    if vouched is not None:
        assert reading(vouched) == reading(parse(data.decode(), SCHEMA))
    # Written once more from either reading, the file is the same, and is vouched for again.
    again = b"".join(parse_bytes(data, SCHEMA).parts())
    assert again == b"".join(parse(data.decode(), SCHEMA).parts())
    document = read_vouched(again, SCHEMA)
    assert document is not None and reading(document) == reading(parse(again.decode(), SCHEMA))


_D = c.DEPLOYMENT_ERRORS.name
_R = c.ROLLBACK_DURATION.name
_LINES = [
    "# fraisier_textfile foo: bar", "# fraisier_textfile k: été", "# fraisier_textfile a b: x", "# fraisier_textfile",
    " # stray", "", "\t", "# HELP other_metric Some help", "# TYPE other_metric gauge", "other_metric 1",
    'other_metric{a="x"} 2', "# TYPE other_summary summary", "other_summary_sum 1", "other_summary_count 2",
    "other_summary_sum 3", "# HELP other_metric", f'{_D}{{provider="p",error_type="e"}} 1.0',
    f'{_D}{{error_type="e2",provider="p"}} 2', f'{_D}{{provider="p",error_type="e3",extra="z"}} 3.0',
    f'{_D} {{ provider = "q" , error_type = "e4" , }} 4e0', f"# HELP {_D} old help", f"# TYPE {_D} untyped",
    f"{_D}_count 1", f'{_D}{{provider="é",error_type="\\\\n\\""}} 1.0', f"# TYPE {_R} histogram",
    f'{c.PROVIDER_AVAILABILITY.name}{{provider="q"}} NaN',
]


def _histogram_series(provider: str, sum_first: bool) -> list[str]:
    buckets = [f'{_R}_bucket{{provider="{provider}",le="{bound}"}} {n}' for n, bound in
               enumerate(c.ROLLBACK_DURATION.bucket_bounds)]
    tail = [f'{_R}_sum{{provider="{provider}"}} 1.5', f'{_R}_count{{provider="{provider}"}} {len(buckets) - 1}']
    return tail + buckets if sum_first else buckets + tail


@settings(max_examples=150, deadline=None)
@example(  # a foreign family split around one of ours, then comments: see format.model._ends_loose
    chunks=[["other_metric 1"], [f'{_D}{{provider="p",error_type="e"}} 1.0'], ["other_metric{a=\"x\"} 2"], [""],
            [" # stray"]],
    operations=[("add", "q")],
)
@given(
    chunks=st.lists(st.one_of(
        st.sampled_from(_LINES).map(lambda line: [line]),
        st.builds(_histogram_series, st.sampled_from(["p", "q", "é"]), st.booleans()),
    ), max_size=14),
    operations=st.lists(st.tuples(st.sampled_from(["add", "observe", "forget", "lines"]),
                                  st.sampled_from(["p", "q", "é", "z"])), max_size=6),
)
def test_any_file_written_back_after_any_changes_reads_alike_from_its_layout_and_line_by_line(
    chunks: list[list[str]], operations: list[tuple[str, str]]
) -> None:
    from pathlib import Path as _Path

    from fraisier_textfile.changes import Changes
    from fraisier_textfile.store.lifecycle import Selection, sweep
    from fraisier_textfile.store.rules import apply_changes as _apply

    try:
        document = parse("".join(line + "\n" for chunk in chunks for line in chunk), SCHEMA)
    except ParseError:
        return
    saved, layout.SEGMENT = layout.SEGMENT, 50  # several segments to a family, a histogram's lines straddling them
    try:
        for operation, provider in [*operations, ("", "")]:
            data = b"".join(document.parts())
            vouched = read_vouched(data, SCHEMA)
            slow = parse(data.decode(), SCHEMA)  # never refuses what its writer wrote
            if vouched is not None:
                assert b"".join(vouched.parts()) == data
                again = read_vouched(data, SCHEMA)
                assert again is not None and reading(again) == reading(slow)
            document = vouched if vouched is not None else slow
            changes = Changes()
            if operation == "add":
                changes.add(c.DEPLOYMENT_ERRORS, (provider, "e"), 1.0)
            elif operation == "observe":
                changes.observe(c.ROLLBACK_DURATION, (provider,), 7.0)
            elif operation == "forget":
                sweep(document, Selection(matchers=[("provider", provider)], schema=SCHEMA), 0.0, remove=True)
            elif operation == "lines":
                for block in document.blocks.values():
                    block.lines  # noqa: B018 (split into lines: written from them, cut into segments anew)
            _apply(document, changes, _Path("fraisier.prom"), 0.0)
    finally:
        layout.SEGMENT = saved


@pytest.mark.parametrize("character", ["é", "€", "😀"], ids=["2 bytes", "3 bytes", "4 bytes"])
def test_a_text_claimed_is_utf8_wherever_its_characters_fall_against_the_pieces_checked(character: str) -> None:
    """A line held as bytes (the update times) is checked a piece at a time: a character cut by a piece's end is
    still one character, and a broken one is refused wherever it falls."""
    encoded = character.encode("utf-8")
    for shift in range(len(encoded) + 1):
        text = b"a" * (layout._UTF8_PIECE - shift) + encoded * 3 + b" tail"
        claims = layout.Claims(text)
        claims.claim_text(0, len(text))
        assert claims.hold(), shift
        for broken in (text[: layout._UTF8_PIECE] + text[layout._UTF8_PIECE + 1 :],  # a byte of it lost
                       text[: layout._UTF8_PIECE] + b"\x80" + text[layout._UTF8_PIECE :]):  # a stray continuation
            claims = layout.Claims(broken)
            claims.claim_text(0, len(broken))
            assert not claims.hold(), (shift, broken[layout._UTF8_PIECE - 4 : layout._UTF8_PIECE + 4])
