"""The merge rules (fraisier_textfile/store/rules.py): how each kind of change meets the file's value, and how
changes from several processes combine before they do."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest

from fraisier_textfile import catalogue as c
from fraisier_textfile import changes as events
from fraisier_textfile.catalogue import SCHEMA
from fraisier_textfile.changes import Changes
from fraisier_textfile.errors import CorruptTextfileError, InvalidValueError
from fraisier_textfile.format.model import Document
from fraisier_textfile.format.reader import parse
from fraisier_textfile.store.rules import (
    CLOCK_TOLERANCE,
    apply_changes,
    check_summable,
    clock_is_behind,
    combine,
    series_key_of,
)

PATH = Path("fraisier.prom")
DEPLOYED = 'fraisier_deployments_total{provider="p",status="success",fraise_type="api"}'
AVAILABLE = 'fraisier_provider_availability{provider="p"}'
LAST = 'fraisier_last_deployment_timestamp_seconds{provider="p",fraise_type="api",status="success"}'


def values(changes: Changes, text: str = "", now: float = 1_000_000.0, behind: bool = False) -> dict[str, float]:
    document = parse(text, SCHEMA)
    apply_changes(document, changes, PATH, now, behind)
    return dict(sample for block in parse(document.render(), SCHEMA).blocks.values() for sample in block.samples())


def test_counters_are_summed_with_the_file_gauges_replace_it_and_a_maximum_keeps_the_larger() -> None:
    changes = Changes()
    changes.add(c.DEPLOYMENTS, ("p", "success", "api"), 2)
    changes.set_latest(c.PROVIDER_AVAILABILITY, ("p",), 0)
    changes.set_maximum(c.LAST_DEPLOYMENT, ("p", "api", "success"), 500_000.0)
    text = f"{DEPLOYED} 3\n{AVAILABLE} 1\n{LAST} 600000\n"
    merged = values(changes, text)
    assert merged[DEPLOYED] == 5 and merged[AVAILABLE] == 0 and merged[LAST] == 600_000


def test_a_histogram_is_summed_bucket_by_bucket_and_stays_cumulative() -> None:
    first, second = Changes(), Changes()
    first.observe(c.ROLLBACK_DURATION, ("p",), 7.0)
    second.observe(c.ROLLBACK_DURATION, ("p",), 70.0)
    merged = values(combine([first, second]))
    buckets = [merged[f'fraisier_rollback_duration_seconds_bucket{{provider="p",le="{bound}"}}']
               for bound in c.ROLLBACK_DURATION.bucket_bounds]
    assert buckets == sorted(buckets) and buckets[-1] == 2
    assert merged['fraisier_rollback_duration_seconds_sum{provider="p"}'] == 77.0


def test_combining_keeps_each_kinds_rule_and_the_later_latest_value() -> None:
    early, late = Changes(), Changes()
    early.add(c.DEPLOYMENTS, ("p", "success", "api"), 1)
    late.add(c.DEPLOYMENTS, ("p", "success", "api"), 1)
    early.set_latest(c.PROVIDER_AVAILABILITY, ("p",), 1)
    late.set_latest(c.PROVIDER_AVAILABILITY, ("p",), 0)
    early.set_maximum(c.LAST_DEPLOYMENT, ("p", "api", "success"), 9.0)
    late.set_maximum(c.LAST_DEPLOYMENT, ("p", "api", "success"), 3.0)
    early.retired_markers.add("m1")
    late.retired_markers.add("m2")
    combined = combine([early, late])
    key = (c.DEPLOYMENTS, ("p", "success", "api"))
    assert combined.added[key] == 2
    assert combined.latest[(c.PROVIDER_AVAILABILITY, ("p",))] == 0
    assert combined.maximum[(c.LAST_DEPLOYMENT, ("p", "api", "success"))] == 9.0
    assert combined.retired_markers == {"m1", "m2"}


def test_a_stored_time_far_ahead_of_the_clock_is_replaced_unless_this_clock_is_the_one_behind() -> None:
    now = 1_000_000.0
    ahead = now + CLOCK_TOLERANCE * 10
    changes = Changes()
    changes.set_maximum(c.LAST_DEPLOYMENT, ("p", "api", "success"), now)
    assert values(changes, f"{LAST} {ahead!r}\n", now)[LAST] == now
    assert values(changes, f"{LAST} {ahead!r}\n", now, behind=True)[LAST] == ahead


def test_a_sum_that_would_overflow_is_refused_before_anything_is_written() -> None:
    changes = Changes()
    changes.add(c.DEPLOYMENTS, ("p", "success", "api"), 1.7e308)
    document = parse(f"{DEPLOYED} 1.7e308\n", SCHEMA)
    before = document.render()
    with pytest.raises(InvalidValueError):
        check_summable(document, changes, PATH)
    assert document.render() == before


ERROR = series_key_of(c.DEPLOYMENT_ERRORS, ("bare_metal", "timeout"))
MY_PATH = Path("/nonexistent/fraisier.prom")


def errors(count: int) -> Changes:
    changes = Changes()
    for _ in range(count):
        events.deployment_error(changes, "bare_metal", "timeout")
    return changes


def test_combined_changes_apply_as_their_parts_one_after_the_other() -> None:
    parts = []
    for number, now in enumerate((1_700_000_300.0, 1_700_000_100.0, 1_700_000_200.0)):
        changes = errors(number + 1)
        events.deployment_complete(changes, "bare_metal", "api", "success", 10.0 * (number + 1), now=now)
        parts.append(changes)
    one_by_one, at_once = Document(SCHEMA), Document(SCHEMA)
    for part in parts:
        apply_changes(one_by_one, part, MY_PATH, 1_700_000_400.0)
    apply_changes(at_once, combine(parts), MY_PATH, 1_700_000_400.0)
    assert at_once.render() == one_by_one.render()
    assert at_once.block(c.DEPLOYMENT_ERRORS).value(ERROR) == 6
    last = series_key_of(c.LAST_DEPLOYMENT, ("bare_metal", "api", "success"))
    assert at_once.block(c.LAST_DEPLOYMENT).value(last) == 1_700_000_300.0  # the latest time, not the last given


def test_a_counter_the_file_holds_as_nan_is_named_not_summed_into() -> None:
    document = Document(SCHEMA)
    document.block(c.DEPLOYMENT_ERRORS).set(ERROR, float("nan"))
    with pytest.raises(CorruptTextfileError, match="remove that line"):
        apply_changes(document, errors(1), MY_PATH, 1.0)


def test_a_file_written_in_this_clocks_future_says_the_clock_is_behind(tmp_path: Path) -> None:
    path = tmp_path / "fraisier.prom"
    path.write_text("")
    assert not clock_is_behind(path, path.stat().st_mtime_ns)
    ahead = time.time() + 3600
    os.utime(path, (ahead, ahead))
    assert clock_is_behind(path, path.stat().st_mtime_ns)
    assert not clock_is_behind(tmp_path / "missing", None)


def test_a_series_created_at_0_beside_the_one_recorded_is_left_as_the_file_has_it() -> None:
    """A zero change (a sibling status created at 0 so that ``increase()`` sees its first event) adds nothing
    to a series the file already holds: its lines stay as they are, even a value no sum could go into (only a
    sum into it is refused, as above), and a series the file lacks is still created at 0."""
    failed = series_key_of(c.DEPLOYMENT_DURATION, ("p", "failed"), "_sum")
    text = (
        f'{DEPLOYED.replace("success", "failed")} NaN\n'
        + "".join(f'fraisier_deployment_duration_seconds_bucket{{provider="p",status="failed",le="{bound}"}} 1\n'
                  for bound in c.DEPLOYMENT_DURATION.bucket_bounds)
        + f"{failed} -3\n" + series_key_of(c.DEPLOYMENT_DURATION, ("p", "failed"), "_count") + " 1\n"
    )
    changes = Changes()
    events.deployment_complete(changes, "p", "api", "success", 4.0, now=1_000_000.0)
    merged = values(changes, text)
    assert math.isnan(merged[DEPLOYED.replace("success", "failed")]) and merged[failed] == -3
    assert merged[DEPLOYED] == 1 and merged[DEPLOYED.replace("success", "rolled_back")] == 0
    assert merged[series_key_of(c.DEPLOYMENT_DURATION, ("p", "rolled_back"), "_count")] == 0
