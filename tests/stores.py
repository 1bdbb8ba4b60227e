"""Stores for the tests: merging one event, and stores whose clock is set back, so that files carry series with
update times in the past (through the same update-time lines every merge writes)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


class ListingOrder:
    """What merges do, in order, to the files one list of the textfile's bookkeeping lines accounts for (``key``:
    ``applied-handovers``, ``retired-markers``), in ``directory``: ``("sync", "")`` an fsync of that directory,
    ``("removed", id)`` a file named ``<id><suffix>`` deleted or renamed away, ``("listed", words)`` the list in a
    new version of ``textfile`` (a file name) as it is renamed into place. Recorded by wrapping os's functions,
    which still do what they do, until ``monkeypatch.undo()``."""

    def __init__(self, monkeypatch: Any, directory: Path, textfile: str, key: str, suffix: str = "") -> None:
        self.steps: list[tuple[str, str]] = []
        watched = os.stat(directory)
        fsync, unlink, rename, replace = os.fsync, os.unlink, os.rename, os.replace

        def inside(descriptor: int | None) -> bool:
            return descriptor is not None and os.path.samestat(os.fstat(descriptor), watched)

        def removed(name: str, descriptor: int | None) -> None:
            if inside(descriptor) and name.endswith(suffix) and not name.startswith("."):
                self.steps.append(("removed", name[: len(name) - len(suffix)]))

        def noting_fsync(descriptor: int) -> None:
            synced = inside(descriptor)
            fsync(descriptor)
            if synced:
                self.steps.append(("sync", ""))

        def noting_unlink(path: str, *, dir_fd: int | None = None) -> None:
            unlink(path, dir_fd=dir_fd)
            removed(path, dir_fd)

        def noting(move: Callable[..., None]) -> Callable[..., None]:
            def moved(source: str, destination: str, *, src_dir_fd: int | None = None,
                      dst_dir_fd: int | None = None) -> None:
                listed = None
                if destination == textfile:
                    content = Path(source if src_dir_fd is None else f"/proc/self/fd/{src_dir_fd}/{source}")
                    listed = " ".join(line.split(":", 1)[1] for line in content.read_text().splitlines()
                                      if line.startswith(f"# fraisier_textfile {key}:"))
                move(source, destination, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
                removed(source, src_dir_fd)
                if listed is not None:
                    self.steps.append(("listed", listed))

            return moved

        monkeypatch.setattr(os, "fsync", noting_fsync)
        monkeypatch.setattr(os, "unlink", noting_unlink)
        monkeypatch.setattr(os, "rename", noting(rename))
        monkeypatch.setattr(os, "replace", noting(replace))
