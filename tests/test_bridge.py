"""fraisier_textfile.bridge: Fraisier's own ``fraisier.metrics`` pointed at the textfile, in one process, without
editing Fraisier's files; and ``python -m fraisier_textfile.bridge SCRIPT`` running Fraisier's console scripts so.
Against the installed Fraisier 0.84.2, each case in a process of its own (installing rewires a module for good).
The start-up hook that calls it in every process, and the bridge in virtual environments beside Fraisier, are
tests/test_hook.py's and tests/test_coexist.py's."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from fraisier_textfile import bridge
from fraisier_textfile import metrics as ours

from .values import sample_values

if importlib.util.find_spec("fraisier") is None and os.environ.get("CI") != "true":
    pytest.skip("Fraisier is not installed", allow_module_level=True)

ROLLBACKS = 'fraisier_rollbacks_total{provider="bare_metal",reason="manual"}'

# Fraisier's module is imported (and an instance of its DeploymentMetrics made) before the bridge is installed:
# what was made before writes to the textfile too, and Fraisier's own registry gets nothing.
BRIDGED = """
import sys
import prometheus_client
import fraisier.metrics
before = fraisier.metrics.DeploymentMetrics()
from fraisier_textfile.bridge import install
assert install() and install()  # twice is once
from fraisier.metrics import DeploymentMetrics, get_metrics_recorder
get_metrics_recorder().record_deployment_error("bare_metal", "timeout")
DeploymentMetrics.restore_duration_seconds.labels(phase="total").observe(42.0)
before.rollbacks_total.labels(provider="bare_metal", reason="manual").inc()
theirs = prometheus_client.REGISTRY.get_sample_value("fraisier_rollbacks_total",
                                                     {"provider": "bare_metal", "reason": "manual"})
print(theirs)
"""


def run_python(script: str, textfile_dir: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "FRAISIER_TEXTFILE_DIR": str(textfile_dir), "FRAISIER_TEXTFILE_HOOK": "0"}
    return subprocess.run([sys.executable, *(["-c", script] if script else []), *arguments], capture_output=True,
                          text=True, timeout=120, env=environment)


def test_fraisiers_recorder_and_families_write_to_the_textfile_once_installed(textfile_dir: Path) -> None:
    run = run_python(BRIDGED, textfile_dir)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "None\n"  # Fraisier's in-memory registry never saw the increment
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values['fraisier_deployment_errors_total{provider="bare_metal",error_type="timeout"}'] == 1
    assert values['fraisier_restore_duration_seconds_count{phase="total"}'] == 1
    assert values[ROLLBACKS] == 1


def test_a_family_we_do_not_know_stays_fraisiers_and_a_module_without_the_class_still_gets_our_recorder() -> None:
    class Unknown:
        def labels(self, *labels: str) -> Unknown:
            return self

    known = ours.DeploymentMetrics.rollbacks_total
    unknown = Unknown()
    families = type("DeploymentMetrics", (), {"rollbacks_total": object.__new__(Unknown), "later_total": unknown})
    theirs = types.ModuleType("fraisier_later_metrics")
    theirs.DeploymentMetrics = families  # type: ignore[attr-defined]
    bridge.install_into(theirs)
    assert vars(families)["rollbacks_total"].family is known.family  # ours, writing to the textfile
    assert vars(families)["later_total"] is unknown  # a family of a later Fraisier that we do not know
    assert theirs.get_metrics_recorder is ours.get_metrics_recorder
    bare = types.ModuleType("fraisier_renamed_metrics")
    bridge.install_into(bare)
    assert bare.MetricsRecorder is ours.MetricsRecorder
    assert getattr(bare, bridge.INSTALLED_MARK) is True


def test_python_dash_m_runs_fraisiers_console_script_as_fraisier_runs_it(textfile_dir: Path) -> None:
    bridged = run_python("", textfile_dir, "-m", "fraisier_textfile.bridge", "fraisier", "providers")
    alone = run_python("import sys; sys.argv = ['fraisier', 'providers']; from fraisier.cli import main; main()",
                       textfile_dir)
    assert (bridged.returncode, bridged.stdout) == (alone.returncode, alone.stdout) == (0, alone.stdout)
    assert "bare_metal" in bridged.stdout


def test_python_dash_m_without_a_script_says_how_and_with_an_unknown_one_says_which(textfile_dir: Path) -> None:
    usage = run_python("", textfile_dir, "-m", "fraisier_textfile.bridge")
    assert usage.returncode == 2 and usage.stdout.startswith("usage: python -m fraisier_textfile.bridge SCRIPT")
    missing = run_python("", textfile_dir, "-m", "fraisier_textfile.bridge", "no-such-script")
    assert missing.returncode == 2 and "no console script 'no-such-script'" in missing.stderr
