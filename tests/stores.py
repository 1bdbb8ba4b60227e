"""Stores for the tests: merging one event, and stores whose clock is set back, so that files carry series with
update times in the past (through the same update-time lines every merge writes)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from fraisier_textfile import TextfileStore
from fraisier_textfile import changes as events
from fraisier_textfile.changes import Changes

DAY = 86400.0


def record(store: TextfileStore, event: object, *arguments: object) -> None:
    changes = Changes()
    event(changes, *arguments)  # type: ignore[operator]
    store.merge(changes)


def store_at(directory: Path, now: float) -> TextfileStore:
    store = TextfileStore(directory)
    store.lifecycle.clock = lambda: now
    return store


def directory_state(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


def two_providers(directory: Path) -> None:
    """bare_metal/api recorded now, docker_compose/old_etl 40 days ago; errors and a health check for both."""
    old = store_at(directory, time.time() - 40 * DAY)
    record(old, events.deployment_complete, "docker_compose", "old_etl", "success", 12.0)
    record(old, events.deployment_error, "docker_compose", "timeout")
    record(old, events.health_check, "docker_compose", "tcp", "pass", 0.3)
    new = TextfileStore(directory)
    record(new, events.deployment_complete, "bare_metal", "api", "failed", 30.0)
    record(new, events.deployment_error, "bare_metal", "timeout")
    record(new, events.health_check, "bare_metal", "http", "fail", 2.0)


def series_with(path: Path, text: str) -> list[str]:
    return [line for line in path.read_text().splitlines() if text in line and not line.startswith("#")]


def handovers_left(textfile_dir: Path) -> list[str]:
    """The files in the hand-over directory but its counter (handovers.SEQUENCE_FILE), which stays, the spent
    hand-overs kept for their writers to take back (store/handover_reuse.py), and the memories of those left for
    another merger (store/handover_left.py), which are no hand-overs."""
    from fraisier_textfile.store import handover_reuse, handovers

    return sorted(name for name in os.listdir(textfile_dir / handovers.HANDOVER_DIRECTORY)
                  if name != handovers.SEQUENCE_FILE and not name.endswith(handover_reuse.SUFFIX)
                  and ".left-v" not in name)
