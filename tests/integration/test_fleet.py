"""End to end, as a fleet runs it: three hosts with node_exporter and one with ``fraisier metrics``, each
with its own textfile directory, scraped by a real Prometheus that loads alert-rules.yml, while the CLI
records deployments, failures, rollbacks and health checks. Then every dashboard query, sent to
Prometheus's HTTP API as Grafana would send it, must return data, aggregate over the hosts and narrow to
the selected ones; every rule must evaluate without error, and the alerts must fire where they should."""

from __future__ import annotations

import math
import os
import re
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from fraisier_textfile.store.markers import MARKER_DIRECTORY

from ..processes import fraisier, lock_held_elsewhere, tail
from ..values import sample_values
from .fleet import (
    ALERT_RULES,
    ALL,
    Prometheus,
    Query,
    Target,
    close,
    fraisier_command,
    fraisier_metrics,
    legend_labels,
    load_dashboard,
    node_exporter,
    prometheus,
    queries,
    regex_value,
    substitute,
    variables,
    wait_for,
)
from .workload import record_database_work

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NODE_HOSTS = ("host-1.example.net:9100", "host-2.example.net:9100", "host-3.example.net:9100")
METRICS_HOST = "fraisier-metrics.example.net:8001"
HOSTS = (*NODE_HOSTS, METRICS_HOST)
HOST_1, HOST_2, HOST_3 = NODE_HOSTS


def record(event: str, **options: object) -> tuple[str, ...]:
    """``fraisier record EVENT --an-option value ... --flag`` (a flag for an option given True)."""
    arguments = ["record", event]
    for name, value in options.items():
        option = "--" + name.replace("_", "-")
        arguments.extend([option] if value is True else [option, str(value)])
    return tuple(arguments)


def tracked(*command: str) -> tuple[str, ...]:
    """``fraisier exec`` of a bare_metal api deployment running ``command``."""
    return ("exec", "--provider", "bare_metal", "--fraise-type", "api", "--", *command)


# What every host records before Prometheus first sees it: each family's series exist from then on.
SEED = [
    record("deployment", provider="bare_metal", fraise_type="api", status="success", duration=40),
    record("deployment", provider="docker_compose", fraise_type="etl", status="success", duration=12),
    record("error", provider="bare_metal", error_type="timeout"),
    record("rollback", provider="bare_metal", reason="health_check", duration=8),
    record("health-check", provider="bare_metal", check_type="http", status="pass", duration=0.2),
    record("availability", provider="bare_metal", up=True),
    record("availability", provider="docker_compose", up=True),
    record("lock-wait", service="api", provider="bare_metal", seconds=0.5),
    tracked("true"),
]

NEW_ERROR_TYPES = ("disk_full", "image_pull", "migration")
# host-2's deployment of a pair never seen before, started and crashed between two scrapes.
CRASHED_PAIR = {"provider": "bare_metal", "fraise_type": "scheduled"}

# What each host records once Prometheus has scraped the seed.
EVERY_HOST = [
    record("deployment", provider="bare_metal", fraise_type="api", status="success", duration=35),
    record("deployment", provider="bare_metal", fraise_type="api", status="success", duration=50),
    record("health-check", provider="bare_metal", check_type="http", status="pass", duration=0.3),
    record("lock-wait", service="api", provider="bare_metal", seconds=1.5),
]
WORKLOAD = {
    HOST_1: [
        tracked("false"),  # failed, with an error exit_code_1
        record("rollback", provider="bare_metal", reason="health_check", duration=9),
        record("health-check", provider="bare_metal", check_type="http", status="fail", duration=2),
        record("health-check", provider="bare_metal", check_type="http", status="fail", duration=3),
    ],
    HOST_2: [
        record("deployment", provider="docker_compose", fraise_type="etl", status="success", duration=2000),
        record("availability", provider="docker_compose", down=True),
        # The first deployment ever of a new pair, and it fails: its counter is born at 1.
        record("deployment", provider="docker_compose", fraise_type="backup", status="failed", duration=5),
        # Errors of three types never seen before: each series is born at 1.
        *(record("error", provider="docker_compose", error_type=kind) for kind in NEW_ERROR_TYPES),
    ],
    HOST_3: [],
    METRICS_HOST: [record("deployment", provider="bare_metal", fraise_type="api", status="failed", duration=20)],
}
# Database errors each host records once Prometheus has scraped the seed (which records one): host-1's
# run of them sets off DatabaseErrors (more than 5 in 10 minutes), the others' single one does not.
DATABASE_ERRORS = {HOST_1: 7, HOST_2: 1, HOST_3: 1, METRICS_HOST: 1}
# Hosts where a deployment is still running while the dashboard is queried.
DEPLOYING = (HOST_1, METRICS_HOST)

