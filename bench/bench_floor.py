"""Merges against the speed of the disk: the hot paths' goals (issue 14) and issue 7's held lock, as ratios
measured side by side in one run.

The package runs as users run it: this repository built as a wheel and installed, compiled, into a virtual
environment of its own (see bench_cli.py); every process below is started with that interpreter. Cases:

- I/O floor          plain Python on a copy of the N-series file: read it, write a temporary beside it, fsync,
                     rename over it. The 1.0× of the warm merge (timed in the same process as the warm case,
                     interleaved with it)
- new-process floor  the same read + write + fsync + rename, once, in a NEW process after the same imports as the
                     fresh merge: the 1.0× of the fresh merge (its first read of a big file faults in fresh memory,
                     as the merge's does). Beside it, what an fsync of the directory then costs in that process
                     (the store fsyncs the directory after its rename, so that the rename survives a power loss;
                     the floor does not. A merge that removes nothing after it, as here, leaves that fsync to
                     the thread that closes the replaced file, after its caller has its answer; the warm loop
                     waits for that thread outside its timed spans)
- fresh merge        a NEW process imports the package (not timed: interpreter start and imports are reported
                     beside), then ``MetricsRecorder(dir)`` + one ``record_deployment_complete`` of an existing
                     series, auto-flushed: construction and the first read included, nothing cached.
                     Goal ≤ 1.25× the new-process floor, at 10,000 and 100,000 series. Beside it, the same
                     merge after an ``os.utime`` of the file, as a change in place sets its mtime: its seal broken
                     (store/vouching.py), the merge checksums what the layout line claims
- design floor       the fresh merge's own least: the same event merged in plain Python by a NEW process after the
                     same imports, producing the same bytes and seal as the store (tests/test_bench.py), doing
                     only what this design must (see _floor_workers.fresh_design_floor for what it does and leaves
                     out); ratio to the new-process floor, and the fresh merge's ratio to it: our code's share
- warm merge         the same event recorded again by a recorder that merged before. Goal ≤ 1.2× the floor
- whole process      the fresh case as a whole process (start, imports, merge, teardown), beside a process that
                     only imports the package, and the floor
- memory             peak RSS of the fresh process after its merge minus its peak before it (after imports),
                     as a ratio to the file's size (goal ≤ 3×); tracemalloc's peak of one more fresh merge;
                     the peak RSS of a process that only imported
- race               16 processes × 200 events (``--quick``: 4 × 25) on a 10,000-series file, each event
                     written out before the next: lost events, lock timeouts, p50/p99 call latency,
                     events/s. Goals: 0 lost, 0 timeouts, p99 ≤ 25 ms, ≥ 5× the throughput of the seed's
                     recorder (``--baseline``, installed from git the same way and raced in the same run).
                     Modes: the recorder as shipped; the recorder with every hand-over fsynced (as shipped,
                     a process that has spent its 1 s lock-wait budget, refilled at 1 s a minute, hands over
                     without fsyncs until it refills: counted); the
                     store's ``merge`` (waiting for the lock); the store's ``merge_or_hand_over`` where it
                     exists; the baseline's recorder. Beside them, in the same run, the race's floor: the
                     same processes × events, started together, in plain Python with no package imported,
                     each event what a store must at least do to count it durably in the shared file (under
                     an flock: read the file, raise the one counter, write a temporary, fsync, rename, fsync
                     the directory); ours ÷ it for p99 and events/s. The floor of a hand-over: each event a
                     small file of the writer's own, renamed, fsynced, the directory fsynced. The floor of
                     group commit, the store's own design in plain Python: merge when the lock is free (the
                     hand-overs waiting with it), else hand over and try once more; ours ÷ it for p99. Each
                     row with where its calls' time went (own CPU, waiting for a CPU, blocked) and its calls
                     by what they did (handed over, merged)
- held lock          a record call while another process holds the lock: each call's latency, what it
                     raised, how long the process then takes to exit, and whether the events appear exactly
                     once after the lock is released. Goal: ≤ ~1 s in all, nothing raised, all events once

A part whose API is missing in this version is skipped with a note, never a crash. ``--parts race`` runs the
race alone (likewise ``sizes``, ``held``).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    BENCH_DIRECTORY,
    REPOSITORY,
    InstalledPackage,
    argument_parser,
    emit,
    environment,
    format_ratio,
    format_seconds,
    goal_text,
    install_package,
    populate,
    print_environment,
    print_table,
    temporary_directory,
)

WORKERS = BENCH_DIRECTORY / "_floor_workers.py"
GOALS = {
    "fresh": 1.25,
    "warm": 1.2,
    "memory": 3.0,
    "race_p99_seconds": 0.025,
    "race_throughput": 5.0,
    "held_seconds": 1.5,
}
RACE_SERIES = 10_000
PARTS = ("sizes", "race", "held")
BASELINE = "bbc41a8"
"""The commit every branch of this round started from: "today's" code, whose figures the goals compare to."""
SERIES_BOUND = "1000000"
"""FRAISIER_MAX_SERIES_PER_FAMILY for every process of the run: populate() puts up to ~28,000 series in one
family of the 100,000-series file, past the default bound of 10,000, which would refuse the rest and leave a
smaller file than asked for. Raised rather than turned off (0), so that the merges still pay the bound's check."""
SERIES = 'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'


# Processes


def command(package: InstalledPackage, name: str, *arguments: object) -> list[str]:
    return [package.python, str(WORKERS), name, *map(str, arguments)]


