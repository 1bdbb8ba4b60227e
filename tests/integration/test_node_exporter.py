"""The real readers of our file: node_exporter's textfile collector and promtool."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from ..processes import binary, fraisier, http_get, node_exporter
from ..values import canonical_samples, sample_values
from .workload import record_a_bit_of_everything

WORKERS = Path(__file__).parent.parent / "workers.py"


def test_node_exporter_reads_the_file_without_error_and_with_our_values(textfile_dir: Path) -> None:
    record_a_bit_of_everything(textfile_dir)
    with node_exporter(textfile_dir) as url:
        scraped = http_get(url)
    values = sample_values(scraped)
    assert values["node_textfile_scrape_error"] == 0
    assert values[f'node_textfile_mtime_seconds{{file="{textfile_dir / "fraisier.prom"}"}}'] > 0
    ours = canonical_samples((textfile_dir / "fraisier.prom").read_text(), "fraisier_")
    assert len(ours) > 100
    assert canonical_samples(scraped, "fraisier_") == ours


def test_node_exporter_never_sees_an_error_while_writers_race(textfile_dir: Path) -> None:
    record_a_bit_of_everything(textfile_dir)
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKERS), "flush_many", str(textfile_dir), "100", str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    for worker in workers:
        assert worker.stdout is not None and worker.stdout.readline() == "ready\n"
    scrapes: list[dict[tuple[str, frozenset[tuple[str, str]]], float]] = []
    with node_exporter(textfile_dir) as url:
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        done = threading.Event()
        def wait_for_workers() -> None:
            try:
                for w in workers:
                    w.wait(timeout=300)
            finally:  # a worker that outlived its wait fails the test below, never leaves the scrapes looping
                done.set()

        waiter = threading.Thread(target=wait_for_workers)
        waiter.start()
        while not done.is_set():
            scrapes.append(canonical_samples(http_get(url)))
        waiter.join()
        # Events a writer could not merge within its lock-wait budget were handed over: the next merge by any
        # process writes them, as a timer's refresh does.
        fraisier("textfile", "refresh", textfile_dir=textfile_dir, check=True)
        scrapes.append(canonical_samples(http_get(url)))
    assert all(worker.returncode == 0 for worker in workers)
    assert len(scrapes) > 5
    assert all(scrape[("node_textfile_scrape_error", frozenset())] == 0 for scrape in scrapes)
    labels = frozenset({"provider": "bare_metal", "status": "success", "fraise_type": "api"}.items())
    key = ("fraisier_deployments_total", labels)
    counts = [scrape[key] for scrape in scrapes]
    assert counts == sorted(counts)
    assert counts[-1] == 1 + 4 * 100


def test_promtool_finds_no_problem_in_the_file(textfile_dir: Path) -> None:
    record_a_bit_of_everything(textfile_dir)
    result = subprocess.run(
        [binary("promtool"), "check", "metrics"],
        input=(textfile_dir / "fraisier.prom").read_text(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""
