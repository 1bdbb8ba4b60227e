"""Fraisier's own metrics tests, run against our recorder: "change one import" taken literally.

The three test files of Fraisier 0.84.2's sdist that test ``fraisier.metrics`` are copied into a temporary
folder and run by pytest in a subprocess whose ``fraisier.metrics`` is ``fraisier_textfile.metrics`` (a conftest
puts it in ``sys.modules`` before they import it). Their other imports (``fraisier.db.observability``,
``fraisier.deployers``) are Fraisier's own, so Fraisier must be installed where they run.

Where things come from:
- the sdist: ``$FRAISIER_SDIST`` (an unpacked sdist or its .tar.gz; .ci/run sets it), else
  ``pip download --no-deps --no-binary :all: fraisier==0.84.2`` into a temporary folder;
- the Python: this one if it can import Fraisier 0.84.2 (.ci/run installs it), else ``$FRAISIER_PYTHON``.
Missing either is a skip on a developer's machine and a failure under CI=true.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from fraisier_textfile import TextfileStore, catalogue
from fraisier_textfile.changes import Changes
from fraisier_textfile.format.check import check_text

from .processes import REPOSITORY
from .values import sample_values

FRAISIER_VERSION = "0.84.2"
TEST_FILES = ("test_metrics.py", "test_hardening.py", "test_observability.py")
SELECTED = ("test_metrics.py", "test_hardening.py::TestMetricsIntegration", "test_observability.py")
FRAISIER_TEST_COUNT = 42

CONFTEST = '''\
"""Fraisier's metrics module is fraisier_textfile's: installed before any test module imports it."""
import sys

import fraisier
import fraisier_textfile.metrics

sys.modules["fraisier.metrics"] = fraisier_textfile.metrics
fraisier.metrics = fraisier_textfile.metrics
'''


def _unavailable(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def fraisier_sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The unpacked sdist of Fraisier 0.84.2 (the folder holding its ``tests/``)."""
    configured = os.environ.get("FRAISIER_SDIST")
    if configured:
        source = Path(configured)
    else:
        download = tmp_path_factory.mktemp("sdist")
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
             "--dest", str(download), f"fraisier=={FRAISIER_VERSION}"],
            capture_output=True, text=True,
        )
        archives = list(download.glob("fraisier-*.tar.gz"))
        if result.returncode != 0 or not archives:
            _unavailable(f"cannot download Fraisier {FRAISIER_VERSION}'s sdist: {result.stderr.strip()[-300:]}; "
                         "set FRAISIER_SDIST to an unpacked copy")
        source = archives[0]
    if source.is_file():
        unpacked = tmp_path_factory.mktemp("unpacked")
        with tarfile.open(source) as archive:
            archive.extractall(unpacked, filter="data")
        [source] = [path for path in unpacked.iterdir() if path.is_dir()]
    missing = [name for name in TEST_FILES if not (source / "tests" / name).is_file()]
    if missing:
        _unavailable(f"{source} is not Fraisier's sdist: tests/{', tests/'.join(missing)} missing")
    return source


@pytest.fixture(scope="module")
def fraisier_python() -> str:
    """A Python that can import Fraisier 0.84.2 and pytest (and, through PYTHONPATH, this package)."""
    probe = (
        "import importlib.metadata, fraisier.db.observability, fraisier.deployers.api, pytest, prometheus_client, "
        f"filelock; assert importlib.metadata.version('fraisier') == {FRAISIER_VERSION!r}"
    )
    for candidate in (sys.executable, os.environ.get("FRAISIER_PYTHON")):
        if candidate and subprocess.run([candidate, "-c", probe], capture_output=True).returncode == 0:
            return candidate
    _unavailable(f"no Python here imports Fraisier {FRAISIER_VERSION} and pytest: pip install "
                 f"fraisier=={FRAISIER_VERSION} (.ci/run does), or set FRAISIER_PYTHON to a Python that has it")
    raise AssertionError("unreachable")


