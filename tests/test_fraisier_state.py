"""The Fraisier state source: deployments written by Fraisier 0.84.2's own code (its database API, its status
files, its reconcile), in processes of their own, read into the textfile exactly once."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fraisier_textfile import TextfileStore
from fraisier_textfile.changes import Changes
from fraisier_textfile.sources import fraisier_state
from fraisier_textfile.sources.fraisier_state import META_KEY, FraisierStateSource, error_type, participants

from .processes import copied_as_built, opens_of
from .values import sample_values

WORKERS = Path(__file__).with_name("fraisier_state_workers.py")
REPOSITORY = Path(__file__).resolve().parent.parent

CONFIG = """\
name: shop
fraises:
  api:
    type: api
    environments:
      production: {app_path: /srv/api, health_check: {url: "http://localhost:1/health"}}
  etl:
    type: etl
    environments:
      production: {app_path: /srv/etl}
  web:
    type: docker_compose
    environments:
      production: {compose_file: /srv/web/compose.yml}
  secrets:
    type: api
    webhook_secret: !envvar NOT_SET_ANYWHERE
"""


def deployments(provider: str, status: str, fraise_type: str) -> str:
    return f'fraisier_deployments_total{{provider="{provider}",status="{status}",fraise_type="{fraise_type}"}}'


def errors(provider: str, error: str) -> str:
    return f'fraisier_deployment_errors_total{{provider="{provider}",error_type="{error}"}}'


def rollbacks(provider: str, reason: str) -> str:
    return f'fraisier_rollbacks_total{{provider="{provider}",reason="{reason}"}}'


ACTIVE = 'fraisier_active_deployments{provider="bare_metal"}'
API_SUCCESS = deployments("bare_metal", "success", "api")
API_FAILED = deployments("bare_metal", "failed", "api")
API_ROLLED_BACK = deployments("bare_metal", "rolled_back", "api")
API_CRASHED = deployments("bare_metal", "crashed", "api")


class Fraisier:
    """Fraisier's database API, status files and reconcile, run by Fraisier's code in a process of its own."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.database = root / "fraisier.db"
        self.config = root / "fraises.yaml"
        self.status_dir = root / "status"
        root.mkdir(exist_ok=True)
        if not self.config.exists():
            self.config.write_text(CONFIG)
        self.environment = {**os.environ, "FRAISIER_DB_PATH": str(self.database),
                            "FRAISIER_CONFIG": str(self.config), "FRAISIER_STATUS_DIR": str(self.status_dir),
                            "FRAISIER_TEXTFILE_FRAISIER_STATE": "on",
                            "PYTHONPATH": str(REPOSITORY)}
        # Its errors go to a file, so that a worker that died says why in the failure of the next call.
        self.errors = tempfile.TemporaryFile("w+")  # noqa: SIM115  (closed in close(), with the worker)
        self.process = subprocess.Popen(
            [sys.executable, str(WORKERS), "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=self.environment, stderr=self.errors,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline() != "ready\n":
            self.errors.seek(0)
            raise AssertionError(f"Fraisier's worker did not start: {self.errors.read()}")

    def call(self, op: str, **arguments: object) -> object:
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            line = ""
        else:
            line = self.process.stdout.readline()
        if not line:
            self.errors.seek(0)
            raise AssertionError(f"Fraisier's worker exited ({self.process.wait(timeout=10)}): {self.errors.read()}")
        return json.loads(line)

    def start(self, fraise: str = "api", environment: str = "production") -> int:
        pk = self.call("start", fraise=fraise, environment=environment)
        assert isinstance(pk, int)
        return pk

    def complete(self, pk: int, success: bool, error: str | None = None) -> None:
        self.call("complete", pk=pk, success=success, error=error)

    def deploy(self, fraise: str = "api", outcome: str = "success",
               error: str = "Health check failed after deployment") -> int:
        """One deployment as Fraisier's deployer writes it (a rolled-back one: completed failed, then marked)."""
        pk = self.start(fraise)
        self.complete(pk, outcome == "success", None if outcome == "success" else error)
        if outcome == "rolled_back":
            self.call("rolled_back", pk=pk)
        return pk

    def status(self, fraise: str, state: str, **owner: object) -> None:
        self.call("status", fraise=fraise, state=state, status_dir=str(self.status_dir), **owner)

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait(timeout=30)
        self.errors.close()

    def __enter__(self) -> Fraisier:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()


def refresh(textfile_dir: Path, **options: object) -> dict[str, float]:
    """What one ``fraisier textfile refresh`` does: a new process's store, merging nothing but the sources."""
    store = TextfileStore(textfile_dir, participants=participants(**options))  # type: ignore[arg-type]
    store.merge(Changes())
    return sample_values(store.path)


def test_each_deployment_fraisier_finished_is_counted_once_with_its_fraise_type_provider_and_error(
    fraisier: Fraisier, textfile_dir: Path
) -> None:
    fraisier.deploy("api", "success")
    fraisier.deploy("api", "failed", "Install command failed (exit code 3): uv sync")
    fraisier.deploy("api", "rolled_back")
    fraisier.deploy("etl", "failed", "Command '['python', 'etl.py']' returned non-zero exit status 1.")
    fraisier.deploy("web", "success")
    values = refresh(textfile_dir)
    assert values[API_SUCCESS] == 1
    assert values[API_FAILED] == 1
    assert values[API_ROLLED_BACK] == 1
    assert values[deployments("bare_metal", "failed", "etl")] == 1
    assert values[deployments("docker_compose", "success", "docker_compose")] == 1
    assert values[errors("bare_metal", "install")] == 1
    assert values[errors("bare_metal", "health_check")] == 1
    assert values[errors("bare_metal", "command")] == 1
    assert values[rollbacks("bare_metal", "health_check")] == 1
    assert values['fraisier_deployment_duration_seconds_count{provider="bare_metal",status="success"}'] == 1
    # Counted once: the next refreshes find nothing new.
    assert refresh(textfile_dir) == values
    assert refresh(textfile_dir) == values
    # Read-only: with Fraisier's connections closed, reading left nothing in its directory (no -wal, no -shm).
    assert sorted(p.name for p in fraisier.root.iterdir() if p.name.startswith("fraisier.db")) == ["fraisier.db"]


def test_the_last_deployment_time_is_fraisiers_completed_at_read_in_local_time(
    fraisier: Fraisier, textfile_dir: Path
) -> None:
    before = time.time()
    fraisier.deploy("api", "success")
    after = time.time()
    stamp = refresh(textfile_dir)[
        'fraisier_last_deployment_timestamp_seconds{provider="bare_metal",fraise_type="api",status="success"}']
    assert before - 1 <= stamp <= after + 1


def test_a_rollback_long_after_the_deployment_adds_only_the_rollback(fraisier: Fraisier, textfile_dir: Path) -> None:
    pk = fraisier.deploy("api", "failed", "Health check failed after deployment")
    fraisier.deploy("api", "success")
    first = refresh(textfile_dir)
    assert first[API_FAILED] == 1 and first.get(rollbacks("bare_metal", "health_check"), 0) == 0
    fraisier.deploy("etl", "success")
    fraisier.call("rolled_back", pk=pk)
    fraisier.deploy("etl", "success")
    later = refresh(textfile_dir)
    assert later[rollbacks("bare_metal", "health_check")] == 1
    assert later[API_FAILED] == 1 and later.get(API_ROLLED_BACK, 0) == 0  # the deployment is not counted again
    assert later[deployments("bare_metal", "success", "etl")] == 2
    assert refresh(textfile_dir) == later


def test_a_deployment_in_progress_is_active_while_its_owner_lives_then_counted_when_it_ends(
    fraisier: Fraisier, textfile_dir: Path
) -> None:
    fraisier.status("api", "deploying")  # the worker's own pid: alive
    pk = fraisier.start("api")
    assert refresh(textfile_dir)[ACTIVE] == 1
    fraisier.status("api", "success")
    fraisier.complete(pk, True)
    values = refresh(textfile_dir)
    assert values[ACTIVE] == 0
    assert values[API_SUCCESS] == 1
    assert values.get(API_CRASHED, 0) == 0


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_deployment_whose_owner_died_is_crashed_once_and_reconcile_interrupted_is_crashed_too(
    fraisier: Fraisier, textfile_dir: Path
) -> None:
    fraisier.status("api", "deploying", owner_pid=dead_pid())
    fraisier.start("api")
    values = refresh(textfile_dir)
    assert values[API_CRASHED] == 1 and values[ACTIVE] == 0
    assert refresh(textfile_dir)[API_CRASHED] == 1
    # Fraisier's reconcile marks it interrupted: still the same one crash.
    assert fraisier.call("reconcile", status_dir=str(fraisier.status_dir)) == ["api"]
    assert refresh(textfile_dir)[API_CRASHED] == 1
    # The etl fraise: its status file says interrupted (written by reconcile after its owner died).
    fraisier.status("etl", "deploying", owner_pid=dead_pid())
    fraisier.start("etl")
    fraisier.call("reconcile", status_dir=str(fraisier.status_dir))
    assert refresh(textfile_dir)[deployments("bare_metal", "crashed", "etl")] == 1


@pytest.mark.parametrize("pid", [2**31, 2**63, 2**64, 10**40])
def test_a_status_file_naming_a_pid_no_process_can_have_counts_a_crash_and_never_fails_the_merge(
    fraisier: Fraisier, textfile_dir: Path, pid: int
) -> None:
    # Fraisier writes its own pid; anyone who may write the status directory can write any JSON number, and
    # os.kill refuses one beyond a C long (OverflowError) where a smaller unused one is ESRCH.
    fraisier.status("api", "deploying", owner_pid=pid)
    fraisier.start("api")
    source = FraisierStateSource()
    store = TextfileStore(textfile_dir, participants=[source])
    store.merge(Changes())
    values = sample_values(store.path)
    assert values[API_CRASHED] == 1 and values[ACTIVE] == 0
    # The scrape's questions too (a server asks them before every merge).
    assert source.has_news() in (True, False)
    assert source.active_deployments() == {}


def test_a_row_left_in_progress_is_crashed_once_a_later_deployment_of_its_fraise_exists(
    fraisier: Fraisier, textfile_dir: Path
) -> None:
    fraisier.start("api")  # no status file: nothing proves its owner dead yet
    assert refresh(textfile_dir)[ACTIVE] == 1
    fraisier.deploy("api", "success")
    values = refresh(textfile_dir)
    assert values[API_CRASHED] == 1 and values[API_SUCCESS] == 1 and values[ACTIVE] == 0


def test_a_fraise_removed_from_the_configuration_still_counts_as_unknown(
    fraisier: Fraisier, textfile_dir: Path
) -> None:
    fraisier.deploy("api", "success")
    refresh(textfile_dir)
    fraisier.config.write_text(CONFIG.replace("  api:\n    type: api\n", "  gone:\n    type: api\n"))
    fraisier.deploy("api", "success")
    values = refresh(textfile_dir)
    assert values[API_SUCCESS] == 1
    assert values[deployments("bare_metal", "success", "unknown")] == 1


def backup_of(database: Path, backup: Path) -> Path:
    """``backup``: ``database`` as it is now, by SQLite's online backup, whole in its one file (its connections
    closed: no -wal beside it)."""
    source, target = sqlite3.connect(database), sqlite3.connect(backup)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()
    return backup


def test_a_database_restored_from_an_older_backup_is_noticed_and_never_counted_twice(
    fraisier: Fraisier, textfile_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fraisier.deploy("api", "success")
    backup = backup_of(fraisier.database, fraisier.root / "backup.db")
    fraisier.deploy("api", "success")
    fraisier.deploy("api", "success")
    assert refresh(textfile_dir)[API_SUCCESS] == 3
    fraisier.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{fraisier.database}{suffix}").unlink(missing_ok=True)
    backup.rename(fraisier.database)  # the operator restores last night's backup
    with caplog.at_level(logging.WARNING):
        assert refresh(textfile_dir)[API_SUCCESS] == 3
    assert sum("replaced or restored" in record.getMessage() for record in caplog.records) == 1
    # Fraisier goes on from the backup's ids: its new deployments count.
    with Fraisier(fraisier.root) as again:
        again.deploy("api", "success")
        assert refresh(textfile_dir)[API_SUCCESS] == 4


def test_a_database_restored_from_a_backup_then_put_back_counts_nothing_twice(
    fraisier: Fraisier, textfile_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The operator restores last night's backup, sees it is the wrong one and puts the current database back: its
    # deployments after the backup were counted before the restore, and are not deployments again.
    fraisier.deploy("api", "success")
    backup = backup_of(fraisier.database, tmp_path / "backup.db")
    fraisier.deploy("api", "success")
    fraisier.deploy("api", "failed")
    values = refresh(textfile_dir)
    assert values[API_SUCCESS] == 2 and values[API_FAILED] == 1
    fraisier.close()
    current = tmp_path / "current.db"
    shutil.copyfile(fraisier.database, current)

    def put_in_place(database: Path) -> None:
        shutil.copyfile(database, tmp_path / "copy.db")
        os.replace(tmp_path / "copy.db", fraisier.database)

    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            put_in_place(backup)
            assert refresh(textfile_dir) == values
            put_in_place(current)
            assert refresh(textfile_dir) == values
    assert sum("replaced or restored" in record.getMessage() for record in caplog.records) == 2
    assert sum("is again the one read before" in record.getMessage() for record in caplog.records) == 2
    # Fraisier goes on from the current database: its next deployment counts, once.
    with Fraisier(fraisier.root) as again:
        again.deploy("api", "success")
        assert refresh(textfile_dir)[API_SUCCESS] == 3


def test_after_a_restore_the_cursor_stays_a_line_the_released_version_reads(
    fraisier: Fraisier, textfile_dir: Path, tmp_path: Path
) -> None:
    """0.2.0 reads a fraisier-state line of version 1 (eight words) and no other: a line it cannot read stops its
    reading of Fraisier's database, with the advice to remove the line (which counts the history again). A
    restore must not leave such a line for a downgrade to 0.2.0: what the put-back check needs is a line of its
    own, which 0.2.0 keeps as it keeps every bookkeeping line it does not know."""
    fraisier.deploy("api", "success")
    backup = backup_of(fraisier.database, tmp_path / "backup.db")
    fraisier.deploy("api", "success")
    refresh(textfile_dir)
    fraisier.close()
    os.replace(backup, fraisier.database)
    refresh(textfile_dir)
    [cursor] = [line.partition(": ")[2] for line in (textfile_dir / "fraisier.prom").read_text().splitlines()
                if f"fraisier_textfile {META_KEY}: " in line]
    words = cursor.split()
    assert (words[0], len(words)) == ("1", 8), cursor  # 0.2.0's Cursor.parse: len(words) == 8 and words[0] == "1"


def test_the_line_of_a_replaced_database_holds_only_for_the_cursor_it_was_written_with() -> None:
    """A version that does not know the line (0.2.0, after a downgrade) keeps it while it moves the cursor on:
    the line is then stale, and read as no replaced database at all."""
    from fraisier_textfile.sources.fraisier_state.cursor import Cursor

    cursor = Cursor(3, "uuid-3", replaced=(7, "uuid-7"))
    line, replaced = cursor.render()
    assert Cursor.parse(line, replaced).replaced == (7, "uuid-7")  # type: ignore[union-attr]
    moved_on = Cursor(4, "uuid-4").render()[0]
    assert Cursor.parse(moved_on, replaced).replaced is None  # type: ignore[union-attr]
    assert Cursor(3, "uuid-3").render()[1] == ""  # no line without a replaced database


@pytest.mark.parametrize("deployments_after", [1, 3, 5])
def test_a_database_deleted_and_made_anew_by_fraisier_has_its_deployments_counted(
    fraisier: Fraisier, textfile_dir: Path, caplog: pytest.LogCaptureFixture, deployments_after: int
) -> None:
    # An operator deletes fraisier.db (to start afresh, or lost with a disk); Fraisier makes a new one at its
    # next deployment. Its ids start again (the cursor's row is gone or another one), but none of its
    # deployments was ever counted: unlike a restored backup's, they are all later than what was read.
    for _ in range(3):
        fraisier.deploy("api", "success")
    fraisier.deploy("api", "failed")
    fraisier.status("api", "failed")
    values = refresh(textfile_dir)
    assert values[API_SUCCESS] == 3 and values[API_FAILED] == 1
    fraisier.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{fraisier.database}{suffix}").unlink(missing_ok=True)
    time.sleep(0.01)  # Fraisier's times have microseconds: the new database's first row is later than the last read
    with Fraisier(fraisier.root) as again:
        for _ in range(deployments_after):
            again.deploy("api", "success")
        with caplog.at_level(logging.WARNING):
            assert refresh(textfile_dir)[API_SUCCESS] == 3 + deployments_after
        assert sum("replaced or restored" in record.getMessage() for record in caplog.records) == 1
        again.deploy("api", "success")
        assert refresh(textfile_dir)[API_SUCCESS] == 4 + deployments_after


def test_since_skips_the_history_of_a_database_seen_for_the_first_time(
    fraisier: Fraisier, textfile_dir: Path
) -> None:
    fraisier.deploy("api", "success")
    fraisier.deploy("api", "failed")
    running = fraisier.start("api")
    fraisier.status("api", "deploying")
    time.sleep(0.01)
    since = time.time()
    fraisier.deploy("etl", "success")
    values = refresh(textfile_dir, since=since)
    assert values.get(API_SUCCESS, 0) == 0 and values.get(API_FAILED, 0) == 0
    assert values[deployments("bare_metal", "success", "etl")] == 1
    fraisier.complete(running, True)  # started before --since, ended after: its end counts
    assert refresh(textfile_dir)[API_SUCCESS] == 1


@pytest.mark.parametrize("problem", ["missing", "corrupt", "newer schema", "locked"])
def test_a_database_that_cannot_be_read_logs_one_line_and_the_rest_of_the_file_is_written(
    tmp_path: Path, textfile_dir: Path, problem: str, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    database = tmp_path / "fraisier.db"
    holder: sqlite3.Connection | None = None
    if problem == "corrupt":
        database.write_bytes(b"this is not a database" * 100)
    elif problem == "newer schema":
        with sqlite3.connect(database) as connection:
            connection.execute("CREATE TABLE tb_deployment_v2 (pk INTEGER PRIMARY KEY)")
    elif problem == "locked":
        with sqlite3.connect(database) as connection:
            connection.execute("CREATE TABLE tb_deployment (pk_deployment INTEGER PRIMARY KEY)")
        holder = sqlite3.connect(database, isolation_level=None)
        holder.execute("PRAGMA locking_mode = EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setenv("FRAISIER_DB_PATH", str(database))
    monkeypatch.setenv("FRAISIER_TEXTFILE_FRAISIER_STATE", "on")
    store = TextfileStore(textfile_dir, participants=participants())
    changes = Changes()
    from fraisier_textfile import changes as events

    events.health_check(changes, "bare_metal", "http", "pass", 0.1)
    with caplog.at_level(logging.INFO):
        started = time.monotonic()
        store.merge(changes)
        store.merge(Changes())
        elapsed = time.monotonic() - started
    if holder is not None:
        holder.close()
    lines = [record.getMessage() for record in caplog.records if "Fraisier's database" in record.getMessage()]
    assert len(lines) == 1, lines
    assert str(database) in lines[0]
    health = 'fraisier_health_checks_total{provider="bare_metal",check_type="http",status="pass"}'
    assert sample_values(store.path)[health] == 1
    assert elapsed < 60  # never waits for Fraisier's database (a busy one is left for the next occasion)


COPIER = """\
import shutil, sys
print("copying", flush=True)
for _ in range(int(sys.argv[3])):
    shutil.copyfile(sys.argv[1], sys.argv[2])
"""


def test_a_database_rewritten_in_place_while_scrapes_read_it_is_read_again_not_reported_corrupt(
    fraisier: Fraisier, textfile_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A restore by `cp backup.db fraisier.db` truncates and rewrites the file a reader may be reading (read as
    # immutable: no writer is connected). A read torn that way is the file changing, not a corrupt database:
    # "not a readable SQLite database ... until it is repaired" would send the operator repairing a sound one.
    for number in range(30):
        fraisier.deploy("api", ("success", "failed", "rolled_back")[number % 3])
    fraisier.close()
    backup = tmp_path / "backup.db"
    shutil.copyfile(fraisier.database, backup)
    store = TextfileStore(textfile_dir, participants=participants())
    store.merge(Changes())
    counted = sample_values(store.path)
    assert counted[API_SUCCESS] == counted[API_FAILED] == counted[API_ROLLED_BACK] == 10
    copier = subprocess.Popen([sys.executable, "-c", COPIER, str(backup), str(fraisier.database), "3000"],
                              stdout=subprocess.PIPE, text=True)
    assert copier.stdout is not None and copier.stdout.readline() == "copying\n"
    merges = 0
    with caplog.at_level(logging.WARNING):
        while copier.poll() is None:
            store.merge(Changes())
            merges += 1
        assert copier.wait() == 0
        store.merge(Changes())
    assert merges > 0
    assert [r.getMessage() for r in caplog.records if "Fraisier's database" in r.getMessage()] == []
    assert sample_values(store.path) == counted


@pytest.mark.parametrize("state", ["empty file", "journal mode set, no table yet"])
def test_a_database_fraisier_has_created_but_not_yet_filled_is_nothing_to_report_then_counts(
    fraisier: Fraisier, textfile_dir: Path, caplog: pytest.LogCaptureFixture, state: str
) -> None:
    # Fraisier's get_connection() creates the file (and sets WAL) before its init creates the tables: a reader
    # in between, or one given a file truncated to nothing, has no deployment to read and no fix to name.
    fraisier.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{fraisier.database}{suffix}").unlink(missing_ok=True)
    if state == "empty file":
        fraisier.database.write_bytes(b"")
    else:
        with sqlite3.connect(fraisier.database) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
    with caplog.at_level(logging.INFO):
        refresh(textfile_dir)
    assert [r.getMessage() for r in caplog.records if "Fraisier's database" in r.getMessage()] == []
    fraisier = Fraisier(fraisier.root)
    try:
        fraisier.deploy("api", "success")
    finally:
        fraisier.close()
    assert refresh(textfile_dir)[API_SUCCESS] == 1


def test_a_deployment_in_the_wal_of_an_open_connection_is_read_through_a_symlinked_database_path(
    fraisier: Fraisier, tmp_path: Path, textfile_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FRAISIER_DB_PATH=/opt/fraisier/fraisier.db, a link to the data disk: SQLite resolves the link and keeps
    # the -wal and -shm beside the target, where a reader looking beside the link finds none, takes the main
    # file alone for the database (immutable) and misses what the WAL holds.
    fraisier.deploy("api", "success")
    link = tmp_path / "link" / "fraisier.db"
    link.parent.mkdir()
    link.symlink_to(fraisier.database)
    monkeypatch.setenv("FRAISIER_DB_PATH", str(link))
    assert refresh(textfile_dir)[API_SUCCESS] == 1
    # Fraisier's connection, still open: its commit is in the WAL, not yet in the main file.
    writer = sqlite3.connect(link, isolation_level=None)
    try:
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute(
            "INSERT INTO tb_deployment (id, identifier, fraise_name, environment_name, started_at, completed_at, "
            "duration_seconds, status, created_at, updated_at) SELECT 'in-wal', 'api:production:wal', "
            "fraise_name, environment_name, started_at, completed_at, duration_seconds, status, created_at, "
            "updated_at FROM tb_deployment ORDER BY pk_deployment DESC LIMIT 1")
        assert Path(f"{fraisier.database}-wal").stat().st_size > 0
        assert refresh(textfile_dir)[API_SUCCESS] == 2
    finally:
        writer.close()
    assert refresh(textfile_dir)[API_SUCCESS] == 2


def test_the_cursor_is_one_short_line_whatever_the_history(fraisier: Fraisier, textfile_dir: Path) -> None:
    for _ in range(30):
        fraisier.deploy("api", random.choice(["success", "failed", "rolled_back"]))
    refresh(textfile_dir)
    line = next(line for line in (textfile_dir / "fraisier.prom").read_text().splitlines() if META_KEY in line)
    assert len(line) < 200, line


@pytest.mark.parametrize(("message", "expected"), [
    (None, "unknown"),
    ("Health check failed after deployment (3 attempts)", "health_check"),
    ("Install command failed (exit code 3): uv sync", "install"),
    ("Command '['python', 'etl.py']' returned non-zero exit status 1.", "command"),
    ("Deployment timed out after 600s", "timeout"),
    ("Something nobody foresaw \n with a newline and 10,000 characters" + "x" * 10_000, "other"),
])
def test_the_error_type_is_one_of_a_few_words_never_the_message(message: str | None, expected: str) -> None:
    assert error_type(message) == expected


def test_the_source_is_off_when_asked_and_absent_without_fraisier(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAISIER_TEXTFILE_FRAISIER_STATE", "off")
    monkeypatch.setenv("FRAISIER_DB_PATH", "/nonexistent/fraisier.db")
    assert participants() == []
    monkeypatch.setenv("FRAISIER_TEXTFILE_FRAISIER_STATE", "on")
    assert isinstance(participants()[0], FraisierStateSource)


def test_fraisier_writing_while_we_read_in_separate_processes_gives_exact_totals(
    fraisier: Fraisier, textfile_dir: Path
) -> None:
    fraisier.deploy("api", "success")  # the database exists before the readers start
    readers = [subprocess.Popen([sys.executable, str(WORKERS), "refresh", str(textfile_dir)],
                                stdout=subprocess.PIPE, env=fraisier.environment) for _ in range(2)]
    try:
        for reader in readers:
            assert reader.stdout is not None and reader.stdout.readline()
        writers = [subprocess.Popen([sys.executable, str(WORKERS), "deploy", "60", fraise, "production"],
                                    env=fraisier.environment) for fraise in ("api", "etl")]
        for writer in writers:
            assert writer.wait(timeout=300) == 0
    finally:
        for reader in readers:
            reader.kill()
            reader.wait()
    values = refresh(textfile_dir)
    # Each deployment with its final status, also those read between Fraisier's two commits of a rollback.
    assert values[API_SUCCESS] == 1 + 20 and values[API_FAILED] == 20 and values[API_ROLLED_BACK] == 20
    assert values[deployments("bare_metal", "success", "etl")] == 20
    assert values[deployments("bare_metal", "failed", "etl")] == 20
    assert values[deployments("bare_metal", "rolled_back", "etl")] == 20
    assert values[rollbacks("bare_metal", "health_check")] == 40


@pytest.mark.slow
def test_a_reader_killed_at_random_points_never_loses_or_doubles_a_deployment(
    fraisier: Fraisier, textfile_dir: Path
) -> None:
    subprocess.run([sys.executable, str(WORKERS), "deploy", "300", "api", "production"], env=fraisier.environment,
                   check=True)
    for run in range(25):
        reader = subprocess.Popen([sys.executable, str(WORKERS), "refresh", str(textfile_dir)],
                                  stdout=subprocess.PIPE, env=fraisier.environment)
        assert reader.stdout is not None and reader.stdout.readline()
        time.sleep(random.uniform(0, 0.05))
        reader.send_signal(signal.SIGKILL)
        reader.wait()
        if run % 5 == 0:
            fraisier.deploy("api", "success")
    values = refresh(textfile_dir)
    assert values[API_SUCCESS] == 100 + 5
    assert values[API_FAILED] == 100 and values[API_ROLLED_BACK] == 100
    assert values[rollbacks("bare_metal", "health_check")] == 100


def test_the_source_module_imports_nothing_of_fraisier() -> None:
    code = ("import sys, fraisier_textfile.sources.fraisier_state as s; "
            "s.participants(); print(any(m == 'fraisier' or m.startswith('fraisier.') for m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
    assert result.stdout.strip() == "False"


# Picked up with no step: the refresh, the scrape, the dispatcher


def cli(fraisier: Fraisier, textfile_dir: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fraisier_textfile", "--textfile-dir", str(textfile_dir), *arguments],
        capture_output=True, text=True, env=fraisier.environment, timeout=120,
    )


def test_fraisier_textfile_refresh_takes_what_fraisier_wrote_and_since_skips_history(
    fraisier: Fraisier, tmp_path: Path
) -> None:
    fraisier.deploy("api", "success")
    fraisier.deploy("api", "failed")
    counted = tmp_path / "counted"
    assert cli(fraisier, counted, "textfile", "refresh").returncode == 0
    values = sample_values(counted / "fraisier.prom")
    assert values[API_SUCCESS] == 1 and values[API_FAILED] == 1
    skipped = tmp_path / "skipped"
    assert cli(fraisier, skipped, "textfile", "refresh", "--since", "now").returncode == 0
    fraisier.deploy("api", "success")
    assert cli(fraisier, skipped, "textfile", "refresh").returncode == 0
    assert sample_values(skipped / "fraisier.prom")[API_SUCCESS] == 1
    assert sample_values(skipped / "fraisier.prom").get(API_FAILED, 0) == 0
    bad = cli(fraisier, skipped, "textfile", "refresh", "--since", "yesterday-ish")
    assert bad.returncode == 2 and "--since='yesterday-ish' is not a time" in bad.stderr


@pytest.mark.parametrize("since", ["nan", "inf", "-inf", "1e20", "-1e20", "0001-01-01T00:00"])
def test_a_since_no_clock_can_show_is_refused_in_one_line_and_changes_nothing(
    fraisier: Fraisier, tmp_path: Path, since: str
) -> None:
    fraisier.deploy("api", "success")
    directory = tmp_path / "textfile"
    assert cli(fraisier, directory, "textfile", "refresh").returncode == 0
    fraisier.deploy("api", "success")
    before = (directory / "fraisier.prom").read_bytes()
    # Ahead of UTC: the year 1's midnight is in the year 0 in UTC.
    fraisier.environment["TZ"] = "Asia/Tokyo"
    result = cli(fraisier, directory, "textfile", "refresh", "--since", since)
    assert result.returncode == 2, result.stderr
    assert f"--since={since!r} is not a time" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (directory / "fraisier.prom").read_bytes() == before
    if "T" not in since:  # the library refuses the number too, when it is given, not at the first merge
        with pytest.raises(ValueError, match="since"):
            FraisierStateSource(since=float(since))


def scrape(url: str) -> dict[str, float]:
    from .processes import http_get

    return sample_values(http_get(url))


def test_a_deployment_fraisier_finished_is_in_the_next_scrape_of_fraisier_metrics(
    fraisier: Fraisier, textfile_dir: Path, tmp_path: Path
) -> None:
    command, url = metrics_server(textfile_dir)
    fraisier.deploy("api", "success")
    with running_with(command, url, fraisier.environment, tmp_path / "server.log"):
        assert scrape(url)[API_SUCCESS] == 1
        fraisier.status("etl", "deploying")
        pk = fraisier.start("etl")
        values = scrape(url)
        assert values[ACTIVE] == 1 and values.get(deployments("bare_metal", "success", "etl"), 0) == 0
        fraisier.status("etl", "success")
        fraisier.complete(pk, True)
        values = scrape(url)
        assert values[deployments("bare_metal", "success", "etl")] == 1 and values[ACTIVE] == 0
        fraisier.deploy("api", "rolled_back")
        assert scrape(url)[API_ROLLED_BACK] == 1
        assert scrape(url)[API_SUCCESS] == 1


def metrics_server(textfile_dir: Path) -> tuple[list[str], str]:
    """The command of a `fraisier metrics` serving ``textfile_dir`` on a free loopback port, and its URL."""
    from .processes import free_port

    port = free_port()
    command = [sys.executable, "-m", "fraisier_textfile", "--textfile-dir", str(textfile_dir), "metrics",
               "--address", "127.0.0.1", "--port", str(port)]
    return command, f"http://127.0.0.1:{port}/metrics"


def running_with(command: list[str], url: str, environment: dict[str, str], log: Path) -> Any:
    """tests.processes.running, with the Fraisier environment."""
    from .processes import running

    saved = dict(os.environ)
    os.environ.update(environment)
    try:
        return running(command, url, log)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_a_refresh_and_scrapes_racing_with_fraisier_writing_give_exact_totals(
    fraisier: Fraisier, textfile_dir: Path, tmp_path: Path
) -> None:
    command, url = metrics_server(textfile_dir)
    fraisier.deploy("api", "success")
    with running_with(command, url, fraisier.environment, tmp_path / "server.log"):
        refresher = subprocess.Popen([sys.executable, str(WORKERS), "refresh", str(textfile_dir)],
                                     stdout=subprocess.PIPE, env=fraisier.environment)
        writer = subprocess.Popen([sys.executable, str(WORKERS), "deploy", "45", "api", "production"],
                                  env=fraisier.environment)
        try:
            while writer.poll() is None:
                scrape(url)
            assert writer.wait() == 0
        finally:
            refresher.kill()
            refresher.wait()
        values = scrape(url)
    assert values[API_SUCCESS] == 16 and values[API_FAILED] == 15 and values[API_ROLLED_BACK] == 15
    assert values[rollbacks("bare_metal", "health_check")] == 15


def test_the_fraisier_dispatcher_takes_what_is_new_after_each_fraisier_command(
    fraisier: Fraisier, textfile_dir: Path
) -> None:
    fraisier.deploy("api", "success")
    script = "import sys; from fraisier_textfile.cli.dispatch import main; sys.argv[0] = 'fraisier'; main()"
    environment = {**fraisier.environment, "FRAISIER_TEXTFILE_DIR": str(textfile_dir)}
    theirs = "import sys; from fraisier.cli import main; sys.argv[0] = 'fraisier'; main()"
    alone = subprocess.run([sys.executable, "-c", theirs, "--version"], capture_output=True, text=True,
                           env=environment, timeout=120)
    result = subprocess.run([sys.executable, "-c", script, "--version"], capture_output=True, text=True,
                            env=environment, timeout=120)
    assert (result.returncode, result.stdout, result.stderr) == (alone.returncode, alone.stdout, alone.stderr)
    assert sample_values(textfile_dir / "fraisier.prom")[API_SUCCESS] == 1


# Another user reads Fraisier's database (the WAL trap: a reader who cannot create the -shm file)

READER = "fraisier-st-reader"
READ_AS_READER = """\
import sys
from fraisier_textfile.changes import Changes
from fraisier_textfile.sources import fraisier_state
from fraisier_textfile.sources.fraisier_state import FraisierStateSource
from fraisier_textfile import TextfileStore
source = FraisierStateSource(sys.argv[2], status_dir=sys.argv[3], config=sys.argv[4])
TextfileStore(sys.argv[1], participants=[source]).merge(Changes())
"""


@pytest.fixture
def reader_user(tmp_path: Path) -> Iterator[tuple[list[str], str, dict[str, str], Path]]:
    """A second real user who may read, not write, Fraisier's directory; the package where it can read it."""
    import shutil
    import tempfile

    import filelock

    import fraisier_textfile

    from .processes import binary

    if os.geteuid() != 0:
        message = "this test creates a user: run it as root (CI does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    setpriv = binary("setpriv")
    created = False
    try:
        import pwd

        pwd.getpwnam(READER)
    except KeyError:
        subprocess.run([binary("useradd"), "--system", "--no-create-home", "--shell", "/bin/false", READER],
                       check=True)
        created = True
    root = Path(tempfile.mkdtemp(prefix="fraisier-state-", dir="/tmp"))
    try:
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(Path(fraisier_textfile.__file__).parent, root / "fraisier_textfile", ignore=ignore)
        shutil.copytree(Path(filelock.__file__).parent, root / "filelock", ignore=ignore)
        (root / "read.py").write_text(READ_AS_READER)
        for directory, _, files in os.walk(root):
            os.chmod(directory, 0o755)
            for name in files:
                os.chmod(os.path.join(directory, name), 0o644)
        environment = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(root),
                       "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(root), "LANG": "C.UTF-8"}
        python = "/usr/bin/python3"
        command = [setpriv, f"--reuid={READER}", f"--regid={READER}", "--clear-groups", python, str(root / "read.py")]
        yield command, python, environment, root
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if created:
            subprocess.run([binary("userdel"), READER], check=False)


def test_another_user_who_cannot_write_fraisiers_directory_reads_it_exactly_once_and_changes_nothing(
    reader_user: tuple[list[str], str, dict[str, str], Path]
) -> None:
    import hashlib
    import pwd

    command, _, environment, root = reader_user
    fraisier = Fraisier(root / "fraisier")  # root's, 0755: the reader may read it, not create files in it
    textfile_dir = root / "textfile"
    textfile_dir.mkdir()
    account = pwd.getpwnam(READER)
    os.chown(textfile_dir, account.pw_uid, account.pw_gid)
    try:
        fraisier.deploy("api", "success")
        fraisier.deploy("api", "rolled_back")
    finally:
        fraisier.close()  # Fraisier's last connection closed: no -wal, no -shm
    os.chmod(fraisier.root, 0o755)
    arguments = [str(textfile_dir), str(fraisier.database), str(fraisier.status_dir), str(fraisier.config)]

    def read_as_reader() -> dict[str, float]:
        result = subprocess.run([*command, *arguments], capture_output=True, text=True, env=environment,
                                cwd=root, timeout=120)
        assert result.returncode == 0, result.stderr
        return sample_values(textfile_dir / "fraisier.prom")

    digest = hashlib.sha256(fraisier.database.read_bytes()).hexdigest()
    values = read_as_reader()
    assert values[API_SUCCESS] == 1 and values[API_ROLLED_BACK] == 1
    assert read_as_reader() == values
    assert hashlib.sha256(fraisier.database.read_bytes()).hexdigest() == digest
    assert sorted(path.name for path in fraisier.root.iterdir() if path.name.startswith("fraisier.db")) == [
        "fraisier.db"]
    # While Fraisier holds a connection (its -wal and -shm exist), the reader reads or waits for the next
    # occasion; once Fraisier closes it, the total is exact.
    with Fraisier(fraisier.root) as again:
        again.deploy("api", "success")
        read_as_reader()
    values = read_as_reader()
    assert values[API_SUCCESS] == 2 and values[API_ROLLED_BACK] == 1


DISPATCHER = "import sys; from fraisier_textfile.cli.dispatch import main; sys.argv[0] = 'fraisier'; main()"


def test_a_fraisier_command_run_as_root_leaves_the_deploying_users_textfile_directory_to_its_writers(
    reader_user: tuple[list[str], str, dict[str, str], Path]
) -> None:
    # `sudo fraisier status` (or --version, setup, ...): root's merge after it would create fraisier.prom.lock
    # (and the store's subdirectories) as root's, 0664 of group root, in a directory the deploying user owns;
    # from then on every writer of that user fails to open the lock.
    import pwd

    command, _, environment, root = reader_user
    fraisier = Fraisier(root / "fraisier")
    textfile_dir = root / "textfile"
    textfile_dir.mkdir()
    account = pwd.getpwnam(READER)
    os.chown(textfile_dir, account.pw_uid, account.pw_gid)
    try:
        fraisier.deploy("api", "success")
    finally:
        fraisier.close()
    os.chmod(fraisier.root, 0o755)
    as_root = {**fraisier.environment, "FRAISIER_TEXTFILE_DIR": str(textfile_dir)}
    theirs = DISPATCHER.replace("fraisier_textfile.cli.dispatch", "fraisier.cli")
    alone = subprocess.run([sys.executable, "-c", theirs, "--version"], capture_output=True, text=True, env=as_root,
                           timeout=120)
    result = subprocess.run([sys.executable, "-c", DISPATCHER, "--version"], capture_output=True, text=True,
                            env=as_root, timeout=120)
    assert (result.returncode, result.stdout, result.stderr) == (alone.returncode, alone.stdout, alone.stderr)
    assert [path.name for path in textfile_dir.iterdir() if path.stat().st_uid != account.pw_uid] == []
    # The directory's user still merges (the deployment is counted by its reader, as by the refresh timer).
    arguments = [str(textfile_dir), str(fraisier.database), str(fraisier.status_dir), str(fraisier.config)]
    result = subprocess.run([*command, *arguments], capture_output=True, text=True, env=environment, cwd=root,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert sample_values(textfile_dir / "fraisier.prom")[API_SUCCESS] == 1
    # A directory the group shares (chmod 2775): what root creates is the group's, so root's merge is welcome.
    shared = root / "shared"
    shared.mkdir()
    os.chown(shared, account.pw_uid, account.pw_gid)
    os.chmod(shared, 0o2775)
    as_root["FRAISIER_TEXTFILE_DIR"] = str(shared)
    subprocess.run([sys.executable, "-c", DISPATCHER, "--version"], capture_output=True, env=as_root, timeout=120,
                   check=True)
    assert sample_values(shared / "fraisier.prom")[API_SUCCESS] == 1
    lock = (shared / "fraisier.prom.lock").stat()
    assert lock.st_gid == account.pw_gid and lock.st_mode & 0o020


def test_fraisier_exec_wrapping_a_fraisier_command_leaves_the_count_to_the_state_source(
    fraisier: Fraisier, textfile_dir: Path, tmp_path: Path
) -> None:
    fake = tmp_path / "bin" / "fraisier"  # stands for Fraisier's script: it deploys (a row), then exits 3
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\nimport sys\nfrom fraisier.database import get_db\n"
                    "db = get_db(); pk = db.start_deployment('api', 'production')\n"
                    "db.complete_deployment(pk, False, error_message='Health check failed'); sys.exit(3)\n")
    fake.chmod(0o755)
    result = cli(fraisier, textfile_dir, "exec", "--provider", "bare_metal", "--fraise-type", "api", "--",
                 str(fake), "deploy-daemon", "--project=api")
    assert result.returncode == 3, result.stderr
    assert cli(fraisier, textfile_dir, "textfile", "refresh").returncode == 0
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values[API_FAILED] == 1  # once, from Fraisier's row; not a second time from fraisier exec
    assert values[errors("bare_metal", "health_check")] == 1
    assert sum(value for key, value in values.items() if key.startswith("fraisier_deployment_errors_total")) == 1


# Hostile inputs: files that are not what Fraisier writes, values no deployment has


@pytest.mark.parametrize("where", ["status file", "fraises.yaml", "database"])
def test_a_fifo_where_fraisier_keeps_a_file_never_hangs_the_merge(
    fraisier: Fraisier, textfile_dir: Path, where: str
) -> None:
    fraisier.status("api", "deploying")
    fraisier.start("api")
    fraisier.deploy("etl", "success")
    if where == "database":
        fraisier.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{fraisier.database}{suffix}").unlink(missing_ok=True)
        target = fraisier.database
    else:
        target = fraisier.status_dir / "api.status.json" if where == "status file" else fraisier.config
        target.unlink()
    os.mkfifo(target)
    result = subprocess.run([sys.executable, "-m", "fraisier_textfile", "--textfile-dir", str(textfile_dir),
                             "textfile", "refresh"], capture_output=True, text=True, env=fraisier.environment,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    values = sample_values(textfile_dir / "fraisier.prom")
    if where == "database":
        assert "is not a regular file" in result.stderr
    elif where == "fraises.yaml":
        assert values[deployments("bare_metal", "success", "unknown")] == 1
        assert "not a regular file" in result.stderr
    else:
        assert values[deployments("bare_metal", "success", "etl")] == 1
        assert values[ACTIVE] == 1  # nothing proves the owner dead


@pytest.mark.parametrize("kind", ["fifo", "empty"], ids=["a FIFO", "an empty file"])
@pytest.mark.parametrize("link", [False, True], ids=["in its place", "a symlink to it"])
@pytest.mark.parametrize("where", ["status file", "fraises.yaml"])
def test_a_fifo_device_or_empty_file_where_fraisier_keeps_a_file_is_never_opened(
    fraisier: Fraisier, textfile_dir: Path, tmp_path: Path, where: str, link: bool, kind: str
) -> None:
    # Opening a device runs its driver: /dev/watchdog arms the host's watchdog (a reboot once nobody pings it), a
    # tape rewinds, a serial line raises DTR. Whoever may write Fraisier's status directory or fraises.yaml's (the
    # deploying user) may put a symlink to any device there, read by a root merge at every scrape. A FIFO shows
    # whether the reader opens what is not a regular file: the kernel reports every open of it. The files of /proc
    # are regular files that say they are empty, and some are consumed by being read (/proc/kmsg hands the kernel's
    # messages to one reader, a syslog's): an empty file holds nothing to read, and is not opened either.
    fraisier.status("api", "deploying")
    fraisier.start("api")
    fraisier.deploy("etl", "success")
    target = fraisier.status_dir / "api.status.json" if where == "status file" else fraisier.config
    target.unlink()
    made = tmp_path / f"elsewhere.{kind}" if link else target
    if kind == "fifo":
        os.mkfifo(made)
    else:
        made.touch()
    if link:
        target.symlink_to(made)
    with opens_of(made) as opens:
        values = refresh(textfile_dir)
        assert opens() == 0
    assert values[deployments("bare_metal", "success", "unknown" if where == "fraises.yaml" else "etl")] == 1
    assert values[ACTIVE] == 1  # nothing proves the owner dead


def test_a_database_file_that_says_it_is_empty_is_never_opened(
    fraisier: Fraisier, textfile_dir: Path, tmp_path: Path
) -> None:
    # As a status file (above): whoever owns Fraisier's database may make it a symlink to /proc/kmsg, which root's
    # merge would consume at every scrape. An empty file alone is an empty database: nothing to count, nor to report.
    fraisier.deploy("api", "success")
    fraisier.close()
    empty = tmp_path / "empty.db"
    empty.touch()
    fraisier.database.unlink()
    fraisier.database.symlink_to(empty)
    with opens_of(empty) as opens:
        values = refresh(textfile_dir)
        assert opens() == 0
    assert API_SUCCESS not in values


@pytest.mark.parametrize("message", [b"Health check failed \xff", b"", 12345])
def test_an_error_message_stored_as_a_blob_or_a_number_still_counts_the_failure(
    fraisier: Fraisier, textfile_dir: Path, message: object
) -> None:
    # SQLite keeps any value in any column: a BLOB (a tool that wrote bytes) reaches the reader as bytes.
    pk = fraisier.deploy("api", "failed")
    fraisier.status("api", "failed")
    with sqlite3.connect(fraisier.database) as connection:
        connection.execute("UPDATE tb_deployment SET error_message = ? WHERE pk_deployment = ?", (message, pk))
    values = refresh(textfile_dir)
    assert values[API_FAILED] == 1
    expected = {b"Health check failed \xff": "health_check", b"": "unknown", 12345: "other"}[message]
    assert values[errors("bare_metal", expected)] == 1


@pytest.mark.parametrize("libyaml", [True, False], ids=["libyaml", "PyYAML alone"])
def test_a_fraises_yaml_yaml_refuses_is_one_line_that_quotes_nothing_of_the_file(
    fraisier: Fraisier, textfile_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch, libyaml: bool,
) -> None:
    # Whoever may write fraises.yaml's directory may make it a symlink to a file only root may read; root's merge
    # reads it, and its log must not show that file's lines (PyYAML without libyaml quotes the line it stopped at).
    import yaml

    if not libyaml:
        monkeypatch.delattr(yaml, "CSafeLoader", raising=False)
    secret = tmp_path / "secret.yaml"
    secret.write_text('fraises:\n  api:\n    type: api\n    password: "hunter2-only-root-reads-this\n')
    secret.chmod(0o600)
    fraisier.config.unlink()
    fraisier.config.symlink_to(secret)
    fraisier.deploy("api", "success")
    with caplog.at_level(logging.WARNING):
        values = refresh(textfile_dir)
    assert values[deployments("bare_metal", "success", "unknown")] == 1
    lines = [r.getMessage() for r in caplog.records if str(fraisier.config) in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "hunter2" not in lines[0] and "line 5, column 1" in lines[0], lines


def test_a_fraises_yaml_too_big_to_parse_within_a_scrape_is_refused_in_one_line_and_the_merge_goes_on(
    fraisier: Fraisier, textfile_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # YAML is parsed under the textfile's lock (at a scrape, in the dispatcher after each Fraisier command):
    # a 4 MB one took seconds there. Well-formed, with the api fraise's type in it: refused for its size alone.
    fraisier.deploy("api", "success")
    padding = "".join(f"  f{index}:\n    type: etl\n    environments: {{production: {{app_path: /srv/f{index}}}}}\n"
                      for index in range(17_000))
    fraisier.config.write_text(CONFIG.replace("fraises:\n", "fraises:\n" + padding, 1))
    assert fraisier.config.stat().st_size > fraisier_state.MAX_CONFIG_BYTES
    with caplog.at_level(logging.WARNING):
        values = refresh(textfile_dir)
    assert values[deployments("bare_metal", "success", "unknown")] == 1
    lines = [r.getMessage() for r in caplog.records if str(fraisier.config) in r.getMessage()]
    assert len(lines) == 1 and "larger than" in lines[0], lines


def test_a_duration_no_deployment_takes_never_poisons_the_histogram(fraisier: Fraisier, textfile_dir: Path) -> None:
    for pk, duration in ((fraisier.deploy("api"), 1e308), (fraisier.deploy("api"), -5.0),
                         (fraisier.deploy("api"), float("nan"))):
        with sqlite3.connect(fraisier.database) as connection:
            connection.execute("UPDATE tb_deployment SET duration_seconds = ? WHERE pk_deployment = ?",
                               (duration, pk))
    values = refresh(textfile_dir)
    assert values[API_SUCCESS] == 3
    total = values['fraisier_deployment_duration_seconds_sum{provider="bare_metal",status="success"}']
    assert 0 <= total < 3600
    fraisier.deploy("api")
    assert refresh(textfile_dir)[API_SUCCESS] == 4  # later merges still work


@pytest.mark.parametrize("word,value", [
    (None, "9 from a newer version"),
    # Numbers SQLite cannot bind (beyond its 64-bit integers), or no pk has: a torn or hand-edited line.
    (2, "99999999999999999999"),
    (2, "-1"),
    (6, "18446744073709551616"),
    (7, "18446744073709551616"),
    (3, "-5"),
])
def test_a_cursor_line_this_version_cannot_read_stops_the_source_with_one_line_not_the_merge(
    fraisier: Fraisier, textfile_dir: Path, caplog: pytest.LogCaptureFixture, word: int | None, value: str
) -> None:
    fraisier.deploy("api")
    refresh(textfile_dir)
    path = textfile_dir / "fraisier.prom"
    text = path.read_text()

    def edited(line: str) -> str:
        prefix, _, cursor = line.partition(": ")
        words = cursor.split()
        if word is None:
            words = [value]
        else:
            words[word] = value
        return f"{prefix}: {' '.join(words)}"

    path.write_text("\n".join(
        edited(line) if META_KEY in line else line
        for line in text.splitlines()) + "\n")
    fraisier.deploy("api")
    store = TextfileStore(textfile_dir, participants=participants())  # a long-lived process: one line, not one a merge
    with caplog.at_level(logging.WARNING):
        store.merge(Changes())
        store.merge(Changes())
    # Not counted again from the start, not lost: left for the version that wrote the line.
    assert sample_values(path)[API_SUCCESS] == 1
    assert len([r for r in caplog.records if "fraisier-state line" in r.getMessage()]) == 1


def test_news_read_while_the_lock_was_busy_are_taken_at_the_next_poll_not_at_the_next_change(
    fraisier: Fraisier, textfile_dir: Path
) -> None:
    import fcntl

    fraisier.deploy("api", "success")
    store = TextfileStore(textfile_dir, participants=participants())
    store.merge(Changes())
    (source,) = store.sources
    assert isinstance(source, FraisierStateSource)
    fraisier.deploy("api", "success")
    assert source.has_news()
    with open(store.lock_path, "a+") as lock:  # another merger holds the lock
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(Exception, match="lock"):
            store.merge(Changes(), timeout=0)
    assert source.has_news()  # nothing changed in Fraisier's database since, yet the news is still to take
    store.merge(Changes(), timeout=0)
    assert not source.has_news()
    assert sample_values(store.path)[API_SUCCESS] == 2


def test_times_fraisier_stored_in_its_local_time_zone_are_read_in_that_zone(
    fraisier: Fraisier, textfile_dir: Path
) -> None:
    environment = {**fraisier.environment, "TZ": "Asia/Kolkata"}  # UTC+05:30, no daylight saving
    before = time.time()
    subprocess.run([sys.executable, str(WORKERS), "deploy", "1", "api", "production"], env=environment, check=True)
    after = time.time()
    result = subprocess.run([sys.executable, "-m", "fraisier_textfile", "--textfile-dir", str(textfile_dir),
                             "textfile", "refresh"], capture_output=True, text=True, env=environment, timeout=120)
    assert result.returncode == 0, result.stderr
    stamp = sample_values(textfile_dir / "fraisier.prom")[
        'fraisier_last_deployment_timestamp_seconds{provider="bare_metal",fraise_type="api",status="success"}']
    assert before - 1 <= stamp <= after + 1


def test_a_long_lived_reader_finds_a_rollback_on_a_recent_row_at_once_and_on_an_old_one_at_its_full_check(
    fraisier: Fraisier, textfile_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fraisier_state.reader, "FULL_CHECK_SECONDS", 3600.0)
    old = fraisier.deploy("api", "failed")
    store = TextfileStore(textfile_dir, participants=participants())  # as fraisier metrics holds it
    (source,) = store.sources
    assert isinstance(source, FraisierStateSource)
    store.merge(Changes())  # the process's first read: a full check
    recent = fraisier.deploy("api", "failed")
    store.merge(Changes())
    fraisier.call("rolled_back", pk=recent)
    store.merge(Changes())
    assert sample_values(store.path)[rollbacks("bare_metal", "health_check")] == 1
    fraisier.call("rolled_back", pk=old)
    fraisier.deploy("etl", "success")
    store.merge(Changes())  # an older row: not looked for until the full check
    assert sample_values(store.path)[rollbacks("bare_metal", "health_check")] == 1
    source.reader.next_full_check = 0.0
    store.merge(Changes())
    store.merge(Changes())
    values = sample_values(store.path)
    assert values[rollbacks("bare_metal", "health_check")] == 2 and values[API_FAILED] == 2
    assert refresh(textfile_dir) == values  # a new process's full check finds nothing more


def test_a_fraises_yaml_copied_over_with_the_same_size_and_mtime_gives_a_long_lived_store_its_new_types(
    fraisier: Fraisier, textfile_dir: Path
) -> None:
    """As a server's store, merging again and again: a fraise's new type is as long as its old one, and the file
    copied with ``cp -p`` keeps its inode and gets the same mtime. Only the ctime tells the new file from the old."""
    store = TextfileStore(textfile_dir, participants=participants())
    old = copied_as_built(fraisier.config, CONFIG)
    fraisier.deploy("api", "success")
    store.merge(Changes())
    new = copied_as_built(fraisier.config, CONFIG.replace("  api:\n    type: api\n", "  api:\n    type: etl\n"))
    assert (new.st_ino, new.st_size, new.st_mtime_ns) == (old.st_ino, old.st_size, old.st_mtime_ns)
    fraisier.deploy("api", "success")
    store.merge(Changes())
    values = sample_values(store.path)
    assert values[API_SUCCESS] == 1
    assert values[deployments("bare_metal", "success", "etl")] == 1
