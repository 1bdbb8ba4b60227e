"""grafana-dashboard.json, statically: importable with a data source input, the variables, every panel
with a unit and a legend naming its labels, every query well-formed and filtered by the variables.
tests/integration/test_fleet.py sends every query to a real Prometheus."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fraisier_textfile import catalogue

from .integration.fleet import (
    DASHBOARD,
    Query,
    legend_labels,
    load_dashboard,
    panels,
    queries,
    substitute,
    unknown_series,
    unknown_statuses,
    variables,
)
from .processes import binary

REQUIRED_PANELS = [
    "Deployment Rate",
    "Deployment Success Rate",
    "Deployment Duration Percentiles",
    "Deployment Errors by Type",
    "Active Deployments",
    "Health Checks by Type",
    "Health Check Duration (p95)",
    "Rollbacks by Reason",
    "Provider Availability",
    "Time Since Last Successful Deployment",
    "Deployment Lock Wait",
    "Textfile Age",
    "Textfile Scrape Errors",
    "Database Query Latency (p95)",
    "Database Errors",
    "Database Connection Pool",
    "Restore Duration by Phase",
    "Database Operations",
]
NOT_ON_THE_DASHBOARD = {
    # Rollbacks are shown by reason; their durations stay in the file for ad-hoc queries.
    "fraisier_rollback_duration_seconds",
}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
QUERIES = queries(load_dashboard())


def test_the_dashboard_is_json_with_a_prometheus_data_source_input() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["__inputs"] == [
        {
            "name": "DS_PROMETHEUS",
            "label": "Prometheus",
            "description": dashboard["__inputs"][0]["description"],
            "type": "datasource",
            "pluginId": "prometheus",
            "pluginName": "Prometheus",
        }
    ]
    assert dashboard["id"] is None and dashboard["uid"] and dashboard["title"]
    # The data source chosen at import is the default of the datasource variable, which every query uses.
    datasource = variables(dashboard)["datasource"]
    assert datasource["type"] == "datasource" and datasource["query"] == "prometheus"
    assert datasource["current"]["value"] == "${DS_PROMETHEUS}"
    for panel in panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert all(target["datasource"] == DATASOURCE for target in panel["targets"]), panel["title"]
    for variable in variables(dashboard).values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE


def test_the_variables_select_instances_providers_and_fraise_types_with_all() -> None:
    found = variables(load_dashboard())
    assert list(found) == ["datasource", "instance", "provider", "fraise_type"]
    for name in ("instance", "provider", "fraise_type"):
        variable = found[name]
        assert variable["type"] == "query"
        assert variable["multi"] and variable["includeAll"] and variable["allValue"] == ".*", name
        assert re.fullmatch(rf"label_values\((.+), {name}\)", variable["definition"]), variable["definition"]
        assert variable["query"] == variable["definition"]
    # Each narrows the next: providers of the selected instances, fraise types of both.
    assert "$instance" in found["provider"]["definition"]
    assert "$instance" in found["fraise_type"]["definition"] and "$provider" in found["fraise_type"]["definition"]


def test_every_required_panel_is_there_once() -> None:
    titles = [panel["title"] for panel in panels(load_dashboard())]
    assert sorted(titles) == sorted(REQUIRED_PANELS)


def test_panels_have_unique_ids_and_fit_the_grid() -> None:
    dashboard = load_dashboard()
    every = dashboard["panels"] + [nested for row in dashboard["panels"] for nested in row.get("panels", [])]
    ids = [panel["id"] for panel in every]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in every:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area


@pytest.mark.parametrize("panel", panels(load_dashboard()), ids=lambda panel: panel["title"])
def test_every_panel_has_a_unit_a_description_and_legends_naming_labels(panel: dict[str, Any]) -> None:
    assert panel["fieldConfig"]["defaults"]["unit"]
    assert panel["description"]
    assert panel["targets"]
    for target in panel["targets"]:
        assert legend_labels(target["legendFormat"]), f"{panel['title']}: legend {target['legendFormat']!r}"


@pytest.mark.parametrize("query", QUERIES, ids=str)
def test_every_legend_names_labels_that_the_query_keeps(query: Query) -> None:
    """A label survives an aggregation only if every ``by (...)`` of the query keeps it (``le`` is consumed
    by histogram_quantile)."""
    groupings = [
        {label.strip() for label in grouping.split(",")} for grouping in re.findall(r"\bby\s*\(([^)]*)\)", query.expr)
    ]
    # `by (instance, job)` only lines a series up with its host's up and textfile series (the count of events
    # born in the window): every panel aggregates over instances, so no result keeps those labels.
    groupings = [grouping for grouping in groupings if grouping != {"instance", "job"}]
    assert groupings, f"{query}: does not aggregate over instances"
    kept = set.intersection(*groupings) - {"le"}
    assert legend_labels(query.legend) <= kept, f"{query}: {legend_labels(query.legend) - kept} not kept"


def balanced(expr: str) -> str | None:
    """None if the brackets of ``expr`` balance and its strings close, else what is wrong."""
    closing = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    quote: str | None = None
    escaped = False
    for position, character in enumerate(expr):
        if quote is not None:
            if escaped:
                escaped = False
            elif character == "\\" and quote != "`":
                escaped = True
            elif character == quote:
                quote = None
        elif character in "\"'`":
            quote = character
        elif character in "([{":
            stack.append(character)
        elif character in closing and (not stack or stack.pop() != closing[character]):
            return f"unexpected {character!r} at {position}"
    if quote is not None:
        return f"unclosed {quote}"
    return f"unclosed {stack[-1]!r}" if stack else None


@pytest.mark.parametrize("expr", ["sum(rate(x[5m])", 'x{a="b}', 'x{a="b"}]', "(x))"])
def test_the_balance_check_finds_what_is_wrong(expr: str) -> None:
    assert balanced(expr) is not None


@pytest.mark.parametrize("query", QUERIES, ids=str)
def test_every_query_is_balanced_once_its_variables_are_substituted(query: Query) -> None:
    values = {name: ".*" for name in variables(load_dashboard())}
    expr = substitute(query.expr, values)
    assert "$" not in expr and "[[" not in expr
    assert balanced(expr) is None, f"{query}: {balanced(expr)}"


SELECTOR = re.compile(r"\b((?:fraisier|node)_\w+)(\{[^}]*\})?")


@pytest.mark.parametrize("query", QUERIES, ids=str)
def test_every_selector_is_filtered_by_the_variables_that_apply_to_it(query: Query) -> None:
    selectors = SELECTOR.findall(query.expr)
    assert selectors
    for name, matchers in selectors:
        assert 'instance=~"$instance"' in matchers, f"{query}: {name} not filtered by instance"
        family = catalogue.FAMILIES_BY_NAME.get(re.sub(r"_(bucket|sum|count)$", "", name))
        if family is None:
            continue
        for label in ("provider", "fraise_type"):
            if label in family.labels:
                assert f'{label}=~"${label}"' in matchers, f"{query}: {name} not filtered by {label}"


@pytest.mark.parametrize("query", QUERIES, ids=str)
def test_every_query_names_only_series_and_statuses_of_the_catalogue(query: Query) -> None:
    assert not unknown_series(query.expr), query
    assert not unknown_statuses(query.expr), query


def test_the_textfile_panels_read_only_fraisier_prom() -> None:
    for query in QUERIES:
        if "node_textfile_mtime_seconds" in query.expr:
            assert 'file=~".*/fraisier\\\\.prom"' in query.expr, query


def test_every_family_of_the_catalogue_has_a_panel() -> None:
    shown = {re.sub(r"_(bucket|sum|count)$", "", name) for query in QUERIES for name, _ in SELECTOR.findall(query.expr)}
    missing = {family.name for family in catalogue.FAMILIES} - shown - NOT_ON_THE_DASHBOARD
    assert not missing, f"no panel shows {sorted(missing)}"


WINDOW = re.compile(r"\b(rate|increase)\(\s*[a-z_]+(?:\{[^}]*\})?\[([^\]]+)\]\)")


@pytest.mark.parametrize("query", QUERIES, ids=str)
def test_no_window_is_shorter_than_the_step_can_be(query: Query) -> None:
    """A fixed window shorter than the step skips the events between two points once the range is zoomed
    out (a [5m] window at a 10-minute step sees half of them): windows follow the step ($__rate_interval),
    cover the whole range ($__range) for totals, or are an hour or more for the quantiles and ratios of rare
    events."""
    windows = WINDOW.findall(query.expr)
    for function, window in windows:
        if window in ("$__rate_interval", "$__range"):
            continue
        match = re.fullmatch(r"(\d+)([mhd])", window)
        assert match is not None, f"{query}: {function}() over [{window}]"
        minutes = int(match[1]) * {"m": 1, "h": 60, "d": 1440}[match[2]]
        assert minutes >= 60, f"{query}: {function}() over a fixed [{window}]: use $__rate_interval"


def test_rates_follow_the_step_and_totals_cover_the_range() -> None:
    dashboard = load_dashboard()
    for panel in panels(dashboard):
        for target in panel["targets"]:
            windows = {window for _, window in WINDOW.findall(target["expr"])}
            if target.get("instant") and "increase" in target["expr"]:
                assert windows == {"$__range"}, f"{panel['title']}: an instant total over {windows}"
            if "rate(" in target["expr"] and "histogram_quantile" not in target["expr"]:
                assert windows == {"$__rate_interval"}, f"{panel['title']}: a rate over {windows}"


# Counts of events, and the series each panel counts: one born at 1 (absent, then 1 between two scrapes of a
# host Prometheus was already scraping) must count 1, in a real PromQL engine (promtool's).
COUNT_PANELS = {
    "Deployment Rate": 'fraisier_deployments_total{provider="bare_metal",status="failed",fraise_type="backup"}',
    "Deployment Errors by Type": 'fraisier_deployment_errors_total{provider="bare_metal",error_type="exit_code_3"}',
    "Health Checks by Type": 'fraisier_health_checks_total{provider="bare_metal",check_type="tcp",status="fail"}',
    "Rollbacks by Reason": 'fraisier_rollbacks_total{provider="bare_metal",reason="timeout"}',
    "Database Errors": 'fraisier_db_errors_total{database_type="mysql",error_type="deadlock"}',
    "Database Operations": 'fraisier_db_queries_total{database_type="mysql",operation="select",status="ok"}',
}
HOST = 'instance="host-1:9100",job="node"'


def promtool_test(query: Query, series: dict[str, str]) -> str:
    """A promtool unit test (JSON is YAML) of ``series`` (name{labels} without the host's: values), the host
    scraped every minute from 0m; the panel's query, its variables on All and its range an hour, at 15m."""
    expr = substitute(query.expr, {"instance": ".*", "provider": ".*", "fraise_type": ".*", "__range": "1h"})
    inputs = [{"series": f"up{{{HOST}}}", "values": "1x20"}]
    for key, values in series.items():
        name, labels = key.split("{", 1)
        inputs.append({"series": f"{name}{{{HOST}{',' if labels != '}' else ''}{labels}", "values": values})
    return json.dumps({
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": inputs,
            "promql_expr_test": [{"expr": expr, "eval_time": "15m", "exp_samples": []}],
        }],
    })