def run_fraisier_tests(sdist: Path, python: str, folder: Path, textfile_dir: Path) -> subprocess.CompletedProcess[str]:
    folder.mkdir()
    for name in TEST_FILES:
        shutil.copy(sdist / "tests" / name, folder / name)
    (folder / "conftest.py").write_text(CONFTEST)
    # Neither our configuration nor Fraisier's (which needs its conftest's fixtures and pytest-asyncio).
    (folder / "pytest.ini").write_text("[pytest]\nmarkers =\n    asyncio: Fraisier's async tests, not run here\n")
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), environment.get("PYTHONPATH")]))
    environment["FRAISIER_TEXTFILE_DIR"] = str(textfile_dir)
    return subprocess.run(
        [python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE", *SELECTED],
        cwd=folder, env=environment, capture_output=True, text=True, timeout=600,
    )


def test_fraisiers_metrics_tests_pass_with_our_module_and_fill_the_textfile(
    fraisier_sdist: Path, fraisier_python: str, tmp_path: Path
) -> None:
    textfile_dir = tmp_path / "textfile"
    result = run_fraisier_tests(fraisier_sdist, fraisier_python, tmp_path / "fraisier-tests", textfile_dir)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert re.fullmatch(rf"{FRAISIER_TEST_COUNT} passed in .*", summary), summary
    # Nothing of ours was logged as a problem: every value Fraisier's tests pass is recorded.
    assert "fraisier metrics:" not in result.stdout + result.stderr

    # The two deployments its tests start and never end are in flight in a process that is gone: the next
    # merge counts them crashed. The one that `record_deployment_error` ended is not among them.
    TextfileStore(textfile_dir).merge(Changes())
    text = (textfile_dir / "fraisier.prom").read_text()
    assert check_text(text, catalogue.SCHEMA) == []
    values = sample_values(text)
    recorded = {family.name for family in catalogue.FAMILIES if any(
        key.startswith(family.name) and value for key, value in values.items()
    )}
    never_recorded_by_them = {catalogue.RESTORE_DURATION.name, catalogue.ACTIVE_DEPLOYMENTS.name}
    assert recorded == {family.name for family in catalogue.FAMILIES} - never_recorded_by_them

    expected = {
        'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}': 2,
        'fraisier_deployments_total{provider="bare_metal",status="crashed",fraise_type="api"}': 2,
        'fraisier_deployment_errors_total{provider="docker_compose",error_type="timeout"}': 1,
        'fraisier_deployment_errors_total{provider="bare_metal",error_type="timeout"}': 1,
        'fraisier_rollbacks_total{provider="bare_metal",reason="health_check"}': 1,
        'fraisier_rollbacks_total{provider="docker_compose",reason="health_check"}': 1,
        'fraisier_health_checks_total{provider="bare_metal",check_type="http",status="pass"}': 2,
        'fraisier_health_check_duration_seconds_bucket{provider="bare_metal",check_type="http",le="0.5"}': 2,
        'fraisier_provider_availability{provider="bare_metal"}': 1,
        'fraisier_provider_availability{provider="docker_compose"}': 0,
        'fraisier_deployment_lock_wait_seconds{service="my_api",provider="bare_metal"}': 2.5,
        'fraisier_db_queries_total{database_type="sqlite",operation="select",status="success"}': 3,
        'fraisier_query_latency_seconds_count{database_type="sqlite",operation="select"}': 3,
        'fraisier_db_errors_total{database_type="postgresql",error_type="connection"}': 1,
        'fraisier_db_errors_total{database_type="postgresql",error_type="timeout"}': 1,
        'fraisier_db_errors_total{database_type="sqlite",error_type="timeout"}': 1,
        'fraisier_db_transaction_duration_seconds_sum{database_type="sqlite"}': 0.5,
        'fraisier_db_transaction_duration_seconds_sum{database_type="mysql"}': 1.2,
        'fraisier_deployment_db_operations_total{database_type="sqlite",operation_type="record_start"}': 1,
        'fraisier_deployment_db_operations_total{database_type="sqlite",operation_type="record_deployment"}': 1,
        'fraisier_active_db_connections{database_type="sqlite"}': 5,
        'fraisier_idle_db_connections{database_type="sqlite"}': 3,
        'fraisier_db_pool_waiting_requests{database_type="postgresql"}': 2,
        'fraisier_active_deployments{provider="bare_metal"}': 0,
    }
    assert {key: values.get(key) for key in expected} == expected
