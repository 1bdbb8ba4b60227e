"""The first record call after a long lock hold: bounded work however many hand-overs wait.

While a process held the lock for long, every other record call handed its events over: thousands of files
wait in ``.fraisier-handover``. The first record call that then finds the lock free merges its own event and
applies at most HANDOVERS_PER_MERGE of them, oldest first (the rest is for the following merges); before,
it applied them all.

- backlog N  ``store.merge_or_hand_over(one event, wait=0.1)`` in a fresh store (a new process's first call),
             with N hand-overs waiting
- peer       the same call with no hand-over waiting: what a record call costs when nothing is owed

The figure is the ratio backlog / peer at each N, and how many hand-overs the call applied. What is left of
it grows with N is the listing of the directory (names only, sorted: the oldest must go first), not the
reading and applying. The best repetition is the figure.

``--left N`` (default 100,000, the most one version lets wait): the same call with N hand-overs of a newer
version waiting, which this version leaves in place for a merger of that version (during an upgrade):

- met first  the first call to meet them (they were just written)
- seen       a call after merges had met them all (every call after the first few, in any process)
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

from _common import (
    argument_parser,
    emit,
    environment,
    format_ratio,
    format_seconds,
    measure,
    print_environment,
    print_table,
    temporary_directory,
)


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="backlogs to time (default 1000 15000)")
    parser.add_argument("--left", type=int, default=None,
                        help="hand-overs left for a newer version to time (default 100000; 0: none)")
    args = parser.parse_args(argv)
    left = args.left if args.left is not None else (2000 if args.quick else 100_000)
    sizes = args.sizes or ([2000] if args.quick else [1000, 15000])
    repeat = 2 if args.quick else 3

    from fraisier_textfile import TextfileStore
    from fraisier_textfile import changes as events
    from fraisier_textfile.changes import Changes
    from fraisier_textfile.store import handovers

    def one(error_type: str) -> Changes:
        changes = Changes()
        events.deployment_error(changes, "bare_metal", error_type)
        return changes

    def applied(directory: Path) -> float:
        for line in (directory / "fraisier.prom").read_text().splitlines():
            if line.startswith('fraisier_deployment_errors_total{provider="bare_metal",error_type="held"}'):
                return float(line.split()[-1])
        return 0.0

    rows: list[list[object]] = []
    left_rows: list[list[object]] = []
    result: dict[str, Any] = {"cases": {}}
    directories: list[Path] = []

    def prepare(root: Path, count: int) -> None:
        directory = root / f"case-{len(directories)}"
        directories.append(directory)
        store = TextfileStore(directory)
        store.merge(Changes())
        for _ in range(count):
            store.hand_over(one("held"), durable=False)

    def first_record_call() -> None:
        TextfileStore(directories[-1]).merge_or_hand_over(one("mine"), wait=0.1)

    with temporary_directory(args) as root:
        info = environment(root)
        for size in sizes:
            peer = measure(first_record_call, repeat, setup=functools.partial(prepare, root, 0))
            ours = measure(first_record_call, repeat, setup=functools.partial(prepare, root, size))
            handovers.wait_for_removals(60)
            count = applied(directories[-1])
            ratio = ours.best / peer.best
            rows.append([f"{size:,}", format_seconds(ours.best), format_seconds(peer.best), format_ratio(ratio),
                         f"{count:,.0f}"])
            result["cases"][str(size)] = {"backlog": ours.as_json(), "peer": peer.as_json(), "ratio": ratio,
                                          "applied_by_the_call": count}
        if left:
            newer = NewerVersionHandovers(left)
            met_first = measure(first_record_call, 1, setup=functools.partial(newer.prepare, root, directories, 1))
            seen = measure(first_record_call, repeat, setup=functools.partial(
                newer.prepare, root, directories, newer.merges_to_see_them()))
            peer = measure(first_record_call, repeat, setup=functools.partial(prepare, root, 0))
            handovers.wait_for_removals(60)
            for case, timing in (("met first", met_first), ("seen", seen)):
                ratio = timing.best / peer.best
                left_rows.append([f"{left:,}", case, format_seconds(timing.best), format_seconds(peer.best),
                                  format_ratio(ratio)])
                result.setdefault("left", {})[f"{left} {case}"] = {"ours": timing.as_json(), "peer": peer.as_json(),
                                                                   "ratio": ratio}
    result["environment"] = info

    def render() -> None:
        print_environment(info)
        print_table(
            "The first record call after a long lock hold (best of the repetitions)",
            ["hand-overs waiting", "record call", "with none waiting (peer)", "ratio", "applied by it"],
            rows,
            [f"each merge applies at most {handovers_per_merge()} hand-overs; the rest is for the next merges"],
        )
        if left_rows:
            print_table(
                "The record call with hand-overs left for a newer version waiting (best of the repetitions)",
                ["left waiting", "the call", "record call", "with none waiting (peer)", "ratio"],
                left_rows,
                ["met first: just written; seen: after as many merges as meeting them all took"],
            )

    emit(args, result, render)
    return 0


class NewerVersionHandovers:
    """``count`` hand-overs of a newer format, written into a fresh textfile directory."""

    def __init__(self, count: int) -> None:
        self.count = count

    def prepare(self, root: Path, directories: list[Path], merges: int) -> None:
        import json

        from fraisier_textfile import TextfileStore
        from fraisier_textfile.catalogue import SCHEMA
        from fraisier_textfile.changes import Changes
        from fraisier_textfile.store import handovers

        directory = root / f"case-{len(directories)}"
        directories.append(directory)
        TextfileStore(directory).merge(Changes())
        handover_directory = directory / handovers.HANDOVER_DIRECTORY
        handover_directory.mkdir(exist_ok=True)
        data = json.dumps({"version": 99, "schema": SCHEMA.fingerprint, "added": [], "observed": [], "latest": [],
                           "maximum": [], "active_providers": [], "retired_markers": []})
        for sequence in range(1, self.count + 1):
            (handover_directory / f"{handovers.id_for(sequence)}.json").write_text(data)
        for _ in range(merges):
            TextfileStore(directory).merge(Changes())

    def merges_to_see_them(self) -> int:
        """Merges until every one was met: one before merges remembered them (each read them all), else as many
        as reading them takes, a bounded number at each."""
        import importlib.util

        if importlib.util.find_spec("fraisier_textfile.store.handover_left") is None:
            return 1
        return -(-self.count // handovers_per_merge()) + 1


def handovers_per_merge() -> int:
    from fraisier_textfile.store.handovers import HANDOVERS_PER_MERGE

    return int(HANDOVERS_PER_MERGE)


if __name__ == "__main__":
    sys.exit(main())
