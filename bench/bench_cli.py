"""The wall time of one ``fraisier record deployment`` process beside importing what it depends on.

The package is timed as users run it: this repository is built as a wheel and installed, compiled to
bytecode, into a virtual environment of its own (its dependencies reached through a path to this
interpreter's site-packages), never from the source tree. Every command runs with that environment's
interpreter. Each is a real process, started ~20 times, the cases interleaved so that noise hits them alike:

- ``python -c pass``: the floor, interpreter start-up alone
- ``python -c "import prometheus_client, click, filelock"``: the peer (1.0×), our dependencies imported
- ``python -c "import click"`` and ``python -c "import prometheus_client"``: the peers of the import goals (a whole
  ``fraisier record`` process ≤ 1.2× importing click; ``import fraisier_textfile.metrics`` ≤ 1.5× importing
  prometheus_client)
- ``fraisier record deployment ...``: the console script the wheel installed (each one it installs), and
  ``python -m fraisier_textfile record deployment ...``, each merging into the file the runs themselves make
  (small) and into a 10,000-series file (the merge reads and parses it)

Then ``python -X importtime -m fraisier_textfile record deployment ...`` shows whether the record path imports
prometheus_client (it must not) and which imports cost the most.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from _common import (
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

GOAL = 1.0
LARGE_FILE_SERIES = 10_000
RECORD = [
    "record",
    "deployment",
    "--provider",
    "bare_metal",
    "--fraise-type",
    "api",
    "--status",
    "success",
    "--duration",
    "42",
]
SERIES = 'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, help="timed runs of each command (default 20; 3 with --quick)")
    args = parser.parse_args(argv)
    runs = args.runs or (3 if args.quick else 20)
    importtime_runs = 1 if args.quick else 5

    with temporary_directory(args) as root:
        package = install_package(root / "installed")
        python = package.python
        if "fraisier" not in package.console_scripts:
            raise SystemExit(f"the wheel installs no `fraisier` script (it installs {package.console_scripts})")
        script = package.script("fraisier")
        small, large = root / "small", root / "large"
        make_large_file(large)
        cases = [
            ("floor", "python -c pass", [python, "-c", "pass"]),
            (
                "peer",
                'python -c "import prometheus_client, click, filelock"',
                [python, "-c", "import prometheus_client, click, filelock"],
            ),
            ("dependencies", 'python -c "import click, filelock"', [python, "-c", "import click, filelock"]),
            ("click", 'python -c "import click"', [python, "-c", "import click"]),
            ("prometheus_client", 'python -c "import prometheus_client"', [python, "-c", "import prometheus_client"]),
            (
                "metrics_module",
                'python -c "import fraisier_textfile.metrics"',
                [python, "-c", "import fraisier_textfile.metrics"],
            ),
            (
                "script_small",
                "fraisier record deployment (small file)",
                [script, "--textfile-dir", str(small), *RECORD],
            ),
            (
                "module_small",
                "python -m fraisier_textfile record deployment (small file)",
                [python, "-m", "fraisier_textfile", "--textfile-dir", str(small), *RECORD],
            ),
            (
                "script_large",
                f"fraisier record deployment ({LARGE_FILE_SERIES:,}-series file)",
                [script, "--textfile-dir", str(large), *RECORD],
            ),
            (
                "module_large",
                f"python -m fraisier_textfile record deployment ({LARGE_FILE_SERIES:,}-series file)",
                [python, "-m", "fraisier_textfile", "--textfile-dir", str(large), *RECORD],
            ),
        ]
        samples: dict[str, list[float]] = {key: [] for key, _, _ in cases}
        cpu: dict[str, list[float]] = {key: [] for key, _, _ in cases}
        for round_number in range(runs + 2):  # two untimed warm-up rounds (.pyc files, page cache)
            for key, _, command in cases:
                elapsed, cpu_seconds = run(command, package)
                if round_number >= 2:
                    samples[key].append(elapsed)
                    cpu[key].append(cpu_seconds)
        imports = import_times(
            [python, "-X", "importtime", "-m", "fraisier_textfile", "--textfile-dir", str(small), *RECORD],
            package,
            importtime_runs,
        )
        peer_imports = import_times(
            [python, "-X", "importtime", "-c", "import prometheus_client, click, filelock"],
            package,
            importtime_runs,
        )
        small_count = counter_value(small / "fraisier.prom")
        info = environment(root)

    floor = statistics.median(samples["floor"])
    peer = statistics.median(samples["peer"])
    rows = []
    for key, label, command in cases:
        median = statistics.median(samples[key])
        rows.append(
            {
                "case": key,
                "command": label,
                "argv": command,
                "median_seconds": median,
                "min_seconds": min(samples[key]),
                "above_floor_seconds": median - floor,
                "ratio": median / peer,
                "cpu_median_seconds": statistics.median(cpu[key]),
                "goal": GOAL if key.startswith(("script_", "module_")) else None,
            }
        )
    medians: dict[str, float] = {str(row["case"]): float(row["median_seconds"]) for row in rows}  # type: ignore[arg-type]
    cpu_medians = {key: statistics.median(values) for key, values in cpu.items()}
    # The import goals: our own imports and work may add at most a fifth to the CLI framework's (a whole
    # `fraisier record` process against importing click alone), and Fraisier's module name for name at most half
    # again prometheus_client's, which it wraps.
    import_goals = [
        {
            "what": label,
            "ours": medians[ours],
            "peer": medians[peer],
            "ratio": medians[ours] / medians[peer],
            # User and system CPU of the same processes: what a loaded machine disturbs least (no waiting for a
            # core or for the disk is counted).
            "cpu_ours": cpu_medians[ours],
            "cpu_peer": cpu_medians[peer],
            "cpu_ratio": cpu_medians[ours] / cpu_medians[peer],
            "goal": goal,
        }
        for label, ours, peer, goal in (
            ('fraisier record deployment (small) / python -c "import click"', "script_small", "click", 1.2),
            ('import fraisier_textfile.metrics / import prometheus_client', "metrics_module", "prometheus_client", 1.5),
        )
    ]
    result = {
        "benchmark": "cli",
        "environment": info,
        "runs": runs,
        "console_script": script,
        "console_scripts_installed": list(package.console_scripts),
        "goal": GOAL,
        "results": rows,
        "import_goals": import_goals,
        "small_file_counter": small_count,
        "small_file_expected": (runs + 2) * 2 + importtime_runs,
        "record_imports": {key: value for key, value in imports.items() if key != "self_seconds"},
        "peer_imports": {"total_seconds": peer_imports["total_seconds"], "modules": peer_imports["modules"]},
        "import_difference": import_difference(imports["self_seconds"], peer_imports["self_seconds"]),
    }
    emit(args, result, lambda: render(result))
    return 0


def make_large_file(directory: Path) -> None:
    from fraisier_textfile import MetricsRecorder

    recorder = MetricsRecorder(textfile_dir=directory, auto_flush=False)
    populate(recorder, LARGE_FILE_SERIES)
    recorder.flush()


def run(command: list[str], package: InstalledPackage) -> tuple[float, float]:
    """The wall time of one run of ``command``, and the user and system CPU time it used."""
    import resource
    import time

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    completed = subprocess.run(command, env=package.environment, cwd=package.cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {completed.returncode}: {completed.stderr.strip()}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def counter_value(path: Path) -> float | None:
    for line in path.read_text().splitlines():
        if line.startswith(SERIES + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def import_times(command: list[str], package: InstalledPackage, runs: int) -> dict[str, Any]:
    """Median self and cumulative import times per module over ``runs`` runs of ``-X importtime``."""
    self_times: dict[str, list[int]] = {}
    cumulative_times: dict[str, list[int]] = {}
    depth: dict[str, int] = {}
    for _ in range(runs):
        completed = subprocess.run(command, env=package.environment, cwd=package.cwd, capture_output=True, text=True)
        if completed.returncode != 0:
            raise SystemExit(f"{' '.join(command)} exited {completed.returncode}: {completed.stderr.strip()}")
        for line in completed.stderr.splitlines():
            if not line.startswith("import time:") or "imported package" in line:
                continue
            self_text, cumulative_text, name_text = line[len("import time:") :].split("|")
            name = name_text.strip()
            depth[name] = (len(name_text) - len(name_text.lstrip()) - 1) // 2
            self_times.setdefault(name, []).append(int(self_text))
            cumulative_times.setdefault(name, []).append(int(cumulative_text))
    self_median = {name: statistics.median(values) / 1e6 for name, values in self_times.items()}
    cumulative_median = {name: statistics.median(values) / 1e6 for name, values in cumulative_times.items()}
    top_level = sorted((name for name in depth if depth[name] == 0), key=lambda n: -cumulative_median[n])
    by_self = sorted(self_median, key=lambda n: -self_median[n])
    prometheus = sorted(name for name in depth if name == "prometheus_client" or name.startswith("prometheus_client."))
    return {
        "runs": runs,
        "self_seconds": self_median,
        "modules": len(depth),
        "total_seconds": sum(self_median.values()),
        "prometheus_client_imported": bool(prometheus),
        "prometheus_client_modules": prometheus,
        "top_level_by_cumulative": [
            {"module": name, "cumulative_seconds": cumulative_median[name], "self_seconds": self_median[name]}
            for name in top_level[:12]
        ],
        "by_self": [{"module": name, "self_seconds": self_median[name]} for name in by_self[:10]],
    }


def import_difference(ours: dict[str, float], peer: dict[str, float]) -> dict[str, Any]:
    """What the record path imports that the peer does not, and the reverse, by self time."""
    only_ours = {name: seconds for name, seconds in ours.items() if name not in peer}
    only_peer = {name: seconds for name, seconds in peer.items() if name not in ours}
    first_party = {name: seconds for name, seconds in ours.items() if name.partition(".")[0] == "fraisier_textfile"}
    return {
        "only_record_path_seconds": sum(only_ours.values()),
        "only_record_path_modules": len(only_ours),
        "only_record_path_biggest": sorted(only_ours, key=lambda name: -only_ours[name])[:8],
        "only_peer_seconds": sum(only_peer.values()),
        "only_peer_modules": len(only_peer),
        "first_party": [
            {"module": name, "self_seconds": seconds}
            for name, seconds in sorted(first_party.items(), key=lambda item: -item[1])
        ],
    }


def render(result: dict[str, Any]) -> None:
    print("bench_cli: one `fraisier record deployment` process beside importing its dependencies")
    print_environment(result["environment"])
    print(
        f"the installed wheel (compiled, in a virtual environment of its own): {result['console_script']}; "
        f"{result['runs']} timed runs per command, interleaved"
    )
    rows = []
    for row in result["results"]:
        goal = goal_text(row["ratio"], row["goal"]) if row["goal"] is not None else ""
        above = "" if row["case"] == "floor" else format_seconds(row["above_floor_seconds"])
        rows.append(
            [
                row["command"],
                format_seconds(row["median_seconds"]),
                format_seconds(row["min_seconds"]),
                above,
                format_ratio(row["ratio"]),
                format_seconds(row["cpu_median_seconds"]),
                goal,
            ]
        )
    print_table(
        "Wall time of one process (median over runs; ratio against the import-only peer; its CPU, user + system)",
        ["command", "median", "min", "above floor", "ratio", "cpu", "goal"],
        rows,
        align="lrrrrrl",
    )
    print_table(
        "Import goals (medians of the same runs, side by side; the goal is judged on wall time)",
        ["what", "ours", "peer", "ratio", "goal", "cpu ratio"],
        [
            [goal["what"], format_seconds(goal["ours"]), format_seconds(goal["peer"]), format_ratio(goal["ratio"]),
             goal_text(goal["ratio"], goal["goal"]), format_ratio(goal["cpu_ratio"])]
            for goal in result["import_goals"]
        ],
        align="lrrrlr",
    )
    count, expected = result["small_file_counter"], result["small_file_expected"]
    print(
        f"  the small file's counter after every run: {count:g} (expected {expected}: every event landed)"
        if count == expected
        else f"  WARNING: the small file's counter is {count}, expected {expected}"
    )

    imports = result["record_imports"]
    verdict = (
        "NOT imported (good)"
        if not imports["prometheus_client_imported"]
        else f"IMPORTED: {', '.join(imports['prometheus_client_modules'][:5])}"
    )
    print()
    print(f"python -X importtime -m fraisier_textfile record deployment ... (median of {imports['runs']} runs)")
    print(f"  prometheus_client: {verdict}")
    print(
        f"  {imports['modules']} modules, {format_seconds(imports['total_seconds'])} importing in all "
        f"(the import-only peer: {format_seconds(result['peer_imports']['total_seconds'])})"
    )
    print_table(
        "Biggest top-level imports of the record path",
        ["module", "cumulative", "self"],
        [
            [entry["module"], format_seconds(entry["cumulative_seconds"]), format_seconds(entry["self_seconds"])]
            for entry in imports["top_level_by_cumulative"]
        ],
    )
    print_table(
        "Biggest single modules (self time)",
        ["module", "self"],
        [[entry["module"], format_seconds(entry["self_seconds"])] for entry in imports["by_self"]],
    )
    difference = result["import_difference"]
    first_party = difference["first_party"]
    print_table(
        "Our own modules on the record path (self time)",
        ["module", "self"],
        [[entry["module"], format_seconds(entry["self_seconds"])] for entry in first_party]
        + [["total", format_seconds(sum(entry["self_seconds"] for entry in first_party))]],
    )
    print(
        f"  imported by the record path but not by the peer: {difference['only_record_path_modules']} modules, "
        f"{format_seconds(difference['only_record_path_seconds'])} (biggest: "
        f"{', '.join(difference['only_record_path_biggest'][:4])})"
    )
    print(
        f"  imported by the peer but not by the record path: {difference['only_peer_modules']} modules, "
        f"{format_seconds(difference['only_peer_seconds'])} (prometheus_client and what it pulls in)"
    )


if __name__ == "__main__":
    sys.exit(main())
