"""Processes racing to count the same events: our store, write_to_textfile, and a real Pushgateway.

8 processes × 200 events (``--quick``: 4 × 25), all released at once by a barrier. Each event increments the
same counter series and is written out at once:

- ours                ``MetricsRecorder(textfile_dir)`` (auto_flush) ``.record_deployment_complete(...)``:
                      lock, merge into the shared file, atomic replace
- write_to_textfile   each process keeps its own registry with the same counter, ``.inc()`` then
                      ``write_to_textfile(path, registry)``: each write replaces what the others wrote
- Pushgateway         each process keeps its own registry, ``.inc()`` then ``push_to_gateway`` to one job on
                      a real ``prometheus-pushgateway`` started on a free loopback port, with its
                      ``--persistence.file`` in the run's temporary directory (Debian's default file is shared
                      across runs and left behind)
- Pushgateway, a      the same, but each process pushes under its own grouping key (``instance=<pid>``): exact,
  group per process   since no push replaces another's, but every process leaves a group behind, forever
                      (until someone deletes it), and a scraper must sum over the groups

The final count is read back as a scraper would (prometheus_client's parser, on the file or on the
gateway's /metrics, summed over the groups); events lost = expected − final. For the Pushgateway, the groups
left behind and the size of the persistence file it wrote at shutdown are reported too.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _common import (
    argument_parser,
    emit,
    environment,
    format_seconds,
    free_port,
    print_environment,
    print_table,
    stop,
    temporary_directory,
)

PUSHGATEWAY = "prometheus-pushgateway"
JOB = "fraisier_race"
LABELS = {"provider": "bare_metal", "status": "success", "fraise_type": "api"}
COUNTER_SAMPLE = "fraisier_deployments_total"
HISTOGRAM_COUNT_SAMPLE = "fraisier_deployment_duration_seconds_count"
METHODS = ("ours", "write_to_textfile", "pushgateway", "pushgateway_per_process")
TITLES = {
    "ours": "ours: MetricsRecorder (auto_flush), shared file",
    "write_to_textfile": "prometheus_client write_to_textfile",
    "pushgateway": "Pushgateway push_to_gateway, one shared group",
    "pushgateway_per_process": "Pushgateway push_to_gateway, a group per process",
}
GROUP_SAMPLE = "push_time_seconds"
"""The Pushgateway exports one push_time_seconds series per group: counting them counts the groups."""


# The workers (run in fresh processes: multiprocessing's spawn start method)


def event_function(method: str, target: str) -> Callable[[], None]:
    """What one event is for ``method``, set up in this process before the race starts."""
    if method == "ours":
        from fraisier_textfile import MetricsRecorder

        recorder = MetricsRecorder(textfile_dir=target)
        return lambda: recorder.record_deployment_complete("bare_metal", "api", "success", 1.0)

    from prometheus_client import CollectorRegistry, Counter, disable_created_metrics

    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    child = Counter("fraisier_deployments", "Deployments finished.", list(LABELS), registry=registry).labels(**LABELS)
    if method == "write_to_textfile":
        from prometheus_client import write_to_textfile

        def write() -> None:
            child.inc()
            write_to_textfile(target, registry)

        return write

    from prometheus_client import push_to_gateway

    grouping_key = {"instance": str(os.getpid())} if method == "pushgateway_per_process" else {}

    def push() -> None:
        child.inc()
        push_to_gateway(target, job=JOB, registry=registry, grouping_key=grouping_key)

    return push


def worker(method: str, target: str, events: int, barrier: Any, results: Any) -> None:
    try:
        record = event_function(method, target)
        barrier.wait(timeout=120)
    except Exception as error:  # always report, so that the parent never waits for a worker that is gone
        barrier.abort()
        results.put({"failed": f"{type(error).__name__}: {error}"})
        return
    started = time.time()  # wall clock: comparable across processes
    errors: list[str] = []
    for _ in range(events):
        try:
            record()
        except Exception as error:  # counted and reported: the point is what gets lost
            errors.append(f"{type(error).__name__}: {error}")
    results.put(
        {"started": started, "finished": time.time(), "errors": len(errors), "first_error": next(iter(errors), None)}
    )


# The race


def race(method: str, target: str, processes: int, events: int) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    workers = [
        context.Process(target=worker, args=(method, target, events, barrier, results)) for _ in range(processes)
    ]
    for process in workers:
        process.start()
    reports = [results.get(timeout=600) for _ in workers]
    for process in workers:
        process.join(timeout=60)
    exit_codes = [process.exitcode for process in workers]
    failures = [r["failed"] for r in reports if "failed" in r]
    if failures:
        raise SystemExit(f"{method}: a worker could not start the race: {failures[0]}")
    wall = max(r["finished"] for r in reports) - min(r["started"] for r in reports)
    total = processes * events
    return {
        "wall_seconds": wall,
        "events_per_second": total / wall,
        "errors": sum(r["errors"] for r in reports),
        "first_error": next((r["first_error"] for r in reports if r["first_error"]), None),
        "worker_seconds": sorted(r["finished"] - r["started"] for r in reports),
        "worker_exit_codes": exit_codes,
    }


def sample_count(text: str, name: str) -> int:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(1 for family in text_string_to_metric_families(text) for s in family.samples if s.name == name)


def sample_value(text: str, name: str, labels: dict[str, str]) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    found = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                found = (found or 0.0) + sample.value
    return found


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode("utf-8"))


@contextmanager
def pushgateway(persistence_file: Path) -> Iterator[str]:
    """A real Pushgateway on a free loopback port, persisting to ``persistence_file`` (its own, in the run's
    temporary directory: Debian's default file would be shared across runs and left behind); yields its
    host:port, stops it after (it writes the file at shutdown)."""
    binary = shutil.which(PUSHGATEWAY) or f"/usr/bin/{PUSHGATEWAY}"
    port = free_port()
    address = f"127.0.0.1:{port}"
    process = subprocess.Popen(
        [binary, f"--web.listen-address={address}", f"--persistence.file={persistence_file}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise SystemExit(f"{binary} exited with {process.returncode}")
            try:
                http_get(f"http://{address}/-/ready")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise SystemExit(f"{binary} did not answer on {address} within 20 s") from None
                time.sleep(0.05)
        yield address
    finally:
        stop(process)


def run_method(method: str, root: Path, processes: int, events: int) -> dict[str, Any]:
    expected = processes * events
    if method == "ours":
        directory = root / "ours"
        outcome = race(method, str(directory), processes, events)
        text = (directory / "fraisier.prom").read_text()
        final = sample_value(text, COUNTER_SAMPLE, LABELS)
        outcome["histogram_count"] = sample_value(
            text, HISTOGRAM_COUNT_SAMPLE, {"provider": "bare_metal", "status": "success"}
        )
    elif method == "write_to_textfile":
        path = root / "write_to_textfile" / "race.prom"
        path.parent.mkdir()
        outcome = race(method, str(path), processes, events)
        final = sample_value(path.read_text(), COUNTER_SAMPLE, LABELS)
    else:
        if shutil.which(PUSHGATEWAY) is None and not Path(f"/usr/bin/{PUSHGATEWAY}").exists():
            return {"method": method, "skipped": f"{PUSHGATEWAY} is not installed (apt-get install {PUSHGATEWAY})"}
        persistence = root / method / "pushgateway.db"
        persistence.parent.mkdir()
        with pushgateway(persistence) as address:
            outcome = race(method, address, processes, events)
            scraped = http_get(f"http://{address}/metrics")
            final = sample_value(scraped, COUNTER_SAMPLE, {**LABELS, "job": JOB})
            outcome["groups_left"] = sample_count(scraped, GROUP_SAMPLE)
        outcome["persistence_file_bytes"] = persistence.stat().st_size if persistence.exists() else None
    counted = final or 0.0
    return {
        "method": method,
        "expected": expected,
        "final_count": final,
        "lost": expected - counted,
        "lost_fraction": (expected - counted) / expected,
        **outcome,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, help="racing processes (default 8; 4 with --quick)")
    parser.add_argument("--events", type=int, help="events per process (default 200; 25 with --quick)")
    args = parser.parse_args(argv)
    processes = args.processes or (4 if args.quick else 8)
    events = args.events or (25 if args.quick else 200)

    with temporary_directory(args) as root:
        results = [run_method(method, root, processes, events) for method in METHODS]
        info = environment(root)
    result = {
        "benchmark": "race",
        "environment": info,
        "processes": processes,
        "events_per_process": events,
        "expected": processes * events,
        "results": results,
    }
    emit(args, result, lambda: render(result))
    return 0


def render(result: dict[str, Any]) -> None:
    print("bench_race: processes racing to count the same events")
    print_environment(result["environment"])
    print(
        f"{result['processes']} processes × {result['events_per_process']} events, released by a barrier; "
        f"expected {result['expected']:,} in the end"
    )
    rows = []
    notes = []
    for entry in result["results"]:
        title = TITLES[entry["method"]]
        if "skipped" in entry:
            rows.append([title, "skipped", "", "", "", "", "", ""])
            notes.append(f"{entry['method']}: {entry['skipped']}")
            continue
        final = entry["final_count"]
        rows.append(
            [
                title,
                "missing" if final is None else f"{final:,.0f}",
                f"{entry['lost']:,.0f}",
                f"{entry['lost_fraction']:.1%}",
                format_seconds(entry["wall_seconds"]),
                f"{entry['events_per_second']:,.0f}",
                entry["errors"],
                left_behind(entry),
            ]
        )
        if entry["first_error"]:
            notes.append(f"{entry['method']}: first error: {entry['first_error']}")
        if entry["method"] == "ours":
            notes.append(
                f"ours: histogram _count reads {entry['histogram_count']:,.0f} (expected {result['expected']:,})"
            )
            fastest, slowest = entry["worker_seconds"][0], entry["worker_seconds"][-1]
            notes.append(
                f"ours: each process took {format_seconds(fastest)} to {format_seconds(slowest)} "
                "for its events (the lock's fairness)"
            )
    print_table(
        "Events counted after the race",
        ["writer", "final count", "lost", "lost %", "wall", "events/s", "errors", "left behind"],
        rows,
        notes=notes
        + [
            "events/s = all events / (last process done − first process released); each event "
            "is written out before the next",
            "left behind: what stays after the race. A Pushgateway group is kept (and scraped, and persisted) "
            "until someone deletes it: a group per process grows by one group per run, forever.",
        ],
    )


def left_behind(entry: dict[str, Any]) -> str:
    if "groups_left" not in entry:
        return "1 file"
    size = entry["persistence_file_bytes"]
    persisted = "no persistence file" if size is None else f"{size / 1024:,.1f} KiB persisted"
    return f"{entry['groups_left']} group{'s' if entry['groups_left'] != 1 else ''}, {persisted}"


if __name__ == "__main__":
    sys.exit(main())
