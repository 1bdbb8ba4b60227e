"""Shared helpers for the benchmarks: options, timing, the populated recorder, tables and JSON.

Every benchmark measures its own figures and its peer's in the same run, side by side; nothing here holds a
number. Times are wall-clock (``time.perf_counter``) and reported as medians unless a table says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIRECTORY = Path(__file__).resolve().parent
REPOSITORY = BENCH_DIRECTORY.parent

# The benchmarks time explicit flushes of auto_flush=False recorders: a background flush (every 5 s by default)
# landing between the record calls and the flush would write part of what is timed outside the timing. Off
# here, in every benchmark and the processes they start, unless asked for.
os.environ.setdefault("FRAISIER_FLUSH_INTERVAL", "0")

# The label values Fraisier uses, then made-up ones to reach large series counts.
PROVIDERS = ("bare_metal", "docker_compose")
FRAISE_TYPES = ("api", "etl", "scheduled", "backup", "docker_compose")
CHECK_TYPES = ("http", "tcp", "exec", "systemd")
RECORDED_STATUSES = ("success", "failed", "rolled_back", "rollback_failed")
FRAISE_TYPES_PER_PROVIDER = 20
CHECK_TYPES_PER_PROVIDER = 8

# The one event every "merge one event" case records: a series that already exists in the populated file.
EVENT = ("bare_metal", "api", "success", 42.0)


# Options and output


def argument_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: fewer sizes and repetitions")
    parser.add_argument(
        "--tmpdir",
        default=None,
        help="make the temporary directories here (default: the system's); use the filesystem the textfile "
        "lives on in production, since fsync costs differ between ext4, tmpfs and overlay",
    )
    return parser


@contextmanager
def temporary_directory(args: argparse.Namespace) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fraisier-bench-", dir=args.tmpdir) as name:
        yield Path(name)


def emit(args: argparse.Namespace, result: dict[str, Any], render: Callable[[], None]) -> None:
    """Print ``result`` as JSON with ``--json``, else call ``render`` to print the tables."""
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=False))
    else:
        render()


def environment(directory: Path) -> dict[str, Any]:
    """What the figures depend on: interpreter, library versions, CPUs, and the filesystem written to."""
    from importlib.metadata import version

    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "prometheus_client": version("prometheus-client"),
        "filelock": version("filelock"),
        "click": version("click"),
        "filesystem": filesystem_type(directory),
    }


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding ``path`` (ext4, tmpfs, overlay...), from /proc/self/mounts; an ext4's
    with whether it has a journal: without, every new file's inode is found by skipping the inodes freed in the
    last 30 s (the kernel's recently_deleted check, made only then), so a file made after thousands were removed
    costs far more CPU (bench/README.md)."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    resolved = str(path.resolve())
    best, kind = "", "unknown"
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point = fields[1].replace("\\040", " ")
        inside = resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, kind = mount_point, fields[2]
    if kind == "ext4":
        kind += _ext4_journal(path)
    return kind


def _ext4_journal(path: Path) -> str:
    """`` (no journal)`` or `` (journaled)`` for the ext4 holding ``path``, by the store's own probe (the one that
    decides whether hand-overs are taken back there); empty where it cannot be told."""
    from fraisier_textfile.store.handover_reuse import ext4_journal

    try:
        device = os.stat(path).st_dev
    except OSError:
        return ""
    task = ext4_journal(os.major(device), os.minor(device))
    if task is None:
        return ""
    return " (no journal)" if task == "<none>" else " (journaled)"


def print_environment(info: dict[str, Any]) -> None:
    print(
        f"Python {info['python']} ({info['implementation']}), prometheus_client {info['prometheus_client']}, "
        f"filelock {info['filelock']}, click {info['click']}, {info['cpus']} CPUs, "
        f"temp dir on {info['filesystem']}"
    )


def print_table(
    title: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    notes: Sequence[str] = (),
    align: str = "",
) -> None:
    """A plain text table. ``align`` holds one ``l`` or ``r`` per column; by default the first column is
    left-aligned and the others right-aligned."""
    align = align or "l" + "r" * (len(headers) - 1)
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(header)] + [len(row[column]) for row in cells]) for column, header in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [
            value.ljust(width) if side == "l" else value.rjust(width)
            for value, width, side in zip(values, widths, align)
        ]
        return "  ".join(parts).rstrip()

    print()
    print(title)
    print(line(headers))
    print(line(["-" * width for width in widths]))
    for row in cells:
        print(line(row))
    for note in notes:
        print(f"  {note}")


def format_seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:.2f} µs"
    return f"{seconds * 1e9:.0f} ns"


def format_ratio(ratio: float) -> str:
    return f"{ratio:.3f}×"


def goal_text(ratio: float, goal: float) -> str:
    return f"≤ {goal:g}× {'met' if ratio <= goal else 'MISSED'}"


# Timing


@dataclass
class Timing:
    """Repeated wall-clock measurements of one case, in seconds."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        return min(self.samples)

    @property
    def worst(self) -> float:
        return max(self.samples)

    def as_json(self) -> dict[str, Any]:
        return {
            "median_seconds": self.median,
            "min_seconds": self.best,
            "max_seconds": self.worst,
            "repetitions": len(self.samples),
        }


