"""The merge rules (fraisier_textfile/store/rules.py): how each kind of change meets the file's value, and how
changes from several processes combine before they do."""

from __future__ import annotations

from pathlib import Path

import pytest

from fraisier_textfile import catalogue as c
from fraisier_textfile.changes import Changes
from fraisier_textfile.errors import InvalidValueError
from fraisier_textfile.format.reader import parse
from fraisier_textfile.store.rules import CLOCK_TOLERANCE, apply_changes, check_summable, combine

PATH = Path("fraisier.prom")
DEPLOYED = 'fraisier_deployments_total{provider="p",status="success",fraise_type="api"}'
AVAILABLE = 'fraisier_provider_availability{provider="p"}'
LAST = 'fraisier_last_deployment_timestamp_seconds{provider="p",fraise_type="api",status="success"}'


def values(changes: Changes, text: str = "", now: float = 1_000_000.0, behind: bool = False) -> dict[str, float]:
    document = parse(text)
    apply_changes(document, changes, PATH, now, behind)
    return dict(sample for block in parse(document.render()).blocks.values() for sample in block.samples())


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
    document = parse(f"{DEPLOYED} 1.7e308\n")
    before = document.render()
    with pytest.raises(InvalidValueError):
        check_summable(document, changes, PATH)
    assert document.render() == before
