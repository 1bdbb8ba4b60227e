"""Our flush beside prometheus_client's write_to_textfile of the same registry, at 1,000 to 50,000 series.

For each size N, a real ``MetricsRecorder(textfile_dir=..., auto_flush=False)`` records events with many
distinct label values (providers × fraise types × statuses, providers × health-check types × statuses) until
its registry holds N sample lines. Then, in one run:

- write_to_textfile   prometheus_client's ``write_to_textfile(path, recorder.registry)``: the peer, 1.0×
- full flush          ``recorder.flush()`` of all N series into an empty directory
- fresh +1 event      the cron/hook case: ``MetricsRecorder(textfile_dir)`` constructed, one
                      ``record_deployment_complete`` of an existing series, auto-flushed (lock, read and
                      parse the N-series file, merge, render, fsync, rename). In-process: interpreter
                      start-up and imports are not included (bench_cli.py measures those)
- warm +1 event       the same event and ``flush()`` from the recorder that wrote the file before (its
                      cached document is still current, so the file is not read again)

``_created`` samples are off (``disable_created_metrics()``) so both writers produce the same N lines; with
``--created`` the peer writes them as it does by default (about 1.4× the lines, so a slower peer).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from _common import (
    EVENT,
    argument_parser,
    emit,
    environment,
    format_ratio,
    format_seconds,
    goal_text,
    measure,
    populate,
    print_environment,
    print_table,
    sample_lines,
    temporary_directory,
)

GOALS = {"fresh": 0.3, "warm": 0.1}
GOAL_SERIES = 10_000


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--created", action="store_true", help="let the peer write _created samples (its default)")
    parser.add_argument("--sizes", type=int, nargs="+", help="series counts (default: 1000 10000 50000)")
    args = parser.parse_args(argv)

    import prometheus_client

    if not args.created:
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    sizes = args.sizes or ([1_000, 10_000] if args.quick else [1_000, 10_000, 50_000])

    with temporary_directory(args) as root:
        results = [measure_size(root, series, args) for series in sizes]
        info = environment(root)
    result = {
        "benchmark": "flush",
        "environment": info,
        "created_samples": args.created,
        "goals": {"fresh_at_10000": GOALS["fresh"], "warm_at_10000": GOALS["warm"]},
        "sizes": results,
    }
    emit(args, result, lambda: render(result))
    return 0


def repetitions(series: int, quick: bool) -> dict[str, int]:
    """Bounded repetitions: many for the cheap cases, fewer where one repetition rebuilds 50,000 series."""
    if quick:
        return {"peer": 5, "full": 3, "fresh": 11, "warm": 21}
    if series <= 10_000:
        return {"peer": 21, "full": 15, "fresh": 51, "warm": 101}
    return {"peer": 9, "full": 7, "fresh": 21, "warm": 51}


def measure_size(root: Path, series: int, args: argparse.Namespace) -> dict[str, Any]:
    from prometheus_client import write_to_textfile

    from fraisier_textfile import MetricsRecorder

    counts = repetitions(series, args.quick)
    base = root / f"{series}"

    # The N-series file and the recorder that wrote it (the warm one).
    merged = base / "merged"
    warm = MetricsRecorder(textfile_dir=merged, auto_flush=False)
    expected = populate(warm, series)
    warm.flush()
    our_lines = sample_lines(warm.textfile_path)

    peer_path = base / "peer" / "peer.prom"
    peer_path.parent.mkdir(parents=True)
    peer = measure(lambda: write_to_textfile(str(peer_path), warm.registry), counts["peer"])
    peer_lines = sample_lines(peer_path)

    # Full flush: a freshly populated recorder each time (not timed), flushed into an empty directory.
    empty = base / "empty"
    recorders: list[Any] = []

    def new_populated_recorder() -> None:
        shutil.rmtree(empty, ignore_errors=True)
        recorders.clear()
        recorders.append(MetricsRecorder(textfile_dir=empty, auto_flush=False))
        populate(recorders[0], series)

    full = measure(lambda: recorders[0].flush(), counts["full"], setup=new_populated_recorder)
    full_lines = sample_lines(empty / "fraisier.prom")
    recorders.clear()

    def fresh_event() -> None:
        recorder = MetricsRecorder(textfile_dir=merged)  # auto_flush: the event is in the file on return
        recorder.record_deployment_complete(*EVENT)

    fresh = measure(fresh_event, counts["fresh"])

    def warm_event() -> None:
        warm.record_deployment_complete(*EVENT)
        warm.flush()

    warm_event()  # the fresh recorders replaced the file: this one reads it once, then its cache is current
    warm_timing = measure(warm_event, counts["warm"])
    lines_after = sample_lines(warm.textfile_path)

    return {
        "series": series,
        "expected_lines": expected,
        "our_lines": our_lines,
        "peer_lines": peer_lines,
        "full_flush_lines": full_lines,
        "lines_after_merges": lines_after,
        "write_to_textfile": peer.as_json(),
        "full_flush": {**full.as_json(), "ratio": full.median / peer.median},
        "fresh_event": {**fresh.as_json(), "ratio": fresh.median / peer.median},
        "warm_event": {**warm_timing.as_json(), "ratio": warm_timing.median / peer.median},
    }


def render(result: dict[str, Any]) -> None:
    print("bench_flush: our flush beside prometheus_client's write_to_textfile of the same registry")
    print_environment(result["environment"])
    created = "on (the peer's default)" if result["created_samples"] else "off for both (disable_created_metrics)"
    print(f"_created samples: {created}. Times are medians; ratios are against write_to_textfile of the same N.")
    rows = []
    for size in result["sizes"]:
        series = size["series"]
        lines = f"{size['our_lines']:,} / {size['peer_lines']:,}"
        peer = size["write_to_textfile"]
        rows.append(
            [
                f"{series:,}",
                lines,
                "write_to_textfile (peer)",
                format_seconds(peer["median_seconds"]),
                format_seconds(peer["min_seconds"]),
                peer["repetitions"],
                "1.000×",
                "",
            ]
        )
        for key, label, goal in (
            ("full_flush", "full flush into empty file", None),
            ("fresh_event", "fresh recorder, +1 event", GOALS["fresh"]),
            ("warm_event", "warm recorder, +1 event", GOALS["warm"]),
        ):
            case = size[key]
            goal_cell = ""
            if goal is not None:
                goal_cell = goal_text(case["ratio"], goal) if series == GOAL_SERIES else f"(≤ {goal:g}× at 10,000)"
            rows.append(
                [
                    "",
                    "",
                    label,
                    format_seconds(case["median_seconds"]),
                    format_seconds(case["min_seconds"]),
                    case["repetitions"],
                    format_ratio(case["ratio"]),
                    goal_cell,
                ]
            )
    print_table(
        "Flush cost by file size",
        ["series", "lines ours / peer", "case", "median", "min", "reps", "ratio", "goal"],
        rows,
        align="lrlrrrrl",
        notes=[
            "fresh = MetricsRecorder() + record_deployment_complete + flush (auto) into the existing N-series file;",
            "warm = record_deployment_complete + flush() by the recorder that wrote the file last.",
            "Ours fsyncs the file and its directory and takes a lock; write_to_textfile does neither.",
        ],
    )
    mismatched = [
        s["series"]
        for s in result["sizes"]
        if len({s["our_lines"], s["peer_lines"], s["expected_lines"], s["full_flush_lines"], s["lines_after_merges"]})
        > 1
    ]
    if mismatched:
        print(f"  note: line counts differ between writers at N = {mismatched} (see --json)")


if __name__ == "__main__":
    sys.exit(main())
