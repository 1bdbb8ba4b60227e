"""The benchmarks still run (a quick pass; their figures are read by people, never asserted here), and the floors
they compare with do what they say (bench_floor's design floor: the store's merge, byte for byte)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

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


BENCH = REPOSITORY / "bench"
MADE_SERIES = 2_000
"""Enough that the counter family's body is more than one segment (layout.SEGMENT): the words of the segments the
event leaves alone must come through as they were."""


@pytest.fixture(scope="module")
def made_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bench_floor.make_file's file, made once by a process of its own (bench/ is not a package)."""
    directory = tmp_path_factory.mktemp("made") / "textfile"
    script = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import bench_floor; "
              "bench_floor.make_file(Path(sys.argv[2]), int(sys.argv[3]))")
    subprocess.run([sys.executable, "-c", script, str(BENCH), str(directory), str(MADE_SERIES)], check=True,
                   timeout=120)
    return directory / "fraisier.prom"


def merged_at(clock: float, worker: str, directory: Path) -> None:
    """bench/_floor_workers.py ``worker`` run on ``directory`` by a new process whose clock stands still at ``clock``
    (real faketime): two processes so stopped record the same last-deployment time and update-time minute."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(clock))
    result = subprocess.run(
        [binary("faketime"), "-f", stamp, sys.executable, str(BENCH / "_floor_workers.py"), worker, str(directory)],
        capture_output=True, text=True, timeout=120, cwd=directory, env={**os.environ, "TZ": "UTC0"},
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize(
    ("clock_offset", "seal_broken"),
    [
        pytest.param(150.0, False, id="minutes-after-the-file-was-made"),
        pytest.param(-3600.0, False, id="a-clock-an-hour-behind-the-file"),
        pytest.param(150.0, True, id="the-seal-broken"),
    ],
)
def test_the_design_floor_writes_the_bytes_and_the_seal_the_store_writes(
    made_file: Path, tmp_path: Path, clock_offset: float, seal_broken: bool
) -> None:
    """bench_floor's design floor of the fresh merge (_floor_workers.fresh_design_floor, plain Python) is the least
    the store's design does only if it makes the same merge: the same event on two copies of one made file, by the
    recorder in a new process and by the floor in another, at the same clock, leaves the same bytes and the same
    seal in the mtime's nanoseconds. Minutes later, the update-times lines move; with a clock behind the file, the
    stored last-deployment time is kept; with the seal broken, the file is checked before it is taken."""
    copies = []
    for name in ("recorder", "design-floor"):
        (tmp_path / name).mkdir()
        copy = Path(shutil.copy2(made_file, tmp_path / name / made_file.name))
        if seal_broken:  # a whole second: no seal shows 0 nanoseconds (layout.seal_of)
            status = copy.stat()
            os.utime(copy, ns=(status.st_atime_ns, status.st_mtime_ns - status.st_mtime_ns % 1_000_000_000))
        copies.append(copy)
    clock = made_file.stat().st_mtime + clock_offset
    merged_at(clock, "fresh", copies[0].parent)
    merged_at(clock, "fresh_design_floor", copies[1].parent)

    recorded, floored = (copy.read_bytes() for copy in copies)
    assert recorded != made_file.read_bytes()  # the event was merged
    assert floored == recorded
    seals = [copy.stat().st_mtime_ns % 1_000_000_000 for copy in copies]
    assert seals[0] != 0 and seals[1] == seals[0]


@pytest.mark.parametrize("seal", ["broken", "put-back"])
def test_the_design_floor_refuses_a_file_changed_in_place(made_file: Path, tmp_path: Path, seal: str) -> None:
    """The design floor takes a sealed file as laid out, as the store does, so it must be no less careful: a line
    changed in place (its seal broken by the mtime the kernel sets, or put back by hand) in the segment the event
    edits is refused, and the file left as it was, never vouched for under a checksum of the floor's."""
    path = Path(shutil.copy2(made_file, tmp_path / made_file.name))
    line = b'fraisier_deployments_total{provider="bare_metal",status="failed",fraise_type="api"} 1.0\n'
    data = path.read_bytes()
    assert data.count(line) == 1
    status = path.stat()
    changed = data.replace(line, line.replace(b" 1.0", b" 7.0"))
    with open(path, "r+b") as file:  # in place, as an editor that keeps the inode
        file.write(changed)
    if seal == "put-back":
        os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    result = subprocess.run([sys.executable, str(BENCH / "_floor_workers.py"), "fresh_design_floor", str(tmp_path)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode != 0
    assert "NotTheBenchFile: " in result.stderr and "not as its layout line claims" in result.stderr
    assert path.read_bytes() == changed
    assert [entry.name for entry in tmp_path.iterdir() if entry.name.startswith(".")] == []  # no temporary left
