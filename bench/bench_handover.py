"""A hand-over's whole cost: the call that hands an event over, and its share of the merge that applies it.

    python bench/bench_handover.py [--baseline REV] [--rounds N] [--batch B] [--tmpdir DIR] [--quick] [--json]

Under contention most record calls hand their events over (bench_floor.py's race), and every hand-over used to
be a new file that the merge applying it deleted. Since spent hand-overs (store/handover_reuse.py) a merge
renames what it applied to a spent file and the writer takes it back for its next hand-over. What that saves
depends on the filesystem: a new inode and a deletion cost little on a journaled ext4, and far more on an ext4
without a journal (the inode allocator's scan of recently freed inodes) or one mounted with ``discard`` (each
deletion waits for the device).

Each row is a process of the package installed from a wheel, in turn (the rows alternate, ROUNDS times), that
makes 4 rounds: ``TextfileStore.hand_over`` of one event BATCH times, then ``merge`` of an empty change, which
applies them, and the wait for its deletions. Timed: each hand-over call (wall and CPU), and the merge with its
deletions (CPU of the whole process, its background thread included; and its wall time, in which a merge that
drops the ids of the hand-overs the one before applied waits for the fsync of the hand-over directory). Rows:

- ours: this tree;
- peer: ``--baseline`` (default ``main``), installed from ``git archive`` the same way;
- floor: plain Python, no package imported: each hand-over a new file (create, write, rename), the merge reading
  each and deleting it: the least a hand-over in a file of its own costs.

``durable`` rows fsync each hand-over (file and directory), as a record call does until its lock-wait budget is
spent; the others do not, as after. Figures: medians over every call of every round; ratios ours ÷ peer.
"""

from __future__ import annotations

import json
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
    install_package,
    print_environment,
    print_table,
    temporary_directory,
)
from bench_floor import install_baseline

WORKER = r'''
import json, os, sys, time
directory, rounds, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
durable, kind = sys.argv[4] == "1", sys.argv[5]
calls, call_cpu, merges, merge_walls = [], [], [], []
if kind == "floor":
    handovers = os.path.join(directory, "handovers")
    os.makedirs(handovers, exist_ok=True)
    held = os.open(handovers, os.O_RDONLY | os.O_DIRECTORY)
    number = 0
    def hand_over():
        global number
        number += 1
        name = "s%020d-%d.json" % (number, os.getpid())
        descriptor = os.open("." + name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=held)
        os.write(descriptor, b'{"version":1,"added":[["fraisier_deployment_errors_total",["bare_metal","x"],1]]}')
        os.rename("." + name, name, src_dir_fd=held, dst_dir_fd=held)
        if durable:
            os.fsync(descriptor)
            os.fsync(held)
        os.close(descriptor)
    def merge():
        for name in sorted(os.listdir(held)):
            descriptor = os.open(name, os.O_RDONLY, dir_fd=held)
            os.read(descriptor, 65536)
            os.close(descriptor)
            os.unlink(name, dir_fd=held)
else:
    from fraisier_textfile import TextfileStore
    from fraisier_textfile import changes as events
    from fraisier_textfile.changes import Changes
    from fraisier_textfile.store import handovers as handover_module
    store = TextfileStore(directory)
    store.merge(Changes())
    def hand_over():
        changes = Changes()
        events.deployment_error(changes, "bare_metal", "handed")
        store.hand_over(changes, durable=durable)
    def merge():
        store.merge(Changes())
        handover_module.wait_for_removals()
for _ in range(rounds):
    for _ in range(batch):
        started, started_cpu = time.perf_counter(), time.process_time()
        hand_over()
        calls.append(time.perf_counter() - started)
        call_cpu.append(time.process_time() - started_cpu)
    started, started_cpu = time.perf_counter(), time.process_time()
    merge()
    merges.append(time.process_time() - started_cpu)
    merge_walls.append(time.perf_counter() - started)
print(json.dumps({"calls": calls, "call_cpu": call_cpu, "merges": merges, "merge_walls": merge_walls}))
'''


PER_PROCESS = 4
"""Merges each process makes (its hand-overs and their merge, PER_PROCESS times): a process's first hand-overs are
new files in every version, its next ones take back what the merges before applied."""


