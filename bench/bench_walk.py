"""What opening the textfile directory by its checked walk costs (store/walk.py), against the one open of its path
that resolving it by name costs, side by side in one process, interleaved, CPU time (medians).

    python bench/bench_walk.py [--quick] [--json]

Cases, each for a path of five directories: one whose parents only this user (or root) may write, and, run as
root, one whose parent another user (nobody) owns, as Fraisier's /var/lib/fraisier belongs to the deploying user:

- the peer          ``os.open(path, O_RDONLY|O_DIRECTORY)`` and its close: the single open of a path by name
- every merge       ``fs.open_directory(path)`` once the process has walked it: the open of the path, an fstat, the
                    comparison with what the walk found
- a first merge     the same with nothing walked yet in the process: the walk, one component at a time
"""

from __future__ import annotations

import os
import pwd
import sys
import time
from pathlib import Path
from typing import Any

from _common import REPOSITORY, argument_parser, emit, format_ratio, format_seconds, print_table, temporary_directory

sys.path.insert(0, str(REPOSITORY))

from fraisier_textfile.store import fs, walk


def cpu_per_call(call: Any, calls: int) -> float:
    started = time.process_time()
    for _ in range(calls):
        call()
    return (time.process_time() - started) / calls


def cases(base: Path) -> dict[str, str]:
    own = base / "own" / "state" / "fraisier" / "textfile"
    own.mkdir(parents=True)
    paths = {"parents only this user or root may write": str(own)}
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        theirs = base / "theirs" / "lib" / "fraisier" / "textfile"
        theirs.mkdir(parents=True)
        for directory in (theirs.parent, theirs):
            os.chown(directory, nobody.pw_uid, nobody.pw_gid)
        paths["a parent another user owns (nobody)"] = str(theirs)
    return paths


def main() -> None:
    args = argument_parser(__doc__.splitlines()[0]).parse_args()
    calls, rounds = (2_000, 3) if args.quick else (20_000, 7)
    result: dict[str, Any] = {"euid": os.geteuid(), "cases": {}}
    with temporary_directory(args) as base:
        os.chmod(base, 0o755)
        for label, path in cases(base).items():

            def peer(path: str = path) -> None:
                os.close(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))

            def vetted(path: str = path) -> None:
                fs.open_directory(path).close()  # type: ignore[union-attr]

            def first(path: str = path) -> None:
                walk._vetted.pop((path, os.geteuid()), None)
                fs.open_directory(path).close()  # type: ignore[union-attr]

            samples: dict[str, list[float]] = {"peer": [], "vetted": [], "first": []}
            vetted()
            for _ in range(rounds):
                for name, call in (("peer", peer), ("vetted", vetted), ("first", first)):
                    samples[name].append(cpu_per_call(call, calls))
            medians = {name: sorted(values)[len(values) // 2] for name, values in samples.items()}
            result["cases"][label] = {
                "cpu_seconds": medians,
                "every_merge_ratio": medians["vetted"] / medians["peer"],
                "first_merge_ratio": medians["first"] / medians["peer"],
            }

    def render() -> None:
        rows = []
        for label, case in result["cases"].items():
            cpu = case["cpu_seconds"]
            rows.append([label, "the peer: one open of the path", format_seconds(cpu["peer"]), "1.000×"])
            rows.append(["", "every merge: open, fstat, compare", format_seconds(cpu["vetted"]),
                         format_ratio(case["every_merge_ratio"])])
            rows.append(["", "a first merge: the walk", format_seconds(cpu["first"]),
                         format_ratio(case["first_merge_ratio"])])
        print_table(f"Opening the textfile directory (euid {result['euid']}), CPU per call, medians",
                    ["path", "case", "CPU", "× peer"], rows, align="llrr")

    emit(args, result, render)


if __name__ == "__main__":
    main()
