"""fraisier_textfile/catalogue.py: Fraisier's families as data (names, types, labels, buckets, help) and the closed
sets of its label values. What the dashboards, the alerts and Fraisier's own queries rely on is checked here."""

from __future__ import annotations

import re

import pytest

from fraisier_textfile import catalogue as c
from fraisier_textfile import validate
from fraisier_textfile.errors import InvalidValueError


@pytest.mark.parametrize("family, fraisiers", c.FRAISIER_BUCKETS.items(), ids=lambda value: getattr(value, "name", ""))
def test_every_histogram_has_every_bound_fraisier_uses(family: c.Family, fraisiers: tuple[float, ...]) -> None:
    assert set(fraisiers) <= set(family.buckets)
    assert list(family.buckets) == sorted(family.buckets)


def test_every_histogram_fraisier_has_is_compared_with_fraisiers_buckets() -> None:
    histograms = {family for family in c.FAMILIES if family.kind is c.Kind.HISTOGRAM}
    assert histograms == set(c.FRAISIER_BUCKETS)


@pytest.mark.parametrize("family", c.FAMILIES, ids=lambda family: family.name)
def test_every_family_is_named_as_prometheus_names_it(family: c.Family) -> None:
    """One prefix, base units, ``_total`` on counters only, no label that Prometheus reserves."""
    assert re.fullmatch(r"fraisier_[a-z_]+", family.name)
    assert family.name.endswith("_total") == (family.kind is c.Kind.COUNTER)
    assert not family.name.endswith(("_milliseconds", "_ms", "_minutes"))
    assert all(re.fullmatch(r"[a-z][a-z_]*", label) and label not in ("le", "quantile") for label in family.labels)
    assert family.help and family.help.endswith(".")
    assert list(family.buckets) == sorted(set(family.buckets)) and bool(family.buckets) == (
        family.kind is c.Kind.HISTOGRAM)


def test_the_schema_is_the_families_in_their_order_and_the_table_by_name_agrees() -> None:
    assert c.SCHEMA.families == c.FAMILIES
    assert c.FAMILIES_BY_NAME == {family.name: family for family in c.FAMILIES} == c.SCHEMA.by_name


def test_the_closed_label_values_are_those_whose_siblings_are_written_at_zero() -> None:
    """A label whose values are a closed set has every value's series at 0 from the first event on, so that
    ``increase()`` sees the first failure; the two tables say the same sets."""
    for family in c.FAMILIES:
        if family.zero_series is not None:
            label, values = family.zero_series
            assert c.LABEL_CHOICES[(family, label)] == values, family.name
    assert {family for family, _ in c.LABEL_CHOICES} >= {f for f in c.FAMILIES if f.zero_series is not None}


@pytest.mark.parametrize(("given", "status"), [("success", "success"), ("rolled_back", "rolled_back"),
                                               ("interrupted", "crashed"), ("crashed", "crashed")])
def test_a_finished_deployments_status_is_ours_or_fraisiers_name_for_it(given: str, status: str) -> None:
    assert c.check_deployment_status(given) == status


@pytest.mark.parametrize("unfinished", c.UNFINISHED_STATUSES)
def test_an_unfinished_status_is_refused_as_counting_a_deployment_twice(unfinished: str) -> None:
    with pytest.raises(InvalidValueError, match="is not a finished deployment: record the deployment once"):
        c.check_deployment_status(unfinished)


def test_an_unknown_status_is_refused_naming_the_statuses() -> None:
    with pytest.raises(InvalidValueError, match="status='done' is not known: use one of success, failed"):
        c.check_deployment_status("done")


def test_the_fallbacks_are_values_their_families_accept() -> None:
    assert c.FALLBACK_DEPLOYMENT_STATUS in c.DEPLOYMENT_STATUSES
    assert c.FALLBACK_HEALTH_CHECK_STATUS in c.HEALTH_CHECK_STATUSES
    assert validate.check_label_value("error_type", c.FALLBACK_ERROR_TYPE) == c.FALLBACK_ERROR_TYPE