def run_worker(package: InstalledPackage, name: str, *arguments: object, timeout: float = 600) -> tuple[Any, float]:
    """Run one worker to its end; return its JSON report and the process's wall time."""
    started = time.perf_counter()
    completed = subprocess.run(
        command(package, name, *arguments),
        capture_output=True,
        text=True,
        env=package.environment,
        cwd=package.cwd,
        timeout=timeout,
    )
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"worker {name} {arguments} exited {completed.returncode}: {completed.stderr.strip()[-2000:]}")
    return json.loads(completed.stdout.splitlines()[-1]), wall


def start_worker(package: InstalledPackage, name: str, *arguments: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command(package, name, *arguments),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=package.environment,
        cwd=package.cwd,
    )


def process_wall(package: InstalledPackage, arguments: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([package.python, *arguments], check=True, env=package.environment, cwd=package.cwd)
    return time.perf_counter() - started


def install_baseline(directory: Path, revision: str) -> InstalledPackage | str:
    """The package as it was at ``revision``, installed like this one; or why it cannot be."""
    if not revision:
        return "no baseline asked for (--baseline '')"
    if shutil.which("git") is None:
        return "git is not installed"
    source = directory / "tree"
    source.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPOSITORY), "archive", "--format=tar", revision], capture_output=True, check=False
    )
    if archive.returncode != 0:
        return f"git archive {revision} failed: {archive.stderr.decode(errors='replace').strip()}"
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    return install_package(directory / "installed", source)


# The file


def make_file(directory: Path, series: int) -> Path:
    from fraisier_textfile import MetricsRecorder

    recorder = MetricsRecorder(textfile_dir=directory, auto_flush=False)
    populate(recorder, series)
    recorder.flush()
    return recorder.textfile_path