# (alert, labels it must carry) that the workload must set off (pending or firing) ...
EXPECTED_ALERTS = [
    ("DeploymentFailure", {"instance": HOST_1, "provider": "bare_metal", "fraise_type": "api", "status": "failed"}),
    (
        "DeploymentFailure",
        {"instance": HOST_2, "provider": "docker_compose", "fraise_type": "backup", "status": "failed"},
    ),
    ("DeploymentFailure", {"instance": METRICS_HOST, "job": "fraisier", "status": "failed"}),
    ("DeploymentFailure", {"instance": HOST_2, **CRASHED_PAIR, "status": "crashed"}),
    ("DeploymentRolledBack", {"instance": HOST_1, "provider": "bare_metal", "reason": "health_check"}),
    ("HealthChecksFailing", {"instance": HOST_1, "provider": "bare_metal", "check_type": "http"}),
    ("ProviderUnavailable", {"instance": HOST_2, "provider": "docker_compose"}),
    ("FraisierTextfileStale", {"instance": HOST_3}),
    ("HighDeploymentErrorRate", {"provider": "bare_metal"}),
    ("SlowDeployment", {"provider": "docker_compose"}),
    ("DatabaseErrors", {"instance": HOST_1, "database_type": "postgresql"}),
]
# ... and those it must not.
UNEXPECTED_ALERTS = [
    ("DeploymentFailure", {"instance": HOST_3}),
    ("DeploymentRolledBack", {"instance": HOST_2}),
    ("HealthChecksFailing", {"instance": HOST_2}),
    ("ProviderUnavailable", {"provider": "bare_metal"}),
    ("FraisierTextfileStale", {"instance": HOST_1}),
    ("FraisierTextfileParseError", {}),  # host-3 has a broken textfile, but not fraisier.prom
    ("FraisierMetricsDown", {}),
    ("ManyActiveDeployments", {}),
    ("HighDeploymentErrorRate", {"provider": "docker_compose"}),
    ("SlowDeployment", {"provider": "bare_metal"}),
    ("DatabaseErrors", {"instance": HOST_2}),
    ("DatabaseErrors", {"instance": METRICS_HOST}),
]

# How each panel's query relates to the same query for single hosts.
SUM, MAXIMUM, MEAN, BETWEEN, PER_INSTANCE = "sum", "maximum", "mean", "between", "per instance"
AGGREGATION = {
    "Deployment Rate": SUM,
    "Deployment Success Rate": BETWEEN,  # a ratio: between the hosts' own rates
    "Deployment Duration Percentiles": BETWEEN,  # a quantile of the merged histograms
    "Deployment Errors by Type": SUM,
    "Active Deployments": SUM,
    "Time Since Last Successful Deployment": PER_INSTANCE,
    "Deployment Lock Wait": MAXIMUM,
    "Health Checks by Type": SUM,
    "Health Check Duration (p95)": BETWEEN,
    "Rollbacks by Reason": SUM,
    "Provider Availability": MEAN,  # the share of hosts that report the provider up
    "Textfile Age": PER_INSTANCE,
    "Textfile Scrape Errors": PER_INSTANCE,
    "Database Query Latency (p95)": BETWEEN,
    "Database Errors": SUM,
    "Database Connection Pool": SUM,
    "Restore Duration by Phase": BETWEEN,
    "Database Operations": SUM,
}
# Panels with data on some hosts only; the others have data on every host.
ONLY_ON = {
    "Textfile Age": set(NODE_HOSTS),  # node_exporter's series
    "Textfile Scrape Errors": {HOST_3},  # only hosts with a broken textfile
}


