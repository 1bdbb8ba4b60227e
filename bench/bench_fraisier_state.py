"""Reading Fraisier's state database: a scrape with a big history and nothing new, and a backfill.

A Fraisier database made by Fraisier 0.84.2's own ``init_database`` (its tables and indexes) holds ROWS history
rows (success, failed, rolled back). Two cases, each side by side with its peer in the same run:

- **scrape, nothing new**: ``fraisier metrics`` serving a textfile that already accounts for the whole
  history, with the state source on (each scrape asks whether the database changed) vs the same file served
  with the source off (``FRAISIER_TEXTFILE_FRAISIER_STATE=off``). Sequential scrapes on one keep-alive
  connection per server, the two servers taking turns. Goal: ≤ 1.2×.
- **backfill**: the first merge of a textfile that has never seen the database (the whole history counted:
  read, labelled, aggregated, written), vs a plain ``SELECT`` of the same columns of every row, fetched.
- **one new deployment**: reading one new deployment (the source's part of a merge), with ROWS rows of
  history vs with 1,000.

    python bench/bench_fraisier_state.py [--rows 1000000] [--requests 200] [--json] [--quick]
"""

from __future__ import annotations

import http.client
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from _common import (
    argument_parser,
    emit,
    environment,
    format_ratio,
    format_seconds,
    free_port,
    goal_text,
    measure,
    print_environment,
    print_table,
    stop,
    temporary_directory,
)

from fraisier_textfile import TextfileStore
from fraisier_textfile.changes import Changes
from fraisier_textfile.sources.fraisier_state import ROW_COLUMNS, FraisierStateSource
from fraisier_textfile.store import fs
from fraisier_textfile.store.transaction import Merge

GOAL = 1.2
CONFIG = "fraises:\n" + "".join(f"  fraise_{n}:\n    type: {kind}\n" for n, kind in
                                enumerate(("api", "etl", "scheduled", "backup", "docker_compose")))


def make_database(path: Path, rows: int) -> None:
    """Fraisier's schema from its own code, then ``rows`` finished deployments in one transaction."""
    code = "from fraisier.database import init_database; init_database()"
    subprocess.run([sys.executable, "-c", code], env={**os.environ, "FRAISIER_DB_PATH": str(path)}, check=True)
    generator = random.Random(7)
    start = datetime(2024, 1, 1)
    outcomes = ("success",) * 18 + ("failed", "rolled_back")

    def history() -> Any:
        for pk in range(1, rows + 1):
            started = start + timedelta(minutes=pk)
            status = generator.choice(outcomes)
            duration = generator.uniform(5, 400)
            completed = (started + timedelta(seconds=duration)).isoformat()
            yield (f"uuid-{pk}", f"fraise_{pk % 5}:production:{started.isoformat()}", f"fraise_{pk % 5}",
                   "production", started.isoformat(), completed, duration, status,
                   None if status == "success" else "Health check failed after deployment", completed,
                   started.isoformat())

    with sqlite3.connect(path) as connection:
        connection.executemany(
            "INSERT INTO tb_deployment (id, identifier, fraise_name, environment_name, started_at, completed_at, "
            "duration_seconds, status, error_message, updated_at, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            history(),
        )
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def plain_select(path: Path) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        return len(connection.execute(f"SELECT {ROW_COLUMNS} FROM tb_deployment").fetchall())


