"""What each event records (changes.py), seen in the file real processes write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fraisier_textfile.store.markers import MARKER_DIRECTORY

from .processes import fraisier
from .values import sample_values

CRASHED = 'fraisier_deployments_total{provider="bare_metal",status="crashed",fraise_type="api"}'
CRASHED_AT = 'fraisier_last_deployment_timestamp_seconds{provider="bare_metal",fraise_type="api",status="crashed"}'


def test_a_crashed_deployment_carries_the_time_its_crash_was_found(tmp_path: Path) -> None:
    """A crash is a finished deployment: like every other, it sets the last-deployment time of its status, so
    that an alert on that time fires even when Prometheus first sees the crashed counter already at 1."""
    environment = {**os.environ, "FRAISIER_TEXTFILE_DIR": str(tmp_path)}
    wrapper = subprocess.Popen(
        [sys.executable, "-m", "fraisier_textfile", "exec", "--provider", "bare_metal", "--fraise-type", "api",
         "--", "sleep", "300"],
        env=environment,
    )
    try:
        markers = tmp_path / MARKER_DIRECTORY
        deadline = time.monotonic() + 60
        while not (markers.is_dir() and any(markers.iterdir())):
            assert wrapper.poll() is None and time.monotonic() < deadline, "no in-flight marker"
            time.sleep(0.05)
        before = time.time()
        wrapper.send_signal(signal.SIGKILL)
        wrapper.wait(timeout=60)
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
            wrapper.wait()
    fraisier("textfile", "refresh", textfile_dir=tmp_path, check=True)
    after = time.time()

    values = sample_values(tmp_path / "fraisier.prom")
    assert values[CRASHED] == 1
    assert before <= values[CRASHED_AT] <= after
    # A second merge counts the crash once and does not move its time.
    fraisier("textfile", "refresh", textfile_dir=tmp_path, check=True)
    again = sample_values(tmp_path / "fraisier.prom")
    assert again[CRASHED] == 1 and again[CRASHED_AT] == values[CRASHED_AT]
