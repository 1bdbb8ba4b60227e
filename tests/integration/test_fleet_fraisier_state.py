"""End to end with Fraisier's own state: two hosts where Fraisier 0.84.2's code writes its deployments (its
database API and status files), one served by ``fraisier metrics`` (which takes what is new at each scrape), one
by node_exporter (after ``fraisier textfile refresh``), scraped by a real Prometheus with alert-rules.yml. The
dashboard's deployment panels show what Fraisier did, and its failures set the deployment alerts off."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from ..test_fraisier_state import Fraisier
from .fleet import (
    ALL,
    Target,
    fraisier_metrics,
    load_dashboard,
    node_exporter,
    prometheus,
    queries,
    regex_value,
    substitute,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERVED = "served.example.net:8001"
NODE = "node.example.net:9100"
# The panels Fraisier's state feeds (Deployment Lock Wait is not: Fraisier's lock is a file lock it does not
# record).
PANELS = (
    "Deployment Rate", "Deployment Success Rate", "Deployment Duration Percentiles", "Deployment Errors by Type",
    "Active Deployments", "Time Since Last Successful Deployment", "Rollbacks by Reason",
)


@pytest.fixture
def hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Fraisier]]:
    made = {SERVED: Fraisier(tmp_path / "served-fraisier"), NODE: Fraisier(tmp_path / "node-fraisier")}
    # The served host's `fraisier metrics` finds its Fraisier as Fraisier does: through the environment.
    for name in ("FRAISIER_DB_PATH", "FRAISIER_CONFIG", "FRAISIER_STATUS_DIR", "FRAISIER_TEXTFILE_FRAISIER_STATE"):
        monkeypatch.setenv(name, made[SERVED].environment[name])
    try:
        yield made
    finally:
        for fraisier in made.values():
            fraisier.close()


def refresh(fraisier: Fraisier, directory: Path) -> None:
    subprocess.run([sys.executable, "-m", "fraisier_textfile", "--textfile-dir", str(directory), "textfile",
                    "refresh"], env=fraisier.environment, check=True, capture_output=True, timeout=120)


def test_the_dashboard_shows_the_deployments_fraisier_made_and_its_failures_set_the_alerts_off(
    hosts: dict[str, Fraisier], tmp_path: Path
) -> None:
    """Set off: pending or firing, as test_fleet.py takes them. Whether an alert then fires once its ``for:`` has
    passed is Prometheus's part, which promtool's unit tests hold the rules' durations to (test_alert_rules.py);
    waiting for DeploymentFailure's minute here made this the suite's second slowest test."""
    directories = {SERVED: tmp_path / "served", NODE: tmp_path / "node"}
    for directory in directories.values():
        directory.mkdir()
    for fraisier in hosts.values():
        fraisier.deploy("api", "success")
        fraisier.deploy("etl", "success")
        fraisier.deploy("api", "rolled_back")  # the rollback series now exists, at 1
    refresh(hosts[NODE], directories[NODE])
    with ExitStack() as stack:
        targets = [
            Target("fraisier", SERVED, stack.enter_context(fraisier_metrics(directories[SERVED], tmp_path / "s.log"))),
            Target("node", NODE, stack.enter_context(node_exporter(directories[NODE], tmp_path / "n.log"))),
        ]
        api = stack.enter_context(prometheus(targets, tmp_path / "prometheus"))

        def scraped_twice() -> bool:
            query = 'count_over_time(fraisier_deployments_total{status="success",fraise_type="api"}[1m]) >= 2'
            return {SERVED, NODE} <= {sample["metric"]["instance"] for sample in api.query(query)}

        wait_for(scraped_twice, "Prometheus scraping both hosts' Fraisier history", timeout=60)
        for fraisier in hosts.values():
            fraisier.deploy("api", "failed", "Health check failed after deployment")
            # The same reason as the first rollback: its series existed, so increase() sees this one.
            fraisier.deploy("api", "rolled_back", "Health check failed after deployment")
            fraisier.status("etl", "deploying")  # Fraisier's worker: alive while the dashboard is read
            fraisier.start("etl")
        refresh(hosts[NODE], directories[NODE])

        def everything_seen() -> bool:
            failed = api.values('fraisier_deployments_total{status="failed",fraise_type="api"}')
            active = api.values("fraisier_active_deployments > 0")
            return len(failed) == 2 and all(value == 1 for value in failed.values()) and len(active) == 2

        wait_for(everything_seen, "Prometheus seeing Fraisier's failures and running deployments", timeout=60)

        for query in (query for query in queries(load_dashboard()) if query.panel in PANELS):
            for host in (SERVED, NODE):
                expr = substitute(query.expr, {"instance": regex_value(host), "provider": ALL, "fraise_type": ALL})
                assert api.values(expr), f"{query} shows nothing for {host}: {expr}"

        def set_off() -> set[tuple[str, str]] | None:
            alerts = {(alert["labels"]["alertname"], alert["labels"].get("instance", "")) for alert in api.alerts()
                      if alert["state"] in ("pending", "firing")}
            wanted = {(name, host) for name in ("DeploymentFailure", "DeploymentRolledBack") for host in hosts}
            return alerts if wanted <= alerts else None

        alerts = wait_for(set_off, "the deployment alerts set off on both hosts", timeout=150,
                          explain=lambda: str(api.alerts()))
        assert not {name for name, _ in alerts} & {"FraisierTextfileParseError", "FraisierMetricsDown"}
