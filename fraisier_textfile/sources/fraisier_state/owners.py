"""Whether the process running a deployment Fraisier has in progress still lives.

Fraisier writes a row ``in_progress`` when a deployment starts and completes it when it ends; a deployer killed
in between leaves it so for ever. Its status file (one JSON per fraise: ``state``, ``owner_pid``,
``owner_boot_id``) names the owner. A deployment is taken as crashed only when that is provable (started before
this boot, superseded by a later deployment of its fraise and environment, its status file ``interrupted`` or
naming an owner that is gone), never by guesswork: until then it counts as running.
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path
from typing import Any

from .files import read_regular_file
from .labels import FraiseLabels
from .vocabulary import timestamp

STATUS_DIR_ENVIRONMENT = "FRAISIER_STATUS_DIR"
DEFAULT_STATUS_DIR = Path("/var/lib/fraisier/status")  # Fraisier's fraisier.status.DEFAULT_STATUS_DIR


class Owners:
    """The owners of Fraisier's deployments in progress, by their status files.

    ``status_dir``: where the status files are (default FRAISIER_STATUS_DIR, else a fraise environment's
    ``status_dir:`` in fraises.yaml, else /var/lib/fraisier/status)."""

    def __init__(self, status_dir: Path | str | None, labels: FraiseLabels) -> None:
        status_setting = os.environ.get(STATUS_DIR_ENVIRONMENT) if status_dir is None else str(status_dir)
        self.status_dir = Path(status_setting) if status_setting else None
        self.labels = labels

    def crashed(self, connection: sqlite3.Connection, pk: int, fraise: object, environment: object,
                started_at: object) -> bool:
        """Provably dead: started before this boot; or a later deployment of the same fraise and environment
        exists (Fraisier's per-fraise lock lets one run at a time: asked of the database only for the newest
        row of each pair, the others are known superseded); or its status file says ``interrupted``, or names
        an owner that is gone (another boot id, no such pid)."""
        started = timestamp(started_at)
        booted = boot_time()
        if started is not None and booted is not None and started < booted:
            return True
        later = connection.execute(
            "SELECT 1 FROM tb_deployment WHERE pk_deployment > ? AND fraise_name = ? AND environment_name = ? "
            "LIMIT 1", (pk, fraise, environment)).fetchone()
        if later is not None:
            return True
        return self.gone(str(fraise), str(environment))

    def gone(self, fraise: str, environment: str) -> bool:
        """Whether the status file of ``fraise`` proves the owner of its deployment in ``environment`` gone."""
        status = self.status_file(fraise, environment)
        if status is None:
            return False  # nothing proves it: a deployment is never counted crashed by guesswork
        if status.get("environment") not in (None, environment):
            return False
        if status.get("state") == "interrupted":
            return True
        boot, pid = status.get("owner_boot_id"), status.get("owner_pid")
        current_boot = boot_id()
        if isinstance(boot, str) and boot and current_boot and boot != current_boot:
            return True
        return isinstance(pid, int) and pid > 0 and not pid_alive(pid)

    def status_file(self, fraise: str, environment: str) -> dict[str, Any] | None:
        """The status file of ``fraise`` (a dict), or None: none, unreadable, or not a JSON object."""
        import json

        directory = self.status_dir or self.labels.status_dir(fraise, environment) or DEFAULT_STATUS_DIR
        if not re.fullmatch(r"[A-Za-z0-9_-]+", fraise):
            return None
        try:
            data = json.loads(read_regular_file(directory / f"{fraise}.status.json"))
        except (OSError, ValueError, RecursionError):
            return None
        return data if isinstance(data, dict) else None


def boot_time() -> float | None:
    """When this host booted (Unix seconds), or None where /proc does not say."""
    try:
        with open("/proc/stat", encoding="ascii") as file:
            for line in file:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def boot_id() -> str | None:
    """This boot's id, as Fraisier writes it in ``owner_boot_id``."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as file:
            return file.read().strip() or None
    except OSError:
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OverflowError:
        # Beyond a pid_t (a status file's owner_pid is any JSON number its writer chose): no process has it,
        # as ESRCH says of an unused smaller one. Raised, it would fail the whole merge and every scrape.
        return False
    except OSError:  # it exists (another user's)
        return True
    return True
