"""A simulated fleet for the end-to-end test, and the dashboard's queries as Grafana would send them.

Hosts each have their own textfile directory and exporter (node_exporter's textfile collector, or
``fraisier metrics``); a real Prometheus on loopback scrapes them with ``alert-rules.yml`` loaded.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .. import processes
from ..processes import REPOSITORY, binary, free_port, running

DASHBOARD = REPOSITORY / "monitoring" / "grafana-dashboard.json"
ALERT_RULES = REPOSITORY / "monitoring" / "alert-rules.yml"
ALL = ".*"
"""The value the dashboard's variables take for "All" (their allValue)."""

T = TypeVar("T")


# The dashboard


@dataclass(frozen=True)
class Query:
    panel: str
    ref_id: str
    expr: str
    legend: str

    def __str__(self) -> str:
        return f"{self.panel} ({self.ref_id})"


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every panel but rows, including those nested in collapsed rows."""
    found = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def queries(dashboard: Mapping[str, Any]) -> list[Query]:
    return [
        Query(panel["title"], target["refId"], target["expr"], target.get("legendFormat", ""))
        for panel in panels(dashboard)
        for target in panel["targets"]
    ]


def variables(dashboard: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in dashboard["templating"]["list"]}


_REGEX_SPECIAL = set("$^*{}[]'+?.()|")


def regex_value(*values: str) -> str:
    """What Grafana puts in a PromQL ``=~"..."`` for a multi-value variable with these values selected:
    each value's regex metacharacters escaped for a PromQL string, several values as ``(a|b)``."""
    escaped = [_regex_escape(value) for value in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def _regex_escape(value: str) -> str:
    value = value.replace("\\", "\\" * 4)  # a backslash: \\ in the regex, so \\\\ in the PromQL string
    return "".join("\\\\" + character if character in _REGEX_SPECIAL else character for character in value)


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


GRAFANA_INTERVALS = {"__interval": "1m", "__rate_interval": "4m", "__range": "21600s"}
"""What Grafana gives its own interval variables on the dashboard's default 6 h range with a Prometheus data
source whose scrape interval is set to 1 minute: ``$__interval`` is the step (6 h over a panel's width is
about 20 s, raised to the scrape interval), ``$__rate_interval`` is max($__interval + scrape interval,
4 × scrape interval), ``$__range`` the whole range."""


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """``expr`` with ``$name``, ``${name}`` and ``[[name]]`` replaced by ``values[name]``, or by Grafana's own
    value for its interval variables (GRAFANA_INTERVALS); an unknown variable raises KeyError."""
    every = {**GRAFANA_INTERVALS, **values}
    return _VARIABLE.sub(lambda match: every[next(group for group in match.groups() if group)], expr)


LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def legend_labels(legend: str) -> set[str]:
    return set(LEGEND_LABEL.findall(legend))


# Prometheus


class PrometheusError(AssertionError):
    pass


@dataclass
class Prometheus:
    """A running Prometheus's HTTP API."""

    url: str
    log: Path

    def get(self, path: str, **parameters: str | Sequence[str]) -> Any:
        query = urllib.parse.urlencode(parameters, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as error:  # the API answers 400/422 with a JSON error body
            answer = json.load(error)
        if answer.get("status") != "success":
            raise PrometheusError(f"GET {path} {parameters}: {answer.get('errorType')}: {answer.get('error')}")
        return answer["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result: ``[{"metric": {...}, "value": [time, "1.5"]}, ...]``."""
        parameters = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = self.get("/api/v1/query", **parameters)
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr}: a {data['resultType']}, not an instant vector")
        return data["result"]  # type: ignore[no-any-return]

    def values(self, expr: str, at: float | None = None) -> dict[frozenset[tuple[str, str]], float]:
        return {frozenset(sample["metric"].items()): float(sample["value"][1]) for sample in self.query(expr, at)}

    def label_values(self, label: str, match: str) -> list[str]:
        return self.get(f"/api/v1/label/{label}/values", **{"match[]": match})  # type: ignore[no-any-return]

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.get("/api/v1/rules")["groups"] for rule in group["rules"]]

    def alerts(self) -> list[dict[str, Any]]:
        return self.get("/api/v1/alerts")["alerts"]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Target:
    job: str
    instance: str
    address: str


def prometheus_configuration(targets: Sequence[Target], rule_files: Sequence[Path]) -> str:
    """A prometheus.yml (JSON is YAML) scraping ``targets`` every second, each under its own instance label."""
    jobs: dict[str, list[dict[str, Any]]] = {}
    for target in targets:
        jobs.setdefault(target.job, []).append({"targets": [target.address], "labels": {"instance": target.instance}})
    return json.dumps(
        {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": configs} for job, configs in jobs.items()],
        },
        indent=2,
    )


@contextmanager
def prometheus(
    targets: Sequence[Target], directory: Path, rule_files: Sequence[Path] = (ALERT_RULES,)
) -> Iterator[Prometheus]:
    directory.mkdir(parents=True, exist_ok=True)
    configuration = directory / "prometheus.yml"
    configuration.write_text(prometheus_configuration(targets, rule_files))
    port = free_port()
    command = [
        binary("prometheus"),
        f"--config.file={configuration}",
        f"--storage.tsdb.path={directory / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    log = directory / "prometheus.log"
    with running(command, f"http://127.0.0.1:{port}/-/ready", log):
        yield Prometheus(f"http://127.0.0.1:{port}", log)


@contextmanager
def node_exporter(directory: Path, log: Path) -> Iterator[str]:
    """node_exporter with only its textfile collector, reading ``directory``. Yields its address."""
    with processes.node_exporter(directory, log) as url:
        yield urllib.parse.urlsplit(url).netloc


@contextmanager
def fraisier_metrics(directory: Path, log: Path) -> Iterator[str]:
    """``fraisier metrics`` serving ``directory``. Yields its address."""
    with processes.fraisier_metrics(directory, log) as url:
        yield urllib.parse.urlsplit(url).netloc


def fraisier_command() -> list[str]:
    return [sys.executable, "-m", "fraisier_textfile"]


def wait_for(
    condition: Callable[[], T | None], what: str, timeout: float = 30.0, explain: Callable[[], str] | None = None
) -> T:
    """Poll ``condition`` until it returns something true (a non-empty result); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            details = f": {explain()}" if explain is not None else ""
            raise AssertionError(f"{what} did not happen within {timeout:g}s{details}")
        time.sleep(0.2)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


# What the dashboard and the rules may name


def store_families() -> set[str]:
    """The store's own families (not Fraisier's: outside the catalogue)."""
    from fraisier_textfile.store import handovers, lifecycle

    return {lifecycle.REFUSED_FAMILY, handovers.PENDING_FAMILY, handovers.SET_ASIDE_FAMILY}


def series_names() -> set[str]:
    """Every series name the textfile can hold (from the catalogue) and the node_exporter series we use."""
    from fraisier_textfile import catalogue

    names = {"node_textfile_mtime_seconds", "node_textfile_scrape_error", "up", *store_families()}
    for family in catalogue.FAMILIES:
        if family.kind is catalogue.Kind.HISTOGRAM:
            names |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return names


SERIES_NAME = re.compile(r"\b(fraisier_\w+|node_\w+)")
STATUS_MATCHER = re.compile(r'\bstatus\s*(?:=~|!=|!~|=)\s*"([^"]*)"')


def unknown_series(expr: str) -> set[str]:
    return set(SERIES_NAME.findall(expr)) - series_names()


def unknown_statuses(expr: str) -> set[str]:
    """Status values in ``expr``'s matchers that the catalogue does not know."""
    from fraisier_textfile import catalogue

    known = set(catalogue.DEPLOYMENT_STATUSES) | set(catalogue.HEALTH_CHECK_STATUSES)
    return {value for pattern in STATUS_MATCHER.findall(expr) for value in pattern.split("|")} - known