def evaluated(query: Query, series: dict[str, str], tmp_path: Path) -> list[float]:
    """The values promtool finds for the query (the test expects none, so it prints what it got)."""
    test = tmp_path / "test.yml"
    test.write_text(promtool_test(query, series), encoding="utf-8")
    result = subprocess.run([binary("promtool"), "test", "rules", str(test)], capture_output=True, text=True)
    output = result.stdout + result.stderr
    if result.returncode == 0:
        return []
    assert "got:" in output, output
    return [float(value) for _, value in re.findall(r"\{([^{}]*)\} (\S+)", output.split("got:", 1)[1])]


MTIME = 'node_textfile_mtime_seconds{file="/var/lib/prometheus/node-exporter/fraisier.prom"}'
FRAISIER_PROM_READ = {"node_textfile_scrape_error{}": "0x20", MTIME: "1700000000x20"}


@pytest.mark.integration
@pytest.mark.parametrize("panel", sorted(COUNT_PANELS))
def test_a_series_born_at_its_first_event_counts_on_the_panels_that_count_events(
    panel: str, tmp_path: Path
) -> None:
    [query] = [query for query in QUERIES if query.panel == panel and query.ref_id == "A"]
    assert evaluated(query, {**FRAISIER_PROM_READ, COUNT_PANELS[panel]: "_x10 1x10"}, tmp_path) == [1.0]


@pytest.mark.integration
def test_another_writers_broken_textfile_does_not_hide_a_first_event(tmp_path: Path) -> None:
    [query] = [query for query in QUERIES if query.panel == "Deployment Errors by Type"]
    series = {**FRAISIER_PROM_READ, "node_textfile_scrape_error{}": "1x20",
              COUNT_PANELS["Deployment Errors by Type"]: "_x10 1x10"}
    assert evaluated(query, series, tmp_path) == [1.0]


@pytest.mark.integration
def test_series_back_after_fraisier_prom_could_not_be_parsed_are_not_new(tmp_path: Path) -> None:
    """fraisier.prom unparsable from 5m to 9m: its series vanish with its mtime, then come back, old."""
    [query] = [query for query in QUERIES if query.panel == "Deployment Errors by Type"]
    series = {
        "node_textfile_scrape_error{}": "0x4 1x5 0x10",
        MTIME: "1700000000x4 _x5 1700000000x10",
        COUNT_PANELS["Deployment Errors by Type"]: "3x4 _x5 3x10",
    }
    assert evaluated(query, series, tmp_path) == [0.0]
