"""Modes whatever the umask and whoever comes first: every directory and file the store creates gets its
documented mode under umask 077, whichever entry point creates the textfile directory, and node_exporter's
user (a real second user) can read the file."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fraisier_textfile.store.handovers import HANDOVER_DIRECTORY, SEQUENCE_FILE
from fraisier_textfile.store.markers import MARKER_DIRECTORY

from .processes import binary

API = """
from fraisier_textfile import get_metrics_recorder
get_metrics_recorder().record_deployment_error("bare_metal", "timeout")
"""
TRACK = """
from fraisier_textfile import get_metrics_recorder
with get_metrics_recorder().track_deployment("bare_metal", "api"):
    pass
"""
HAND_OVER = """
import os
from fraisier_textfile import changes as events
from fraisier_textfile.changes import Changes
from fraisier_textfile import TextfileStore
changes = Changes()
events.deployment_error(changes, "bare_metal", "timeout")
TextfileStore(os.environ["FRAISIER_TEXTFILE_DIR"]).hand_over(changes)
"""
MARKER_FIRST = """
import os
from pathlib import Path
from fraisier_textfile.store import markers as marker_files
marker_files.create_marker(Path(os.environ["FRAISIER_TEXTFILE_DIR"]), "bare_metal", "api")
os._exit(0)  # a deployment that dies before anything else: only its marker was written
"""
ENTRY_POINTS = {
    "api": [sys.executable, "-c", API],
    "track_deployment": [sys.executable, "-c", TRACK],
    "record": [sys.executable, "-m", "fraisier_textfile", "record", "error", "--provider", "bare_metal",
               "--error-type", "timeout"],
    "exec": [sys.executable, "-m", "fraisier_textfile", "exec", "--provider", "bare_metal", "--fraise-type", "api",
             "--", "true"],
    "hand-over": [sys.executable, "-c", HAND_OVER],
    "marker": [sys.executable, "-c", MARKER_FIRST],
}
DIRECTORY_MODES = {"": 0o755, MARKER_DIRECTORY: 0o775, HANDOVER_DIRECTORY: 0o775}
FILE_MODES = {"fraisier.prom": 0o644, "fraisier.prom.lock": 0o664, SEQUENCE_FILE: 0o664}


def under_umask_077(command: list[str], textfile_dir: Path) -> None:
    environment = dict(os.environ, FRAISIER_TEXTFILE_DIR=str(textfile_dir))
    result = subprocess.run(["sh", "-c", 'umask 077 && exec "$@"', "sh", *command], env=environment,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def modes(textfile_dir: Path) -> dict[str, int]:
    """The mode of every directory and file under the textfile directory, by path relative to it."""
    found = {}
    for directory, _subdirectories, files in os.walk(textfile_dir):
        relative = os.path.relpath(directory, textfile_dir)
        found["" if relative == "." else relative] = stat.S_IMODE(os.stat(directory).st_mode)
        for name in files:
            path = os.path.join(directory, name)
            found[os.path.relpath(path, textfile_dir)] = stat.S_IMODE(os.lstat(path).st_mode)
    return found


def expected(found: dict[str, int]) -> dict[str, int]:
    """The documented mode of each path found: markers and hand-overs 0644, the rest as listed."""
    wanted = {}
    for path in found:
        if path in DIRECTORY_MODES:
            wanted[path] = DIRECTORY_MODES[path]
        elif path in FILE_MODES:
            wanted[path] = FILE_MODES[path]
        elif os.path.basename(path) in FILE_MODES:
            wanted[path] = FILE_MODES[os.path.basename(path)]
        else:
            wanted[path] = 0o644
    return wanted


@pytest.mark.parametrize("entry_point", list(ENTRY_POINTS))
def test_whichever_entry_point_comes_first_under_umask_077_everything_gets_its_documented_mode(
    tmp_path: Path, entry_point: str
) -> None:
    """Bug: under umask 077 a textfile directory first created by `fraisier exec` or `track_deployment` (a
    marker first) stayed 0700, so node_exporter's user could never read fraisier.prom."""
    textfile_dir = tmp_path / "state" / "fraisier" / "textfile"
    under_umask_077(ENTRY_POINTS[entry_point], textfile_dir)
    under_umask_077([sys.executable, "-m", "fraisier_textfile", "textfile", "refresh"], textfile_dir)
    found = modes(textfile_dir)
    assert "fraisier.prom" in found
    assert found == expected(found)
    for parent in (tmp_path / "state", tmp_path / "state" / "fraisier"):
        assert stat.S_IMODE(parent.stat().st_mode) == 0o755, parent


def test_node_exporters_user_reads_the_file_a_umask_077_deployment_created(request: pytest.FixtureRequest) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a command as node_exporter's user")
    reachable = Path(tempfile.mkdtemp(prefix="modes-", dir="/tmp"))  # pytest's own tmp is 0700
    os.chmod(reachable, 0o755)
    request.addfinalizer(lambda: shutil.rmtree(reachable, ignore_errors=True))
    textfile_dir = reachable / "state" / "fraisier" / "textfile"
    under_umask_077(ENTRY_POINTS["exec"], textfile_dir)
    under_umask_077([sys.executable, "-m", "fraisier_textfile", "textfile", "refresh"], textfile_dir)
    read = subprocess.run(
        [binary("setpriv"), "--reuid=prometheus", "--regid=prometheus", "--clear-groups", "cat",
         str(textfile_dir / "fraisier.prom")],
        capture_output=True, text=True, timeout=60,
    )
    assert read.returncode == 0, read.stderr
    assert 'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"} 1' in read.stdout
