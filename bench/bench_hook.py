"""What the start-up hook costs every interpreter start of the environment it is installed in.

This repository is built as a wheel and installed, compiled, into a virtual environment of its own (the hook's
.pth at the root of its site-packages, its dependencies reached through a path line), and that environment is
copied once with the .pth removed: two environments alike but for the hook. Real processes, interleaved so that
noise hits them alike, medians:

- ``python -c pass`` without the hook: the peer (1.0×)
- ``python -c pass`` with the hook: goal ≤ 1 ms above the peer
- ``python -c pass`` with the hook turned off (``FRAISIER_TEXTFILE_HOOK=0``): the module is still imported

Then what the hook does when a process imports Fraisier's ``fraisier.metrics`` (the one moment it works): the
import with and without the hook (with it, our package and the bridge are imported too). Needs Fraisier
installed in this interpreter; skipped otherwise. And ``-X importtime``'s own figure for the hook's module.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from _common import (
    InstalledPackage,
    argument_parser,
    emit,
    environment,
    format_ratio,
    format_seconds,
    install_package,
    print_environment,
    print_table,
    temporary_directory,
)

GOAL_SECONDS = 1e-3
HOOK_PTH = "fraisier_textfile_hook.pth"
HOOK_MODULE = "_fraisier_textfile_hook"


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, help="timed runs of each command (default 200; 40 with --quick)")
    args = parser.parse_args(argv)
    runs = args.runs or (40 if args.quick else 200)

    with temporary_directory(args) as root:
        package = install_package(root / "installed")
        with_hook = Path(package.python)
        without_hook = copy_without_hook(root / "installed" / "venv", root / "without-hook" / "venv")
        off = dict(package.environment, FRAISIER_TEXTFILE_HOOK="0")
        cases: list[tuple[str, str, list[str], dict[str, str]]] = [
            ("without", "python -c pass, no hook (peer)", [str(without_hook), "-c", "pass"], package.environment),
            ("with", "python -c pass, hook installed", [str(with_hook), "-c", "pass"], package.environment),
            ("off", "python -c pass, FRAISIER_TEXTFILE_HOOK=0", [str(with_hook), "-c", "pass"], off),
        ]
        fraisier = find_spec("fraisier") is not None
        if fraisier:
            importing = ["-c", "import fraisier.metrics"]
            cases += [
                ("import_without", "import fraisier.metrics, no hook", [str(without_hook), *importing],
                 package.environment),
                ("import_with", "import fraisier.metrics, hook (bridged)", [str(with_hook), *importing],
                 package.environment),
            ]
        samples: dict[str, list[float]] = {key: [] for key, _, _, _ in cases}
        for round_number in range(runs + 3):  # three untimed warm-up rounds (.pyc files, page cache)
            for key, _, command, env in cases:
                elapsed = run(command, env, package)
                if round_number >= 3:
                    samples[key].append(elapsed)
        hook_import = hook_import_time(str(with_hook), package, 1 if args.quick else 20)
        info = environment(root)

    medians = {key: statistics.median(values) for key, values in samples.items()}
    rows = [
        {
            "case": key,
            "command": label,
            "median_seconds": medians[key],
            "min_seconds": min(samples[key]),
            "ratio": medians[key] / medians["import_without" if key.startswith("import") else "without"],
        }
        for key, label, _, _ in cases
    ]
    added = medians["with"] - medians["without"]
    # Each round ran both one after the other: the median of the per-round differences is the figure least moved
    # by load that changes between rounds (this machine is shared).
    paired = statistics.median(a - b for a, b in zip(samples["with"], samples["without"]))
    result: dict[str, Any] = {
        "benchmark": "hook",
        "environment": info,
        "runs": runs,
        "goal_added_seconds": GOAL_SECONDS,
        "added_seconds": added,
        "added_seconds_minimum": min(samples["with"]) - min(samples["without"]),
        "added_seconds_paired": paired,
        "goal_met": added <= GOAL_SECONDS,
        "hook_module_import_seconds": hook_import,
        "fraisier_installed": fraisier,
        "results": rows,
    }
    emit(args, result, lambda: render(result))
    return 0


def copy_without_hook(venv: Path, destination: Path) -> Path:
    """The environment copied (its python a link to the same interpreter), without the hook's .pth."""
    shutil.copytree(venv, destination, symlinks=True)
    [pth] = destination.glob(f"lib/python*/site-packages/{HOOK_PTH}")
    pth.unlink()
    return destination / "bin" / "python"


def run(command: list[str], env: dict[str, str], package: InstalledPackage) -> float:
    started = time.perf_counter()
    completed = subprocess.run(command, env=env, cwd=package.cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if completed.returncode != 0 or completed.stderr:
        raise SystemExit(f"{' '.join(command)} exited {completed.returncode}: {completed.stderr.strip()}")
    return elapsed


def hook_import_time(python: str, package: InstalledPackage, runs: int) -> float:
    """The median of ``-X importtime``'s cumulative figure for the hook's module, in seconds."""
    figures = []
    for _ in range(runs):
        traced = subprocess.run([python, "-X", "importtime", "-c", "pass"], env=package.environment,
                                cwd=package.cwd, capture_output=True, text=True, check=True)
        for line in traced.stderr.splitlines():
            if line.startswith("import time:") and line.rsplit("|", 1)[1].strip() == HOOK_MODULE:
                figures.append(int(line.split("|")[1]) / 1e6)
    if not figures:
        raise SystemExit(f"{HOOK_MODULE} was not imported at start: the hook is not installed")
    return statistics.median(figures)


def signed(seconds: float) -> str:
    """A difference of two timings: noise can make it negative."""
    return f"-{format_seconds(-seconds)}" if seconds < 0 else format_seconds(seconds)


def render(result: dict[str, Any]) -> None:
    print("bench_hook: the start-up hook's cost at every interpreter start")
    print_environment(result["environment"])
    rows = [
        [row["command"], format_seconds(row["median_seconds"]), format_seconds(row["min_seconds"]),
         format_ratio(row["ratio"])]
        for row in result["results"]
    ]
    verdict = "met" if result["goal_met"] else "MISSED"
    print_table(
        f"Wall time of one process, median of {result['runs']} runs each, interleaved",
        ["command", "median", "min", "ratio"],
        rows,
        notes=[
            f"added by the hook: {signed(result['added_seconds'])} (medians), "
            f"{signed(result['added_seconds_paired'])} (median of the differences within a round), "
            f"{signed(result['added_seconds_minimum'])} (minimums); goal ≤ "
            f"{format_seconds(result['goal_added_seconds'])} {verdict}",
            f"-X importtime of {HOOK_MODULE}: {format_seconds(result['hook_module_import_seconds'])}",
            "the import rows: the one moment the hook works, when a process imports Fraisier's metrics module"
            if result["fraisier_installed"] else "Fraisier is not installed here: no import rows",
        ],
    )


if __name__ == "__main__":
    raise SystemExit(main())
