"""Run every benchmark, one after the other, each in its own process.

    python bench/run_all.py [--quick] [--json] [--tmpdir DIR]

With ``--json`` the output is one JSON object keyed by benchmark name. Exits non-zero if a benchmark failed
(a missed goal is reported in the tables, not as a failure).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from _common import BENCH_DIRECTORY, argument_parser

BENCHMARKS = ("bench_flush", "bench_cli", "bench_race", "bench_record", "bench_floor", "bench_backlog")


def main(argv: list[str] | None = None) -> int:
    args = argument_parser(__doc__.splitlines()[0]).parse_args(argv)
    passed_on = (["--quick"] if args.quick else []) + (["--tmpdir", args.tmpdir] if args.tmpdir else [])
    combined: dict[str, object] = {}
    failed = []
    for name in BENCHMARKS:
        command = [sys.executable, str(BENCH_DIRECTORY / f"{name}.py"), *passed_on]
        if args.json:
            completed = subprocess.run([*command, "--json"], capture_output=True, text=True)
            sys.stderr.write(completed.stderr)
            if completed.returncode == 0:
                combined[name.removeprefix("bench_")] = json.loads(completed.stdout)
        else:
            print(f"=== {name} ===", flush=True)
            started = time.perf_counter()
            completed = subprocess.run(command, text=True)
            print(f"({name} took {time.perf_counter() - started:.1f} s)\n", flush=True)
        if completed.returncode != 0:
            failed.append(name)
    if args.json:
        print(json.dumps(combined, indent=2))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
