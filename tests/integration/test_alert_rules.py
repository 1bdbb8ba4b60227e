"""alert-rules.yml: promtool checks it and runs its unit tests (tests/rules/*.yml), and every alert has a
case where it fires and one where it does not, with annotations that name only labels the alert carries."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from fraisier_textfile import catalogue

from ..processes import REPOSITORY, binary
from .fleet import ALERT_RULES, store_families, unknown_series, unknown_statuses

UNIT_TESTS = sorted((REPOSITORY / "tests" / "rules").glob("*.yml"))
SEVERITIES = {"warning", "critical"}
TARGET_LABELS = {"instance", "job"}


def load(path: Path) -> Any:
    with open(path, encoding="utf-8") as file:
        return yaml.safe_load(file)


def alerts() -> list[dict[str, Any]]:
    return [rule for group in load(ALERT_RULES)["groups"] for rule in group["rules"]]


def alert_cases() -> list[tuple[Path, dict[str, Any]]]:
    """Every ``alert_rule_test`` entry of the unit tests, with its file."""
    return [
        (path, case) for path in UNIT_TESTS for test in load(path)["tests"] for case in test.get("alert_rule_test", [])
    ]


@pytest.mark.integration
def test_promtool_checks_the_rules_file_and_counts_every_rule() -> None:
    result = subprocess.run([binary("promtool"), "check", "rules", str(ALERT_RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


@pytest.mark.integration
def test_the_promtool_unit_tests_pass() -> None:
    assert UNIT_TESTS
    result = subprocess.run(
        [binary("promtool"), "test", "rules", *map(str, UNIT_TESTS)], capture_output=True, text=True, cwd=REPOSITORY
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(UNIT_TESTS), result.stdout


@pytest.mark.integration
def test_promtool_unit_tests_fail_when_an_alert_misbehaves(tmp_path: Path) -> None:
    """The unit tests can fail: with DeploymentFailure blind to series born at 1, they do."""
    rules = ALERT_RULES.read_text(encoding="utf-8")
    branch = 'time() - fraisier_last_deployment_timestamp_seconds{status=~"failed|rollback_failed|crashed"} < 900'
    assert branch in rules
    (tmp_path / "monitoring").mkdir()
    (tmp_path / "monitoring" / "alert-rules.yml").write_text(rules.replace(branch, "vector(0) > 1"), encoding="utf-8")
    (tmp_path / "tests" / "rules").mkdir(parents=True)
    test = tmp_path / "tests" / "rules" / "deployments.yml"
    test.write_text((REPOSITORY / "tests" / "rules" / "deployments.yml").read_text(encoding="utf-8"), encoding="utf-8")
    result = subprocess.run([binary("promtool"), "test", "rules", str(test)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "DeploymentFailure fires on a series first seen already at 1" in result.stdout + result.stderr


def test_the_unit_tests_load_the_repository_rules_file() -> None:
    for path in UNIT_TESTS:
        assert [(path.parent / name).resolve() for name in load(path)["rule_files"]] == [ALERT_RULES], path


@pytest.mark.parametrize("alert", [rule["alert"] for rule in alerts()])
def test_every_alert_has_a_case_where_it_fires_and_one_where_it_does_not(alert: str) -> None:
    cases = [case for _, case in alert_cases() if case["alertname"] == alert]
    assert any(case.get("exp_alerts") for case in cases), f"{alert}: no unit test where it fires"
    assert any(not case.get("exp_alerts") for case in cases), f"{alert}: no unit test where it stays quiet"


def test_the_unit_tests_name_only_alerts_that_exist() -> None:
    names = {rule["alert"] for rule in alerts()}
    assert {case["alertname"] for _, case in alert_cases()} <= names


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: rule["alert"])
def test_every_alert_has_for_a_severity_and_a_summary_and_description(rule: dict[str, Any]) -> None:
    assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), rule["alert"]
    assert rule["labels"]["severity"] in SEVERITIES
    assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip()


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: rule["alert"])
def test_annotations_use_only_labels_the_alert_carries(rule: dict[str, Any]) -> None:
    """promtool compares exp_labels with the alert's labels exactly, so a label named by the annotations and
    present in every firing case's exp_labels is one the alert carries. The firing cases also give the
    rendered annotations, which promtool compares too."""
    used = set(re.findall(r"\$labels\.(\w+)", " ".join(rule["annotations"].values())))
    firing = [
        expected
        for _, case in alert_cases()
        if case["alertname"] == rule["alert"]
        for expected in case.get("exp_alerts") or []
    ]
    assert firing
    for expected in firing:
        assert used <= set(expected["exp_labels"]), f"{rule['alert']}: {used - set(expected['exp_labels'])}"
        assert set(expected.get("exp_annotations", {})) == set(rule["annotations"]), rule["alert"]
        for text in expected["exp_annotations"].values():
            assert "<no value>" not in text and "{{" not in text


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: rule["alert"])
def test_the_rules_name_only_series_and_statuses_of_the_catalogue(rule: dict[str, Any]) -> None:
    assert not unknown_series(rule["expr"])
    assert not unknown_statuses(rule["expr"])


def test_the_unit_tests_input_series_carry_the_catalogue_labels() -> None:
    """Unit-test series look like scraped ones: the family's labels plus the target's (and le for buckets)."""
    series = re.compile(r"(\w+)\{(.*)\}")
    for path in UNIT_TESTS:
        for test in load(path)["tests"]:
            for input_series in test["input_series"]:
                match = series.fullmatch(input_series["series"])
                assert match is not None, input_series["series"]
                name, labels = match[1], set(re.findall(r'(\w+)="', match[2]))
                family = catalogue.FAMILIES_BY_NAME.get(re.sub(r"_(bucket|sum|count)$", "", name))
                if family is None:
                    assert not name.startswith("fraisier_") or name in store_families(), name
                    continue
                expected = set(family.labels) | TARGET_LABELS | ({"le"} if name.endswith("_bucket") else set())
                assert labels == expected, f"{path.name}: {input_series['series']}"