def measure(call: Callable[[], object], repetitions: int, setup: Callable[[], object] | None = None) -> Timing:
    """Time ``call`` ``repetitions`` times; ``setup`` runs before each call, outside the timing."""
    samples = []
    for _ in range(repetitions):
        if setup is not None:
            setup()
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return Timing(samples)


# Processes


def stop(process: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def console_script(name: str) -> str:
    """The console script installed beside this interpreter: not a version manager's shim (pyenv's is a bash
    script that would add its own start-up to every run)."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"the {name} console script is not installed: pip install -e {REPOSITORY}")
    return found


# The package as users get it


@dataclass(frozen=True)
class InstalledPackage:
    """This repository built as a wheel and installed, compiled to bytecode, into a virtual environment of
    its own: what a user runs after ``pip install``, not the source tree."""

    python: str
    scripts: Path
    console_scripts: tuple[str, ...]
    """The names of the console scripts the wheel installs (``[project.scripts]``)."""
    environment: dict[str, str]
    """The environment to run it in: without PYTHONPATH (which would put a source tree first) and without
    FRAISIER_*/PROMETHEUS_* settings."""
    cwd: Path
    """The directory to run it from: not the repository, whose fraisier_textfile/ ``python -c`` and ``-m``
    would import first (they put the current directory first on sys.path)."""

    def script(self, name: str) -> str:
        return str(self.scripts / name)


def install_package(directory: Path, tree: Path = REPOSITORY) -> InstalledPackage:
    """Build a wheel of this repository (or of another tree of it) from a copy of its sources (the build
    leaves build/ and egg-info behind) and install it into a new virtual environment under ``directory``,
    compiled. The dependencies come from this interpreter's site-packages through a path in a .pth file: a
    plain path line, so that the .pth files there (an editable install of this package among them) are not
    run."""
    import compileall
    import site
    import venv

    source = directory / "source"
    source.mkdir(parents=True)
    shutil.copytree(
        tree / "fraisier_textfile", source / "fraisier_textfile", ignore=shutil.ignore_patterns("__pycache__")
    )
    if (tree / "contrib").is_dir():  # the systemd units, installed as fraisier_textfile.units
        shutil.copytree(tree / "contrib", source / "contrib")
    # The build step and the start-up hook it ships live beside pyproject.toml (a tree of an older revision may
    # lack them).
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "build_with_hook.py",
                 "_fraisier_textfile_hook.py", "fraisier_textfile_hook.pth"):
        if (tree / name).exists():
            shutil.copy2(tree / name, source / name)
    wheels = directory / "wheels"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "text": True}
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheels), str(source)]
    built = subprocess.run([*build, "--no-build-isolation"], **quiet)  # type: ignore[call-overload]
    if built.returncode != 0:  # no `wheel` here: let pip fetch the build requirements from the index
        built = subprocess.run(build, **quiet)  # type: ignore[call-overload]
    if built.returncode != 0:
        raise SystemExit(f"building a wheel of {tree} failed: {built.stderr.strip()[-2000:]}")
    [wheel] = wheels.glob("*.whl")
    environment_directory = directory / "venv"
    venv.EnvBuilder(with_pip=False).create(environment_directory)
    python = environment_directory / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dependencies = [path for path in site.getsitepackages() if Path(path).is_dir()]
    (Path(purelib) / "_bench_dependencies.pth").write_text("".join(f"{path}\n" for path in dependencies))
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "--compile",
            # The venv sees this interpreter's site-packages (the .pth above), where an editable install of the
            # same version may stand: without this, pip could call the wheel "already satisfied" and skip it.
            "--ignore-installed",
            str(wheel),
        ],
        **quiet,  # type: ignore[call-overload]
    )
    if installed.returncode != 0:
        raise SystemExit(f"installing {wheel.name} failed: {installed.stderr.strip()[-2000:]}")
    compileall.compile_dir(str(Path(purelib) / "fraisier_textfile"), quiet=1)
    run_environment = {
        key: value
        for key, value in os.environ.items()
        if key != "PYTHONPATH" and not key.startswith(("FRAISIER_", "PROMETHEUS_"))
    }
    where = subprocess.run(
        [str(python), "-c", "import fraisier_textfile; print(fraisier_textfile.__file__)"],
        capture_output=True,
        text=True,
        env=run_environment,
        cwd=directory,
    )
    if where.returncode != 0 or not where.stdout.strip().startswith(purelib):
        raise SystemExit(f"the installed package is not the one imported: {where.stdout.strip()} {where.stderr}")
    [entry_points] = Path(purelib).glob("fraisier_textfile-*.dist-info/entry_points.txt")
    scripts = tuple(sorted(console_scripts(entry_points.read_text())))
    return InstalledPackage(str(python), environment_directory / "bin", scripts, run_environment, directory)


def console_scripts(entry_points: str) -> list[str]:
    """The names in the ``[console_scripts]`` section of a dist-info's entry_points.txt."""
    names, inside = [], False
    for line in entry_points.splitlines():
        line = line.strip()
        if line.startswith("["):
            inside = line == "[console_scripts]"
        elif inside and "=" in line:
            names.append(line.split("=", 1)[0].strip())
    return names


# The populated recorder


def populate(recorder: Any, series: int) -> int:
    """Record events with many distinct label values into ``recorder`` until it holds about ``series`` sample
    lines, and return the expected count (exact: the file and prometheus_client's output have that many).

    Each provider brings 70 duration-histogram lines (5 statuses × 14), each (provider, fraise type) pair 5
    deployment counters plus one last-deployment gauge per status recorded, each (provider, check type) pair
    2 health-check counters and 12 duration-histogram lines.
    """
    lines = 0
    for provider in provider_names():
        lines += 70
        for fraise_type in fraise_type_names():
            lines += 5
            for status in RECORDED_STATUSES:
                recorder.record_deployment_complete(provider, fraise_type, status, 12.5)
                lines += 1
                if lines >= series:
                    return lines
        for check_type in check_type_names():
            lines += 14
            recorder.record_health_check(provider, check_type, "pass", 0.2)
            recorder.record_health_check(provider, check_type, "fail", 3.0)
            if lines >= series:
                return lines
    raise AssertionError("unreachable: provider_names() never ends")


def provider_names() -> Iterator[str]:
    yield from PROVIDERS
    number = len(PROVIDERS)
    while True:
        yield f"provider_{number:04d}"
        number += 1


def fraise_type_names() -> list[str]:
    extra = FRAISE_TYPES_PER_PROVIDER - len(FRAISE_TYPES)
    return list(FRAISE_TYPES) + [f"fraise_type_{number:02d}" for number in range(extra)]


def check_type_names() -> list[str]:
    extra = CHECK_TYPES_PER_PROVIDER - len(CHECK_TYPES)
    return list(CHECK_TYPES) + [f"check_type_{number:02d}" for number in range(extra)]


def sample_lines(path: Path) -> int:
    """Sample lines in a text-format file (not comments, not blank)."""
    with open(path, encoding="utf-8") as file:
        return sum(1 for line in file if line.strip() and not line.startswith("#"))
