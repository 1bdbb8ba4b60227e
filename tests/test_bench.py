"""The benchmarks still run (a quick pass; their figures are read by people, never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .processes import REPOSITORY, binary


@pytest.mark.slow
def test_the_benchmarks_run_and_our_store_loses_nothing_in_the_race() -> None:
    binary("prometheus-pushgateway")  # the race's peer: missing fails under CI=true
    result = subprocess.run(
        [sys.executable, str(REPOSITORY / "bench" / "run_all.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert set(report) == {"flush", "cli", "race", "record", "floor", "backlog"}
    # The first record call after a backlog applies a bounded share of it (a count, not a timing).
    assert all(case["applied_by_the_call"] <= 256 for case in report["backlog"]["cases"].values())
    [ours] = [row for row in report["race"]["results"] if row["method"] == "ours"]
    assert ours["lost"] == 0 and ours["errors"] == 0
    assert ours["final_count"] == report["race"]["expected"]
    [per_process] = [row for row in report["race"]["results"] if row["method"] == "pushgateway_per_process"]
    assert per_process["lost"] == 0 and per_process["groups_left"] == report["race"]["processes"]
    # The recorder as shipped loses nothing in the floor's race either, and each mode raced every event.
    floor_race = {row["case"]: row for row in report["floor"]["race"]["results"]}
    assert floor_race["recorder"]["lost"] == 0 and floor_race["recorder_durable"]["lost"] == 0
    assert floor_race["group_floor"]["lost"] == 0  # the floor of our design counts each event once too
    assert all(row["expected"] == row["counted"] + row["lost"] for row in floor_race.values())
    assert report["floor"]["held_lock"]["attempted"] >= 1
