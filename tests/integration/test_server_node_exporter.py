"""The real node_exporter and ``fraisier metrics`` serving the same directory agree on every fraisier series."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fraisier_textfile import MetricsRecorder

from ..processes import fraisier_metrics, http_get, node_exporter
from ..values import canonical_samples
from .workload import record_a_bit_of_everything

pytestmark = pytest.mark.integration

Series = tuple[str, frozenset[tuple[str, str]]]


def fraisier_series(text: str) -> tuple[dict[Series, float], dict[str, str]]:
    """The fraisier samples of a scrape, whatever the order of their labels, and the type of each family."""
    types = {
        family.name: family.type
        for family in text_string_to_metric_families(text)
        if family.name.startswith("fraisier_") and family.samples
    }
    return canonical_samples(text, "fraisier_"), types


DEPLOY_AND_HANG = """
import sys, time
from fraisier_textfile import MetricsRecorder
with MetricsRecorder(sys.argv[1]).track_deployment("bare_metal", "backup"):
    print("deploying", flush=True)
    time.sleep(600)
"""


def test_node_exporter_and_fraisier_metrics_agree_on_every_fraisier_series(textfile_dir: Path) -> None:
    record_a_bit_of_everything(textfile_dir)
    deployment = subprocess.Popen(
        [sys.executable, "-c", DEPLOY_AND_HANG, str(textfile_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert deployment.stdout is not None and deployment.stdout.readline() == "deploying\n"
        with node_exporter(textfile_dir) as theirs, fraisier_metrics(textfile_dir) as ours:
            their_values, their_types = fraisier_series(http_get(theirs))
            our_values, our_types = fraisier_series(http_get(ours))
            assert len(their_values) > 50
            assert our_values == their_values
            assert our_types == their_types
            active = ("fraisier_active_deployments", frozenset({("provider", "bare_metal")}))
            assert our_values[active] == 1

            # A crash: ours stops counting the deployment at once, node_exporter when the file says so...
            deployment.kill()
            deployment.wait()
            assert fraisier_series(http_get(ours))[0][active] == 0
            assert fraisier_series(http_get(theirs))[0][active] == 1
            # ...which is at the next flush by any process; from then on they agree again.
            MetricsRecorder(textfile_dir).record_health_check("bare_metal", "http", "pass", 0.1)
            their_values, their_types = fraisier_series(http_get(theirs))
            our_values, our_types = fraisier_series(http_get(ours))
            assert our_values == their_values
            assert our_types == their_types
            assert our_values[active] == 0
            crashed = frozenset({("provider", "bare_metal"), ("status", "crashed"), ("fraise_type", "backup")})
            assert our_values[("fraisier_deployments_total", crashed)] == 1
    finally:
        deployment.kill()
        deployment.wait()