@dataclass
class Fleet:
    prometheus: Prometheus
    directories: dict[str, Path]
    at: float
    """A time after the workload is visible, at which every dashboard query is evaluated."""


def run_all(host: str, directory: Path, commands: list[tuple[str, ...]], database_errors: int) -> None:
    for command in commands:
        result = fraisier(*command, textfile_dir=directory)
        expected = 1 if command[-1] == "false" else 0
        assert result.returncode == expected, f"{host}: fraisier {' '.join(command)}: {result.stderr}"
    record_database_work(directory, errors=database_errors)


def run_everywhere(
    work: dict[str, list[tuple[str, ...]]], directories: dict[str, Path], database_errors: dict[str, int]
) -> None:
    """Each host's CLI commands, then its database work (Fraisier's recorder API), the hosts in parallel."""
    with ThreadPoolExecutor(len(work)) as pool:
        futures = [
            pool.submit(run_all, host, directories[host], commands, database_errors[host])
            for host, commands in work.items()
        ]
        for future in futures:
            future.result()


def crash_between_two_scrapes(directory: Path) -> None:
    """A deployment of CRASHED_PAIR whose start and crash reach the file in one write, whatever the scrape
    interval: its start is handed over (the lock is held), its wrapper SIGKILLed, then one refresh applies
    the start and counts the crash. Prometheus first sees the pair's crashed counter already at 1."""
    with lock_held_elsewhere(directory / "fraisier.prom.lock"):
        wrapper = subprocess.Popen(
            [*fraisier_command(), "--textfile-dir", str(directory), "exec",
             "--provider", CRASHED_PAIR["provider"], "--fraise-type", CRASHED_PAIR["fraise_type"],
             "--", "sleep", "300"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # The command runs once the start is handed over: then the marker is there.
            wait_for(lambda: any(line.startswith(b"sleep") for line in children_commands(wrapper.pid)),
                     "fraisier exec running its command")
        finally:
            wrapper.kill()
            wrapper.wait()
    assert fraisier("textfile", "refresh", textfile_dir=directory).returncode == 0
    crashed = 'fraisier_deployments_total{provider="bare_metal",status="crashed",fraise_type="scheduled"}'
    assert sample_values(directory / "fraisier.prom")[crashed] == 1
    assert not list((directory / MARKER_DIRECTORY).iterdir())


def children_commands(pid: int) -> list[bytes]:
    """The command lines of ``pid``'s children (Linux's /proc)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    lines = []
    for child in children:
        try:
            lines.append(Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" "))
        except OSError:
            continue
    return lines


def file_totals(directory: Path) -> dict[str, float]:
    """Per counter family, the sum of its samples in the host's fraisier.prom."""
    totals: dict[str, float] = {}
    for key, value in sample_values(directory / "fraisier.prom").items():
        name = key.split("{", 1)[0]
        if name.endswith("_total"):
            totals[name] = totals.get(name, 0.0) + value
    return totals


def prometheus_totals(api: Prometheus) -> dict[str, dict[str, float]]:
    totals: dict[str, dict[str, float]] = {}
    query = 'sum by (instance, __name__) ({__name__=~"fraisier_.+_total"})'
    for sample in api.query(query):
        totals.setdefault(sample["metric"]["instance"], {})[sample["metric"]["__name__"]] = float(sample["value"][1])
    return totals


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    directories = {host: root / host.split(".")[0] for host in HOSTS}
    for directory in directories.values():
        directory.mkdir()
    # Another writer's broken textfile next to host-3's fraisier.prom (no trailing newline: node_exporter
    # rejects it): node_textfile_scrape_error is 1 there, and it is not fraisier's problem.
    (directories[HOST_3] / "other.prom").write_text("other_writer_metric 1")
    run_everywhere({host: SEED for host in HOSTS}, directories, dict.fromkeys(HOSTS, 1))
    # host-2 has the layout docs/monitoring.md gives for Debian: fraisier writes in a directory of its own,
    # and node_exporter's textfile directory holds a symlink to its fraisier.prom.
    read_by_node_exporter = {**directories, HOST_2: root / "host-2-node-exporter"}
    read_by_node_exporter[HOST_2].mkdir()
    (read_by_node_exporter[HOST_2] / "fraisier.prom").symlink_to(directories[HOST_2] / "fraisier.prom")

    with ExitStack() as stack:
        targets = [
            Target("node", host, stack.enter_context(node_exporter(read_by_node_exporter[host], root / f"{host}.log")))
            for host in NODE_HOSTS
        ]
        address = stack.enter_context(fraisier_metrics(directories[METRICS_HOST], root / "fraisier-metrics.log"))
        targets.append(Target("fraisier", METRICS_HOST, address))
        api = stack.enter_context(prometheus(targets, root / "prometheus"))

        def explain() -> str:
            return f"targets: {api.get('/api/v1/targets')['activeTargets']}\nprometheus log:\n{tail(api.log)}"

        def seed_scraped_twice() -> bool:
            """Every host's seed scraped at least twice, so that increase() sees what follows."""
            query = 'count_over_time(fraisier_deployments_total{status="failed",fraise_type="api"}[1m]) >= 2'
            return set(HOSTS) <= {sample["metric"]["instance"] for sample in api.query(query)}

        wait_for(seed_scraped_twice, "Prometheus scraping every host", explain=explain)

        for host in DEPLOYING:  # one deployment each still running while the dashboard is queried
            running = subprocess.Popen(
                [*fraisier_command(), "--textfile-dir", str(directories[host]), *tracked("sleep", "120")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            stack.callback(running.wait)
            stack.callback(running.terminate)
        run_everywhere({host: EVERY_HOST + WORKLOAD[host] for host in HOSTS}, directories, DATABASE_ERRORS)
        crash_between_two_scrapes(directories[HOST_2])
        # host-3 then stays quiet for 8 days.
        eight_days_ago = time.time() - 8 * 24 * 3600
        os.utime(directories[HOST_3] / "fraisier.prom", (eight_days_ago, eight_days_ago))

        expected = {host: file_totals(directories[host]) for host in HOSTS}

        def workload_visible() -> bool:
            seen = prometheus_totals(api)
            return (
                all(seen.get(host) == totals for host, totals in expected.items())
                and {sample["metric"]["instance"] for sample in api.query("fraisier_active_deployments > 0")}
                == set(DEPLOYING)
                and bool(api.query(f'node_textfile_mtime_seconds{{instance="{HOST_3}"}} < {eight_days_ago + 1}'))
            )

        wait_for(
            workload_visible,
            "Prometheus seeing every host's workload",
            explain=lambda: f"expected {expected}, got {prometheus_totals(api)}",
        )
        # Queries are evaluated at a fixed time, once every target has been scraped after it: so that all
        # of them see the same samples, whatever scrape lands while they run.
        at = time.time()
        wait_for(
            lambda: len(api.query(f"timestamp(up) > {at}")) == len(targets),
            "a scrape of every target after the workload",
            explain=explain,
        )
        yield Fleet(api, directories, at)


def unix_time(rfc3339: str) -> float:
    """Prometheus's times (``2026-01-02T03:04:05.123456789Z``) as Unix time, to the microsecond."""
    match = re.fullmatch(r"(.+T\d\d:\d\d:\d\d)(?:\.(\d+))?Z", rfc3339)
    assert match is not None, rfc3339
    fraction = (match[2] or "")[:6].ljust(6, "0")
    return datetime.fromisoformat(f"{match[1]}.{fraction}+00:00").timestamp()


def alert_matches(alert: dict[str, object], name: str, labels: dict[str, str]) -> bool:
    alert_labels = alert["labels"]
    assert isinstance(alert_labels, dict)
    return alert_labels["alertname"] == name and all(alert_labels.get(k) == v for k, v in labels.items())


def test_the_alerts_fire_where_the_workload_calls_for_them_and_nowhere_else(fleet: Fleet) -> None:
    def all_expected_active() -> list[dict[str, object]] | None:
        alerts = fleet.prometheus.alerts()
        if all(any(alert_matches(alert, name, labels) for alert in alerts) for name, labels in EXPECTED_ALERTS):
            return alerts
        return None

    alerts = wait_for(
        all_expected_active,
        "every expected alert",
        explain=lambda: str([alert["labels"] for alert in fleet.prometheus.alerts()]),
    )
    for name, labels in UNEXPECTED_ALERTS:
        assert not [alert for alert in alerts if alert_matches(alert, name, labels)], (name, labels)
    for alert in alerts:
        annotations = alert["annotations"]
        assert isinstance(annotations, dict) and annotations["summary"] and annotations["description"]
        for text in annotations.values():
            assert "<no value>" not in text, alert


def test_every_rule_loads_and_evaluates_without_error(fleet: Fleet) -> None:
    with open(ALERT_RULES, encoding="utf-8") as file:
        defined = [rule["alert"] for group in yaml.safe_load(file)["groups"] for rule in group["rules"]]

    def evaluated_since_the_workload() -> list[dict[str, Any]] | None:
        rules = fleet.prometheus.rules()
        return rules if all(unix_time(rule["lastEvaluation"]) > fleet.at for rule in rules) else None

    rules = wait_for(evaluated_since_the_workload, "an evaluation of every rule")
    assert sorted(rule["name"] for rule in rules) == sorted(defined)
    for rule in rules:
        assert rule["health"] == "ok" and not rule.get("lastError"), rule


def test_the_dashboard_variables_list_the_hosts_and_their_labels(fleet: Fleet) -> None:
    definitions = {
        name: variable for name, variable in variables(load_dashboard()).items() if variable["type"] == "query"
    }
    assert set(definitions) == {"instance", "provider", "fraise_type"}

    def options(name: str, **selected: str) -> set[str]:
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", definitions[name]["definition"])
        assert match is not None, definitions[name]["definition"]
        values = {"instance": ALL, "provider": ALL, "fraise_type": ALL, **selected}
        return set(fleet.prometheus.label_values(match[2], substitute(match[1], values)))

    assert options("instance") == set(HOSTS)
    assert options("provider") == {"bare_metal", "docker_compose"}
    assert options("provider", instance=regex_value(HOST_3)) == {"bare_metal", "docker_compose"}
    assert options("fraise_type") == {"api", "etl", "backup", CRASHED_PAIR["fraise_type"]}
    assert options("fraise_type", instance=regex_value(HOST_3)) == {"api", "etl"}
    assert options("fraise_type", provider=regex_value("docker_compose")) == {"etl", "backup"}


def evaluate(fleet: Fleet, query: Query, *hosts: str) -> dict[frozenset[tuple[str, str]], float]:
    """The query's result with the instance variable set to ``hosts`` (All without), keyed by labels."""
    instance = regex_value(*hosts) if hosts else ALL
    expr = substitute(query.expr, {"instance": instance, "provider": ALL, "fraise_type": ALL})
    result = fleet.prometheus.values(expr, fleet.at)
    for labels in result:
        assert legend_labels(query.legend) <= dict(labels).keys(), f"{query}: legend {query.legend!r}, series {labels}"
    return result


def instances(result: dict[frozenset[tuple[str, str]], float]) -> set[str]:
    return {dict(labels).get("instance", "") for labels in result}


@pytest.mark.parametrize("query", queries(load_dashboard()), ids=str)
def test_every_dashboard_query_returns_data_aggregates_over_hosts_and_narrows_to_the_selected(
    fleet: Fleet, query: Query
) -> None:
    aggregation = AGGREGATION[query.panel]
    everywhere = evaluate(fleet, query)
    assert any(math.isfinite(value) for value in everywhere.values()), f"{query}: no data: {everywhere}"
    per_host = {host: evaluate(fleet, query, host) for host in HOSTS}

    for host, result in per_host.items():
        if host in ONLY_ON.get(query.panel, HOSTS):
            assert result, f"{query}: no data for {host}"
        if aggregation == PER_INSTANCE:
            assert instances(result) <= {host}, f"{query}: {host} selected, got {instances(result)}"
    two = evaluate(fleet, query, HOST_1, METRICS_HOST)
    if aggregation == PER_INSTANCE:
        assert instances(two) <= {HOST_1, METRICS_HOST}
        assert instances(everywhere) == set().union(*(instances(result) for result in per_host.values()))
        return

    assert instances(everywhere) == {""}, f"{query}: not aggregated over instances: {instances(everywhere)}"
    assert any(sum(labels in result for result in per_host.values()) >= 2 for labels in everywhere), (
        f"{query}: no series combines several hosts"
    )
    for labels, value in everywhere.items():
        parts = [result[labels] for result in per_host.values() if labels in result and not math.isnan(result[labels])]
        if aggregation == SUM:
            assert close(value, sum(parts)), f"{query} {dict(labels)}: {value} is not the sum of {parts}"
            selected = [per_host[host][labels] for host in (HOST_1, METRICS_HOST) if labels in per_host[host]]
            assert close(two.get(labels, 0.0), sum(selected)), f"{query} {dict(labels)}: two hosts selected"
        elif aggregation == MAXIMUM:
            assert close(value, max(parts)), f"{query} {dict(labels)}: {value} is not the maximum of {parts}"
        elif aggregation == MEAN:
            assert close(value, sum(parts) / len(parts)), f"{query} {dict(labels)}: {value} is not the mean of {parts}"
        elif not math.isnan(value):
            assert min(parts) - 1e-9 <= value <= max(parts) + 1e-9, f"{query} {dict(labels)}: {value} not in {parts}"


def test_the_success_rate_has_no_value_where_nothing_was_deployed(fleet: Fleet) -> None:
    """host-3's docker_compose series exist (from its seed) but nothing was deployed through it since: no
    value, where a rate computed as 100% minus the failed share would read 100%."""
    [query] = [query for query in queries(load_dashboard()) if query.panel == "Deployment Success Rate"]
    assert fleet.prometheus.query(f'fraisier_deployments_total{{instance="{HOST_3}", provider="docker_compose"}}')
    assert {dict(labels)["provider"] for labels in evaluate(fleet, query, HOST_3)} == {"bare_metal"}
    assert {dict(labels)["provider"] for labels in evaluate(fleet, query, HOST_2)} == {"bare_metal", "docker_compose"}


def test_errors_of_new_types_count_on_the_errors_panel(fleet: Fleet) -> None:
    """Three errors, each of a type never seen before (each series born at 1), show as 3, not as 3 zeros."""
    [query] = [query for query in queries(load_dashboard()) if query.panel == "Deployment Errors by Type"]
    counted = {
        dict(labels)["error_type"]: value for labels, value in evaluate(fleet, query, HOST_2).items()
        if dict(labels)["error_type"] in NEW_ERROR_TYPES
    }
    assert counted == dict.fromkeys(NEW_ERROR_TYPES, 1.0)
