"""One in-process ``record_deployment_complete`` (auto_flush off) beside the prometheus_client calls it wraps.

Also the other record calls of a deployment's hot loop with a counter and a histogram, timed against the same
peer: ``record_health_check``, ``record_rollback`` and ``record_db_query`` (cases ``health_check``,
``rollback``, ``db_query``; the same goal).

- ours           ``recorder.record_deployment_complete("bare_metal", "api", "success", 42.0)`` on a
                 ``MetricsRecorder(textfile_dir, auto_flush=False)``: validation, its registry, the
                 changes pending for the next flush
- bare (peer)    ``counter_child.inc()`` + ``histogram_child.observe()`` on a fresh ``CollectorRegistry``,
                 the children looked up once with ``labels(...)`` beforehand, as ours caches its own: 1.0×
- bare + gauge   the peer plus the last-deployment ``gauge_child.set(time.time())`` that ours also keeps,
                 for reference
- bare, labels() ``Counter.labels(...).inc()`` + ``Histogram.labels(...).observe()``, looking the children up
  each call       on every call (how the peer is often written), for reference

timeit, the same number of calls per repetition for every case, the cases interleaved: each repetition runs
every case once, in an order that alternates between repetitions, so that drifts of the machine (frequency,
other load) fall on all of them alike. The best repetition is the figure.
"""

from __future__ import annotations

import statistics
import sys
import timeit
from typing import Any

from _common import (
    EVENT,
    argument_parser,
    emit,
    environment,
    format_ratio,
    format_seconds,
    goal_text,
    print_environment,
    print_table,
    temporary_directory,
)

GOAL = 1.5
_OURS = ("ours", "health_check", "rollback", "db_query")


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    repeat = 3 if args.quick else 7

    import time

    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    from fraisier_textfile import MetricsRecorder
    from fraisier_textfile import catalogue as c

    with temporary_directory(args) as root:
        recorder = MetricsRecorder(textfile_dir=root, auto_flush=False)
        registry = CollectorRegistry()
        counter = Counter("fraisier_deployments", c.DEPLOYMENTS.help, c.DEPLOYMENTS.labels, registry=registry)
        histogram = Histogram(
            c.DEPLOYMENT_DURATION.name,
            c.DEPLOYMENT_DURATION.help,
            c.DEPLOYMENT_DURATION.labels,
            buckets=c.DEPLOYMENT_DURATION.buckets,
            registry=registry,
        )
        gauge = Gauge(c.LAST_DEPLOYMENT.name, c.LAST_DEPLOYMENT.help, c.LAST_DEPLOYMENT.labels, registry=registry)
        namespace = {
            "record": recorder.record_deployment_complete,
            "record_health_check": recorder.record_health_check,
            "record_rollback": recorder.record_rollback,
            "record_db_query": recorder.record_db_query,
            "counter": counter,
            "histogram": histogram,
            "gauge": gauge,
            "counter_child": counter.labels(EVENT[0], EVENT[2], EVENT[1]),
            "histogram_child": histogram.labels(EVENT[0], EVENT[2]),
            "gauge_child": gauge.labels(EVENT[0], EVENT[1], EVENT[2]),
            "time": time.time,
            "provider": EVENT[0],
            "fraise_type": EVENT[1],
            "status": EVENT[2],
            "duration": EVENT[3],
        }
        bare = "counter_child.inc()\nhistogram_child.observe(duration)"
        cases = [
            ("ours", "ours: record_deployment_complete", "record(provider, fraise_type, status, duration)"),
            ("health_check", "ours: record_health_check",
             "record_health_check(provider, 'http', 'pass', duration)"),
            ("rollback", "ours: record_rollback", "record_rollback(provider, 'health_check_failed', duration)"),
            ("db_query", "ours: record_db_query", "record_db_query('postgresql', 'select', 'success', duration)"),
            ("bare", "bare child.inc + child.observe (peer)", bare),
            ("bare_gauge", "bare + gauge child.set(time()) (reference)", bare + "\ngauge_child.set(time())"),
            (
                "bare_labels",
                "bare, labels() on every call (reference)",
                "counter.labels(provider, status, fraise_type).inc()\n"
                "histogram.labels(provider, status).observe(duration)",
            ),
        ]
        timers = {key: timeit.Timer(statement, globals=namespace) for key, _, statement in cases}
        for timer in timers.values():
            timer.timeit(1000)  # first calls create the children and the pending entries
        number, _ = timers["bare"].autorange()
        number = max(1000, number // 4 if args.quick else number)
        per_call: dict[str, list[float]] = {key: [] for key in timers}
        order = list(timers)
        for repetition in range(repeat):
            for key in order if repetition % 2 == 0 else reversed(order):
                per_call[key].append(timers[key].timeit(number) / number)
        recorder.flush()  # nothing left pending for the exit handler once the directory is gone
        info = environment(root)

    bare_best = min(per_call["bare"])
    rows = [
        {
            "case": key,
            "label": label,
            "statement": statement,
            "best_seconds": min(per_call[key]),
            "median_seconds": statistics.median(per_call[key]),
            "ratio": min(per_call[key]) / bare_best,
        }
        for key, label, statement in cases
    ]
    result = {
        "benchmark": "record",
        "environment": info,
        "calls_per_repetition": number,
        "repetitions": repeat,
        "goal": GOAL,
        "results": rows,
    }
    emit(args, result, lambda: render(result))
    return 0


def render(result: dict[str, Any]) -> None:
    print("bench_record: one in-process record_deployment_complete (and record_health_check, record_rollback, "
          "record_db_query) beside the prometheus_client calls it wraps")
    print_environment(result["environment"])
    print(
        f"timeit: best of {result['repetitions']} repetitions × {result['calls_per_repetition']:,} calls, the cases "
        "interleaved; ratio = best / best of the peer (children looked up once, as ours caches them)"
    )
    rows = []
    for row in result["results"]:
        goal = goal_text(row["ratio"], result["goal"]) if row["case"] in _OURS else ""
        rows.append(
            [
                row["label"],
                format_seconds(row["best_seconds"]),
                format_seconds(row["median_seconds"]),
                format_ratio(row["ratio"]),
                goal,
            ]
        )
    print_table("Time per event", ["case", "best", "median", "ratio", "goal"], rows, align="lrrrl")


if __name__ == "__main__":
    sys.exit(main())