def counter_value(path: Path) -> float:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(SERIES + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def copy_of(master: Path, directory: Path) -> Path:
    directory.mkdir(parents=True)
    shutil.copy2(master, directory / master.name)
    return directory / master.name


def summary(samples: list[float]) -> dict[str, Any]:
    return {"median_seconds": statistics.median(samples), "min_seconds": min(samples), "repetitions": len(samples)}


# The cases


def measure_size(root: Path, series: int, package: InstalledPackage, quick: bool) -> dict[str, Any]:
    master = make_file(root / f"{series}" / "master", series)
    size = master.stat().st_size
    repetitions = (3 if quick else 15) if series <= 10_000 else (3 if quick else 9)

    warm_directory = copy_of(master, root / f"{series}" / "warm").parent
    floor_path = copy_of(master, root / f"{series}" / "floor")
    warm, _ = run_worker(package, "warm", warm_directory, floor_path, repetitions * 16)

    fresh_directory = copy_of(master, root / f"{series}" / "fresh").parent
    unsealed_directory = copy_of(master, root / f"{series}" / "unsealed").parent
    unsealed_runs: list[float] = []
    fresh_floor_path = copy_of(master, root / f"{series}" / "fresh-floor")
    fresh_floors: list[float] = []
    fresh_floor_cpus: list[float] = []
    kept_floors: list[float] = []
    kept_floor_cpus: list[float] = []
    directory_fsyncs: list[float] = []
    design_directory = copy_of(master, root / f"{series}" / "design-floor").parent
    design_floors: list[float] = []
    design_floor_cpus: list[float] = []
    fresh_runs: list[dict[str, Any]] = []
    fresh_walls: list[float] = []
    import_runs: list[dict[str, Any]] = []
    import_walls: list[float] = []
    interpreter_walls: list[float] = []
    for number in range(repetitions + 1):  # the first round warms the page cache and is not kept
        steps = ["fresh", "fresh_unsealed", "fresh_design_floor", "fresh_floor", "fresh_floor_kept", "imports",
                 "interpreter"]
        for step in steps if number % 2 else reversed(steps):
            if step == "fresh_design_floor":
                report, _ = run_worker(package, "fresh_design_floor", design_directory)
                if number:
                    design_floors.append(report["seconds"])
                    design_floor_cpus.append(report["cpu_seconds"])
            elif step == "fresh_floor_kept":
                report, _ = run_worker(package, "fresh_floor", fresh_floor_path, "keep")
                if number:
                    kept_floors.append(report["floor_seconds"])
                    kept_floor_cpus.append(report["floor_cpu_seconds"])
            elif step == "fresh_floor":
                report, _ = run_worker(package, "fresh_floor", fresh_floor_path)
                if number:
                    fresh_floors.append(report["floor_seconds"])
                    fresh_floor_cpus.append(report["floor_cpu_seconds"])
                    directory_fsyncs.append(report["directory_fsync_seconds"])
            elif step == "fresh_unsealed":
                # The same bytes, the mtime set again as a change in place sets it: the file's seal is broken, and
                # the merge checksums what its layout line claims (store/vouching.py).
                os.utime(unsealed_directory / "fraisier.prom")
                report, _ = run_worker(package, "fresh", unsealed_directory)
                if number:
                    unsealed_runs.append(report["merge_seconds"])
            elif step == "fresh":
                report, wall = run_worker(package, "fresh", fresh_directory)
                if number:
                    fresh_runs.append(report)
                    fresh_walls.append(wall)
            elif step == "imports":
                report, wall = run_worker(package, "imports")
                if number:
                    import_runs.append(report)
                    import_walls.append(wall)
            else:
                wall = process_wall(package, ["-c", "pass"])
                if number:
                    interpreter_walls.append(wall)
    traced, _ = run_worker(package, "fresh", fresh_directory, "trace")

    floor = {**summary(warm["floor_seconds"]), "cpu_median_seconds": statistics.median(warm["floor_cpu_seconds"])}
    fresh = summary([run["merge_seconds"] for run in fresh_runs])
    fresh_floor = summary(fresh_floors)
    warm_summary = summary(warm["warm_seconds"])
    # CPU time (this process's user + system, time.process_time) disturbs far less than wall time on a loaded
    # machine, and leaves out the fsyncs' wait for the disk: the ratio of the code's own work to the floor's.
    floor_cpu = statistics.median(warm["floor_cpu_seconds"])
    fresh_cpu = statistics.median([run["merge_cpu_seconds"] for run in fresh_runs])
    fresh_floor_cpu = statistics.median(fresh_floor_cpus)
    warm_cpu = statistics.median(warm["warm_cpu_seconds"])
    peak_growth = statistics.median([(run["peak_rss_after_kib"] - run["rss_before_kib"]) * 1024 for run in fresh_runs])
    return {
        "series": series,
        "file_bytes": size,
        "floor": floor,
        "fresh_merge": {
            **fresh,
            # The goal's ratio: against the same I/O done by a new process after the same imports.
            "ratio": fresh["median_seconds"] / fresh_floor["median_seconds"],
            "ratio_to_warm_floor": fresh["median_seconds"] / floor["median_seconds"],
            "cpu_median_seconds": fresh_cpu,
            "cpu_ratio": fresh_cpu / fresh_floor_cpu,
        },
        "fresh_floor": {**fresh_floor, "cpu_median_seconds": fresh_floor_cpu},
        "fresh_unsealed": summary(unsealed_runs),
        # The same merge as the fresh recorder's in plain Python, the least this design does (_floor_workers.py).
        "fresh_design_floor": {**summary(design_floors), "cpu_median_seconds": statistics.median(design_floor_cpus)},
        # The floors at their best, freeing the replaced file after the timed span as the store does (beside).
        "floor_kept": {**summary(warm["floor_kept_seconds"]),
                       "cpu_median_seconds": statistics.median(warm["floor_kept_cpu_seconds"])},
        "fresh_floor_kept": {**summary(kept_floors), "cpu_median_seconds": statistics.median(kept_floor_cpus)},
        "fresh_floor_directory_fsync": summary(directory_fsyncs),
        "warm_merge": {**warm_summary, "ratio": warm_summary["median_seconds"] / floor["median_seconds"],
                       "cpu_median_seconds": warm_cpu, "cpu_ratio": warm_cpu / floor_cpu},
        "fresh_start_to_imported": summary([run["start_to_imported_seconds"] for run in fresh_runs]),
        "whole_fresh_process": summary(fresh_walls),
        "whole_import_only_process": summary(import_walls),
        "whole_interpreter_only_process": summary(interpreter_walls),
        "fresh_left_pending": sum(run["pending_after"] for run in fresh_runs),
        "memory": {
            "peak_rss_growth_bytes": peak_growth,
            "peak_measured_from_merge_start": all(run["peak_reset"] for run in fresh_runs),
            "ratio": peak_growth / size,
            "tracemalloc_peak_bytes": traced["tracemalloc_peak_bytes"],
            "tracemalloc_ratio": traced["tracemalloc_peak_bytes"] / size,
            "import_only_peak_rss_bytes": statistics.median([run["peak_rss_kib"] * 1024 for run in import_runs]),
            "fresh_peak_rss_bytes": statistics.median([run["peak_rss_after_kib"] * 1024 for run in fresh_runs]),
        },
    }


def race(
    root: Path, master: Path, case: str, package: InstalledPackage, mode: str, processes: int, events: int, wait: float
) -> dict[str, Any]:
    path = copy_of(master, root / f"race-{case}")
    initial = counter_value(path)
    arguments: tuple[object, ...]
    if mode == "floor":
        name, arguments = "race_floor", (path, events, SERIES)
    elif mode == "handover_floor":
        name, arguments = "race_handover_floor", (path.parent, events)
    elif mode == "group_floor":
        name, arguments = "race_group_floor", (path, events, SERIES)
    else:
        name, arguments = "race", (path.parent, events, mode, wait)
    workers = [start_worker(package, name, *arguments) for _ in range(processes)]
    try:
        for worker in workers:
            assert worker.stdout is not None
            line = worker.stdout.readline()
            if line != "ready\n":
                worker.wait(timeout=60)
                raise SystemExit(
                    f"a race worker ({mode}) did not start: {worker.stderr.read() if worker.stderr else ''}"
                )
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        reports = []
        for worker in workers:
            stdout, stderr = worker.communicate(timeout=1800)
            if worker.returncode != 0:
                raise SystemExit(f"a race worker ({mode}) exited {worker.returncode}: {stderr.strip()[-2000:]}")
            reports.append(json.loads(stdout.splitlines()[-1]))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    expected = processes * events
    left_waiting = None
    if mode == "handover_floor":  # each event is a file of its own
        counted = float(sum(name.endswith(".json") for name in os.listdir(path.parent)))
    elif mode == "group_floor":  # the counter, and the hand-overs no merge applied
        from _floor_workers import group_floor_counted

        counted = counter_value(path) - initial + group_floor_counted(str(path))
    else:
        if mode != "floor":  # the floor hands nothing over; the store would also rewrite its bookkeeping
            # Every hand-over left merged (a merge applies at most a few hundred), as `fraisier textfile refresh`
            # does; those left are counted first: events on disk that the file showed only at the next merge.
            left_waiting = run_worker(package, "merge_all", path.parent)[0]["waiting"]
        counted = counter_value(path) - initial
    latencies = sorted(latency for report in reports for latency in report["latencies"])
    calls = [
        (latency, cpu, queued)
        for report in reports
        for latency, cpu, queued in zip(report["latencies"], report.get("cpu_seconds", []),
                                        report.get("run_queue_seconds", []))
    ]
    wall = max(r["finished"] for r in reports) - min(r["started"] for r in reports)
    errors: dict[str, int] = {}
    for report in reports:
        for name, count in report["errors"].items():
            errors[name] = errors.get(name, 0) + count
    # The calls by what they did, where the writer says: handed their event over, or merged it (then also every
    # hand-over waiting: group commit).
    by_kind: dict[str, Any] = {}
    for kind, handed in (("handed_over", True), ("merged", False)):
        chosen = sorted(
            latency for report in reports
            for latency, outcome in zip(report["latencies"], report.get("handed_over_calls", []))
            if outcome is handed
        )
        if chosen:
            by_kind[kind] = {"calls": len(chosen), "p50_seconds": percentile(chosen, 0.50),
                             "p99_seconds": percentile(chosen, 0.99), "max_seconds": chosen[-1],
                             "in_slowest_1_percent": sum(latency >= percentile(latencies, 0.99) for latency in chosen)}
    return {
        "mode": mode,
        "expected": expected,
        "counted": counted,
        "lost": expected - counted,
        "left_waiting": left_waiting,
        "lock_timeouts": sum(r["lock_timeouts"] for r in reports),
        "errors": errors,
        # The recorder counts its own hand-overs (get_metrics_summary); the store's modes are counted by the worker.
        "handed_over": sum(r["handed_over"] or int(float(r["summary"].get("handed_over_events", 0))) for r in reports),
        # Hand-overs made once the process's budget was spent, so without their fsyncs (the recorder's rows).
        "unfsynced": sum(r.get("unfsynced", 0) for r in reports),
        "p50_seconds": percentile(latencies, 0.50),
        "p99_seconds": percentile(latencies, 0.99),
        "max_seconds": latencies[-1],
        "where_the_time_went": {"all": time_spent(calls), "slowest_1_percent": time_spent(calls, 0.99)},
        "by_kind": by_kind,
        "wall_seconds": wall,
        "events_per_second": expected / wall,
    }


def time_spent(calls: list[tuple[float, float, float | None]], above: float = 0.0) -> dict[str, float] | None:
    """Where the calls slower than the ``above`` fraction of them spent their time, on average: their own CPU time,
    waiting for a CPU (runnable, the run queue), and the rest, blocked (the lock, fsyncs, the disk)."""
    timed = sorted(call for call in calls if call[2] is not None)
    if not timed:
        return None
    chosen = timed[int(above * len(timed)):] or timed[-1:]
    wall = statistics.mean(call[0] for call in chosen)
    cpu = statistics.mean(call[1] for call in chosen)
    queued = statistics.mean(call[2] or 0.0 for call in chosen)
    return {"wall_seconds": wall, "cpu_seconds": cpu, "run_queue_seconds": queued,
            "blocked_seconds": wall - cpu - queued}


def percentile(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of sorted values."""
    rank = max(1, round(fraction * len(ordered) + 0.5))
    return ordered[min(rank, len(ordered)) - 1]


def held_lock(root: Path, package: InstalledPackage, calls: int) -> dict[str, Any]:
    directory = root / "held"
    run_worker(package, "fresh", directory)  # the file exists, with the event's series
    initial = counter_value(directory / "fraisier.prom")
    holder = start_worker(package, "hold", directory / "fraisier.prom.lock")
    try:
        assert holder.stdout is not None
        if holder.stdout.readline() != "held\n":
            raise SystemExit(f"the lock holder did not start: {holder.stderr.read() if holder.stderr else ''}")
        recorder = start_worker(package, "held", directory, calls)
        assert recorder.stdout is not None
        try:
            report = json.loads(recorder.stdout.readline())
            reported = time.perf_counter()
            try:
                recorder.wait(timeout=120)
                exit_seconds: float | None = time.perf_counter() - reported
            except subprocess.TimeoutExpired:
                exit_seconds = None
        finally:
            if recorder.poll() is None:
                recorder.kill()
            recorder.wait()
    finally:
        holder.kill()
        holder.wait()
    run_worker(package, "merge", directory)
    attempted = len(report["calls"])
    landed = counter_value(directory / "fraisier.prom") - initial
    return {
        "calls": report["calls"],
        "summary": report["summary"],
        "exit_seconds": exit_seconds,
        "recorder_exit_code": recorder.returncode,
        "attempted": attempted,
        "landed": landed,
        "total_call_seconds": sum(call["seconds"] for call in report["calls"]),
        "raised": sum(1 for call in report["calls"] if call["raised"]),
    }


# The run


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", help="series counts (default 10000 100000; 10000 with --quick)")
    parser.add_argument("--processes", type=int, help="racing processes (default 16; 4 with --quick)")
    parser.add_argument("--events", type=int, help="events per racing process (default 200; 25 with --quick)")
    parser.add_argument("--wait", type=float, default=1.0, help="merge_or_hand_over's wait in the race (default 1 s)")
    parser.add_argument(
        "--baseline",
        default=BASELINE,
        help=f"git revision raced as today's code (default {BASELINE}, where this round started; '' to skip)",
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="the parts to run (default all): the merges against their floors and memory (sizes), the race, "
        "the held lock",
    )
    parser.add_argument("--race-rounds", type=int, default=1,
                        help="rounds of the race (default 1): each round runs every row once, the rows' order turned "
                        "by one at each round, so that no row is always the one run first (it pays for the file just "
                        "written) or after the same one; each row shows its median round (by p99), and the rounds' "
                        "p99s and p99 ratios to the group floor are listed beside")
    parser.add_argument("--race-modes", nargs="+", metavar="MODE",
                        help="the race's rows to run (default all): recorder, floor, recorder_durable, group_floor, "
                        "merge, handover_floor, hand_over, baseline")
    args = parser.parse_args(argv)
    sizes = args.sizes or ([10_000] if args.quick else [10_000, 100_000])
    processes = args.processes or (4 if args.quick else 16)
    events = args.events or (25 if args.quick else 200)

    with temporary_directory(args) as root:
        package = install_package(root / "installed")
        os.environ["FRAISIER_MAX_SERIES_PER_FAMILY"] = SERIES_BOUND  # for make_file, in this process
        package.environment["FRAISIER_MAX_SERIES_PER_FAMILY"] = SERIES_BOUND
        features, _ = run_worker(package, "features")
        baseline = install_baseline(root / "baseline", args.baseline)
        if isinstance(baseline, InstalledPackage):
            baseline.environment["FRAISIER_MAX_SERIES_PER_FAMILY"] = SERIES_BOUND
        results = [measure_size(root, series, package, args.quick) for series in sizes] if "sizes" in args.parts else []

        master = make_file(root / "race-master", RACE_SERIES)
        # The floors run between our modes, in the same run, on copies of the same file.
        modes: list[tuple[str, InstalledPackage, str]] = [
            ("recorder", package, "recorder"),
            ("floor", package, "floor"),
            ("recorder_durable", package, "recorder_durable"),
            ("group_floor", package, "group_floor"),
            ("merge", package, "merge"),
            ("handover_floor", package, "handover_floor"),
        ]
        notes = []
        if features["merge_or_hand_over"]:
            modes.append(("hand_over", package, "hand_over"))
        else:
            notes.append("TextfileStore.merge_or_hand_over does not exist in this version: its race is skipped")
        if isinstance(baseline, InstalledPackage):
            modes.append(("baseline", baseline, "recorder"))
        else:
            notes.append(f"baseline {args.baseline or '-'} not raced: {baseline}")
        if args.race_modes:
            modes = [mode for mode in modes if mode[0] in args.race_modes]
        rounds: dict[str, list[dict[str, Any]]] = {key: [] for key, _, _ in modes}
        for number in range(max(1, args.race_rounds) if "race" in args.parts else 0):
            turn = number % len(modes) if modes else 0
            for key, installed, mode in modes[turn:] + modes[:turn]:
                name = key if number == 0 else f"{key}-{number + 1}"  # each race on a copy of its own
                outcome = race(root, master, name, installed, mode, processes, events, args.wait)
                rounds[key].append({**outcome, "case": key})
        races = [median_round(rounds[key]) for key, _, _ in modes if rounds.get(key)]
        if group_rounds := rounds.get("group_floor"):
            for outcome in races:
                # Each round against the group floor of the same round: the disk's state changes between rounds.
                outcome["rounds_p99_to_group_floor"] = [
                    own["p99_seconds"] / floor_round["p99_seconds"]
                    for own, floor_round in zip(rounds[outcome["case"]], group_rounds, strict=False)
                ]
        reference = next((r for r in races if r["case"] == "baseline"), None)
        floor = next((r for r in races if r["case"] == "floor"), None)
        group_floor = next((r for r in races if r["case"] == "group_floor"), None)
        for outcome in races:
            outcome["throughput_ratio"] = (
                outcome["events_per_second"] / reference["events_per_second"] if reference else None
            )
            outcome["floor_ratios"] = None if floor is None else {
                "p99": outcome["p99_seconds"] / floor["p99_seconds"],
                "events_per_second": outcome["events_per_second"] / floor["events_per_second"],
            }
            outcome["group_floor_ratios"] = None if group_floor is None else {
                "p50": outcome["p50_seconds"] / group_floor["p50_seconds"],
                "p99": outcome["p99_seconds"] / group_floor["p99_seconds"],
                "events_per_second": outcome["events_per_second"] / group_floor["events_per_second"],
            }

        held = held_lock(root, package, calls=3) if "held" in args.parts else None
        info = environment(root)

    result = {
        "benchmark": "floor",
        "environment": info,
        "features": features,
        "baseline": args.baseline if isinstance(baseline, InstalledPackage) else None,
        "goals": GOALS,
        "sizes": results,
        "race": {
            "series": RACE_SERIES,
            "processes": processes,
            "events_per_process": events,
            "wait": args.wait,
            "results": races,
            "notes": notes,
        },
        "held_lock": held,
    }
    emit(args, result, lambda: render(result))
    return 0


# Output


def render(result: dict[str, Any]) -> None:
    print("bench_floor: merges against the I/O floor, memory, a 16-process race and a held lock")
    print_environment(result["environment"])
    features = result["features"]
    print(
        f"this version: merge_or_hand_over {'yes' if features['merge_or_hand_over'] else 'no'}, "
        f"merge(timeout=) {'yes' if features['merge_timeout'] else 'no'}, "
        f"MetricsRecorder({', '.join(features['recorder_parameters'])})"
    )
    if result["sizes"]:
        render_sizes(result)
        render_memory(result)
    if result["race"]["results"]:
        render_race(result)
    if result["held_lock"] is not None:
        render_held(result)


def render_sizes(result: dict[str, Any]) -> None:
    rows = []
    for size in result["sizes"]:
        floor, fresh_floor = size["floor"], size["fresh_floor"]
        label = f"{size['series']:,} ({size['file_bytes'] / 1e6:.1f} MB)"
        # (name, case, the floor it is a ratio of, goal)
        cases = [
            ("I/O floor: read + write + fsync + rename", floor, floor, None),
            ("warm recorder, +1 event", size["warm_merge"], floor, GOALS["warm"]),
            ("new-process floor: the same I/O, first read, after the imports", fresh_floor, fresh_floor, None),
            ("fresh recorder in a new process, +1 event", size["fresh_merge"], fresh_floor, GOALS["fresh"]),
            ("beside: design floor, the same merge in plain Python, new process", size["fresh_design_floor"],
             fresh_floor, None),
            ("  fresh recorder against it", size["fresh_merge"], size["fresh_design_floor"], None),
            ("beside: fresh recorder, the file's seal broken (checksummed)", size["fresh_unsealed"], fresh_floor,
             None),
            ("beside: a directory fsync after the new-process floor", size["fresh_floor_directory_fsync"],
             fresh_floor, None),
            ("beside: I/O floor, the replaced file freed after the timed span", size["floor_kept"], floor, None),
            ("  warm recorder against it", size["warm_merge"], size["floor_kept"], None),
            ("beside: new-process floor, the replaced file freed after", size["fresh_floor_kept"], fresh_floor,
             None),
            ("  fresh recorder against it", size["fresh_merge"], size["fresh_floor_kept"], None),
            ("beside: the imports, in the fresh process", size["fresh_start_to_imported"], fresh_floor, None),
            ("beside: whole fresh process (start, imports, merge, exit)", size["whole_fresh_process"], fresh_floor,
             None),
            ("beside: whole process that only imports", size["whole_import_only_process"], fresh_floor, None),
            ("beside: python -c pass", size["whole_interpreter_only_process"], fresh_floor, None),
        ]
        for number, (name, case, reference, goal) in enumerate(cases):
            ratio = case["median_seconds"] / reference["median_seconds"]
            cpu = case.get("cpu_median_seconds")
            rows.append(
                [
                    label if number == 0 else "",
                    name,
                    format_seconds(case["median_seconds"]),
                    format_seconds(case["min_seconds"]),
                    case["repetitions"],
                    format_ratio(ratio),
                    goal_text(ratio, goal) if goal is not None else "",
                    "" if cpu is None else format_seconds(cpu),
                    "" if cpu is None else format_ratio(cpu / reference["cpu_median_seconds"]),
                ]
            )
    print_table(
        "One event merged into an N-series file, against the I/O floor of that file (medians)",
        ["series", "case", "median", "min", "reps", "× floor", "goal", "CPU", "CPU × floor"],
        rows,
        align="llrrrrlrr",
        notes=[
            "× floor: the first two rows against the I/O floor, timed in one process interleaved with the warm "
            "recorder; the others against the new-process floor (the same read + write + fsync + rename, once, in "
            "a new process after the same imports as the fresh merge, whose first read of a big file faults in "
            "fresh memory as the merge's does); the fresh, design floor, new-process floor, import-only and bare "
            "interpreter processes alternate",
            "design floor: the fresh recorder's merge of the same event done in plain Python in a new process after "
            "the same imports, the least this design does (_floor_workers.fresh_design_floor: the lock, the read and "
            "the seal's look, the looks for markers and hand-overs, the series found and edited, the CRC-32s of the "
            "segments edited, the layout and update-times lines, a sealed temporary written, fsynced, renamed), "
            "the same bytes and seal as the store's (tests/test_bench.py); \"fresh recorder against it\" is what "
            "our code costs beyond the design's own least. It leaves out what the store does and a merge need not "
            "here (the checked walk of the path, signal handlers held back, the look that the lock file is still the "
            "one locked, the headers' checksums and HELP/TYPE check, the lifecycle but for the update times, the "
            "litter look, the writeback's start); it closes the replaced file after its timed span, as the store "
            "does in another thread",
            "the floors fsync the file, not its directory; the store also fsyncs the directory after the rename "
            "(what that costs is shown beside), in the thread that closes the replaced file, once its caller has its "
            "answer, when the merge removes no hand-over or marker after it (as here); the warm loop waits for that "
            "thread outside its timed spans, so that it slows neither the floor nor the next merge",
            "the replaced file freed after: the last descriptor of a file a rename unlinks frees its blocks; the "
            "store holds the file it replaces open until after its rename and closes it in another thread once "
            "the caller has its answer, so the floors are shown beside done that way too (the file read kept "
            "open until the time is taken), with the recorder's ratio to them; the goals are judged against the "
            "floors as the issue defines them, the first and third rows",
            "the fresh merge is timed inside its process: construction, the first read and the merge, not the "
            "interpreter's start or the imports (shown beside; the recorder's module and prometheus_client, "
            "which fraisier_textfile loads on first use of MetricsRecorder, among them); against the I/O floor "
            "of the warm process it is "
            + ", ".join(
                f"{format_ratio(size['fresh_merge']['ratio_to_warm_floor'])} ({size['series']:,})"
                for size in result["sizes"]
            ),
            "CPU: the median of the process's own CPU time (user + system) over the same span, and its ratio to the "
            "floor's CPU time (the goals are on wall time; CPU time is far less disturbed by other jobs on the "
            "machine, and leaves out the time the fsyncs wait for the disk)",
            f"every process runs with FRAISIER_MAX_SERIES_PER_FAMILY={SERIES_BOUND}: the 100,000-series file "
            "has up to ~28,000 series in one family, past the default bound (10,000)",
        ]
        + [
            f"{size['series']:,}: {size['fresh_left_pending']} fresh run(s) returned with the event still pending"
            for size in result["sizes"]
            if size["fresh_left_pending"]
        ],
    )


def render_memory(result: dict[str, Any]) -> None:
    rows = []
    for size in result["sizes"]:
        memory = size["memory"]
        rows.append(
            [
                f"{size['series']:,}",
                f"{size['file_bytes'] / 1e6:.1f} MB",
                f"{memory['peak_rss_growth_bytes'] / 1e6:.1f} MB",
                format_ratio(memory["ratio"]),
                goal_text(memory["ratio"], GOALS["memory"]),
                f"{memory['tracemalloc_peak_bytes'] / 1e6:.1f} MB",
                format_ratio(memory["tracemalloc_ratio"]),
                f"{memory['import_only_peak_rss_bytes'] / 1e6:.1f} / {memory['fresh_peak_rss_bytes'] / 1e6:.1f} MB",
            ]
        )
    print_table(
        "Peak memory of the fresh merge, above the interpreter's baseline, as a ratio to the file",
        [
            "series",
            "file",
            "peak RSS growth",
            "× file",
            "goal",
            "tracemalloc peak",
            "× file",
            "RSS import-only / fresh",
        ],
        rows,
        align="lrrrlrrr",
        notes=[
            "peak RSS growth = the fresh process's peak RSS during its merge (the peak reset through "
            "/proc/self/clear_refs once imported) minus its RSS then (median); tracemalloc: one more fresh "
            "merge, traced",
        ]
        + [
            f"{size['series']:,}: the peak RSS could not be reset here: the growth is from the process's peak "
            "before the merge, which may hide part of it"
            for size in result["sizes"]
            if not size["memory"]["peak_measured_from_merge_start"]
        ],
    )


def median_round(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    """A row's rounds as one: the round whose p99 is the median (the lower middle one of an even count) stands for
    them, with what must hold in every round summed over all (lost, timeouts) and each round's p99 beside."""
    ordered = sorted(outcomes, key=lambda outcome: outcome["p99_seconds"])
    middle = dict(ordered[(len(ordered) - 1) // 2])
    middle["rounds"] = len(outcomes)
    middle["rounds_p99_seconds"] = [outcome["p99_seconds"] for outcome in outcomes]
    middle["rounds_left_waiting"] = [outcome.get("left_waiting") for outcome in outcomes]
    for key in ("lost", "lock_timeouts", "expected", "counted"):
        middle[key] = sum(outcome[key] for outcome in outcomes)
    return middle


def render_race(result: dict[str, Any]) -> None:
    race = result["race"]
    titles = {
        "recorder": "recorder as shipped (auto_flush)",
        "recorder_durable": "recorder, every hand-over fsynced (budget never spent)",
        "group_floor": "floor of group commit: merge if the lock is free, else hand over",
        "merge": "store.merge, waiting for the lock",
        "hand_over": f"store.merge_or_hand_over(wait={race['wait']:g})",
        "baseline": f"baseline {result['baseline']} recorder (today)",
        "floor": "floor: flock, read, +1, write, fsync, rename, fsync dir",
        "handover_floor": "floor of a hand-over: own small file, rename, fsync, fsync dir",
    }
    rows = []
    for outcome in race["results"]:
        ratio = outcome["throughput_ratio"]
        to_floor = outcome.get("floor_ratios")
        to_group = outcome.get("group_floor_ratios")
        errors = ", ".join(f"{name} {count}" for name, count in outcome["errors"].items()) or "0"
        rows.append(
            [
                titles[outcome["case"]],
                f"{outcome['lost']:g}",
                outcome["lock_timeouts"],
                errors,
                outcome["handed_over"],
                format_seconds(outcome["p50_seconds"]),
                format_seconds(outcome["p99_seconds"]),
                f"{outcome['events_per_second']:,.0f}",
                "—" if ratio is None else format_ratio(ratio),
                "—" if to_floor is None else format_ratio(to_floor["p99"]),
                "—" if to_floor is None else format_ratio(to_floor["events_per_second"]),
                "—" if to_group is None else format_ratio(to_group["p99"]),
            ]
        )
    notes = list(race["notes"])
    for outcome in race["results"]:
        if outcome.get("rounds", 1) > 1:
            listed = ", ".join(f"{seconds * 1e3:.1f}" for seconds in outcome["rounds_p99_seconds"])
            to_group = outcome.get("rounds_p99_to_group_floor")
            beside = "" if not to_group or outcome["case"] == "group_floor" else (
                "; × the same round's group floor: " + ", ".join(format_ratio(ratio) for ratio in to_group)
                + f" (median {format_ratio(statistics.median(to_group))})")
            notes.append(f"{outcome['case']}: {outcome['rounds']} rounds, p99 {listed} ms (the median round shown; "
                         f"lost and timeouts summed over all){beside}")
    for outcome in race["results"]:
        waiting = [count for count in outcome.get("rounds_left_waiting", [outcome.get("left_waiting")])
                   if count is not None]
        if any(waiting):
            notes.append(f"{outcome['case']}: hand-overs still waiting when the race ended, per round: "
                         + ", ".join(f"{count:,}" for count in waiting) + " (on disk, not lost: merged after "
                         "the race, before counting, as `fraisier textfile refresh` does; the file showed them at "
                         "the next merge)")
    for outcome in race["results"]:
        if outcome["case"] in ("baseline", "handover_floor", "group_floor"):
            continue
        verdicts = [
            "0 lost " + ("met" if outcome["lost"] == 0 else "MISSED"),
            "0 timeouts " + ("met" if outcome["lock_timeouts"] == 0 else "MISSED"),
            f"p99 ≤ {GOALS['race_p99_seconds'] * 1e3:g} ms "
            + ("met" if outcome["p99_seconds"] <= GOALS["race_p99_seconds"] else "MISSED"),
        ]
        to_floor = outcome.get("floor_ratios")
        if to_floor is not None and outcome["case"] != "floor":
            verdicts.append(f"p99 {format_ratio(to_floor['p99'])} the floor's, events/s "
                            f"{format_ratio(to_floor['events_per_second'])} the floor's")
        if outcome["throughput_ratio"] is not None and outcome["case"] != "floor":
            verdicts.append(throughput_verdict(outcome["throughput_ratio"]))
        notes.append(f"{outcome['case']}: " + ", ".join(verdicts))
    for outcome in race["results"]:
        spent = outcome.get("where_the_time_went") or {}
        parts = [
            f"{name} {format_seconds(times['wall_seconds'])} = own CPU {format_seconds(times['cpu_seconds'])} + "
            f"waiting for a CPU {format_seconds(times['run_queue_seconds'])} + blocked "
            f"{format_seconds(times['blocked_seconds'])}"
            for name, times in (("all calls", spent.get("all")), ("the slowest 1%", spent.get("slowest_1_percent")))
            if times
        ]
        if parts:
            notes.append(f"{outcome['case']}, mean per call: " + "; ".join(parts))
    for outcome in race["results"]:
        if outcome["case"] in ("recorder", "recorder_durable", "baseline"):
            notes.append(f"{outcome['case']}: {outcome.get('unfsynced', 0):,} of {outcome['handed_over']:,} hand-overs "
                         "made with the lock-wait budget spent, without fsyncs (not durable against a power loss)")
    for outcome in race["results"]:
        kinds = outcome.get("by_kind") or {}
        if len(kinds) == 2:
            notes.append(f"{outcome['case']}, by what the call did: " + "; ".join(
                f"{kind.replace('_', ' ')} {figures['calls']:,} calls, p50 {format_seconds(figures['p50_seconds'])}, "
                f"p99 {format_seconds(figures['p99_seconds'])}, {figures['in_slowest_1_percent']} of the slowest 1%"
                for kind, figures in kinds.items()))
    print_table(
        f"{race['processes']} processes × {race['events_per_process']} events on a {race['series']:,}-series file, "
        "each event written out before the next",
        ["writer", "lost", "timeouts", "errors", "handed over", "p50", "p99", "events/s", "× baseline",
         "p99 × floor", "events/s × floor", "p99 × group floor"],
        rows,
        align="lrrlrrrrrrrr",
        notes=notes + ["lost = expected − (counter after the race and the merges of every hand-over left − counter "
                       "before); for the floor, without them; for the hand-over floor, expected − the files written",
                       "floor: plain Python, no package imported, the same processes × events started together "
                       "on a copy of the same file: under an exclusive flock, one read of the file, the one "
                       "counter raised by one, one write of a temporary beside it, fsync, rename over the file, "
                       "fsync of the directory; the least a store must do to count an event durably in the shared "
                       "file. Its hand-over row: each event a small file of the writer's own (no lock, no read)",
                       "group floor: the store's own design in plain Python, the least it must do: a writer that "
                       "gets the lock without waiting merges its event and every hand-over waiting (list them, read "
                       "each, one read of the file, one writev, fsync, rename, the ids applied listed in the file; "
                       "after the release: fsync of the directory, one look for late hand-overs, their files "
                       "deleted by a thread); one that finds it busy hands its event over (as the hand-over floor) "
                       "and tries the lock once more. The recorder's own work beyond it is the p99 × group floor",
                       "recorder, every hand-over fsynced: as shipped, a process that has spent its lock-wait "
                       "budget (1 s, every second spent writing counted, refilled at 1 s a minute) hands over "
                       "without fsyncs until it refills, which survives a SIGKILL, not a power loss; this row never "
                       "spends it, so every event is durable",
                       "waiting for a CPU: runnable but not running (/proc/thread-self/schedstat); blocked: the rest "
                       "(the lock, fsyncs, the disk)"],
    )


def throughput_verdict(ratio: float) -> str:
    goal = GOALS["race_throughput"]
    return f"throughput ≥ {goal:g}× baseline {'met' if ratio >= goal else 'MISSED'}"


def shorten(text: str | None, length: int = 100) -> str | None:
    return text if text is None or len(text) <= length else text[: length - 1] + "…"


def render_held(result: dict[str, Any]) -> None:
    held = result["held_lock"]
    rows = [
        [f"call {number}", format_seconds(call["seconds"]), shorten(call["raised"]) or "nothing"]
        for number, call in enumerate(held["calls"], 1)
    ]
    exit_seconds = held["exit_seconds"]
    rows.append(
        ["process exit after the calls", "did not exit" if exit_seconds is None else format_seconds(exit_seconds), ""]
    )
    features = result["features"]
    budget = features["recorder_budget"]
    notes = [
        "lock-wait budget in the recorder: "
        + (f"yes ({', '.join(budget)})" if budget else "no: each call waits the whole lock timeout, then raises")
        + "; the store's hand-over: "
        + ("yes" if features["merge_or_hand_over"] else "no (events the lock kept out stay in the process)"),
        f"events landed after the lock was released and one more merge: {held['landed']:g} of {held['attempted']} "
        + ("(exactly once)" if held["landed"] == held["attempted"] else "(NOT exactly once)"),
        f"delay in all: {format_seconds(held['total_call_seconds'])}, goal ≤ ~{GOALS['held_seconds']:g} s "
        + ("met" if held["total_call_seconds"] <= GOALS["held_seconds"] and not held["raised"] else "MISSED"),
    ]
    shown = ("pending_events", "handed_over_events", "dropped_events", "lock_wait_budget", "lock_wait_spent")
    figures = [f"{key} {held['summary'][key]}" for key in shown if key in held["summary"]]
    if figures:
        notes.append(f"get_metrics_summary() after the calls: {', '.join(figures)}")
    print_table(
        "A record call while another process holds the lock",
        ["", "latency", "raised"],
        rows,
        align="lrl",
        notes=notes,
    )


if __name__ == "__main__":
    sys.exit(main())
