"""The names and import paths users and Fraisier use keep working, whatever the package's layout inside."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

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


def test_the_public_store_is_fraisiers_and_the_store_itself_takes_its_schema_as_data(tmp_path: Path) -> None:
    from fraisier_textfile import catalogue, changes
    from fraisier_textfile.store import textfile

    store = fraisier_textfile.TextfileStore(tmp_path)
    assert isinstance(store, textfile.TextfileStore)
    assert store.schema is catalogue.SCHEMA and store.marker_rules is changes.MARKER_RULES
    with pytest.raises(TypeError, match="schema"):
        textfile.TextfileStore(tmp_path)  # type: ignore[call-arg]


def test_the_errors_are_one_hierarchy_that_callers_can_catch_whole() -> None:
    errors = importlib.import_module("fraisier_textfile.errors")
    for name in PUBLIC_PATHS["fraisier_textfile.errors"][1:]:
        assert issubclass(getattr(errors, name), errors.FraisierTextfileError), name


def test_python_dash_m_runs_the_cli_and_the_bridge() -> None:
    for module in ("fraisier_textfile", "fraisier_textfile.bridge"):
        shown = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, (module, shown.stderr)
        assert "Usage" in shown.stdout or "usage" in shown.stdout.lower()


LOWER_LAYERS = {
    # format/ imports nothing of ours but itself (and the package's face: errors, validate); store/ nothing of the
    # layers above it, nor Fraisier's catalogue or events (the schema and the markers' rules are handed to it).
    "format": ("recorder", "serve", "cli", "store", "sources", "changes", "bridge", "metrics", "catalogue",
               "fraisier_store"),
    "store": ("recorder", "serve", "cli", "sources", "changes", "bridge", "metrics", "catalogue", "fraisier_store"),
}


def lower_layer_modules() -> list[str]:
    package = Path(fraisier_textfile.__file__).parent
    return [
        f"fraisier_textfile.{layer}.{path.stem}"
        for layer in LOWER_LAYERS for path in sorted((package / layer).glob("*.py")) if path.stem != "__init__"
    ]


def imports_anywhere(module: str) -> set[str]:
    """Every module a module's own code may import: its top-level statements and those inside functions
    (loaded on first use), but not those under ``if TYPE_CHECKING`` (never run)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text())
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for statement in node.orelse:
                visit(statement)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def test_every_format_and_store_module_has_its_test_module() -> None:
    """Tests mirror modules: store/x.py and format/x.py are tested in tests/test_x.py."""
    tests = Path(__file__).parent
    missing = [module for module in lower_layer_modules()
               if not (tests / f"test_{module.rsplit('.', 1)[1]}.py").exists()]
    assert not missing, f"no test module for {missing}"


@pytest.mark.parametrize("module", lower_layer_modules())
def test_the_format_and_store_layers_import_no_upper_layer(module: str) -> None:
    """Data flows one way (see LOWER_LAYERS). Checked in a fresh interpreter, by what each module really loads,
    and by its own import statements anywhere in it (one inside a function is loaded on first use only)."""
    script = (
        "import sys, importlib\n"
        "importlib.import_module(sys.argv[1])\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('fraisier_textfile'))))\n"
    )
    forbidden = LOWER_LAYERS[module.split(".")[1]]
    loaded = subprocess.run([sys.executable, "-c", script, module], capture_output=True, text=True, timeout=60)
    assert loaded.returncode == 0, loaded.stderr
    upper = [m for m in loaded.stdout.split() if m.split(".")[1:2] and m.split(".")[1] in forbidden]
    assert not upper, f"{module} pulls in {upper}"
    imported = [name for name in imports_anywhere(module)
                if name.startswith("fraisier_textfile.") and name.split(".")[1] in forbidden]
    assert not imported, f"{module} imports {imported}"
