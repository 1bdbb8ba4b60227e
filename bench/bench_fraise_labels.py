"""What reading fraises.yaml for the labels costs a merge (under the textfile's lock, at a scrape too).

A fraises.yaml of N fraises (each with a type and one environment) is read by the state source's labels
(``FraiseLabels``, re-read when the file changes) and, beside it in the same run, by Fraisier's own way of
loading YAML (``yaml.safe_load``, which its configuration loader extends): the peer (1.0×). Sizes: a typical
configuration, a large one, and the largest the source reads (``MAX_CONFIG_BYTES``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from _common import argument_parser, emit, format_ratio, format_seconds, measure, print_table, temporary_directory

from fraisier_textfile.sources.fraisier_state import MAX_CONFIG_BYTES, FraiseLabels


def write_config(path: Path, fraises: int | None) -> int:
    """A fraises.yaml of ``fraises`` fraises (None: as many as MAX_CONFIG_BYTES holds); returns the count."""
    lines = ["name: shop", "fraises:"]
    entry = "  f{0}:\n    type: api\n    environments:\n      production: {{app_path: /srv/f{0}}}"
    size, count = sum(len(line) + 1 for line in lines), 0
    while (fraises is None and size + len(entry.format(count)) + 1 <= MAX_CONFIG_BYTES) or (
            fraises is not None and count < fraises):
        lines.append(entry.format(count))
        size += len(lines[-1]) + 1
        count += 1
    path.write_text("\n".join(lines) + "\n")
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, help="timed reads of each case (default 20; 3 with --quick)")
    args = parser.parse_args(argv)
    repetitions = args.repetitions or (3 if args.quick else 20)
    rows: list[dict[str, Any]] = []
    with temporary_directory(args) as root:
        for name, fraises in (("typical", 20), ("large", 500), ("largest read", None)):
            path = root / f"{name.replace(' ', '-')}.yaml"
            count = write_config(path, fraises)

            def ours(path: Path = path) -> None:
                labels = FraiseLabels(path)  # a new reader: the file is parsed, as after each change
                labels.refresh()
                assert labels.of("f0")[1] == "api"

            def peer(path: Path = path) -> None:
                yaml.safe_load(path.read_text())

            peer_timing = measure(peer, repetitions)
            our_timing = measure(ours, repetitions)
            rows.append({"case": name, "fraises": count, "bytes": path.stat().st_size,
                         "ours_seconds": our_timing.median, "peer_seconds": peer_timing.median,
                         "ratio": our_timing.median / peer_timing.median})
    result = {"libyaml": bool(getattr(yaml, "__with_libyaml__", False)), "repetitions": repetitions,
              "results": rows}

    def render() -> None:
        print_table(
            f"Reading fraises.yaml, median of {repetitions} reads (libyaml: {result['libyaml']})",
            ["case", "fraises", "bytes", "ours (FraiseLabels)", "peer (yaml.safe_load)", "ratio"],
            [[row["case"], row["fraises"], row["bytes"], format_seconds(row["ours_seconds"]),
              format_seconds(row["peer_seconds"]), format_ratio(row["ratio"])] for row in rows],
        )

    emit(args, result, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