def backfill(path: Path, config: Path, directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    source = FraisierStateSource(path, config=config, status_dir=directory.parent / "status")
    TextfileStore(directory, participants=[source]).merge(Changes())


SMALL_HISTORY = 1_000


def add_deployment(path: Path, number: int) -> None:
    """One more finished deployment, as Fraisier's two commits write it (start, then completion)."""
    now = datetime.now().isoformat()
    with sqlite3.connect(path) as connection:
        cursor = connection.execute(
            "INSERT INTO tb_deployment (id, identifier, fraise_name, environment_name, started_at, status, "
            "updated_at, created_at) VALUES (?, ?, 'fraise_0', 'production', ?, 'in_progress', ?, ?)",
            (f"new-{number}", f"new-{number}", now, now, now))
        connection.execute(
            "UPDATE tb_deployment SET status = 'success', completed_at = ?, duration_seconds = 12.5, updated_at = ? "
            "WHERE pk_deployment = ?", (now, now, cursor.lastrowid))


def one_new_deployment(path: Path, config: Path, directory: Path, repetitions: int) -> Any:
    """Reading one new deployment from a database whose history is already counted: the source's part of a
    merge (the rest, writing the file, does not depend on the database and is dominated by fsync)."""
    source = FraisierStateSource(path, config=config, status_dir=directory.parent / "status")
    store = TextfileStore(directory, participants=[source])
    store.merge(Changes())
    counter = iter(range(10**9))

    def collect() -> None:
        # The source's part of a merge, as the transaction calls it (store/transaction.py), on the file as read.
        textfile = fs.open_directory(directory)
        assert textfile is not None
        with textfile:
            source.collect(Merge(directory, store.path, textfile, store.read(), Changes(), as_written=False))

    return measure(collect, repetitions, setup=lambda: add_deployment(path, next(counter)))


def scrape_times(ports: dict[str, int], requests: int) -> dict[str, list[float]]:
    connections = {name: http.client.HTTPConnection("127.0.0.1", port, timeout=30) for name, port in ports.items()}
    times: dict[str, list[float]] = {name: [] for name in ports}
    try:
        for _ in range(requests):
            for name, connection in connections.items():  # taking turns: the machine's noise falls on both
                started = time.perf_counter()
                connection.request("GET", "/metrics")
                response = connection.getresponse()
                response.read()
                times[name].append(time.perf_counter() - started)
                assert response.status == 200, response.status
    finally:
        for connection in connections.values():
            connection.close()
    return times


def serve(directory: Path, port: int, extra: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "fraisier_textfile", "--textfile-dir", str(directory), "metrics",
               "--address", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, env={**os.environ, **extra}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/metrics")
            connection.getresponse().read()
            connection.close()
            return process
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                stop(process)
                raise SystemExit(f"fraisier metrics did not start on port {port}") from None
            time.sleep(0.1)


def run(rows: int, requests: int, tmpdir: Path) -> dict[str, Any]:
    database = tmpdir / "fraisier.db"
    config = tmpdir / "fraises.yaml"
    config.write_text(CONFIG)
    started = time.perf_counter()
    make_database(database, rows)
    made = time.perf_counter() - started
    select = measure(lambda: plain_select(database), 3)
    fill = measure(lambda: backfill(database, config, tmpdir / "with"), 3)
    small = tmpdir / "small.db"
    make_database(small, SMALL_HISTORY)
    new_small = one_new_deployment(small, config, tmpdir / "new-small", 20)
    new_big = one_new_deployment(database, config, tmpdir / "new-big", 20)
    shutil.copytree(tmpdir / "with", tmpdir / "without")
    on = {"FRAISIER_DB_PATH": str(database), "FRAISIER_CONFIG": str(config),
          "FRAISIER_STATUS_DIR": str(tmpdir / "status"), "FRAISIER_TEXTFILE_FRAISIER_STATE": "on"}
    off = {"FRAISIER_TEXTFILE_FRAISIER_STATE": "off"}
    ports = {"source on": free_port(), "source off": free_port()}
    servers = [serve(tmpdir / "with", ports["source on"], on), serve(tmpdir / "without", ports["source off"], off)]
    try:
        scrape_times(ports, 20)  # warm: the first scrape of each parses the file
        times = scrape_times(ports, requests)
    finally:
        for server in servers:
            stop(server)
    import statistics

    scrape = {name: statistics.median(samples) for name, samples in times.items()}
    return {
        "rows": rows,
        "database_build_seconds": made,
        "scrape_median_seconds": scrape,
        "scrape_ratio": scrape["source on"] / scrape["source off"],
        "backfill": fill.as_json(),
        "plain_select": select.as_json(),
        "backfill_ratio": fill.median / select.median,
        "one_new_small": new_small.as_json(),
        "one_new_big": new_big.as_json(),
        "one_new_ratio": new_big.median / new_small.median,
        "environment": environment(tmpdir),
    }


def main() -> None:
    parser = argument_parser(__doc__ or "")
    parser.add_argument("--rows", type=int, default=1_000_000, help="history rows in Fraisier's database")
    parser.add_argument("--requests", type=int, default=200, help="sequential scrapes per server")
    args = parser.parse_args()
    rows = min(args.rows, 100_000) if args.quick else args.rows
    with temporary_directory(args) as tmpdir:
        result = run(rows, 50 if args.quick else args.requests, tmpdir)

    def render() -> None:
        print_environment(result["environment"])
        scrape = result["scrape_median_seconds"]
        print_table(
            f"Scrape of fraisier metrics, {result['rows']:,} history rows, nothing new (median)",
            ["case", "median", "ratio", "goal"],
            [["source off (peer)", format_seconds(scrape["source off"]), "1.000×", ""],
             ["source on", format_seconds(scrape["source on"]), format_ratio(result["scrape_ratio"]),
              goal_text(result["scrape_ratio"], GOAL)]],
        )
        print_table(
            f"Backfill of {result['rows']:,} history rows (median of 3)",
            ["case", "median", "ratio"],
            [["plain SELECT of the rows (peer)", format_seconds(result["plain_select"]["median_seconds"]), "1.000×"],
             ["first merge, whole history counted", format_seconds(result["backfill"]["median_seconds"]),
              format_ratio(result["backfill_ratio"])]],
        )

        print_table(
            "Reading one new deployment, the source's part of a merge (median of 20)",
            ["history", "median", "ratio"],
            [[f"{SMALL_HISTORY:,} rows (peer)", format_seconds(result["one_new_small"]["median_seconds"]), "1.000×"],
             [f"{result['rows']:,} rows", format_seconds(result["one_new_big"]["median_seconds"]),
              format_ratio(result["one_new_ratio"])]],
            notes=["a long-lived reader's read; a full check (a process's first read, then once a minute) also "
                   "counts the rolled-back rows in Fraisier's status index, which grows with the history"],
        )

    emit(args, result, render)


if __name__ == "__main__":
    main()