def run(python: str, environment_: dict[str, str] | None, cwd: Path, directory: Path, rounds: int, batch: int,
        durable: bool, kind: str) -> dict[str, list[float]]:
    directory.mkdir(parents=True, exist_ok=True)
    completed = subprocess.run(
        [python, "-c", WORKER, str(directory), str(rounds), str(batch), "1" if durable else "0", kind],
        capture_output=True, text=True, env=environment_, cwd=cwd, check=True, timeout=600,
    )
    result: dict[str, list[float]] = json.loads(completed.stdout)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="main", help="the git revision the peer is installed from")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of each row (default 8; --quick 2)")
    parser.add_argument("--batch", type=int, default=16, help="hand-overs a merge applies (default 16)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 8)
    with temporary_directory(args) as root:
        info = environment(root)
        ours = install_package(root / "ours")
        peer = install_baseline(root / "peer", args.baseline)
        if not isinstance(peer, InstalledPackage):
            print(f"the peer cannot be installed: {peer}", file=sys.stderr)
            return 1
        rows: dict[tuple[str, bool], dict[str, list[float]]] = {}
        runners: list[tuple[str, str, dict[str, str] | None, Path]] = [
            ("ours", ours.python, ours.environment, ours.cwd),
            ("peer", peer.python, peer.environment, peer.cwd),
            ("floor", sys.executable, None, root),
        ]
        for durable in (False, True):
            for number in range(rounds):
                turn = number % len(runners)
                for name, python, environment_, cwd in runners[turn:] + runners[:turn]:
                    # Each round in a directory of its own, one per row kept across rounds: the peer's deleted
                    # inodes and ours' spent files stay where their own row's next round finds them.
                    measured = run(python, environment_, cwd, root / f"{name}-{int(durable)}", PER_PROCESS,
                                   args.batch, durable, name)
                    row = rows.setdefault((name, durable),
                                          {"calls": [], "call_cpu": [], "merges": [], "merge_walls": []})
                    for key, values in measured.items():
                        row[key].extend(values)
        result: dict[str, Any] = {"environment": info, "baseline": args.baseline, "rounds": rounds,
                                  "batch": args.batch, "rows": {}}
        for (name, durable), row in rows.items():
            result["rows"][f"{name}{'-durable' if durable else ''}"] = {
                "call_median_seconds": statistics.median(row["calls"]),
                "call_cpu_median_seconds": statistics.median(row["call_cpu"]),
                "merge_cpu_per_handover_seconds": statistics.median(row["merges"]) / args.batch,
                "merge_median_seconds": statistics.median(row["merge_walls"]),
            }

    def render() -> None:
        print_environment(info)
        print(f"{args.batch} hand-overs, then the merge that applies them, {rounds} rounds a row, rows in turn")
        table = []
        for durable in (False, True):
            mine = result["rows"][f"ours{'-durable' if durable else ''}"]
            for name in ("ours", "peer", "floor"):
                row = result["rows"][f"{name}{'-durable' if durable else ''}"]
                table.append([
                    f"{name}{', durable' if durable else ''}" + (f" ({args.baseline})" if name == "peer" else ""),
                    format_seconds(row["call_median_seconds"]),
                    format_seconds(row["call_cpu_median_seconds"]),
                    format_seconds(row["merge_cpu_per_handover_seconds"]),
                    format_seconds(row["merge_median_seconds"]),
                    "—" if name == "ours" else format_ratio(
                        (mine["call_median_seconds"]) / row["call_median_seconds"]),
                    "—" if name == "ours" else format_ratio(
                        (mine["call_cpu_median_seconds"] + mine["merge_cpu_per_handover_seconds"])
                        / (row["call_cpu_median_seconds"] + row["merge_cpu_per_handover_seconds"])),
                    "—" if name == "ours" else format_ratio(
                        mine["merge_median_seconds"] / row["merge_median_seconds"]),
                ])
        print_table("", ["row", "call (wall)", "call (CPU)", "merge CPU per hand-over", "merge (wall)",
                         "ours ÷ row, call", "ours ÷ row, CPU in all", "ours ÷ row, merge"], table)

    emit(args, result, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
