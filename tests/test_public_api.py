"""The names and import paths users and Fraisier use keep working, whatever the package's layout inside."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import fraisier_textfile

PUBLIC_PATHS = {
    "fraisier_textfile": [
        "MetricsRecorder", "get_metrics_recorder", "DeploymentMetrics", "Outcome", "MetricsServer", "TextfileStore",
        "Changes", "Family", "FAMILIES", "DEPLOYMENT_STATUSES", "HEALTH_CHECK_STATUSES", "default_textfile_directory",
        "FraisierTextfileError", "TextfileError", "CorruptTextfileError", "TextfileWriteError", "UnexpectedFileError",
        "LockTimeoutError", "InvalidValueError", "ServerStartError", "WebConfigError", "__version__",
    ],
    # Fraisier's own module, name for name: a Fraisier host changes one import.
    "fraisier_textfile.metrics": [
        "PROMETHEUS_AVAILABLE", "MetricsRecorder", "DeploymentMetrics", "get_metrics_recorder", "_metrics_recorder",
        "Counter", "Gauge", "Histogram",
    ],
    "fraisier_textfile.bridge": ["install"],
    "fraisier_textfile.errors": [
        "FraisierTextfileError", "TextfileError", "CorruptTextfileError", "TextfileWriteError",
        "UnexpectedFileError", "LockTimeoutError", "InvalidValueError", "ServerStartError", "WebConfigError",
    ],
    "fraisier_textfile.catalogue": ["FAMILIES", "FAMILIES_BY_NAME", "Family", "Kind", "SCHEMA", "check_label_value"],
    # The console scripts' entry points (pyproject's [project.scripts]).
    "fraisier_textfile.cli": ["main"],
    "fraisier_textfile.cli.dispatch": ["main"],
}


@pytest.mark.parametrize(("module", "names"), PUBLIC_PATHS.items(), ids=list(PUBLIC_PATHS))
def test_every_public_name_is_where_users_import_it_from(module: str, names: list[str]) -> None:
    imported = importlib.import_module(module)
    missing = [name for name in names if not hasattr(imported, name)]
    assert not missing, f"{module} lost {missing}"


def test_the_package_face_lists_exactly_what_it_exports() -> None:
    for name in fraisier_textfile.__all__:
        assert hasattr(fraisier_textfile, name), name
    assert fraisier_textfile.MetricsRecorder is importlib.import_module("fraisier_textfile.metrics").MetricsRecorder


def test_the_errors_are_one_hierarchy_that_callers_can_catch_whole() -> None:
    errors = importlib.import_module("fraisier_textfile.errors")
    for name in PUBLIC_PATHS["fraisier_textfile.errors"][1:]:
        assert issubclass(getattr(errors, name), errors.FraisierTextfileError), name


def test_python_dash_m_runs_the_cli_and_the_bridge() -> None:
    for module in ("fraisier_textfile", "fraisier_textfile.bridge"):
        shown = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, (module, shown.stderr)
        assert "Usage" in shown.stdout or "usage" in shown.stdout.lower()


def test_the_format_and_store_layers_import_no_upper_layer() -> None:
    """Data flows one way: format/ imports nothing of ours but itself, store/ never imports recorder/, serve/ or
    cli/. Checked in a fresh interpreter, by what each module really imports."""
    script = (
        "import sys, importlib\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('fraisier_textfile'))))\n"
    )
    layers = {
        "fraisier_textfile.format.reader": ("recorder", "serve", "cli", "store", "sources"),
        "fraisier_textfile.format.check": ("recorder", "serve", "cli", "store", "sources"),
        "fraisier_textfile.store.textfile": ("recorder", "serve", "cli", "sources"),
    }
    for module, forbidden in layers.items():
        loaded = subprocess.run([sys.executable, "-c", script, module], capture_output=True, text=True, timeout=60)
        assert loaded.returncode == 0, loaded.stderr
        upper = [m for m in loaded.stdout.split() if m.split(".")[1:2] and m.split(".")[1] in forbidden]
        assert not upper, f"{module} pulls in {upper}"
