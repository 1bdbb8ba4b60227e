"""The bookkeeping lines' codec (fraisier_textfile/format/bookkeeping.py): one owner per key, one line per value."""

from __future__ import annotations

import pytest

from fraisier_textfile.catalogue import SCHEMA
from fraisier_textfile.format import bookkeeping
from fraisier_textfile.format.bookkeeping import Bookkeeping, KeyedBookkeeping, WordList, WordSet
from fraisier_textfile.format.reader import parse
from fraisier_textfile.store import handovers, inflight, lifecycle


def test_every_protocol_declares_its_own_key_and_a_second_declaration_is_refused() -> None:
    keys = {inflight.RETIRED_MARKERS.key, handovers.APPLIED.key, lifecycle.UPDATED.prefix}
    assert keys == {"retired-markers", "applied-handovers", "updated-"}
    for taken in ("retired-markers", "applied-handovers", "layout", "updated-fraisier_rollbacks_total"):
        with pytest.raises(ValueError, match="declared twice"):
            WordSet(taken)
    with pytest.raises(ValueError, match="declared twice"):
        KeyedBookkeeping("upd", str, str)  # would cover updated-*


@pytest.mark.parametrize("key", ["", "a:b", "a b", "a\tb", "a\nb"])
def test_a_key_that_cannot_stand_on_one_comment_line_is_refused(key: str) -> None:
    with pytest.raises(ValueError, match="bookkeeping key"):
        bookkeeping.reserve(key)


def test_a_word_set_is_written_sorted_and_an_empty_one_removes_its_line() -> None:
    line = WordSet("test-word-set", declare=False)
    document = parse("# fraisier_textfile test-word-set: b a\n", SCHEMA)
    assert line.get(document) == {"a", "b"}
    line.add(document, ["c"])
    assert document.meta["test-word-set"] == "a b c"
    line.put(document, frozenset())
    assert "test-word-set" not in document.meta
    assert line.get(document) == frozenset()


@pytest.mark.parametrize("word", ["a b", "a\nb", ""])
def test_a_word_that_would_split_or_break_the_line_is_refused_when_put(word: str) -> None:
    line = WordSet("test-bad-word", declare=False)
    document = parse("", SCHEMA)
    with pytest.raises(ValueError):
        line.put(document, frozenset({word}))
    assert document.meta == {}


def test_a_word_list_keeps_the_order_it_was_given() -> None:
    line = WordList.__new__(WordList)
    Bookkeeping.__init__(line, "test-word-list", lambda t: tuple(t.split()), " ".join, declare=False)
    document = parse("", SCHEMA)
    line.put(document, ("z", "a", "m"))
    assert document.meta["test-word-list"] == "z a m"
    assert line.get(document) == ("z", "a", "m")


def test_an_unchanged_value_stays_the_string_read_so_the_writer_copies_its_bytes() -> None:
    document = parse("# fraisier_textfile retired-markers: m1 m2\n", SCHEMA)
    before = document.meta["retired-markers"]
    inflight.RETIRED_MARKERS.put(document, frozenset({"m2", "m1"}))
    assert document.meta["retired-markers"] is before


def test_a_value_of_more_than_one_line_is_refused() -> None:
    line = Bookkeeping("test-text", str, str, declare=False)
    with pytest.raises(ValueError, match="not one line"):
        line.put(parse("", SCHEMA), "a\nb")
