"""What counting first events costs Prometheus: the alerts' and panels' count of events (series born in the
window counted whole, alert-rules.yml's header) against the plain ``increase()`` it replaces, on a real
Prometheus over a backfilled fleet.

    python bench/bench_rules.py [--hosts 100] [--quick] [--json]

The fleet: HOSTS node_exporter targets scraped every 15 s for 90 minutes (``up``, ``node_textfile_scrape_error``,
fraisier.prom's ``node_textfile_mtime_seconds``) and, per host, ERROR_TYPES deployment-error counters (a few born
during the last hour), written as OpenMetrics and backfilled with ``promtool tsdb create-blocks-from
openmetrics``. Each query, over a one-hour window, is the Deployment Errors by Type panel's (summed by
provider and error type), sent as an instant query at the end of the data, interleaved, medians.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from typing import Any

from _common import (
    REPOSITORY,
    argument_parser,
    emit,
    format_ratio,
    format_seconds,
    free_port,
    goal_text,
    measure,
    print_table,
    stop,
    temporary_directory,
)

GOAL = 3.0
"""Ours at most this many times the plain increase(): it reads each counter's hour twice and a few host series."""
SCRAPE_INTERVAL = 15
DURATION = 90 * 60
ERROR_TYPES = 10
WINDOW = "1h"
FRAISIER_PROM = "/var/lib/prometheus/node-exporter/fraisier.prom"


def panel_query() -> str:
    """The dashboard's Deployment Errors by Type query, its variables on All."""
    dashboard = json.loads((REPOSITORY / "grafana-dashboard.json").read_text(encoding="utf-8"))
    for row in dashboard["panels"]:
        for panel in [row, *row.get("panels", [])]:
            if panel.get("title") == "Deployment Errors by Type":
                expr: str = panel["targets"][0]["expr"]
                return expr.replace("$instance", ".*").replace("$provider", ".*")
    raise SystemExit("grafana-dashboard.json has no Deployment Errors by Type panel")


PLAIN = f'sum by (provider, error_type) (increase(fraisier_deployment_errors_total{{instance=~".*"}}[{WINDOW}]))'


def openmetrics(hosts: int, end: int) -> str:
    """The fleet's samples, one family after the other (what promtool's backfill wants)."""
    start = end - DURATION
    times = range(start, end + 1, SCRAPE_INTERVAL)
    lines: list[str] = []

    def family(name: str, kind: str, series: list[tuple[str, Any]]) -> None:
        lines.append(f"# TYPE {name} {kind}")
        for labels, value_at in series:
            lines.extend(f"{name}{{{labels}}} {value_at(moment)} {moment}" for moment in times)

    targets = [f'instance="host-{number}:9100",job="node"' for number in range(hosts)]
    family("up", "gauge", [(target, lambda moment: 1) for target in targets])
    family("node_textfile_scrape_error", "gauge", [(target, lambda moment: 0) for target in targets])
    family("node_textfile_mtime_seconds", "gauge",
           [(f'{target},file="{FRAISIER_PROM}"', lambda moment: start) for target in targets])
    lines.append("# TYPE fraisier_deployment_errors counter")
    for number, target in enumerate(targets):
        for kind in range(ERROR_TYPES):
            born = start + (DURATION * 2 // 3 if (number + kind) % 7 == 0 else 0)  # some born in the last hour
            labels = f'{target},provider="bare_metal",error_type="exit_code_{kind}"'
            lines.extend(
                f"fraisier_deployment_errors_total{{{labels}}} {1 + (moment - born) // (600 + kind)} {moment}"
                for moment in times
                if moment >= born
            )
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def query(url: str, expr: str, at: int) -> tuple[float, float]:
    """How long an instant query took, and the sum of what it returned."""
    parameters = urllib.parse.urlencode({"query": expr, "time": str(at)})
    started = time.perf_counter()
    with urllib.request.urlopen(f"{url}/api/v1/query?{parameters}", timeout=60) as response:
        answer = json.load(response)
    elapsed = time.perf_counter() - started
    if answer.get("status") != "success" or not answer["data"]["result"]:
        raise SystemExit(f"{expr}: {answer}")
    return elapsed, sum(float(sample["value"][1]) for sample in answer["data"]["result"])


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=100)
    args = parser.parse_args(argv)
    hosts = 20 if args.quick else args.hosts
    repetitions = 5 if args.quick else 21
    promtool, prometheus = shutil.which("promtool"), shutil.which("prometheus")
    if promtool is None or prometheus is None:
        print("needs promtool and prometheus (Debian: apt-get install prometheus)", file=sys.stderr)
        return 1
    end = (int(time.time()) // 3600) * 3600 - 3600  # whole hours, in the past: backfill refuses the head block
    with temporary_directory(args) as directory:
        source = directory / "fleet.om"
        source.write_text(openmetrics(hosts, end), encoding="utf-8")
        data = directory / "data"
        subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(data)],
                       check=True, capture_output=True, timeout=600)
        (directory / "prometheus.yml").write_text("global: {}\n", encoding="utf-8")
        port = free_port()
        server = subprocess.Popen(
            [prometheus, f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={data}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=100y", "--log.level=error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/-/ready", timeout=5):
                        break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("prometheus did not start") from None
                    time.sleep(0.2)
            ours = panel_query()
            # Warm both (the first query of a block pays for reading its index), and see what they count: the
            # series born in the window add their first events to what increase() sees.
            _, plain_events = query(url, PLAIN, end)
            _, counted_events = query(url, ours, end)
            if counted_events <= plain_events:
                raise SystemExit(f"first events not counted: {counted_events} <= {plain_events}")
            timings: dict[str, list[float]] = {"plain": [], "ours": []}

            def both() -> None:
                timings["plain"].append(query(url, PLAIN, end)[0])
                timings["ours"].append(query(url, ours, end)[0])

            measure(both, repetitions)
        finally:
            stop(server)
    series = hosts * (ERROR_TYPES + 3)
    from statistics import median

    plain, counted = median(timings["plain"]), median(timings["ours"])
    ratio = counted / plain
    result = {
        "hosts": hosts,
        "series": series,
        "window": WINDOW,
        "repetitions": repetitions,
        "plain_increase_median_seconds": plain,
        "first_events_median_seconds": counted,
        "ratio": ratio,
        "events_counted": {"plain_increase": plain_events, "first_events": counted_events},
        "goal": GOAL,
        "met": ratio <= GOAL,
    }

    def render() -> None:
        print_table(
            f"Deployment Errors by Type over {WINDOW}: {hosts} hosts, {series} series, 15 s scrapes "
            f"({repetitions} interleaved instant queries, medians)",
            ["query", "time", "ratio", "goal"],
            [
                ["increase() alone (peer)", format_seconds(plain), format_ratio(1.0), ""],
                ["counting first events", format_seconds(counted), format_ratio(ratio), goal_text(ratio, GOAL)],
            ],
            [f"events in the hour: {plain_events:g} by increase() alone, {counted_events:g} with first events"],
        )

    emit(args, result, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
