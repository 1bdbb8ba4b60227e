"""``fraisier exec`` and the textfile's lock: the deployment never waits long for metrics, and its record is
handed over, never lost, when another process holds the lock."""

from __future__ import annotations

import sys
from pathlib import Path

from fraisier_textfile.changes import Changes
from fraisier_textfile.store.inflight import MARKER_DIRECTORY
from fraisier_textfile.store.textfile import TextfileStore

from .processes import fraisier, lock_held_elsewhere
from .values import sample_values


def test_exec_under_a_held_lock_runs_the_command_and_hands_its_record_over(textfile_dir: Path) -> None:
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    with lock_held_elsewhere(store.lock_path):
        result = fraisier(
            "--lock-timeout", "0.5", "exec", "--provider", "bare_metal", "--fraise-type", "api", "--",
            sys.executable, "-c", "print('deployed')", textfile_dir=textfile_dir,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == "deployed\n"
        assert result.stderr == ""  # a hand-over is not a failure: nothing to warn about
        assert "fraisier_deployments_total" not in store.path.read_text()
    store.merge(Changes())
    values = sample_values(store.path)
    assert values['fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'] == 1
    assert values['fraisier_deployments_total{provider="bare_metal",status="crashed",fraise_type="api"}'] == 0
    assert values['fraisier_active_deployments{provider="bare_metal"}'] == 0
    assert not list((textfile_dir / MARKER_DIRECTORY).iterdir())
