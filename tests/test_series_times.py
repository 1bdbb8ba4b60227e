"""The last-update times of series (fraisier_textfile/store/series_times.py): one meta line per family, edited
in place or in bulk alike, whatever a label value holds."""

from __future__ import annotations

import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from fraisier_textfile import catalogue as c
from fraisier_textfile import changes as events
from fraisier_textfile.format.bookkeeping import RawValue
from fraisier_textfile.store.series_times import SeriesTimes

from .stores import record, store_at
from .values import sample_values


def test_a_series_whose_label_value_holds_a_newline_gets_an_update_time_on_one_line(textfile_dir: Path) -> None:
    """The text format escapes a newline in a label value (node_exporter serves it): its update time must be
    written on the one meta line too (a merge that scanned its family failed with a bare ValueError)."""
    path = textfile_dir / "fraisier.prom"
    textfile_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(f'{c.ROLLBACKS.name}{{provider="a\\nb",reason="r"}} 1\n')
    now = time.time()
    for offset in (0, 2 * 3600, 4 * 3600, 8 * 3600):  # its time is set by the first scan (at 4 h)
        store = store_at(textfile_dir, now + offset)
        store.lifecycle.expire_after = 3 * 3600
        record(store, events.rollback, f"p{offset}", "manual", 1.0)
    values = sample_values(path)
    assert f'{c.ROLLBACKS.name}{{provider="a\\nb",reason="r"}}' not in values  # expired with its time
    assert values[f'{c.ROLLBACKS.name}{{provider="p{8 * 3600}",reason="manual"}}'] == 1


def test_update_times_in_place_and_in_bulk_agree() -> None:
    times = SeriesTimes("100 a=100 b=105 c%2Cd=110")
    times.touch(["b", "e", "c%2Cd"], 120)
    in_place = times.render()
    assert in_place.text() == "100 a=100 b=120 c%2Cd=120 e=120"
    bulk = SeriesTimes("100 a=100 b=105 c%2Cd=110")
    bulk.entries()
    bulk.touch(["b", "e", "c%2Cd"], 120)
    assert bulk.render() == in_place
    assert SeriesTimes(in_place).entries() == {"a": 100, "b": 120, "c%2Cd": 120, "e": 120}


@settings(max_examples=200, deadline=None)
@given(merges=st.lists(st.tuples(st.lists(st.sampled_from(["a", "b", "c%2Cd", "é", "e", "f"]), max_size=5),
                                  st.integers(95, 130)), max_size=40))
def test_edits_in_place_merge_after_merge_agree_with_the_bulk_path(merges: list[tuple[list[str], int]]) -> None:
    """A long-lived process edits its line merge after merge: the line ends in pieces (spans of the line read
    and the minutes put between them), joined again past a bound; every edit must give what the bulk path
    gives, and times never go back."""
    read = b"# x\n100 a=100 b=105 c%2Cd=110 \xc3\xa9=90\n"
    line = RawValue([(read, 4, len(read) - 1)])
    expected = {"a": 100, "b": 105, "c%2Cd": 110, "é": 90}
    for keys, minute in merges:
        times = SeriesTimes(line)
        times.touch(keys, minute)
        line = times.render()
        for key in keys:
            expected[key] = max(expected.get(key, minute), minute)
        assert SeriesTimes(line).entries() == expected
        assert SeriesTimes(line).oldest == 100
    untouched = [key for key in ("a", "b", "c%2Cd") if all(key not in keys for keys, _ in merges)]
    if untouched and len(line.spans) > 1:  # what no merge changed is still written from the bytes read
        assert any(data is read for data, _, _ in line.spans)
