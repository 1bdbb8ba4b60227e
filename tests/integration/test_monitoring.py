"""monitoring/, the folder an operator drops in: promtool accepts its Prometheus config (and the rules it loads),
a real Prometheus started with it scrapes a real node_exporter and a real `fraisier metrics` under the job names
the rules use, and the Grafana provisioning files point at the dashboard and a Prometheus data source."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from .. import processes
from ..processes import REPOSITORY, binary
from .fleet import ALERT_RULES, DASHBOARD, Prometheus, wait_for

MONITORING = REPOSITORY / "monitoring"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
DATASOURCES = MONITORING / "grafana" / "provisioning" / "datasources" / "fraisier-textfile.yml"
DASHBOARD_PROVIDERS = MONITORING / "grafana" / "provisioning" / "dashboards" / "fraisier-textfile.yml"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_count() -> int:
    return sum(len(group["rules"]) for group in load(ALERT_RULES)["groups"])


def test_the_rules_and_the_dashboard_are_in_the_monitoring_folder() -> None:
    assert ALERT_RULES.parent == MONITORING and DASHBOARD.parent == MONITORING
    # One file, one place: no second copy at the root to drift apart.
    assert not (REPOSITORY / "alert-rules.yml").exists() and not (REPOSITORY / "grafana-dashboard.json").exists()


@pytest.mark.integration
def test_promtool_checks_the_config_and_the_rules_it_loads() -> None:
    result = subprocess.run([binary("promtool"), "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    assert f"SUCCESS: {alert_count()} rules found" in result.stdout
    rules = subprocess.run([binary("promtool"), "check", "rules", str(ALERT_RULES)], capture_output=True, text=True)
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_the_scrape_jobs_are_the_ones_the_rules_name() -> None:
    jobs = {job["job_name"] for job in load(PROMETHEUS_CONFIG)["scrape_configs"]}
    named = set(re.findall(r'job="([^"]+)"', ALERT_RULES.read_text(encoding="utf-8")))
    assert named and named <= jobs
    assert jobs == {"node", "fraisier"}


@pytest.mark.integration
def test_a_prometheus_started_with_the_shipped_config_scrapes_both_exporters_and_loads_every_rule(
    tmp_path: Path,
) -> None:
    """The shipped file, as is, but for the two target addresses (real exporters on free ports)."""
    textfile_dir = tmp_path / "textfile"
    recorded = subprocess.run([sys.executable, "-m", "fraisier_textfile", "--textfile-dir", str(textfile_dir),
                               "record", "deployment", "--provider", "bare_metal", "--fraise-type", "api",
                               "--status", "success", "--duration", "3"], capture_output=True, text=True)
    assert recorded.returncode == 0, recorded.stderr
    with processes.node_exporter(textfile_dir, tmp_path / "node.log") as node_url, \
            processes.fraisier_metrics(textfile_dir, tmp_path / "fraisier.log") as fraisier_url:
        configuration = PROMETHEUS_CONFIG.read_text(encoding="utf-8")
        configuration = configuration.replace("'localhost:9100'", repr(urllib.parse.urlsplit(node_url).netloc))
        configuration = configuration.replace("'localhost:8001'", repr(urllib.parse.urlsplit(fraisier_url).netloc))
        configuration = configuration.replace("scrape_interval: 30s", "scrape_interval: 1s")
        configuration = configuration.replace("evaluation_interval: 30s", "evaluation_interval: 1s")
        dropped_in = tmp_path / "monitoring"
        dropped_in.mkdir()
        (dropped_in / "prometheus.yml").write_text(configuration, encoding="utf-8")
        shutil.copy(ALERT_RULES, dropped_in / "alert-rules.yml")
        port = processes.free_port()
        command = [binary("prometheus"), f"--config.file={dropped_in / 'prometheus.yml'}",
                   f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                   "--log.level=warn"]
        log = tmp_path / "prometheus.log"
        with processes.running(command, f"http://127.0.0.1:{port}/-/ready", log):
            prometheus = Prometheus(f"http://127.0.0.1:{port}", log)
            up = wait_for(lambda: {sample["metric"]["job"]: sample["value"][1]
                                   for sample in prometheus.query("up")} if len(prometheus.query("up")) == 2
                          else None, "both targets scraped", explain=log.read_text)
            assert up == {"node": "1", "fraisier": "1"}
            deployments = wait_for(lambda: prometheus.query('fraisier_deployments_total{status="success"}'),
                                   "the deployment in Prometheus")
            assert {sample["metric"]["job"] for sample in deployments} == {"node", "fraisier"}
            assert len(prometheus.rules()) == alert_count()


def test_the_grafana_provisioning_points_at_a_prometheus_and_the_dashboard() -> None:
    [datasource] = load(DATASOURCES)["datasources"]
    assert load(DATASOURCES)["apiVersion"] == 1
    assert datasource["type"] == "prometheus" and datasource["url"].startswith("http")
    interval = load(PROMETHEUS_CONFIG)["global"]["scrape_interval"]
    assert datasource["jsonData"]["timeInterval"] == interval  # $__rate_interval builds on the scrape interval
    [provider] = load(DASHBOARD_PROVIDERS)["providers"]
    assert provider["type"] == "file" and Path(provider["options"]["path"]).is_absolute()
    # The provider's comment says where to put the dashboard: the very path it reads.
    assert f"{provider['options']['path']}/{DASHBOARD.name}" in DASHBOARD_PROVIDERS.read_text(encoding="utf-8")
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    [variable] = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == datasource["type"]  # the Data source variable lists this data source
